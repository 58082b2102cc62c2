"""The judge of schema migrations left failed, unfinished or dirty by an upgrade.

LiteLLM and Langfuse migrate Postgres with Prisma (``_prisma_migrations``: a failed
migration keeps ``finished_at`` empty and its error in ``logs``; Prisma then refuses every
later deploy with P3009). Langfuse migrates ClickHouse with golang-migrate
(``schema_migrations``: the newest row ``dirty`` = 1 means a migration stopped half-way,
and the next start refuses to migrate). Both leave the running version serving, so
nothing else notices until the next upgrade fails: degraded, with the fix.

Pure: no Prefect, no I/O.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from tasks.decisions.health import HealthStatus

__all__ = ["PrismaMigration", "judge_migrations"]

STUCK_AFTER = timedelta(minutes=30)  # a migration started longer ago and not finished


class PrismaMigration(BaseModel):
    """One row of a ``_prisma_migrations`` table."""

    model_config = ConfigDict(frozen=True)

    schema_name: str
    name: str
    started_at: datetime
    finished_at: datetime | None
    rolled_back_at: datetime | None
    has_logs: bool


def _prisma_problems(rows: list[PrismaMigration], now: datetime) -> list[str]:
    finished = {(r.schema_name, r.name) for r in rows if r.finished_at is not None}
    problems: list[str] = []
    for row in sorted(rows, key=lambda r: (r.schema_name, r.started_at)):
        where = f"{row.schema_name}._prisma_migrations {row.name}"
        if row.finished_at is not None:
            continue
        if row.rolled_back_at is not None:
            if (row.schema_name, row.name) not in finished:
                problems.append(f"{where} rolled back and not applied again: redeploy")
        elif row.has_logs:
            problems.append(
                f"{where} failed: fix its cause, then `prisma migrate resolve --rolled-back "
                f"{row.name}` and redeploy (Prisma refuses later migrations: P3009)"
            )
        elif now - row.started_at > STUCK_AFTER:
            problems.append(
                f"{where} unfinished since {row.started_at:%Y-%m-%d %H:%M} UTC: the migrating "
                "process died; check the schema, then `prisma migrate resolve`"
            )
    return problems


def judge_migrations(
    prisma: list[PrismaMigration],
    clickhouse_dirty: int | None,
    now: datetime,
    *,
    clickhouse_version: int | None = None,
) -> tuple[HealthStatus, str]:
    """Degraded for any failed, unfinished or rolled-back Prisma migration and for a dirty
    ClickHouse migration (``clickhouse_dirty``: the version left dirty, None if clean)."""
    problems = _prisma_problems(prisma, now)
    if clickhouse_dirty is not None:
        problems.append(
            f"ClickHouse schema_migrations dirty at version {clickhouse_dirty}: a migration "
            "stopped half-way; finish or undo it by hand, then clear the flag (golang-migrate "
            f"`force {clickhouse_dirty}`)"
        )
    schemas = sorted({r.schema_name for r in prisma})
    tally = f"{len(prisma)} Prisma migration(s) in {', '.join(schemas) or 'no schema'}"
    if clickhouse_version is not None:
        tally += f", ClickHouse at version {clickhouse_version}"
    if problems:
        return "degraded", "; ".join([*problems, tally])
    return "healthy", tally + ", none failed"
