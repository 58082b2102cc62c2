"""Probes of the failures where every service says it is up, each fault made for real on
the devstack: a Prisma migration failed or left unfinished, a dirty ClickHouse migration,
a transaction left open, ClickHouse's ``system.query_log`` grown past the data (the
engine's real system log table, configured as a ClickHouse server has it), Redis set to
evict, LiteLLM's spend buffer left to grow."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from devstack.core import Devstack
from tasks.decisions.health import ServiceHealth
from tasks.health import HealthThresholds, run_checks

pytestmark = pytest.mark.usefixtures("traffic")


def probe(stack: Any, service: str, th: HealthThresholds | None = None) -> ServiceHealth:
    th = th or HealthThresholds(litellm_requires_db=False)
    return asyncio.run(run_checks(stack, 5.0, [service], th))[0]


@pytest.fixture
def prisma_row(devstack: Devstack) -> Iterator[Any]:
    """Insert rows into LiteLLM's real ``_prisma_migrations``; removed afterwards."""
    names: list[str] = []

    def insert(name: str, *, logs: str | None, started_hours_ago: float) -> None:
        names.append(name)
        with psycopg.connect(devstack.admin_dsn("railway"), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO public._prisma_migrations (id, checksum, migration_name, logs, "
                "started_at, applied_steps_count) VALUES (%s, %s, %s, %s, "
                "now() - make_interval(secs => %s), 0)",
                (str(uuid.uuid4()), "0" * 64, name, logs, started_hours_ago * 3600),
            )

    yield insert
    with psycopg.connect(devstack.admin_dsn("railway"), autocommit=True) as conn:
        conn.execute(
            "DELETE FROM public._prisma_migrations WHERE migration_name = ANY(%s)", (names,)
        )


def test_every_new_probe_is_healthy_on_a_working_stack(stack: Any) -> None:
    for service in ("migrations", "postgres-maintenance", "clickhouse-storage"):
        found = probe(stack, service)
        assert found.status == "healthy", found
    assert "Prisma migration(s) in langfuse, public" in probe(stack, "migrations").reason


def test_a_failed_and_an_unfinished_prisma_migration_are_reported(
    stack: Any, prisma_row: Any
) -> None:
    prisma_row("20991231000000_ops_failed", logs="Database error: P3018", started_hours_ago=0.1)
    found = probe(stack, "migrations")
    assert found.status == "degraded"
    assert "public._prisma_migrations 20991231000000_ops_failed failed" in found.reason
    assert "prisma migrate resolve --rolled-back 20991231000000_ops_failed" in found.reason

    prisma_row("20991231000001_ops_unfinished", logs=None, started_hours_ago=2)
    found = probe(stack, "migrations")
    assert "20991231000001_ops_unfinished unfinished since" in found.reason


def test_a_dirty_clickhouse_migration_is_reported(stack: Any, devstack: Devstack) -> None:
    client = devstack.clickhouse_client()
    client.command(
        "CREATE TABLE default.schema_migrations (version Int64, dirty UInt8, sequence UInt64) "
        "ENGINE = TinyLog"
    )
    try:
        client.command("INSERT INTO default.schema_migrations VALUES (5, 0, 1), (6, 1, 2)")
        found = probe(stack, "migrations")
        assert found.status == "degraded"
        assert "ClickHouse schema_migrations dirty at version 6" in found.reason
    finally:
        client.command("DROP TABLE IF EXISTS default.schema_migrations")
        client.close()
    assert probe(stack, "migrations").status == "healthy"


def test_a_transaction_left_open_is_reported_with_its_client(
    stack: Any, devstack: Devstack
) -> None:
    quick = HealthThresholds(
        litellm_requires_db=False,
        postgres_transaction_degraded_s=1,
        postgres_idle_in_transaction_degraded_s=1,
    )
    with psycopg.connect(
        devstack.admin_dsn("railway"), application_name="forgetful-client"
    ) as conn:
        conn.execute("SELECT txid_current()")  # a transaction begins, and is never ended
        deadline = time.monotonic() + 30
        while (found := probe(stack, "postgres-maintenance", quick)).status == "healthy":
            assert time.monotonic() < deadline, found
            time.sleep(0.3)
        conn.rollback()
    assert found.status == "degraded"
    assert "(forgetful-client): it holds back vacuum" in found.reason
    assert "1 session(s) idle in a transaction" in found.reason


def test_system_logs_grown_past_the_data_are_reported_with_the_fix(
    stack: Any, devstack: Devstack
) -> None:
    """langfuse#13123 made for real: queries logged until ``system.query_log`` holds more
    bytes than the data (the size floor lowered so a devstack's megabytes count)."""
    th = HealthThresholds(litellm_requires_db=False, clickhouse_system_logs_min_bytes=1)
    client = devstack.clickhouse_client()
    try:
        client.command("TRUNCATE TABLE IF EXISTS system.query_log")
        assert probe(stack, "clickhouse-storage", th).status == "healthy"
        deadline = time.monotonic() + 120
        while (found := probe(stack, "clickhouse-storage", th)).status == "healthy":
            assert time.monotonic() < deadline, found
            for _ in range(16):  # the query text is logged: 200 KiB each, hard to compress
                filler = secrets.token_hex(100 * 1024)
                client.query(f"SELECT length('{filler}')", settings={"log_queries": 1})
            client.command("SYSTEM FLUSH LOGS")
        assert found.status == "degraded"
        assert "system log tables hold" in found.reason
        assert "(system.query_log " in found.reason
        assert "<query_log><ttl>event_date + INTERVAL 7 DAY DELETE</ttl></query_log>" in (
            found.reason
        )
        assert "TRUNCATE TABLE system.query_log" in found.reason
        # the fix the reason names brings the probe back
        client.command("TRUNCATE TABLE system.query_log")
        assert probe(stack, "clickhouse-storage", th).status == "healthy"
    finally:
        client.command("TRUNCATE TABLE IF EXISTS system.query_log")
        client.close()


def test_an_evicting_redis_is_degraded_naming_langfuses_requirement(stack: Any) -> None:
    client = stack.redis(timeout_s=5)
    before = client.config_get("maxmemory-policy")["maxmemory-policy"]
    assert before == "noeviction"
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        found = probe(stack, "redis")
    finally:
        client.config_set("maxmemory-policy", before)
        client.close()
    assert found.status == "degraded"
    assert "maxmemory-policy is allkeys-lru: Langfuse requires noeviction" in found.reason
    assert found.reason.endswith("; set maxmemory-policy noeviction")
    assert probe(stack, "redis").status == "healthy"


def test_a_spend_buffer_litellm_stopped_draining_is_degraded_naming_the_key(stack: Any) -> None:
    # LiteLLM pushes spend updates onto a Redis list its writer drains into Postgres; a
    # writer that stopped lets the list grow (litellm#29017). Made here the way LiteLLM
    # fills it: entries pushed, none popped.
    client = stack.redis(timeout_s=10)
    key = "litellm_spend_update_buffer"
    entry = '{"spend": 0.0001, "key": "' + "x" * 1000 + '"}'
    try:
        pipe = client.pipeline(transaction=False)
        for _ in range(4000):
            pipe.rpush(key, entry)
        pipe.execute()
        small = HealthThresholds(
            litellm_requires_db=False, redis_spend_buffer_degraded_bytes=2 * 2**20
        )
        found = probe(stack, "redis", small)
    finally:
        client.delete(key)
        client.close()
    assert found.status == "degraded"
    assert re.search(f"LiteLLM's spend buffer {key} holds [0-9]+ MiB", found.reason)
    assert "litellm#29017" in found.reason
    assert found.measures["redis_spend_buffer_bytes"] >= 2 * 2**20
    after = probe(stack, "redis", small)
    assert after.status == "healthy" and after.measures["redis_spend_buffer_bytes"] == 0


def test_a_redis_refusing_memory_usage_is_still_healthy_and_says_the_buffers_are_unread(
    stack: Any,
) -> None:
    # A managed Redis or an ACL can refuse MEMORY USAGE: the buffers go unread, said so,
    # and the rest of the check stands (no "PING failed" on a Redis that answers).
    client = stack.redis(timeout_s=5)
    client.execute_command("ACL", "SETUSER", "default", "-memory")
    try:
        found = probe(stack, "redis")
    finally:
        client.execute_command("ACL", "SETUSER", "default", "+memory")
        client.close()
    assert found.status == "healthy", found.reason
    assert "LiteLLM's spend buffers unread (MEMORY USAGE refused)" in found.reason
    assert "redis_spend_buffer_bytes" not in found.measures
    again = probe(stack, "redis")
    assert "unread" not in again.reason and "redis_spend_buffer_bytes" in again.measures
