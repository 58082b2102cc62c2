"""The PostgreSQL client tools: which pg_dump / pg_restore fits a server, and their versions.

pg_dump refuses servers newer than itself, and a newer client sends settings an older
server rejects: :func:`pg_client_tool` picks the installed client whose major equals the
server's (else the smallest newer one), for dump and restore alike, and says what to
install when none fits.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from typing import cast
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg.rows import TupleRow
from pydantic import BaseModel, Field

from tasks.errors import ToolVersionError

__all__ = [
    "PG_LIB",
    "PgTool",
    "PgVersions",
    "choose_client_major",
    "dsn_without_password",
    "installed_pg_tools",
    "parse_tool_version",
    "pg_client_tool",
    "require_compatible",
    "server_version",
    "tool_version",
]

PG_LIB = "/usr/lib/postgresql"


class PgVersions(BaseModel):
    """The server's and pg_dump's versions, checked compatible."""

    server: str = Field(description="Server version, e.g. '16.4'.")
    server_major: int
    pg_dump: str = Field(description="pg_dump version, e.g. '16.4'.")
    pg_dump_major: int
    pg_dump_path: str


def parse_tool_version(text: str) -> tuple[str, int]:
    """``'pg_dump (PostgreSQL) 16.4 (Debian 16.4-1)'`` -> ``('16.4', 16)``."""
    match = re.search(r"\)\s*(\d+)(?:\.(\d+))?", text) or re.search(r"(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise ToolVersionError(f"cannot read a version from {text.strip()[:200]!r}")
    major = int(match.group(1))
    return (f"{major}.{match.group(2)}" if match.group(2) else str(major)), major


def require_compatible(
    server: str, server_major: int, tool: str, tool_major: int, name: str = "pg_dump"
) -> None:
    """Refuse a client tool older than the server: pg_dump refuses newer servers."""
    if tool_major < server_major:
        raise ToolVersionError(
            f"{name} {tool} is older than the PostgreSQL {server} server it must work with; "
            f"{name} refuses newer servers. Install the PostgreSQL {server_major} client "
            f"(postgresql-client-{server_major}) in the worker image, or set the backup "
            f"config's pg_dump_path to a pg_dump >= {server_major}."
        )


def choose_client_major(installed: list[int], server_major: int) -> int | None:
    """The client major to run against a server: its own, else the smallest newer one.

    A newer client writes settings an older server rejects (pg_restore 17 sends
    ``SET transaction_timeout``, unknown to 16), so newer is only the fallback; an older
    one refuses the server (None: nothing fits).
    """
    fitting = [major for major in installed if major >= server_major]
    return min(fitting) if fitting else None


def installed_pg_tools(name: str) -> dict[int, str]:
    """Installed copies of a PostgreSQL client tool by major (Debian: one folder per major);
    the one on PATH when there is none of those."""
    found: dict[int, str] = {}
    for path in glob.glob(f"{PG_LIB}/*/bin/{name}"):
        major = path.split("/")[-3]
        if major.isdigit() and os.access(path, os.X_OK):
            found[int(major)] = path
    if not found and (on_path := shutil.which(name)):
        found[tool_version(on_path, name)[1]] = on_path
    return found


def tool_version(path: str, name: str) -> tuple[str, int]:
    """``(version, major)`` from ``<tool> --version``."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolVersionError(
            f"cannot run {name} at {path!r} ({type(exc).__name__}: {exc}). Install the "
            "PostgreSQL client in the worker image or set the backup config's pg_dump_path."
        ) from None
    return parse_tool_version(out)


class PgTool(BaseModel):
    """A PostgreSQL client tool chosen for a server."""

    path: str
    version: str
    major: int


def pg_client_tool(name: str, server_major: int, configured: str | None = None) -> PgTool:
    """The ``name`` (pg_dump, pg_restore) to run against a server of ``server_major``.

    The configured path if given, else the installed major equal to the server's, else
    the smallest newer one; a clear error when none is at least the server's major.
    """
    if configured:
        version, major = tool_version(configured, name)
        return PgTool(path=configured, version=version, major=major)
    installed = installed_pg_tools(name)
    chosen = choose_client_major(list(installed), server_major)
    if chosen is None:
        found = ", ".join(str(m) for m in sorted(installed)) or "none"
        raise ToolVersionError(
            f"no {name} for PostgreSQL {server_major} (installed majors: {found}); "
            f"{name} refuses newer servers. Install postgresql-client-{server_major} in "
            "the worker image (Dockerfile ARG PG_CLIENT_MAJOR)."
        )
    version, _ = tool_version(installed[chosen], name)
    return PgTool(path=installed[chosen], version=version, major=chosen)


def server_version(conn: psycopg.Connection[TupleRow]) -> tuple[str, int]:
    """``(version, major)`` of the server, e.g. ``('16.4', 16)``."""
    row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    number = int(cast(int, row[0])) if row else 0
    return f"{number // 10000}.{number % 10000}", number // 10000


def dsn_without_password(dsn: str) -> tuple[str, str]:
    """(DSN without its password, the password): the password goes in PGPASSWORD."""
    parts = urlsplit(dsn)
    password = unquote(parts.password or "")
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{user}@" if user else "") + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), password
