"""Postgres for a restore: the restore task, proving its result, the swap.

The server restored onto is :mod:`tasks.restore.pg_server` (the stack's own, or for a
drill a server apart; re-exported here). Running
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
from typing import Literal

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
from tasks.errors import ToolVersionError
from tasks.pg_inventory import count_rows, large_objects
from tasks.pg_tools import parse_tool_version
from tasks.restore.engine import ComponentOutcome
from tasks.restore.pg_restore import PostgresMode, restore_postgres_dump
from tasks.restore.pg_server import (
    PG_CONNECT_TIMEOUT_S,
    PgServer,
    create_pg_database,
    describe_drill_target,
    drill_server,
    drop_pg_database,
    pg_database_exists,
    pg_databases,
    pg_server,
    pg_server_error,
    restore_tool,
)

__all__ = [
    "PG_CONNECT_TIMEOUT_S",
    "REQUIRED_POSTGRES_TABLES",
    "PgServer",
    "PostgresEngine",
    "PostgresSource",
    "count_pg_rows",
    "create_pg_database",
    "describe_drill_target",
    "drill_server",
    "drop_pg_database",
    "pg_database_exists",
    "pg_databases",
    "pg_large_objects",
    "pg_server",
    "restore_postgres",
    "restore_tool",
]


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


# ---- restoring the dump, and proving it -----------------------------------------------------


def pg_large_objects(server: PgServer, database: str) -> LargeObjects:
    """Count and digest of the restored large objects, as the backup took them."""
    try:
        with server.connect(database) as conn:
            return large_objects(conn)
    except psycopg.Error as exc:
        raise pg_server_error(server, f"large objects in {database}", exc) from None


def count_pg_rows(server: PgServer, database: str) -> dict[str, int]:
    """Exact row count of every user table, counted the way the backup counted them."""
    try:
        with server.connect(database) as conn:
            return count_rows(conn)
    except psycopg.Error as exc:
        raise pg_server_error(server, f"row count in {database}", exc) from None


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
    """Create ``database`` on the drill server, restore the dump into it, and prove it.

    Checks: the dump's sha256/size, pg_restore's exit, the exact row count of every
    table, the tables the applications need. The caller drops or keeps the database.
    """
    return _restore_into(
        drill_server(stack, server_block),
        stack,
        manifest=manifest,
        database=database,
        mode=mode,
        jobs=jobs,
        timeout_s=timeout_s,
        work_dir=work_dir,
        required_tables=required_tables,
    )


def _restore_into(
    server: PgServer,
    stack: Stack,
    *,
    manifest: BackupManifest,
    database: str,
    mode: PostgresMode,
    jobs: int,
    timeout_s: float,
    work_dir: str | None,
    required_tables: list[str],
) -> ComponentOutcome:
    logger = get_run_logger()
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
        raise pg_server_error(server, f"rename of {staging} to {target}", exc) from None


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
        return _restore_into(
            self.server,
            self.stack,
            manifest=source.manifest,
            database=database,
            mode=source.mode,
            jobs=source.jobs,
            timeout_s=source.timeout_s,
            work_dir=source.work_dir,
            required_tables=source.required_tables,
        )
