"""Postgres: a connection, SELECT 1, connections used against max_connections."""

from __future__ import annotations

import psycopg

from blocks.stack import Stack
from tasks.health.base import HealthThresholds, Reading, ok, percent, reason_of

__all__ = ["check_postgres"]


async def check_postgres(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    try:
        conn = await stack.postgres_async(timeout_s=timeout_s, application_name="ops-health-sweep")
    except psycopg.OperationalError as exc:
        text = str(exc)
        if "too many clients" in text or "connection slots are reserved" in text:
            return Reading(
                "unhealthy",
                "connection limit reached: new connections are refused (max_connections); "
                "find the client holding them in pg_stat_activity",
            )
        return Reading("unhealthy", "cannot connect: " + reason_of(stack, text))
    async with conn:
        cur = await conn.execute(
            "SELECT 1, (SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
            "'client backend'), current_setting('max_connections')::int"
        )
        row = await cur.fetchone()
    assert row is not None  # a SELECT without FROM always returns one row
    used, limit = int(row[1]), int(row[2])
    pct = percent(used, limit)
    reason = f"{used}/{limit} connections ({pct:.0f}%)"
    if pct >= th.postgres_connections_degraded_pct:
        return Reading("degraded", f"{reason}, near max_connections: new clients soon refused")
    return ok(reason)
