"""A drill's scratch databases: named per drill, dropped on the way out, orphans cleaned up.

Scratch databases of a drill are dropped by :func:`scratch_databases` on the way out
in every case (success, failure, cancellation: Prefect turns a cancel into an
exception, so ``finally`` runs); a drill killed outright leaves them to the next
drill, which drops them first (:func:`drop_orphan_scratch_databases`). Only names that
are a scratch name of the stack are ever dropped here. That cleanup takes every other
scratch database of the stack for an orphan, so drills of one stack never overlap: each
holds the slot ``restore-drill-<stack>`` (:func:`one_drill_at_a_time`), scheduled ones
and those a backup runs on its new set alike.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from blocks.stack import Stack
from tasks.decisions.checks import CheckResult, failed, passed
from tasks.decisions.drill import is_scratch_database, orphan_scratch_databases, shorten
from tasks.errors import RestoreError
from tasks.restore.clickhouse import ch_databases, drop_ch_database
from tasks.restore.postgres import (
    drill_server,
    drop_pg_database,
    pg_database_exists,
    pg_databases,
)
from tasks.retry import RETRY_TRANSIENT_QUICK
from tasks.slots import create_slot, hold_slot

__all__ = [
    "CleanupResult",
    "ScratchNames",
    "check_no_scratch_left",
    "drill_slot_name",
    "drop_orphan_scratch_databases",
    "drop_scratch",
    "ensure_drill_slot",
    "one_drill_at_a_time",
    "scratch_databases",
]


def drill_slot_name(stack: str) -> str:
    return f"restore-drill-{stack}"


@task(name="ensure-drill-slot", **RETRY_TRANSIENT_QUICK, cache_policy=NO_CACHE)
def ensure_drill_slot(stack: str) -> str:
    """Create the global concurrency limit ``restore-drill-<stack>`` (limit 1) if missing."""
    return create_slot(drill_slot_name(stack))


@contextlib.contextmanager
def one_drill_at_a_time(stack: str, wait_s: float) -> Iterator[None]:
    """Hold the slot ``restore-drill-<stack>`` (:mod:`tasks.slots`) for the block."""
    name = drill_slot_name(stack)
    try:
        # The shortest lease: the next drill drops what a killed one left, a minute later.
        with hold_slot(name, wait_s, lease_s=60):
            yield
    except TimeoutError:
        raise RestoreError(
            f"another restore drill of {stack} holds the slot {name!r}; this one waited "
            f"{wait_s:.0f} s and restored nothing. Let it finish, or raise lock_timeout_s."
        ) from None


class ScratchNames(BaseModel):
    """The scratch databases one drill may create, on Postgres and ClickHouse."""

    stack: str
    server_block: str | None = None
    postgres: str
    clickhouse: list[str] = Field(default_factory=list)


def drop_scratch(stack: Stack, names: ScratchNames) -> list[str]:
    """Drop this drill's scratch databases that exist; plain function, safe in ``finally``.

    Refuses any name that is not a scratch name of this stack, so a bug upstream can
    never turn this into dropping a real database.
    """
    dropped: list[str] = []
    errors: list[str] = []
    server = drill_server(stack, names.server_block)
    for name in [names.postgres]:
        if not is_scratch_database(name, stack.stack_name):
            raise RestoreError(f"refusing to drop {name!r}: not a drill scratch database")
        try:
            if pg_database_exists(server, name):
                drop_pg_database(server, name)
                dropped.append(f"postgres:{name}")
        except RestoreError as exc:
            errors.append(str(exc))
    if names.clickhouse:
        try:
            existing = set(ch_databases(stack))
            for name in names.clickhouse:
                if not is_scratch_database(name, stack.stack_name):
                    raise RestoreError(f"refusing to drop {name!r}: not a drill scratch database")
                if name in existing:
                    drop_ch_database(stack, name)
                    dropped.append(f"clickhouse:{name}")
        except RestoreError as exc:
            errors.append(str(exc))
    if errors:
        raise RestoreError(
            "could not drop scratch databases (the next drill drops them): " + "; ".join(errors)
        )
    return dropped


@contextlib.contextmanager
def scratch_databases(stack: Stack, names: ScratchNames) -> Iterator[ScratchNames]:
    """The drill's scratch databases, dropped on the way out whatever happened.

    Cancellation reaches here as an exception (Prefect's TerminationSignal), so this
    ``finally`` runs then too; only a killed process skips it, and the next drill's
    :func:`drop_orphan_scratch_databases` covers that.
    """
    try:
        yield names
    finally:
        try:
            dropped = drop_scratch(stack, names)
            _log().info("dropped scratch databases: %s", ", ".join(dropped) or "none existed")
        except RestoreError as exc:
            _log().error("%s", exc)


def _log() -> Any:
    try:
        return get_run_logger()
    except Exception:  # outside a run (a cancelled one may have lost its context)
        return logging.getLogger("ops.restore")


class CleanupResult(BaseModel):
    postgres: list[str] = Field(default_factory=list)
    clickhouse: list[str] = Field(default_factory=list)


@task(name="drop-orphan-scratch-databases", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def drop_orphan_scratch_databases(
    stack: Stack, server_block: str | None, clickhouse: bool
) -> CleanupResult:
    """Drop scratch databases of this stack left by an earlier drill that was killed."""
    logger = get_run_logger()
    server = drill_server(stack, server_block)
    result = CleanupResult()
    for name in orphan_scratch_databases(pg_databases(server), stack.stack_name):
        drop_pg_database(server, name)
        result.postgres.append(name)
    if clickhouse:
        for name in orphan_scratch_databases(ch_databases(stack), stack.stack_name):
            drop_ch_database(stack, name)
            result.clickhouse.append(name)
    if result.postgres or result.clickhouse:
        logger.warning(
            "dropped scratch databases left by an earlier drill: postgres %s; clickhouse %s",
            shorten(result.postgres) or "none",
            shorten(result.clickhouse) or "none",
        )
    else:
        logger.info("no scratch database left by an earlier drill")
    return result


@task(name="check-no-scratch-left", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def check_no_scratch_left(stack: Stack, names: ScratchNames) -> CheckResult:
    """After the drill, none of its scratch databases exists any more."""
    server = drill_server(stack, names.server_block)
    left = [f"postgres:{n}" for n in [names.postgres] if pg_database_exists(server, n)]
    if names.clickhouse:
        existing = set(ch_databases(stack))
        left += [f"clickhouse:{n}" for n in names.clickhouse if n in existing]
    if left:
        return failed(
            "scratch-dropped", f"still present after the drill: {shorten(left)}", component="set"
        )
    return passed("scratch-dropped", "every scratch database was dropped", component="set")
