"""The judges of migrations left failed and of slow failures inside the databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasks.decisions.maintenance import (
    ClickHouseStorage,
    PostgresMaintenance,
    judge_clickhouse_storage,
    judge_postgres_maintenance,
)
from tasks.decisions.migrations import PrismaMigration, judge_migrations

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def row(name: str, **fields: object) -> PrismaMigration:
    base: dict[str, object] = {"schema_name": "public", "name": name}
    base.update({"started_at": NOW - timedelta(days=3), "finished_at": NOW - timedelta(days=3)})
    base.update({"rolled_back_at": None, "has_logs": False})
    base.update(fields)
    return PrismaMigration.model_validate(base)


def test_finished_migrations_are_healthy() -> None:
    rows = [row("a"), row("b", schema_name="langfuse")]
    assert judge_migrations(rows, None, NOW, clickhouse_version=42) == (
        "healthy",
        "2 Prisma migration(s) in langfuse, public, ClickHouse at version 42, none failed",
    )


def test_a_failed_migration_names_the_fix() -> None:
    status, reason = judge_migrations([row("0042_x", finished_at=None, has_logs=True)], None, NOW)
    assert status == "degraded"
    assert reason.startswith("public._prisma_migrations 0042_x failed")
    assert "prisma migrate resolve --rolled-back 0042_x" in reason and "P3009" in reason


def test_a_migration_running_now_is_not_a_problem_but_a_stuck_one_is() -> None:
    running = row("0043", started_at=NOW - timedelta(minutes=2), finished_at=None)
    assert judge_migrations([running], None, NOW)[0] == "healthy"
    stuck = row("0043", started_at=NOW - timedelta(hours=2), finished_at=None)
    status, reason = judge_migrations([stuck], None, NOW)
    assert status == "degraded" and "0043 unfinished since 2026-12-01 10:00 UTC" in reason


def test_a_rolled_back_migration_counts_until_applied_again() -> None:
    rolled = row("0044", finished_at=None, rolled_back_at=NOW, has_logs=True)
    assert "rolled back and not applied again" in judge_migrations([rolled], None, NOW)[1]
    assert judge_migrations([rolled, row("0044")], None, NOW)[0] == "healthy"


def test_a_dirty_clickhouse_migration_is_degraded() -> None:
    status, reason = judge_migrations([], 7, NOW, clickhouse_version=7)
    assert status == "degraded"
    assert reason.startswith("ClickHouse schema_migrations dirty at version 7")
    assert "force 7" in reason


POSTGRES_LIMITS = {
    "xid_degraded": 1_000_000_000,
    "xid_unhealthy": 1_500_000_000,
    "transaction_degraded_s": 3600.0,
    "idle_degraded_s": 600.0,
}


def test_transaction_id_age_towards_wraparound() -> None:
    young = PostgresMaintenance(xid_age=200_000_000, oldest_database="railway")
    assert judge_postgres_maintenance(young, **POSTGRES_LIMITS) == (
        "healthy",
        "transaction-ID age 200,000,000 (9.3% of wraparound)",
    )
    old = PostgresMaintenance(xid_age=1_600_000_000, oldest_database="railway")
    status, reason = judge_postgres_maintenance(old, **POSTGRES_LIMITS)
    assert status == "unhealthy" and "in railway (75% of wraparound" in reason
    assert "VACUUM FREEZE" in reason


def test_transactions_that_hold_back_vacuum() -> None:
    held = PostgresMaintenance(
        xid_age=1000,
        oldest_transaction_s=7200,
        oldest_transaction_app="litellm",
        idle_in_transaction=2,
        oldest_idle_s=900,
    )
    status, reason = judge_postgres_maintenance(held, **POSTGRES_LIMITS)
    assert status == "degraded"
    assert "a transaction open 120 min (litellm)" in reason
    assert "2 session(s) idle in a transaction, the oldest 15 min" in reason


STORAGE_LIMITS = {"log_ratio": 1.0, "log_min_bytes": 2**30, "parts_degraded_pct": 50.0}


def test_system_logs_past_the_data_name_the_ttl_fix() -> None:
    grown = ClickHouseStorage(
        system_log_bytes=67 * 2**30,
        data_bytes=7 * 2**20,
        largest_log="system.trace_log",
        largest_log_bytes=66 * 2**30,
    )
    status, reason = judge_clickhouse_storage(grown, **STORAGE_LIMITS)
    assert status == "degraded"
    assert reason.startswith("system log tables hold 67.0 GiB against 7.0 MiB of data")
    assert "TTL" in reason and "TRUNCATE TABLE system.trace_log" in reason
    small = grown.model_copy(update={"system_log_bytes": 2**29, "largest_log_bytes": 2**29})
    assert judge_clickhouse_storage(small, **STORAGE_LIMITS)[0] == "healthy"


def test_too_many_parts_and_stuck_mutations() -> None:
    s = ClickHouseStorage(
        system_log_bytes=0,
        data_bytes=1,
        max_partition_parts=2800,
        partition_table="default.observations",
        parts_limit=3000,
        stuck_mutations=1,
        stuck_example="default.traces mutation_5.txt",
    )
    status, reason = judge_clickhouse_storage(s, **STORAGE_LIMITS)
    assert status == "unhealthy"
    assert reason.startswith("default.observations holds 2800 active parts in one partition")
    assert "1 mutation(s) unfinished after an hour (default.traces mutation_5.txt)" in reason
