"""The Prefect server's and worker's own logs, read for errors nobody expected.

A scheduler that fails on every loop, an automation that cannot evaluate, a worker that
cannot submit a run: the Prefect server and worker log these and carry on, so no test
sees them fail. The test session reads both logs at its end and fails when they hold
an error or a traceback that no test declared with ``@pytest.mark.prefect_log_allows``.

The worker's log also carries the output of the flow runs it started; those lines are
the runs' own logs (kept in the Prefect API, and checked by the tests that make them
fail on purpose), so records of the ``Flow run '...'`` and ``Task run '...'`` loggers
are not the worker's errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# "12:00:01.123 | ERROR   | prefect.server.services.scheduler - message"
_PREFECT_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| (?P<level>[A-Z]+)\s*\| (?P<rest>.*)$")
# uvicorn's own format: "ERROR:    Exception in ASGI application"
_UVICORN_RECORD = re.compile(r"^(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL):\s+(?P<rest>.*)$")
_RUN_LOGGERS = ("Flow run '", "Task run '")
_BAD_LEVELS = ("ERROR", "CRITICAL")
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Record:
    level: str
    text: str

    @property
    def from_a_run(self) -> bool:
        first = self.text.split("\n", 1)[0]
        return first.startswith(_RUN_LOGGERS)

    @property
    def is_problem(self) -> bool:
        if self.from_a_run:
            return False
        return self.level in _BAD_LEVELS or TRACEBACK in self.text


def records(text: str) -> list[Record]:
    """The log split into records; continuation lines (tracebacks) join their record."""
    found: list[Record] = []
    for line in text.splitlines():
        match = _PREFECT_RECORD.match(line) or _UVICORN_RECORD.match(line)
        if match:
            found.append(Record(match["level"], match["rest"]))
        elif found and line.strip():
            found[-1].text += "\n" + line
        elif line.strip():
            found.append(Record("", line))
    return found


def problems(text: str, allowed: Iterable[str]) -> list[str]:
    """Error records and tracebacks that match none of the ``allowed`` patterns."""
    patterns = [re.compile(pattern, re.DOTALL) for pattern in allowed]
    return [
        record.text
        for record in records(text)
        if record.is_problem and not any(p.search(record.text) for p in patterns)
    ]


def sizes(paths: Iterable[Path]) -> dict[Path, int]:
    """Where each log ends now, so a reused devstack is read from here on."""
    return {path: path.stat().st_size if path.exists() else 0 for path in paths}


def read_since(offsets: dict[Path, int]) -> dict[Path, str]:
    texts = {}
    for path, offset in offsets.items():
        if path.exists():
            with path.open("rb") as handle:
                handle.seek(offset)
                texts[path] = handle.read().decode(errors="replace")
    return texts
