"""Keeping secrets out of text: URLs with their password hidden, secret values and every
escaped form they take, replaced by ``***``; and the one helper that turns an error into a
short, scrubbed line for a message.

Pure: no Prefect, no driver, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Literal
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

__all__ = [
    "MIN_SECRET_CHARS",
    "Lines",
    "error_line",
    "redact_url",
    "scrub_values",
    "secret_forms",
]


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = quote(unquote(parts.username or ""), safe="")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


MIN_SECRET_CHARS = 4


def secret_forms(values: Iterable[str]) -> list[str]:
    """``values`` and every escaped form each takes in logs, SQL, URLs and JSON.

    Forms: as is; in a single-quoted SQL string (backslash and quote escaped, as
    ``tasks.clickhouse.quote_string`` writes it); URL-encoded (``quote`` and
    ``quote_plus``); JSON-escaped. Values shorter than 4 characters are left out: they
    would scrub ordinary words.
    """
    forms: list[str] = []
    for value in values:
        if len(value) < MIN_SECRET_CHARS:
            continue
        for form in (
            value,
            value.replace("\\", "\\\\").replace("'", "\\'"),
            quote(value, safe=""),
            quote_plus(value, safe=""),
            json.dumps(value)[1:-1],
        ):
            if form not in forms:
                forms.append(form)
    return forms


def scrub_values(text: str, values: Iterable[str]) -> str:
    """``text`` with each of ``values`` replaced by ``***``, longest first."""
    for value in sorted(set(values), key=len, reverse=True):
        if value:
            text = text.replace(value, "***")
    return text


Lines = Literal["keep", "join", "first"]


def error_line(
    exc: BaseException | str,
    scrub: Callable[[str], str],
    *,
    limit: int = 600,
    lines: Lines = "keep",
) -> str:
    """``Type: message`` of ``exc`` (or the text), through ``scrub``, cut to ``limit``: the
    one way an error becomes part of a message (``Stack.error_line`` passes its scrub).

    ``lines``: ``"keep"`` the text's line breaks; ``"join"`` every run of whitespace into
    one space (a table cell, a check's message); keep only the ``"first"`` line (a health
    reason). The text is scrubbed before it is reshaped or cut, so no cut can split a
    secret out of the scrub's reach.
    """
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    text = scrub(text.strip())
    if lines == "join":
        text = " ".join(text.split())
    elif lines == "first":
        text = (text.strip().splitlines() or [""])[0]
    return text[:limit]
