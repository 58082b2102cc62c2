"""ClickHouse: native ``BACKUP DATABASE ... TO S3`` into the backup set.

ClickHouse writes the backup itself, straight to S3, in its own format (parts, not
rows: nothing passes through this process). The statement runs ``ASYNC`` and is
polled in ``system.backups`` until ``BACKUP_CREATED``, ``BACKUP_FAILED`` or a timeout.
``system.backups`` lives in memory: a server restart mid-backup shows as a vanished
row, reported as a failure.

The statement carries the S3 access key and secret: it is built in one place, never
logged, and every error text from the driver is scrubbed before it goes anywhere.
There is no ``DELETE BACKUP``: removing a backup means deleting its S3 prefix, which
retention does with the rest of the set. A BACKUP that times out is KILLed (it would go
on writing otherwise), and a retried run first stops any BACKUP of an earlier attempt
still writing into the same prefix before it removes that attempt's files.

This module also holds the one ClickHouse client factory, error mapper and ``S3(...)``
clause builder that restore, health and deploy-verify use, and the one poller of a
BACKUP or RESTORE in ``system.backups`` (:func:`wait_for_operation`), which KILLs
either one at its deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel

from blocks.stack import Stack
from tasks.decisions.clickhouse_backup import parse_row_count, part_count_files
from tasks.decisions.manifest import ClickHouseBackup, StoredObject, clickhouse_prefix
from tasks.errors import ClickHouseBackupError, OpsError
from tasks.retry import RUN_CACHE, advice
from tasks.storage import delete_objects, list_prefix, read_object

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DESCRIPTOR",
    "DONE",
    "QUERY_TIMEOUT_S",
    "RESTORED",
    "RESTORING",
    "RUNNING",
    "STOP_WAIT_S",
    "ClickHouseBackupOutcome",
    "OperationEnd",
    "backup_clickhouse",
    "backup_state",
    "backup_statement",
    "backup_table_rows",
    "backup_url",
    "ch_error",
    "clickhouse_client",
    "quote_identifier",
    "quote_string",
    "restore_statement",
    "running_backups",
    "s3_clause",
    "stop_backup",
    "stop_operation",
    "stopped_text",
    "table_rows",
    "wait_for_operation",
]

CONNECT_TIMEOUT_S = 10
QUERY_TIMEOUT_S = 120
DONE = "BACKUP_CREATED"
RUNNING = "CREATING_BACKUP"
RESTORED = "RESTORED"
RESTORING = "RESTORING"
DESCRIPTOR = ".backup"
STOP_WAIT_S = 60.0

E = TypeVar("E", bound=OpsError)


class ClickHouseBackupOutcome(BaseModel):
    """A finished backup of one database, and its descriptor object for the manifest."""

    backup: ClickHouseBackup
    descriptor: StoredObject


def clickhouse_client(
    stack: Stack,
    timeout_s: float = QUERY_TIMEOUT_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    error: type[OpsError] = ClickHouseBackupError,
) -> Client:
    """The one way to reach the stack's ClickHouse (backup, restore, health, deploy-verify).

    ``timeout_s`` bounds each query; a failed connect raises ``error`` (scrubbed).
    """
    try:
        return stack.clickhouse(timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)
    except (ClickHouseError, OSError) as exc:
        raise ch_error(stack, "connect", exc, error) from None


def ch_error(
    stack: Stack,
    action: str,
    exc: BaseException | str,
    error: type[E] = ClickHouseBackupError,  # type: ignore[assignment]
) -> E:
    """An ``error`` naming the action, with the cause scrubbed and shortened."""
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    # ClickHouse appends a native stack trace to its messages: keep the first part.
    text = text.split("Stack trace")[0].strip().rstrip(",").strip()
    return error(
        f"ClickHouse {action} failed on {stack.clickhouse_url}: {stack.error_line(text, limit=800)}"
        + (f" {hint}" if (hint := advice(exc)) else "")
    )


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def backup_url(stack: Stack, prefix: str) -> str:
    """The S3 URL of a folder in the backup bucket, as ClickHouse reaches it."""
    return f"{stack.clickhouse_s3.rstrip('/')}/{stack.backup_bucket}/{prefix}"


def s3_clause(stack: Stack, prefix: str) -> str:
    """``S3(url, key, secret)`` of a folder in the backup bucket. Holds a secret: never log it."""
    url = backup_url(stack, prefix)
    return (
        f"S3({quote_string(url)}, {quote_string(stack.s3_access_key)}, "
        f"{quote_string(stack.s3_secret_key.get_secret_value())})"
    )


def backup_statement(stack: Stack, database: str, prefix: str) -> str:
    """``BACKUP DATABASE db TO S3(url, key, secret) ASYNC``. Holds a secret: never log it."""
    return f"BACKUP DATABASE {quote_identifier(database)} TO {s3_clause(stack, prefix)} ASYNC"


def restore_statement(
    stack: Stack, database: str, target: str, prefix: str, *, structure_only: bool = False
) -> str:
    """``RESTORE DATABASE db AS target FROM S3(...) ASYNC``. Holds a secret: never log it.

    ``structure_only`` creates the tables without their data.
    """
    settings = " SETTINGS structure_only = 1" if structure_only else ""
    return (
        f"RESTORE DATABASE {quote_identifier(database)} AS {quote_identifier(target)} "
        f"FROM {s3_clause(stack, prefix)}{settings} ASYNC"
    )


def table_rows(client: Client, database: str) -> dict[str, int]:
    """Rows per MergeTree-family table (its parts' row totals; views have none)."""
    result = client.query(
        "SELECT name, total_rows FROM system.tables WHERE database = {db:String} "
        "AND engine LIKE '%MergeTree%' AND total_rows IS NOT NULL ORDER BY name",
        parameters={"db": database},
    )
    return {str(name): int(rows) for name, rows in result.result_rows}


def backup_table_rows(
    stack: Stack, prefix: str, descriptor: bytes, database: str, *, tables: Iterable[str]
) -> dict[str, int]:
    """Rows per table that the backup under ``prefix`` holds, from its parts' ``count.txt``.

    Not the live tables' counts: inserts land and ReplacingMergeTree merges drop rows
    while a BACKUP runs (:mod:`tasks.decisions.clickhouse_backup`). ``tables`` (the
    database's MergeTree tables when the BACKUP started) are listed with 0 rows when the
    backup holds no part of theirs.
    """
    try:
        count_files = part_count_files(descriptor, database)
    except (ElementTree.ParseError, ValueError) as exc:
        raise ClickHouseBackupError(
            f"the .backup descriptor under {prefix} cannot be read for row counts ({exc}); "
            "the set stays incomplete, the next run makes a new one"
        ) from None
    client = stack.s3()
    rows = dict.fromkeys(tables, 0)
    for table, names in count_files.items():
        total = 0
        for name in names:
            key = prefix + name
            try:
                total += parse_row_count(key, read_object(stack, key, client))
            except ValueError as exc:
                raise ClickHouseBackupError(
                    f"{exc}; the set stays incomplete, the next run makes a new one"
                ) from None
        rows[table] = total
    return dict(sorted(rows.items()))


def backup_state(client: Client, backup_id: str) -> tuple[str, str, int] | None:
    """(status, error, total_size) of one backup in system.backups, None if unknown."""
    result = client.query(
        "SELECT status, error, total_size FROM system.backups WHERE id = {id:String}",
        parameters={"id": backup_id},
    )
    if not result.result_rows:
        return None
    status, error, total = result.result_rows[0]
    return str(status), str(error), int(total or 0)


def running_backups(client: Client, stack: Stack, prefix: str) -> list[str]:
    """Ids of backups still writing into ``prefix`` (an earlier, timed-out attempt)."""
    result = client.query(
        "SELECT id FROM system.backups WHERE status = {running:String} "
        "AND position(name, {url:String}) > 0",
        parameters={"running": RUNNING, "url": backup_url(stack, prefix)},
    )
    return [str(row[0]) for row in result.result_rows]


def stop_operation(
    client: Client, operation_id: str, *, running_status: str, wait_s: float, poll_s: float
) -> str:
    """KILL a running BACKUP or RESTORE and wait for its final status.

    Returns ``running_status`` if it goes on past ``wait_s``, ``"gone"`` if it left
    system.backups.
    """
    with contextlib.suppress(ClickHouseError, OSError):
        client.command(
            "KILL QUERY WHERE query_id = {id:String} ASYNC", parameters={"id": operation_id}
        )
    deadline = time.monotonic() + wait_s
    while True:
        with contextlib.suppress(ClickHouseError, OSError):
            state = backup_state(client, operation_id)
            if state is None or state[0] != running_status:
                return state[0] if state else "gone"
        if time.monotonic() >= deadline:
            return running_status
        time.sleep(poll_s)


def stop_backup(client: Client, backup_id: str, wait_s: float, poll_s: float) -> str:
    """KILL a running BACKUP and wait for its final status (``RUNNING`` if it goes on)."""
    return stop_operation(client, backup_id, running_status=RUNNING, wait_s=wait_s, poll_s=poll_s)


@dataclass(frozen=True)
class OperationEnd:
    """How a BACKUP or RESTORE ended, as :func:`wait_for_operation` saw it.

    ``outcome`` is ``done`` (it reached its done status), ``failed`` (it reached any
    other status: ``status`` and ``error`` say which), ``vanished`` (it left
    system.backups: the server restarted) or ``timed_out`` (still running at the
    deadline, so it was KILLed: ``status`` is its status after the KILL, the running
    status if it did not stop).
    """

    outcome: Literal["done", "failed", "vanished", "timed_out"]
    status: str
    error: str = ""
    total_size: int = 0


def wait_for_operation(
    client: Client,
    operation_id: str,
    *,
    running_status: str,
    done_status: str,
    timeout_s: float,
    poll_s: float,
) -> OperationEnd:
    """Poll system.backups for one BACKUP or RESTORE until it ends; KILL it at the deadline.

    ``running_status`` is its status while it runs (``CREATING_BACKUP``, ``RESTORING``),
    ``done_status`` the one it ends with when it succeeds (``BACKUP_CREATED``,
    ``RESTORED``); any other status is a failure. A row gone from system.backups (it
    lives in memory) ends the wait at once. At the deadline it is KILLed (it would go on
    writing otherwise) and waited for up to ``STOP_WAIT_S``. Errors of the polling query
    itself are not caught: the caller names them.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        state = backup_state(client, operation_id)
        if state is None:
            return OperationEnd(outcome="vanished", status="gone")
        status, error, total = state
        if status == done_status:
            return OperationEnd(outcome="done", status=status, error=error, total_size=total)
        if status != running_status:
            return OperationEnd(outcome="failed", status=status, error=error, total_size=total)
        if time.monotonic() >= deadline:
            final = stop_operation(
                client,
                operation_id,
                running_status=running_status,
                wait_s=STOP_WAIT_S,
                poll_s=poll_s,
            )
            return OperationEnd(outcome="timed_out", status=final, error=error)
        time.sleep(poll_s)


def stopped_text(end: OperationEnd, running_status: str) -> str:
    """What the KILL of a timed-out operation achieved, for its error message."""
    if end.status != running_status:
        return f"it was cancelled ({end.status})"
    return f"KILL did not stop it within {STOP_WAIT_S:.0f} s: it may still be writing"


def _wait(
    stack: Stack, client: Client, database: str, backup_id: str, timeout_s: float, poll_s: float
) -> int:
    """Wait for this BACKUP (:func:`wait_for_operation`); its total size, or the error."""
    end = wait_for_operation(
        client,
        backup_id,
        running_status=RUNNING,
        done_status=DONE,
        timeout_s=timeout_s,
        poll_s=poll_s,
    )
    if end.outcome == "done":
        return end.total_size
    if end.outcome == "vanished":
        raise ClickHouseBackupError(
            f"ClickHouse backup {backup_id} of {database!r} vanished from system.backups "
            "(the server restarted mid-backup?). The set stays incomplete; the next run "
            "makes a new one."
        )
    if end.outcome == "failed":
        raise ch_error(
            stack,
            f"BACKUP of database {database!r} (backup {backup_id}, status {end.status})",
            end.error or "no error text",
        )
    raise ClickHouseBackupError(
        f"ClickHouse backup {backup_id} of {database!r} did not finish within "
        f"{timeout_s:.0f} s; {stopped_text(end, RUNNING)}. Raise the backup config's "
        "clickhouse_timeout_s, or check ClickHouse's load and its access to S3."
    )


def _stop_earlier_attempts(stack: Stack, client: Client, prefix: str, poll_s: float) -> None:
    """An earlier attempt's BACKUP still writing into the prefix is stopped, or the run stops."""
    for earlier in running_backups(client, stack, prefix):
        get_run_logger().warning("ClickHouse: stopping backup %s of an earlier attempt", earlier)
        if stop_backup(client, earlier, STOP_WAIT_S, poll_s) == RUNNING:
            raise ClickHouseBackupError(
                f"ClickHouse backup {earlier} of an earlier attempt is still writing into "
                f"{prefix} and did not stop on KILL; wait for it to end (system.backups) "
                "before running the backup again."
            )


@task(name="backup-clickhouse", retries=0, persist_result=True, cache_policy=RUN_CACHE)
def backup_clickhouse(
    stack: Stack, backup_id: str, database: str, timeout_s: float, poll_s: float = 1.0
) -> ClickHouseBackupOutcome:
    """Native BACKUP of one database into the set, waited for, with row counts.

    Not retried in-task (a BACKUP is not resumable). Leftovers of an earlier attempt
    in this same set are removed first, so a retried flow run can write the prefix again.
    """
    logger = get_run_logger()
    prefix = clickhouse_prefix(stack.stack_name, backup_id, database)
    started = time.monotonic()
    client = clickhouse_client(stack)
    try:
        _stop_earlier_attempts(stack, client, prefix, poll_s)
        leftovers = [entry.key for entry in list_prefix(stack, prefix)]
        if leftovers:
            logger.info("ClickHouse: removing %d objects of an earlier attempt", len(leftovers))
            delete_objects(stack, leftovers)
        version = str(client.server_version)
        rows_before = table_rows(client, database)
        logger.info(
            "ClickHouse %s: BACKUP DATABASE %s to %s/%s (%d tables, %d rows)",
            version,
            database,
            stack.backup_bucket,
            prefix,
            len(rows_before),
            sum(rows_before.values()),
        )
        rows = client.query(backup_statement(stack, database, prefix)).result_rows
        if not rows:
            raise ClickHouseBackupError(f"BACKUP of {database!r} returned no backup id")
        ch_backup_id = str(rows[0][0])
        _wait(stack, client, database, ch_backup_id, timeout_s, poll_s)
    except ClickHouseBackupError:
        raise
    except (ClickHouseError, OSError) as exc:
        raise ch_error(stack, f"backup of database {database!r}", exc) from None
    finally:
        client.close()
    stored = list_prefix(stack, prefix)
    descriptor_key = prefix + DESCRIPTOR
    if not any(entry.key == descriptor_key for entry in stored):
        raise ClickHouseBackupError(
            f"ClickHouse reported {DONE} for {database!r} but {descriptor_key} is missing "
            "from the bucket. Check that ClickHouse and the worker use the same S3 endpoint "
            "and bucket (CLICKHOUSE_S3_ENDPOINT)."
        )
    descriptor = read_object(stack, descriptor_key)
    rows_held = backup_table_rows(stack, prefix, descriptor, database, tables=rows_before)
    seconds = time.monotonic() - started
    size = sum(entry.size for entry in stored)
    logger.info(
        "ClickHouse: %s stored, %d objects, %.1f MB, %d rows in %.1f s "
        "(%d rows in the live tables when it started)",
        prefix,
        len(stored),
        size / 1e6,
        sum(rows_held.values()),
        seconds,
        sum(rows_before.values()),
    )
    return ClickHouseBackupOutcome(
        backup=ClickHouseBackup(
            database=database,
            server_version=version,
            backup_id=ch_backup_id,
            status=DONE,
            size=size,
            files=len(stored),
            s3_prefix=prefix,
            table_rows=rows_held,
            rows_exact=True,
            seconds=seconds,
        ),
        descriptor=StoredObject(
            key=descriptor_key,
            size=len(descriptor),
            sha256=hashlib.sha256(descriptor).hexdigest(),
            kind="clickhouse-backup",
        ),
    )
