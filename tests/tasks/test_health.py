"""Health checks against the devstack, with faults made for real."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from tasks.decisions.health import SERVICES, ServiceHealth
from tasks.health import (
    HealthThresholds,
    disk_reading,
    freshness_reading,
    redis_reading,
    run_checks,
)

NO_DB = HealthThresholds(litellm_requires_db=False)  # the devstack's LiteLLM runs without one


def by_service(results: list[ServiceHealth]) -> dict[str, ServiceHealth]:
    return {r.service: r for r in results}


def check(stack, services: list[str], timeout_s: float = 5.0) -> dict[str, ServiceHealth]:  # type: ignore[no-untyped-def]
    return by_service(asyncio.run(run_checks(stack, timeout_s, services, NO_DB)))


@pytest.fixture
def langfuse_fault(devstack) -> Iterator[Callable[[str], None]]:  # type: ignore[no-untyped-def]
    """Set a fault mode on the Langfuse web stand-in; always reset to ok afterwards."""
    url = devstack.url("langfuse")

    def set_mode(mode: str) -> None:
        httpx.post(f"{url}/__standin/fault", json={"mode": mode}, timeout=5).raise_for_status()

    yield set_mode
    set_mode("ok")


def test_every_service_healthy_on_a_working_stack(stack) -> None:  # type: ignore[no-untyped-def]
    results = asyncio.run(run_checks(stack, 5.0, None, NO_DB))
    assert [r.service for r in results] == list(SERVICES)
    statuses = {r.service: r.status for r in results}
    # The devstack has no backup set unless a backup ran: freshness says so.
    assert statuses.pop("backup-freshness") in ("healthy", "unhealthy")
    assert set(statuses.values()) == {"healthy"}, results
    found = by_service(results)
    assert "connections" in found["postgres"].reason
    assert "AOF ok" in found["redis"].reason
    assert "disk free" in found["clickhouse"].reason


def test_litellm_without_a_database_is_degraded_by_default(stack) -> None:  # type: ignore[no-untyped-def]
    production_like = stack.model_copy(update={"litellm_requires_db": True})
    result = asyncio.run(run_checks(production_like, 5.0, ["litellm-readiness"]))[0]
    assert result.status == "degraded"
    assert "DATABASE_URL" in result.reason


def test_a_stack_run_without_a_database_on_purpose_is_ready(stack) -> None:  # type: ignore[no-untyped-def]
    # The devstack's env says LITELLM_REQUIRES_DB=false; a threshold can still override it.
    assert stack.litellm_requires_db is False
    result = asyncio.run(run_checks(stack, 5.0, ["litellm-readiness"]))[0]
    assert (result.status, result.reason) == ("healthy", "ready, runs without a database")
    strict = HealthThresholds(litellm_requires_db=True)
    result = asyncio.run(run_checks(stack, 5.0, ["litellm-readiness"], strict))[0]
    assert result.status == "degraded"


def test_redis_stopped_is_unhealthy(stack, devstack) -> None:  # type: ignore[no-untyped-def]
    with devstack.stopped("redis"):
        found = check(stack, ["redis", "postgres"])
    assert found["redis"].status == "unhealthy"
    assert "PING failed" in found["redis"].reason
    assert found["postgres"].status == "healthy"  # one fault, one finding


def test_hanging_endpoint_is_unhealthy_after_the_timeout_only(stack, langfuse_fault) -> None:  # type: ignore[no-untyped-def]
    langfuse_fault("hang")
    found = check(stack, ["langfuse-web", "langfuse-worker", "redis"], timeout_s=1.0)
    assert found["langfuse-web"].status == "unhealthy"
    assert found["langfuse-web"].reason == "no answer within 1 s"
    assert found["langfuse-web"].latency_ms >= 1000
    # The others did not wait for it.
    assert found["langfuse-worker"].status == "healthy"
    assert found["redis"].status == "healthy"


def test_endpoint_answering_500_is_unhealthy(stack, langfuse_fault) -> None:  # type: ignore[no-untyped-def]
    langfuse_fault("error500")
    found = check(stack, ["langfuse-web"])
    assert found["langfuse-web"].status == "unhealthy"
    assert "HTTP 500" in found["langfuse-web"].reason


def _client_backends(devstack) -> int:  # type: ignore[no-untyped-def]
    with psycopg.connect(devstack.admin_dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_postgres_near_and_at_its_connection_limit(stack, devstack) -> None:  # type: ignore[no-untyped-def]
    held: list[psycopg.Connection] = []
    try:
        # 80% of max_connections=40 is 32 client connections, the sweep's own included.
        for _ in range(max(0, math.ceil(0.8 * 40) - _client_backends(devstack))):
            held.append(psycopg.connect(devstack.admin_dsn(), autocommit=True))
        found = check(stack, ["postgres"])
        assert found["postgres"].status == "degraded", found["postgres"]
        assert "/40 connections" in found["postgres"].reason
        assert "near max_connections" in found["postgres"].reason
        # Then every slot, until the server refuses new clients.
        with pytest.raises(psycopg.OperationalError):
            for _ in range(50):
                held.append(psycopg.connect(devstack.admin_dsn(), autocommit=True))
        found = check(stack, ["postgres"])
        assert found["postgres"].status == "unhealthy"
        assert found["postgres"].reason.startswith("connection limit reached")
    finally:
        for conn in held:
            conn.close()
    assert check(stack, ["postgres"])["postgres"].status == "healthy"


def test_object_storage_down_is_unhealthy(stack, devstack) -> None:  # type: ignore[no-untyped-def]
    with devstack.stopped("s3"):
        found = check(stack, ["object-storage", "backup-freshness"], timeout_s=2.0)
    assert found["object-storage"].status == "unhealthy"
    assert found["backup-freshness"].status == "unhealthy"
    assert "S3" in found["object-storage"].reason or "no answer" in found["object-storage"].reason


def test_reasons_carry_no_secret(stack, devstack) -> None:  # type: ignore[no-untyped-def]
    with devstack.stopped("redis"):
        results = asyncio.run(run_checks(stack, 2.0, None, NO_DB))
    text = " ".join(r.reason for r in results)
    for secret in stack.secret_values():
        assert secret not in text


def test_unknown_service_is_refused(stack) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="unknown services"):
        asyncio.run(run_checks(stack, 1.0, ["postgress"]))


# ---- verdicts without a fault to stage --------------------------------------------------


def test_backup_freshness_verdicts() -> None:
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    assert freshness_reading(None, now, 26, "b/s/").status == "unhealthy"
    assert freshness_reading(now - timedelta(hours=25), now, 26, "b/s/").status == "healthy"
    old = freshness_reading(now - timedelta(hours=27), now, 26, "b/s/")
    assert old.status == "degraded"
    assert old.reason.startswith("newest complete backup 27.0 h old")


def test_redis_memory_and_aof_verdicts() -> None:
    th = HealthThresholds()
    ok = {"aof_enabled": "1", "aof_last_write_status": "ok", "aof_last_bgrewrite_status": "ok"}
    assert redis_reading(10 * 2**20, 100 * 2**20, ok, th).status == "healthy"
    assert redis_reading(95 * 2**20, 100 * 2**20, ok, th).status == "degraded"
    assert redis_reading(95 * 2**20, 0, ok, th).status == "healthy"  # no maxmemory set
    assert redis_reading(1, 0, {"aof_enabled": "0"}, th).status == "degraded"
    failing = {**ok, "aof_last_write_status": "err"}
    verdict = redis_reading(1, 0, failing, th)
    assert verdict.status == "unhealthy" and "AOF write failing" in verdict.reason


def test_clickhouse_disk_verdicts() -> None:
    th = HealthThresholds()
    assert disk_reading(50, 100, th).status == "healthy"
    assert disk_reading(5, 100, th).status == "degraded"
    assert disk_reading(1, 100, th).status == "unhealthy"
