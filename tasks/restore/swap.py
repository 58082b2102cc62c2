"""The real restore: plan the targets, restore into staging databases, swap them into place.

Nothing is written into a target directly. Each engine's data is restored into a new
staging database (``restore_*``) and checked there; only once every engine passed does
:func:`swap_into_place` rename each staging database to its target, keeping a replaced
one under a ``<target>_before_*`` name. A failure before the swap drops the staging
databases (:func:`drop_staging`) and leaves every target untouched.

Both engines go through the same steps; what differs per engine sits behind
:class:`~tasks.restore.engine.RestoreEngine` (the renames themselves:
``PostgresEngine.rename`` and ``ClickHouseEngine.rename``).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from blocks.stack import Stack
from tasks.decisions.checks import CheckResult, failed
from tasks.decisions.drill import (
    ComponentTiming,
    is_staging_database,
    previous_database_name,
    restore_refusal,
    staging_database_name,
)
from tasks.decisions.manifest import BackupManifest, ClickHouseBackup
from tasks.errors import RestoreError
from tasks.restore.clickhouse import ClickHouseEngine, ClickHouseSource
from tasks.restore.engine import ComponentOutcome, EngineName, RestoreEngine
from tasks.restore.pg_restore import PostgresMode
from tasks.restore.postgres import PostgresEngine, PostgresSource

__all__ = [
    "RestoredTarget",
    "StagedRestore",
    "TargetPlan",
    "drop_staging",
    "plan_restore_targets",
    "restore_engines",
    "stage_clickhouse_restore",
    "stage_postgres_restore",
    "swap_into_place",
]

SourceT = TypeVar("SourceT")


def restore_engines(stack: Stack) -> dict[EngineName, RestoreEngine[Any]]:
    """Each engine of the stack (Postgres on the stack's own server), by name."""
    return {"postgres": PostgresEngine(stack), "clickhouse": ClickHouseEngine(stack)}


class TargetPlan(BaseModel):
    """Where one engine's data goes, and whether that replaces a database."""

    engine: EngineName
    target: str
    exists: bool
    live: bool
    refusal: str | None = None


@task(name="plan-restore-targets", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def plan_restore_targets(
    stack: Stack, postgres_target: str | None, clickhouse_target: str | None, confirm: list[str]
) -> list[TargetPlan]:
    """Look the targets up and apply the safety rule; writes nothing."""
    engines = restore_engines(stack)
    requested: list[tuple[EngineName, str | None]] = [
        ("postgres", postgres_target),
        ("clickhouse", clickhouse_target),
    ]
    plans: list[TargetPlan] = []
    for name, target in requested:
        if target is None:
            continue
        engine = engines[name]
        exists = engine.exists(target)
        live = target == engine.live_database
        plans.append(
            TargetPlan(
                engine=name,
                target=target,
                exists=exists,
                live=live,
                refusal=restore_refusal(
                    target, exists=exists, live=live, confirmed=confirm, engine=name
                ),
            )
        )
    return plans


class RestoredTarget(BaseModel):
    """One engine restored: its checks, timing, and what was replaced (kept, renamed)."""

    engine: EngineName
    target: str
    checks: list[CheckResult]
    timing: ComponentTiming | None = None
    previous: str | None = Field(default=None, description="Name the replaced database got.")

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


class StagedRestore(BaseModel):
    """One engine restored into a staging database and checked, not yet in place."""

    engine: EngineName
    target: str
    staging: str
    checks: list[CheckResult]
    timing: ComponentTiming | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def _staging_name() -> str:
    return staging_database_name(datetime.now(UTC), secrets.token_hex(3))


def _stage(
    stack: Stack, engine: RestoreEngine[SourceT], source: SourceT, plan: TargetPlan
) -> StagedRestore:
    """Restore ``source`` into a new staging database; the target is not touched.

    A failed restore drops its own staging database at once; a failed *check* comes
    back as a failed outcome, so the flow drops the other engine's staging and stops.
    """
    staging = _staging_name()
    try:
        outcome = engine.restore_into(staging, source)
    except BaseException as exc:
        drop_staging.fn(
            stack,
            [StagedRestore(engine=engine.name, target=plan.target, staging=staging, checks=[])],
        )
        if not isinstance(exc, RestoreError):
            raise
        outcome = ComponentOutcome(
            checks=[failed(f"{engine.name}-restore", str(exc), component=engine.name)]
        )
    return StagedRestore(
        engine=engine.name,
        target=plan.target,
        staging=staging,
        checks=outcome.checks,
        timing=outcome.timing,
    )


@task(name="stage-postgres-restore", cache_policy=NO_CACHE)
def stage_postgres_restore(
    stack: Stack,
    manifest: BackupManifest,
    *,
    plan: TargetPlan,
    mode: PostgresMode,
    jobs: int,
    timeout_s: float,
    work_dir: str | None,
    required_tables: list[str],
) -> StagedRestore:
    """Restore the dump into a new staging database and prove it; the target is not touched."""
    source = PostgresSource(manifest, mode, jobs, timeout_s, work_dir, required_tables)
    return _stage(stack, PostgresEngine(stack), source, plan)


@task(name="stage-clickhouse-restore", cache_policy=NO_CACHE)
def stage_clickhouse_restore(
    stack: Stack,
    backup: ClickHouseBackup,
    *,
    plan: TargetPlan,
    timeout_s: float,
    required_tables: list[str],
) -> StagedRestore:
    """RESTORE AS a new staging database and check every table; the target is not touched."""
    source = ClickHouseSource(backup, timeout_s, required_tables)
    return _stage(stack, ClickHouseEngine(stack), source, plan)


@task(name="drop-staging", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def drop_staging(stack: Stack, staged: list[StagedRestore]) -> list[str]:
    """Drop the staging databases that still exist (only ``restore_*`` names)."""
    dropped: list[str] = []
    engines = restore_engines(stack)
    for item in staged:
        if not is_staging_database(item.staging):
            raise RestoreError(f"refusing to drop {item.staging!r}: not a staging database")
        engine = engines[item.engine]
        if engine.exists(item.staging):
            engine.drop(item.staging)
            dropped.append(f"{item.engine}:{item.staging}")
    return dropped


@task(name="swap-into-place", cache_policy=NO_CACHE)
def swap_into_place(stack: Stack, staged: list[StagedRestore]) -> list[RestoredTarget]:
    """Rename every verified staging database to its target; a replaced one is kept.

    Runs only once every engine passed in staging. A failed swap keeps that staging
    database (and any not swapped yet) and says which targets were already swapped.
    """
    now = datetime.now(UTC)
    engines = restore_engines(stack)
    logger = get_run_logger()
    restored: list[RestoredTarget] = []
    for item in staged:
        engine = engines[item.engine]
        previous = previous_database_name(item.target, now) if engine.exists(item.target) else None
        try:
            engine.rename(item.staging, item.target, previous)
        except RestoreError as exc:
            done = ", ".join(f"{r.engine} {r.target}" for r in restored) or "none"
            kept = ", ".join(f"{i.engine} {i.staging}" for i in staged[len(restored) :])
            raise RestoreError(
                f"{exc}. Already swapped into place: {done}. The verified restores not in "
                f"place are kept: {kept}; rename them by hand once the cause is fixed "
                "(ALTER DATABASE / RENAME DATABASE), or drop them."
            ) from None
        logger.info(
            "%s: %s now holds the restored data%s",
            item.engine,
            item.target,
            f"; the old one is kept as {previous}" if previous else "",
        )
        restored.append(
            RestoredTarget(
                engine=item.engine,
                target=item.target,
                checks=item.checks,
                timing=item.timing,
                previous=previous,
            )
        )
    return restored
