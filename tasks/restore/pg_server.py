"""The Postgres server a restore writes to: the stack's own, or a drill server apart.

:class:`PgServer` holds the DSN (its password never leaves unscrubbed), the volume size
the operator gave for it, and whether it is apart from the live stack's server.
:func:`pg_server` is the stack's own server (or a Secret block's DSN); :func:`drill_server`
is where a drill restores, preferring a server apart whenever one is configured. The
database-level helpers here (exists, list, create, drop, what the server uses on disk)
are what the drill and the restore do to a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import sql

from blocks.stack import Stack
from tasks.decisions.redaction import error_line, redact_url
from tasks.errors import RestoreError, StackConfigError
from tasks.pg_tools import PgTool, dsn_without_password, pg_client_tool, server_version

__all__ = [
    "PG_CONNECT_TIMEOUT_S",
    "PgServer",
    "create_pg_database",
    "describe_drill_target",
    "drill_server",
    "drop_pg_database",
    "pg_database_exists",
    "pg_databases",
    "pg_server",
    "pg_server_error",
    "pg_used_bytes",
    "restore_tool",
]

PG_CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class PgServer:
    """A Postgres server to restore onto: the stack's own, or one named by a Secret block.

    ``dsn`` holds the password; only :attr:`redacted` and :meth:`scrub`-ed texts leave
    this object. ``pg_restore`` gets the password through ``PGPASSWORD``, never argv.
    """

    dsn: str
    stack: Stack
    # The operator-given size of the server's volume (SQL cannot see the disk), the
    # setting that gives it, and whether the server is apart from the live stack's.
    volume_size: int | None = None
    volume_setting: str | None = None
    separate: bool = False

    @property
    def redacted(self) -> str:
        return redact_url(self.dsn)

    @property
    def maintenance_database(self) -> str:
        return urlsplit(self.dsn).path.lstrip("/") or "postgres"

    def dsn_for(self, database: str) -> str:
        parts = urlsplit(self.dsn)
        return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))

    def scrub(self, text: str) -> str:
        password = urlsplit(self.dsn).password
        for value in (password, unquote(password or "")):
            if value and len(value) >= 4:
                text = text.replace(value, "***")
        return self.stack.scrub(text)

    def connect(self, database: str | None = None) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.dsn_for(database or self.maintenance_database),
            autocommit=True,
            connect_timeout=PG_CONNECT_TIMEOUT_S,
        )

    def tool_target(self, database: str) -> tuple[str, dict[str, str]]:
        """``(dsn without password, env)`` for a libpq command-line tool."""
        dsn, password = dsn_without_password(self.dsn_for(database))
        return dsn, ({"PGPASSWORD": password} if password else {})


def pg_server(stack: Stack, server_block: str | None) -> PgServer:
    """The stack's own server, or the DSN stored in the Prefect Secret block named."""
    if server_block is None:
        return PgServer(
            dsn=stack.postgres_dsn.get_secret_value(),
            stack=stack,
            volume_size=stack.postgres_volume_size,
            volume_setting="POSTGRES_VOLUME_SIZE",
        )
    from prefect.runtime import flow_run

    cache_key = (str(flow_run.id), server_block)
    dsn = _server_dsns.get(cache_key)
    if dsn is None:
        dsn = _server_dsns[cache_key] = _load_secret_dsn(server_block)
    if urlsplit(dsn).scheme not in ("postgres", "postgresql"):
        raise StackConfigError(
            f"Secret block {server_block!r} does not hold a postgresql:// DSN"
        ) from None
    return PgServer(
        dsn=dsn,
        stack=stack,
        volume_setting="DRILL_DATABASE_URL with DRILL_POSTGRES_VOLUME_SIZE instead of "
        "drill_server_block",
        separate=_apart(dsn, stack),
    )


def drill_server(stack: Stack, server_block: str | None) -> PgServer:
    """Where a drill restores: the Secret block named, else the stack's drill server
    (``DRILL_DATABASE_URL``), else the stack's own server.

    A server apart from the live one is preferred whenever one is configured: a drill
    that fills its disk then endangers nothing the applications use.
    """
    if server_block is None and stack.drill_postgres_dsn is not None:
        dsn = stack.drill_postgres_dsn.get_secret_value()
        return PgServer(
            dsn=dsn,
            stack=stack,
            volume_size=stack.drill_postgres_volume_size,
            volume_setting="DRILL_POSTGRES_VOLUME_SIZE",
            separate=_apart(dsn, stack),
        )
    return pg_server(stack, server_block)


def _apart(dsn: str, stack: Stack) -> bool:
    """Whether ``dsn`` names another server than the stack's (host and port)."""
    live = urlsplit(stack.postgres_dsn.get_secret_value())
    other = urlsplit(dsn)
    return (other.hostname, other.port or 5432) != (live.hostname, live.port or 5432)


# A drill's tasks share one load of the Secret block per flow run (and process).
_server_dsns: dict[tuple[str, str], str] = {}


def _load_secret_dsn(server_block: str) -> str:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(server_block).get()  # type: ignore[union-attr]
    except ValueError as exc:
        raise StackConfigError(
            f"no Secret block named {server_block!r} ({exc}); create one holding "
            "postgresql://USER:PASSWORD@HOST:5432/postgres for the drill server"
        ) from None
    return str(value)


@task(name="describe-drill-target", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def describe_drill_target(stack: Stack, server_block: str | None) -> str:
    """The Postgres server the drill restores onto, password redacted."""
    return drill_server(stack, server_block).redacted


def pg_server_error(server: PgServer, action: str, exc: BaseException) -> RestoreError:
    return RestoreError(
        f"Postgres {action} failed on {server.redacted}: {error_line(exc, server.scrub)}"
    )


def pg_database_exists(server: PgServer, database: str) -> bool:
    try:
        with server.connect() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            return row.fetchone() is not None
    except psycopg.Error as exc:
        raise pg_server_error(server, f"lookup of database {database!r}", exc) from None


def pg_databases(server: PgServer) -> list[str]:
    try:
        with server.connect() as conn:
            return [str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")]
    except psycopg.Error as exc:
        raise pg_server_error(server, "listing of databases", exc) from None


def create_pg_database(server: PgServer, database: str) -> None:
    try:
        with server.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.Error as exc:
        raise pg_server_error(server, f"CREATE DATABASE {database}", exc) from None


def drop_pg_database(server: PgServer, database: str) -> None:
    """Drop it even with sessions attached (a killed drill's pg_restore may still be there)."""
    try:
        with server.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
    except psycopg.Error as exc:
        raise pg_server_error(server, f"DROP DATABASE {database}", exc) from None


def restore_tool(server: PgServer) -> PgTool:
    """The pg_restore for this server's major (equal, else the smallest newer one)."""
    try:
        with server.connect() as conn:
            _, major = server_version(conn)
    except psycopg.Error as exc:
        raise pg_server_error(server, "version lookup", exc) from None
    return pg_client_tool("pg_restore", major)


def pg_used_bytes(server: PgServer) -> int:
    """What the server keeps on its volume: every database, and its WAL.

    The WAL is read with ``pg_ls_waldir()`` (superuser or ``pg_monitor``); without that
    right, ``max_wal_size`` stands in for it (what pg_wal holds between checkpoints).
    Raises :class:`RestoreError` when the databases' sizes cannot be read.
    """
    try:
        with server.connect() as conn:
            row = conn.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone()
            databases = int(row[0]) if row and row[0] is not None else 0
            try:
                with conn.transaction():
                    row = conn.execute(
                        "SELECT coalesce(sum(size), 0) FROM pg_ls_waldir()"
                    ).fetchone()
            except psycopg.errors.InsufficientPrivilege:
                row = conn.execute(
                    "SELECT pg_size_bytes(current_setting('max_wal_size'))"
                ).fetchone()
            wal = int(row[0]) if row and row[0] is not None else 0
    except psycopg.Error as exc:
        raise pg_server_error(server, "size lookup", exc) from None
    return databases + wal
