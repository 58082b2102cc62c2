"""Postgres for a restore: the server restored onto, its databases, the restore task, the swap.

The server is the stack's own, or one whose DSN a Prefect Secret block holds (a drill
onto another server); its password never leaves :class:`PgServer` unscrubbed. Running
``pg_restore`` on the dump is :mod:`tasks.restore.pg_restore`; :func:`restore_postgres`
creates the database, runs it, and proves the result against the manifest (row counts,
large objects, the tables the applications need). :func:`_swap_pg` is how the real
restore puts a verified staging database in place; :class:`PostgresEngine` is this
module behind the engine interface.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from psycopg import sql

from blocks.stack import Stack
from tasks.decisions.checks import failed, skipped
from tasks.decisions.drill import (
    ComponentTiming,
    check_large_objects,
    check_required_tables,
    check_row_counts,
)
from tasks.decisions.manifest import BackupManifest, LargeObjects
from tasks.decisions.redaction import error_line, redact_url
from tasks.errors import RestoreError, StackConfigError, ToolVersionError
from tasks.pg_inventory import count_rows, large_objects
from tasks.pg_tools import (
    PgTool,
    dsn_without_password,
    parse_tool_version,
    pg_client_tool,
    server_version,
)
from tasks.restore.engine import ComponentOutcome
from tasks.restore.pg_restore import PostgresMode, restore_postgres_dump

__all__ = [
    "PG_CONNECT_TIMEOUT_S",
    "REQUIRED_POSTGRES_TABLES",
    "PgServer",
    "PostgresEngine",
    "PostgresSource",
    "count_pg_rows",
    "create_pg_database",
    "describe_drill_target",
    "drop_pg_database",
    "pg_database_exists",
    "pg_databases",
    "pg_large_objects",
    "pg_server",
    "restore_postgres",
    "restore_tool",
]

PG_CONNECT_TIMEOUT_S = 10

# Without these, LiteLLM or Langfuse do not start or lose their keys and settings.
REQUIRED_POSTGRES_TABLES: tuple[str, ...] = (
    "public._prisma_migrations",
    "public.LiteLLM_VerificationToken",
    "public.LiteLLM_UserTable",
    "public.LiteLLM_ProxyModelTable",
    "public.LiteLLM_Config",
    "langfuse._prisma_migrations",
    "langfuse.organizations",
    "langfuse.projects",
    "langfuse.users",
    "langfuse.api_keys",
)


# ---- where Postgres is restored -------------------------------------------------------------


@dataclass(frozen=True)
class PgServer:
    """A Postgres server to restore onto: the stack's own, or one named by a Secret block.

    ``dsn`` holds the password; only :attr:`redacted` and :meth:`scrub`-ed texts leave
    this object. ``pg_restore`` gets the password through ``PGPASSWORD``, never argv.
    """

    dsn: str
    stack: Stack

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
        return PgServer(dsn=stack.postgres_dsn.get_secret_value(), stack=stack)
    from prefect.runtime import flow_run

    cache_key = (str(flow_run.id), server_block)
    dsn = _server_dsns.get(cache_key)
    if dsn is None:
        dsn = _server_dsns[cache_key] = _load_secret_dsn(server_block)
    if urlsplit(dsn).scheme not in ("postgres", "postgresql"):
        raise StackConfigError(
            f"Secret block {server_block!r} does not hold a postgresql:// DSN"
        ) from None
    return PgServer(dsn=dsn, stack=stack)


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
    return pg_server(stack, server_block).redacted


def _pg_error(server: PgServer, action: str, exc: BaseException) -> RestoreError:
    return RestoreError(
        f"Postgres {action} failed on {server.redacted}: {error_line(exc, server.scrub)}"
    )


def pg_database_exists(server: PgServer, database: str) -> bool:
    try:
        with server.connect() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            return row.fetchone() is not None
    except psycopg.Error as exc:
        raise _pg_error(server, f"lookup of database {database!r}", exc) from None


def pg_databases(server: PgServer) -> list[str]:
    try:
        with server.connect() as conn:
            return [str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")]
    except psycopg.Error as exc:
        raise _pg_error(server, "listing of databases", exc) from None


def create_pg_database(server: PgServer, database: str) -> None:
    try:
        with server.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.Error as exc:
        raise _pg_error(server, f"CREATE DATABASE {database}", exc) from None


def drop_pg_database(server: PgServer, database: str) -> None:
    """Drop it even with sessions attached (a killed drill's pg_restore may still be there)."""
    try:
        with server.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
    except psycopg.Error as exc:
        raise _pg_error(server, f"DROP DATABASE {database}", exc) from None


def restore_tool(server: PgServer) -> PgTool:
    """The pg_restore for this server's major (equal, else the smallest newer one)."""
    try:
        with server.connect() as conn:
            _, major = server_version(conn)
    except psycopg.Error as exc:
        raise _pg_error(server, "version lookup", exc) from None
    return pg_client_tool("pg_restore", major)


# ---- restoring the dump, and proving it -----------------------------------------------------


def pg_large_objects(server: PgServer, database: str) -> LargeObjects:
    """Count and digest of the restored large objects, as the backup took them."""
    try:
        with server.connect(database) as conn:
            return large_objects(conn)
    except psycopg.Error as exc:
        raise _pg_error(server, f"large objects in {database}", exc) from None


def count_pg_rows(server: PgServer, database: str) -> dict[str, int]:
    """Exact row count of every user table, counted the way the backup counted them."""
    try:
        with server.connect(database) as conn:
            return count_rows(conn)
    except psycopg.Error as exc:
        raise _pg_error(server, f"row count in {database}", exc) from None


@task(name="restore-postgres", cache_policy=NO_CACHE)
def restore_postgres(
    stack: Stack,
    server_block: str | None,
    *,
    manifest: BackupManifest,
    database: str,
    mode: PostgresMode,
    jobs: int,
    timeout_s: float,
    work_dir: str | None,
    required_tables: list[str],
) -> ComponentOutcome:
    """Create ``database``, restore the dump into it, and prove it against the manifest.

    Checks: the dump's sha256/size, pg_restore's exit, the exact row count of every
    table, the tables the applications need. The caller drops or keeps the database.
    """
    logger = get_run_logger()
    server = pg_server(stack, server_block)
    dump = manifest.postgres
    try:
        tool = restore_tool(server)
    except ToolVersionError as exc:
        return ComponentOutcome(checks=[failed("postgres-restore", str(exc), component="postgres")])
    dump_major = parse_tool_version(f"pg_dump (PostgreSQL) {dump.pg_dump_version}")[1]
    if dump_major > tool.major:
        return ComponentOutcome(
            checks=[
                failed(
                    "postgres-restore",
                    f"pg_restore {tool.version} cannot read an archive written by pg_dump "
                    f"{dump.pg_dump_version}: install postgresql-client-{dump_major}",
                    component="postgres",
                )
            ]
        )
    logger.info(
        "restoring %s (%d bytes) into %s on %s (%s mode)",
        dump.dump_key,
        dump.dump_size,
        database,
        server.redacted,
        mode,
    )
    create_pg_database(server, database)
    checks, seconds = restore_postgres_dump(
        server,
        tool.path,
        stack=stack,
        manifest=manifest,
        database=database,
        mode=mode,
        jobs=jobs,
        timeout_s=timeout_s,
        work_dir=work_dir,
    )
    verify_started = time.monotonic()
    restored_ok = all(c.passed for c in checks)
    if restored_ok:
        counts = count_pg_rows(server, database)
        checks.append(check_row_counts("postgres-row-counts", "postgres", dump.table_rows, counts))
        if dump.large_objects is not None:
            restored = pg_large_objects(server, database)
            checks.append(
                check_large_objects(
                    "postgres-large-objects", "postgres", dump.large_objects, restored
                )
            )
        checks.append(
            check_required_tables("postgres-required-tables", "postgres", required_tables, counts)
        )
    else:
        checks.append(
            skipped(
                "postgres-row-counts", "not counted: the restore did not pass", component="postgres"
            )
        )
    for check in checks:
        log = logger.info if check.passed else logger.error
        log("%s %s: %s", check.name, check.status, check.message)
    if not restored_ok:
        # A restore that did not complete has no recovery time to report.
        return ComponentOutcome(checks=checks)
    timing = ComponentTiming(
        component="postgres",
        target=database,
        restore_seconds=seconds,
        verify_seconds=time.monotonic() - verify_started,
        bytes=dump.dump_size,
    )
    logger.info("postgres restored in %.1fs (%.1f MB/s)", seconds, timing.throughput_mb_s)
    return ComponentOutcome(checks=checks, timing=timing)


# ---- the swap into place (the real restore) -------------------------------------------------


def _swap_pg(server: PgServer, staging: str, target: str, previous: str | None) -> None:
    """Rename ``target`` aside and ``staging`` into its place, both in one transaction.

    The target first refuses new connections (ALLOW_CONNECTIONS false) and its sessions
    are closed, so nothing reconnects between the two renames; a failed swap rolls both
    renames back. Either way the old database accepts connections again afterwards.
    """
    admin = "postgres" if target == server.maintenance_database else server.maintenance_database
    try:
        with server.connect(admin) as conn:
            if previous is not None:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                        sql.Identifier(target)
                    )
                )
            try:
                if previous is not None:
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (target,),
                    )
                with conn.transaction():
                    if previous is not None:
                        conn.execute(
                            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                                sql.Identifier(target), sql.Identifier(previous)
                            )
                        )
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(staging), sql.Identifier(target)
                        )
                    )
            finally:
                if previous is not None:
                    _allow_connections(server, admin, [target, previous])
    except psycopg.Error as exc:
        raise _pg_error(server, f"rename of {staging} to {target}", exc) from None


def _allow_connections(server: PgServer, admin: str, names: list[str]) -> None:
    """ALLOW_CONNECTIONS true on those of ``names`` that refuse them (a fresh session)."""
    with server.connect(admin) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s) AND NOT datallowconn",
            (names,),
        ).fetchall()
        for (name,) in rows:
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                    sql.Identifier(str(name))
                )
            )


# ---- behind the engine interface ------------------------------------------------------------


@dataclass(frozen=True)
class PostgresSource:
    """What :meth:`PostgresEngine.restore_into` restores: the set's dump, and how."""

    manifest: BackupManifest
    mode: PostgresMode
    jobs: int
    timeout_s: float
    work_dir: str | None
    required_tables: list[str]


class PostgresEngine:
    """Postgres as a :class:`~tasks.restore.engine.RestoreEngine`.

    On the stack's own server, or on the one the Secret block ``server_block`` names.
    """

    def __init__(self, stack: Stack, server_block: str | None = None) -> None:
        self.stack = stack
        self.server_block = server_block

    @cached_property
    def server(self) -> PgServer:
        return pg_server(self.stack, self.server_block)

    @property
    def name(self) -> Literal["postgres"]:
        return "postgres"

    @property
    def live_database(self) -> str:
        return self.stack.postgres_database

    def exists(self, database: str) -> bool:
        return pg_database_exists(self.server, database)

    def drop(self, database: str) -> None:
        drop_pg_database(self.server, database)

    def rename(self, staging: str, target: str, previous: str | None) -> None:
        _swap_pg(self.server, staging, target, previous)

    def restore_into(self, database: str, source: PostgresSource) -> ComponentOutcome:
        return restore_postgres.fn(
            self.stack,
            self.server_block,
            manifest=source.manifest,
            database=database,
            mode=source.mode,
            jobs=source.jobs,
            timeout_s=source.timeout_s,
            work_dir=source.work_dir,
            required_tables=source.required_tables,
        )
