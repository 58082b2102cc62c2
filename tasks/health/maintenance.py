"""Slow failures inside the databases: Postgres' transaction-ID age and the transactions
that hold back vacuum; ClickHouse's system logs against the data, parts per partition and
stuck mutations. The judges are in ``tasks.decisions.maintenance``."""

from __future__ import annotations

import psycopg
from clickhouse_connect.driver.exceptions import ClickHouseError

from blocks.stack import Stack
from tasks.decisions.maintenance import (
    ClickHouseStorage,
    PostgresMaintenance,
    judge_clickhouse_storage,
    judge_postgres_maintenance,
)
from tasks.errors import OpsError
from tasks.health.base import HealthThresholds, Reading, in_thread, reason_of
from tasks.health.shared import probe_clickhouse

__all__ = [
    "check_clickhouse_storage",
    "check_postgres_maintenance",
    "clickhouse_storage",
    "postgres_maintenance",
]

_PG_QUERY = """
SELECT d.age, d.datname, t.oldest_s, t.app, i.n, i.oldest_s
FROM (SELECT age(datfrozenxid) AS age, datname FROM pg_database
      ORDER BY age(datfrozenxid) DESC LIMIT 1) d,
     (SELECT greatest(0, extract(epoch FROM clock_timestamp() - xact_start))::float8
               AS oldest_s,
             coalesce(nullif(application_name, ''), usename::text) AS app
      FROM pg_stat_activity
      WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid()
        AND backend_type = 'client backend'
      UNION ALL SELECT NULL, NULL
      ORDER BY 1 DESC NULLS LAST LIMIT 1) t,
     (SELECT count(*) AS n,
             greatest(0, extract(epoch FROM max(clock_timestamp() - state_change)))::float8
               AS oldest_s
      FROM pg_stat_activity WHERE state LIKE 'idle in transaction%') i
"""


async def postgres_maintenance(stack: Stack, timeout_s: float) -> PostgresMaintenance:
    conn = await stack.postgres_async(timeout_s=timeout_s, application_name="ops-health-sweep")
    async with conn:
        row = await (await conn.execute(_PG_QUERY)).fetchone()
    assert row is not None  # the subqueries each give one row
    return PostgresMaintenance(
        xid_age=int(row[0]),
        oldest_database=str(row[1]),
        oldest_transaction_s=row[2],
        oldest_transaction_app=str(row[3] or ""),
        idle_in_transaction=int(row[4]),
        oldest_idle_s=row[5],
    )


async def check_postgres_maintenance(
    stack: Stack, timeout_s: float, th: HealthThresholds
) -> Reading:
    try:
        found = await postgres_maintenance(stack, timeout_s)
    except psycopg.Error as exc:
        return Reading("unhealthy", "cannot read pg_database: " + reason_of(stack, exc))
    status, reason = judge_postgres_maintenance(
        found,
        xid_degraded=th.postgres_xid_age_degraded,
        xid_unhealthy=th.postgres_xid_age_unhealthy,
        transaction_degraded_s=th.postgres_transaction_degraded_s,
        idle_degraded_s=th.postgres_idle_in_transaction_degraded_s,
    )
    measures = {
        "postgres_xid_age": float(found.xid_age),
        "postgres_oldest_transaction_seconds": round(found.oldest_transaction_s or 0.0, 1),
        "postgres_idle_in_transaction_sessions": float(found.idle_in_transaction),
    }
    return Reading(status, reason, measures)


def clickhouse_storage(stack: Stack, timeout_s: float) -> ClickHouseStorage:
    with probe_clickhouse(stack, timeout_s) as client:
        sizes = client.query(
            "SELECT database = 'system' AND match(table, '_log(_[0-9]+)?$') AS is_log, "
            "database || '.' || table AS name, sum(bytes_on_disk) AS bytes "
            "FROM system.parts WHERE active GROUP BY is_log, name"
        ).result_rows
        parts = client.query(
            "SELECT database || '.' || table, count() AS n FROM system.parts "
            "WHERE active AND database != 'system' GROUP BY database, table, partition_id "
            "ORDER BY n DESC LIMIT 1"
        ).result_rows
        limit = client.query(
            "SELECT value FROM system.merge_tree_settings WHERE name = 'parts_to_throw_insert'"
        ).result_rows
        stuck = client.query(
            "SELECT database || '.' || table || ' ' || mutation_id FROM system.mutations "
            "WHERE NOT is_done AND create_time < now() - INTERVAL 1 HOUR"
        ).result_rows
    logs = [(str(name), int(size)) for is_log, name, size in sizes if is_log]
    largest = max(logs, key=lambda item: item[1], default=("", 0))
    return ClickHouseStorage(
        system_log_bytes=sum(size for _, size in logs),
        data_bytes=sum(int(size) for is_log, name, size in sizes if not is_log),
        largest_log=largest[0],
        largest_log_bytes=largest[1],
        max_partition_parts=int(parts[0][1]) if parts else 0,
        partition_table=str(parts[0][0]) if parts else "",
        parts_limit=int(limit[0][0]) if limit and int(limit[0][0]) > 0 else 3000,
        stuck_mutations=len(stuck),
        stuck_example=str(stuck[0][0]) if stuck else "",
    )


async def check_clickhouse_storage(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    try:
        found = await in_thread(lambda: clickhouse_storage(stack, timeout_s))
    except (ClickHouseError, OpsError, OSError) as exc:
        return Reading("unhealthy", "cannot read system.parts: " + reason_of(stack, exc))
    status, reason = judge_clickhouse_storage(
        found,
        log_ratio=th.clickhouse_system_logs_ratio,
        log_min_bytes=th.clickhouse_system_logs_min_bytes,
        parts_degraded_pct=th.clickhouse_parts_degraded_pct,
    )
    measures = {
        "clickhouse_system_log_bytes": float(found.system_log_bytes),
        "clickhouse_data_bytes": float(found.data_bytes),
        "clickhouse_max_partition_parts": float(found.max_partition_parts),
    }
    return Reading(status, reason, measures)
