"""ClickHouse for a restore: RESTORE, waiting for it, reading back what it restored, the swap.

``RESTORE DATABASE src AS target FROM S3(...) ASYNC``, polled in ``system.backups`` by the
poller the backup uses (KILLed at its deadline). It runs in two steps: the tables first
(``structure_only``), then, with merges stopped on them, the data; so the rows of the
restored parts are counted exactly as the backup holds them (the manifest's counts are
its parts' ``count.txt``, see :mod:`tasks.decisions.clickhouse_backup`) before a merge of a
ReplacingMergeTree table can fold duplicate versions. Merges start again once counted.
RESTORE does not verify checksums (ClickHouse issue 65191), so every table is then
checked (``CHECK TABLE``), read in full (``SELECT * ... FORMAT Null``) and counted. The
statement holds the S3 secret: it is never logged, and errors are scrubbed. A restored
copy lands on the live volumes: the drill and the restore check the free space before
(:mod:`tasks.restore.space`). :func:`_swap_ch` is how the real restore puts a verified
staging database in place; :class:`ClickHouseEngine` is this module behind the engine
interface.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Literal

from clickhouse_connect.driver.client import Client as ClickHouseClient
from clickhouse_connect.driver.exceptions import ClickHouseError
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from blocks.stack import Stack
from tasks.clickhouse import (
    RESTORED,
    RESTORING,
    ch_error,
    clickhouse_client,
    quote_identifier,
    restore_statement,
    stopped_text,
    table_rows,
    wait_for_operation,
)
from tasks.decisions.checks import CheckResult, failed, passed
from tasks.decisions.drill import ComponentTiming, check_required_tables, check_row_counts, shorten
from tasks.decisions.manifest import ClickHouseBackup
from tasks.errors import RestoreError
from tasks.restore.engine import ComponentOutcome

__all__ = [
    "CHECKABLE_ENGINE",
    "CH_POLL_S",
    "CH_QUERY_TIMEOUT_S",
    "CH_VERIFY_TIMEOUT_S",
    "REQUIRED_CLICKHOUSE_TABLES",
    "ClickHouseEngine",
    "ClickHouseSource",
    "ch_client",
    "ch_databases",
    "drop_ch_database",
    "merge_tree_tables",
    "read_ch_tables",
    "restore_clickhouse",
    "restored_part_rows",
    "run_ch_restore",
    "set_merges",
    "wait_ch_restore",
]

CH_POLL_S = 0.5
CH_QUERY_TIMEOUT_S = 600
# One verification query (CHECK TABLE, a full read of one table) may take this long:
# bounded on its own, not by the restore's hours-long limit.
CH_VERIFY_TIMEOUT_S = 3600

REQUIRED_CLICKHOUSE_TABLES: tuple[str, ...] = ("traces", "observations", "scores")
# Engines CHECK TABLE understands; views and the like hold no data of their own.
CHECKABLE_ENGINE = re.compile(r"MergeTree|^(Log|TinyLog|StripeLog)$")


def ch_client(stack: Stack, timeout_s: float = CH_QUERY_TIMEOUT_S) -> ClickHouseClient:
    return clickhouse_client(stack, timeout_s, error=RestoreError)


def _ch_error(stack: Stack, action: str, exc: BaseException) -> RestoreError:
    return ch_error(stack, action, exc, RestoreError)


def ch_databases(stack: Stack) -> list[str]:
    client = ch_client(stack)
    try:
        return [str(r[0]) for r in client.query("SELECT name FROM system.databases").result_rows]
    except (ClickHouseError, OSError) as exc:
        raise _ch_error(stack, "listing of databases", exc) from None
    finally:
        client.close()


def drop_ch_database(stack: Stack, database: str) -> None:
    client = ch_client(stack)
    try:
        client.command(f"DROP DATABASE IF EXISTS {quote_identifier(database)} SYNC")
    except (ClickHouseError, OSError) as exc:
        raise _ch_error(stack, f"DROP DATABASE {database}", exc) from None
    finally:
        client.close()


def run_ch_restore(
    stack: Stack,
    client: ClickHouseClient,
    *,
    backup: ClickHouseBackup,
    target: str,
    timeout_s: float,
) -> CheckResult:
    """RESTORE the tables, stop their merges, RESTORE the data; each polled to its end."""
    name = f"clickhouse-restore[{backup.database}]"
    deadline = time.monotonic() + timeout_s
    for structure_only in (True, False):
        try:
            statement = restore_statement(
                stack, backup.database, target, backup.s3_prefix, structure_only=structure_only
            )
            operation_id = str(client.query(statement).result_rows[0][0])
        except (ClickHouseError, OSError, IndexError) as exc:
            action = f"RESTORE {'of the tables ' if structure_only else ''}into {target}"
            error = _ch_error(stack, action, exc)
            return failed(name, error.args[0], component="clickhouse")
        left = max(deadline - time.monotonic(), 1.0)
        check = wait_ch_restore(stack, client, operation_id, name, target, left)
        if not check.passed:
            return check
        if structure_only:
            try:
                set_merges(client, target, running=False)
            except (ClickHouseError, OSError) as exc:
                error = _ch_error(stack, f"SYSTEM STOP MERGES on {target}", exc)
                return failed(name, error.args[0], component="clickhouse")
    return check


def merge_tree_tables(client: ClickHouseClient, database: str) -> list[str]:
    """The MergeTree-family tables of ``database`` (the ones with parts and merges)."""
    return list(table_rows(client, database))


def set_merges(client: ClickHouseClient, database: str, *, running: bool) -> None:
    """``SYSTEM START|STOP MERGES`` on every MergeTree table of ``database``."""
    verb = "START" if running else "STOP"
    for table in merge_tree_tables(client, database):
        client.command(
            f"SYSTEM {verb} MERGES {quote_identifier(database)}.{quote_identifier(table)}"
        )


def restored_part_rows(client: ClickHouseClient, database: str) -> dict[str, int]:
    """Rows per table in the active parts of ``database`` (what ``count.txt`` counts)."""
    rows = client.query(
        "SELECT table, sum(rows) FROM system.parts WHERE database = {db:String} AND active "
        "GROUP BY table",
        parameters={"db": database},
    ).result_rows
    return {str(table): int(count) for table, count in rows}


def wait_ch_restore(
    stack: Stack,
    client: ClickHouseClient,
    operation_id: str,
    name: str,
    target: str,
    timeout_s: float,
) -> CheckResult:
    """Poll system.backups until RESTORED, a failure, a vanished row, or the deadline.

    :func:`~tasks.clickhouse.wait_for_operation` polls; a RESTORE still running at the
    deadline is KILLed (it would go on writing into the database about to be dropped).
    """
    try:
        end = wait_for_operation(
            client,
            operation_id,
            running_status=RESTORING,
            done_status=RESTORED,
            timeout_s=timeout_s,
            poll_s=CH_POLL_S,
        )
    except (ClickHouseError, OSError) as exc:
        return failed(
            name, _ch_error(stack, "polling system.backups", exc).args[0], component="clickhouse"
        )
    if end.outcome == "done":
        return passed(name, f"RESTORE into {target}: {RESTORED}", component="clickhouse")
    if end.outcome == "vanished":
        return failed(
            name,
            f"RESTORE {operation_id} into {target} vanished from system.backups (ClickHouse "
            "restarted mid-restore?); the partial database is dropped, run it again",
            component="clickhouse",
        )
    if end.outcome == "failed":
        return failed(
            name,
            f"RESTORE into {target} ended {end.status}: "
            f"{stack.error_line(end.error) or 'no error text'}",
            component="clickhouse",
        )
    return failed(
        name,
        f"RESTORE into {target} still running after {timeout_s:.0f}s; "
        f"{stopped_text(end, RESTORING)}",
        component="clickhouse",
    )


def read_ch_tables(
    stack: Stack, client: ClickHouseClient, backup: ClickHouseBackup, target: str
) -> tuple[list[CheckResult], dict[str, int]]:
    """CHECK TABLE and a full read of every table (RESTORE verifies nothing), then counts."""
    tag = f"[{backup.database}]"
    counts: dict[str, int] = {}
    problems: list[str] = []
    try:
        tables = client.query(
            "SELECT name, engine FROM system.tables WHERE database = {db:String} ORDER BY name",
            parameters={"db": target},
        ).result_rows
    except (ClickHouseError, OSError) as exc:
        return [
            failed(
                f"clickhouse-read{tag}",
                _ch_error(stack, "listing", exc).args[0],
                component="clickhouse",
            )
        ], {}
    for table, engine in tables:
        qualified = f"{quote_identifier(target)}.{quote_identifier(str(table))}"
        if not CHECKABLE_ENGINE.search(str(engine)):
            continue
        try:
            verdict = client.query(
                f"CHECK TABLE {qualified} SETTINGS check_query_single_value_result = 1"
            ).result_rows
            if not verdict or int(verdict[0][0]) != 1:
                problems.append(f"CHECK TABLE {table} reports damaged parts")
            client.command(f"SELECT * FROM {qualified} FORMAT Null")
            if "MergeTree" in str(engine):
                counts[str(table)] = 0  # counted from its parts below
        except (ClickHouseError, OSError, ValueError) as exc:
            problems.append(f"reading {table} failed: {stack.error_line(str(exc), limit=300)}")
    try:
        for table, rows in restored_part_rows(client, target).items():
            if table in counts:
                counts[table] = rows
    except (ClickHouseError, OSError, ValueError) as exc:
        problems.append(
            f"counting the restored parts failed: {stack.error_line(str(exc), limit=300)}"
        )
    if problems:
        read = failed(f"clickhouse-read{tag}", shorten(problems), component="clickhouse")
    else:
        read = passed(
            f"clickhouse-read{tag}",
            f"{len(counts)} tables checked (CHECK TABLE) and read in full",
            component="clickhouse",
        )
    return [read], counts


def _start_merges(stack: Stack, client: ClickHouseClient, target: str) -> None:
    """Merges run again on the counted copy (a real restore puts it in the live place)."""
    try:
        set_merges(client, target, running=True)
    except (ClickHouseError, OSError) as exc:
        # Not fatal: merges also start again when ClickHouse restarts.
        get_run_logger().warning(
            "%s", _ch_error(stack, f"SYSTEM START MERGES on {target}", exc).args[0]
        )


@task(name="restore-clickhouse", cache_policy=NO_CACHE)
def restore_clickhouse(
    stack: Stack,
    backup: ClickHouseBackup,
    *,
    target: str,
    timeout_s: float,
    required_tables: list[str],
) -> ComponentOutcome:
    """RESTORE one database's backup as ``target``, then check, read and count every table."""
    logger = get_run_logger()
    tag = f"[{backup.database}]"
    logger.info("restoring ClickHouse %s as %s from %s", backup.database, target, backup.s3_prefix)
    client = ch_client(stack, CH_VERIFY_TIMEOUT_S)
    started = time.monotonic()
    try:
        checks = [run_ch_restore(stack, client, backup=backup, target=target, timeout_s=timeout_s)]
        seconds = time.monotonic() - started
        verify_started = time.monotonic()
        if checks[0].passed:
            try:
                read_checks, counts = read_ch_tables(stack, client, backup, target)
            finally:
                _start_merges(stack, client, target)
            checks += read_checks
            checks.append(
                check_row_counts(
                    f"clickhouse-row-counts{tag}", "clickhouse", backup.table_rows, counts
                )
            )
            checks.append(
                check_required_tables(
                    f"clickhouse-required-tables{tag}", "clickhouse", required_tables, counts
                )
            )
        verify_seconds = time.monotonic() - verify_started
    finally:
        client.close()
    for check in checks:
        log = logger.info if check.passed else logger.error
        log("%s %s: %s", check.name, check.status, check.message)
    if not checks[0].passed:
        # A RESTORE that did not complete has no recovery time to report.
        return ComponentOutcome(checks=checks)
    timing = ComponentTiming(
        component="clickhouse",
        target=target,
        restore_seconds=seconds,
        verify_seconds=verify_seconds,
        bytes=backup.size,
    )
    return ComponentOutcome(checks=checks, timing=timing)


# ---- the swap into place (the real restore) -------------------------------------------------


def _swap_ch(stack: Stack, staging: str, target: str, previous: str | None) -> None:
    client = ch_client(stack)
    try:
        if previous is not None:
            old, new = quote_identifier(target), quote_identifier(previous)
            client.command(f"RENAME DATABASE {old} TO {new}")
        client.command(f"RENAME DATABASE {quote_identifier(staging)} TO {quote_identifier(target)}")
    except (ClickHouseError, OSError) as exc:
        moved = previous is not None and previous in ch_databases(stack)
        state = (
            f"{target} was already renamed to {previous}: rename it back, or rename "
            f"{staging} to {target}"
            if moved
            else f"{target} is unchanged"
        )
        raise _ch_error(stack, f"rename of {staging} to {target} ({state})", exc) from None
    finally:
        client.close()


# ---- behind the engine interface ------------------------------------------------------------


@dataclass(frozen=True)
class ClickHouseSource:
    """What :meth:`ClickHouseEngine.restore_into` restores: one database's backup."""

    backup: ClickHouseBackup
    timeout_s: float
    required_tables: list[str]


class ClickHouseEngine:
    """ClickHouse (the stack's server) as a :class:`~tasks.restore.engine.RestoreEngine`."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    @property
    def name(self) -> Literal["clickhouse"]:
        return "clickhouse"

    @property
    def live_database(self) -> str:
        return self.stack.clickhouse_database

    def exists(self, database: str) -> bool:
        return database in ch_databases(self.stack)

    def drop(self, database: str) -> None:
        drop_ch_database(self.stack, database)

    def rename(self, staging: str, target: str, previous: str | None) -> None:
        _swap_ch(self.stack, staging, target, previous)

    def restore_into(self, database: str, source: ClickHouseSource) -> ComponentOutcome:
        return restore_clickhouse.fn(
            self.stack,
            source.backup,
            target=database,
            timeout_s=source.timeout_s,
            required_tables=source.required_tables,
        )
