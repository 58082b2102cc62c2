"""pg_dump version checks and the dump stream, without a database."""

from __future__ import annotations

import hashlib
import subprocess
import threading
from collections import deque
from pathlib import Path

import pytest

from tasks import pg_tools
from tasks.errors import PostgresDumpError, ToolVersionError
from tasks.pg_tools import (
    choose_client_major,
    parse_tool_version,
    pg_client_tool,
    require_compatible,
)
from tasks.postgres import DumpStream


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n", ("15.18", 15)),
        ("pg_dump (PostgreSQL) 16.4\n", ("16.4", 16)),
        ("pg_dump (PostgreSQL) 17devel\n", ("17", 17)),
        ("pg_dump (PostgreSQL) 9.6.24\n", ("9.6", 9)),
    ],
)
def test_tool_versions_are_read(text: str, expected: tuple[str, int]) -> None:
    assert parse_tool_version(text) == expected


def test_an_unreadable_version_is_refused() -> None:
    with pytest.raises(ToolVersionError, match="cannot read a version"):
        parse_tool_version("command not found")


def test_an_older_pg_dump_is_refused_with_the_fix() -> None:
    with pytest.raises(ToolVersionError) as caught:
        require_compatible("16.4", 16, "15.18", 15)
    message = str(caught.value)
    assert "pg_dump 15.18 is older than the PostgreSQL 16.4 server" in message
    assert "postgresql-client-16" in message and "pg_dump_path" in message


def test_same_or_newer_pg_dump_is_accepted() -> None:
    require_compatible("15.18", 15, "15.18", 15)
    require_compatible("15.18", 15, "16.4", 16)


@pytest.mark.parametrize(
    ("installed", "server", "chosen"),
    [
        ([15, 16, 17], 16, 16),  # the server's own major, not the newest
        ([17, 16], 16, 16),
        ([15, 17, 18], 16, 17),  # else the smallest newer one
        ([18, 17], 15, 17),
        ([16], 16, 16),
        ([14, 15], 16, None),  # nothing at least as new as the server
        ([], 16, None),
    ],
)
def test_the_client_of_the_servers_major_is_chosen(
    installed: list[int], server: int, chosen: int | None
) -> None:
    assert choose_client_major(installed, server) == chosen


def fake_clients(root: Path, name: str, versions: dict[int, str]) -> None:
    for major, version in versions.items():
        folder = root / str(major) / "bin"
        folder.mkdir(parents=True, exist_ok=True)
        tool = folder / name
        tool.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
        tool.chmod(0o755)


def test_dump_and_restore_run_the_installed_client_of_the_servers_major(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("pg_dump", "pg_restore"):
        fake_clients(tmp_path, name, {15: "15.10", 16: "16.6", 17: "17.2"})
    monkeypatch.setattr(pg_tools, "PG_LIB", str(tmp_path))
    for name in ("pg_dump", "pg_restore"):
        tool = pg_client_tool(name, 16)
        assert (tool.path, tool.version, tool.major) == (f"{tmp_path}/16/bin/{name}", "16.6", 16)
    assert pg_client_tool("pg_restore", 14).major == 15


def test_no_client_as_new_as_the_server_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_clients(tmp_path, "pg_restore", {14: "14.9", 15: "15.10"})
    monkeypatch.setattr(pg_tools, "PG_LIB", str(tmp_path))
    with pytest.raises(ToolVersionError) as caught:
        pg_client_tool("pg_restore", 16)
    message = str(caught.value)
    assert "no pg_restore for PostgreSQL 16 (installed majors: 14, 15)" in message
    assert "postgresql-client-16" in message


def test_a_configured_pg_dump_is_used_as_given(tmp_path: Path) -> None:
    fake_clients(tmp_path, "pg_dump", {17: "17.2"})
    path = str(tmp_path / "17" / "bin" / "pg_dump")
    assert pg_client_tool("pg_dump", 16, configured=path).version == "17.2"


def stream_of(script: str, timeout_s: float = 60.0) -> tuple[DumpStream, threading.Timer]:
    process = subprocess.Popen(
        ["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        process.kill()

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    tail: deque[bytes] = deque()

    def stderr_tail() -> str:
        assert process.stderr is not None
        tail.append(process.stderr.read())
        return b"".join(tail).decode().strip()

    return DumpStream(process, stderr_tail, timed_out, timeout_s), timer


def read_all(stream: DumpStream, part: int) -> bytes:
    chunks = []
    while chunk := stream.read(part):
        chunks.append(chunk)
    return b"".join(chunks)


def test_the_stream_hands_over_whole_parts_and_hashes_them() -> None:
    stream, timer = stream_of("head -c 3000000 /dev/urandom")
    try:
        first = stream.read(1_000_000)
        assert len(first) == 1_000_000  # a whole part from many pipe reads
        data = first + read_all(stream, 1_000_000)
    finally:
        timer.cancel()
    assert len(data) == stream.size == 3_000_000
    assert stream.sha256 == hashlib.sha256(data).hexdigest()


def test_a_failing_pg_dump_never_yields_its_last_bytes() -> None:
    stream, timer = stream_of("head -c 2500000 /dev/zero; echo 'connection lost' >&2; exit 1")
    handed: list[bytes] = []
    try:
        with pytest.raises(PostgresDumpError, match=r"exited with code 1.*connection lost"):
            while chunk := stream.read(1_000_000):
                handed.append(chunk)
    finally:
        timer.cancel()
    # The uploader got whole parts only; the tail that ended in failure never arrived,
    # so the multipart upload cannot complete with a truncated archive.
    assert sum(len(c) for c in handed) == 2_000_000


def test_a_pg_dump_past_its_timeout_is_stopped_and_reported() -> None:
    stream, timer = stream_of("head -c 1000 /dev/zero; exec sleep 30", timeout_s=0.5)
    try:
        with pytest.raises(PostgresDumpError, match="did not finish within"):
            read_all(stream, 1_000_000)
    finally:
        timer.cancel()
