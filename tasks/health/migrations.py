"""Schema migrations: every ``_prisma_migrations`` table in the stack's Postgres (LiteLLM's,
Langfuse's: found, not listed) and Langfuse's ClickHouse ``schema_migrations``. The judge
is ``tasks.decisions.migrations``."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
from clickhouse_connect.driver.exceptions import ClickHouseError
from psycopg import sql

from blocks.stack import Stack
from tasks.decisions.migrations import PrismaMigration, judge_migrations
from tasks.errors import OpsError
from tasks.health.base import HealthThresholds, Reading, in_thread, reason_of
from tasks.health.shared import probe_clickhouse

__all__ = ["check_migrations", "clickhouse_migration_state", "prisma_migrations"]


async def prisma_migrations(stack: Stack, timeout_s: float) -> list[PrismaMigration]:
    rows: list[PrismaMigration] = []
    conn = await stack.postgres_async(timeout_s=timeout_s, application_name="ops-health-sweep")
    async with conn:
        cur = await conn.execute(
            "SELECT table_schema FROM information_schema.tables "
            "WHERE table_name = '_prisma_migrations' ORDER BY 1"
        )
        for (schema,) in await cur.fetchall():
            query = sql.SQL(
                "SELECT migration_name, started_at, finished_at, rolled_back_at, "
                "logs IS NOT NULL FROM {}"
            ).format(sql.Identifier(schema, "_prisma_migrations"))
            for name, started, finished, rolled_back, has_logs in await (
                await conn.execute(query)
            ).fetchall():
                rows.append(
                    PrismaMigration(
                        schema_name=schema,
                        name=name,
                        started_at=started,
                        finished_at=finished,
                        rolled_back_at=rolled_back,
                        has_logs=bool(has_logs),
                    )
                )
    return rows


def clickhouse_migration_state(stack: Stack, timeout_s: float) -> tuple[int | None, int | None]:
    """(newest version, the version if it is dirty) of golang-migrate's table; (None, None)
    when ClickHouse has no such table (not migrated by Langfuse)."""
    with probe_clickhouse(stack, timeout_s) as client:
        exists = client.command(
            "SELECT count() FROM system.tables WHERE database = {db:String} "
            "AND name = 'schema_migrations'",
            parameters={"db": stack.clickhouse_database},
        )
        if not int(str(exists)):
            return None, None
        rows = client.query(
            f"SELECT version, dirty FROM `{stack.clickhouse_database}`.schema_migrations "
            "ORDER BY sequence DESC LIMIT 1"
        ).result_rows
    if not rows:
        return None, None
    version, dirty = int(rows[0][0]), int(rows[0][1])
    return version, version if dirty else None


async def check_migrations(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    try:
        prisma = await prisma_migrations(stack, timeout_s)
    except psycopg.Error as exc:
        return Reading("unhealthy", "cannot read Prisma migrations: " + reason_of(stack, exc))
    try:
        version, dirty = await in_thread(lambda: clickhouse_migration_state(stack, timeout_s))
    except (ClickHouseError, OpsError, OSError) as exc:
        return Reading("unhealthy", "cannot read ClickHouse migrations: " + reason_of(stack, exc))
    status, reason = judge_migrations(prisma, dirty, datetime.now(UTC), clickhouse_version=version)
    return Reading(status, reason)
