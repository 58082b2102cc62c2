"""error_line: the one way an error becomes part of a message."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tasks.decisions.redaction import error_line, scrub_values

SECRET = "hunter2-secret"


def scrub(text: str) -> str:
    return scrub_values(text, [SECRET])


def test_an_exception_reads_type_and_message() -> None:
    assert error_line(ValueError(f"bad {SECRET}\n  at line 2"), scrub) == (
        "ValueError: bad ***\n  at line 2"
    )


def test_the_shapes_of_a_multi_line_error() -> None:
    text = f"  first {SECRET}\n\n  second\tline  "
    assert error_line(text, scrub, lines="join") == "first *** second line"
    assert error_line(text, scrub, lines="first") == "first ***"
    assert error_line(text, scrub, limit=5) == "first"


@given(
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    limit=st.integers(min_value=0, max_value=100),
    lines=st.sampled_from(["keep", "join", "first"]),
)
def test_no_cut_leaves_a_piece_of_the_secret(
    before: str, after: str, limit: int, lines: str
) -> None:
    line = error_line(before + SECRET + after, scrub, limit=limit, lines=lines)  # type: ignore[arg-type]
    assert len(line) <= limit
    assert SECRET[:8] not in line or SECRET[:8] in before + after
