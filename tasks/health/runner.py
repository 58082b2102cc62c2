"""Every probe of a stack at once, each bounded by its timeout; the sweep's task."""

from __future__ import annotations

import asyncio
import time

import httpx
from prefect import task
from prefect.logging import get_run_logger

from blocks.stack import Stack
from tasks.decisions.health import SERVICES, ServiceHealth
from tasks.health.backups import (
    check_backup_freshness,
    check_object_storage,
    check_offsite_freshness,
)
from tasks.health.base import HealthThresholds, Probe, Reading, reason_of
from tasks.health.certificates import check_certificates
from tasks.health.clickhouse import check_clickhouse
from tasks.health.ingestion import check_ingestion_lag
from tasks.health.maintenance import check_clickhouse_storage, check_postgres_maintenance
from tasks.health.migrations import check_migrations
from tasks.health.postgres import check_postgres
from tasks.health.queues import check_langfuse_queues
from tasks.health.redis import check_redis
from tasks.health.shared import sweep_clients
from tasks.health.web import (
    check_langfuse_web,
    check_langfuse_worker,
    check_litellm,
    check_litellm_readiness,
)

__all__ = ["PROBES", "check_services", "run_check", "run_checks"]

PROBES: dict[str, Probe] = {
    "litellm": check_litellm,
    "litellm-readiness": check_litellm_readiness,
    "langfuse-web": check_langfuse_web,
    "langfuse-worker": check_langfuse_worker,
    "postgres": check_postgres,
    "clickhouse": check_clickhouse,
    "redis": check_redis,
    "object-storage": check_object_storage,
    "backup-freshness": check_backup_freshness,
    "offsite-freshness": check_offsite_freshness,
    "langfuse-queues": check_langfuse_queues,
    "migrations": check_migrations,
    "postgres-maintenance": check_postgres_maintenance,
    "clickhouse-storage": check_clickhouse_storage,
    "ingestion-lag": check_ingestion_lag,
    "certificates": check_certificates,
}


async def run_check(
    service: str, check: Probe, stack: Stack, timeout_s: float, th: HealthThresholds
) -> ServiceHealth:
    """One check, bounded by ``timeout_s``; any failure becomes an unhealthy result."""
    started = time.monotonic()
    try:
        reading = await asyncio.wait_for(check(stack, timeout_s, th), timeout_s)
    except TimeoutError:
        reading = Reading("unhealthy", f"no answer within {timeout_s:g} s")
    except httpx.TimeoutException:
        reading = Reading("unhealthy", f"no answer within {timeout_s:g} s")
    except httpx.ConnectError as exc:
        reading = Reading(
            "unhealthy", "connection refused or unreachable: " + reason_of(stack, str(exc))
        )
    except httpx.HTTPError as exc:
        reading = Reading(
            "unhealthy", f"HTTP error: {type(exc).__name__}: {reason_of(stack, str(exc))}"
        )
    except Exception as exc:
        # A check is a probe: whatever breaks inside it is a reading of the service
        # (or the probe), reported as such, never a crash of the sweep.
        reading = Reading(
            "unhealthy", f"check failed: {type(exc).__name__}: {reason_of(stack, str(exc))}"
        )
    latency_ms = (time.monotonic() - started) * 1000
    return ServiceHealth(
        service=service,
        status=reading.status,
        latency_ms=round(latency_ms, 1),
        reason=stack.scrub(reading.reason),
        measures=reading.measures or {},
    )


async def run_checks(
    stack: Stack,
    timeout_s: float = 5.0,
    services: list[str] | None = None,
    thresholds: HealthThresholds | None = None,
) -> list[ServiceHealth]:
    """Run the checks of ``services`` (default: all) concurrently, in SERVICES order.

    The whole call takes at most about ``timeout_s``: every check has that budget.
    """
    wanted = list(SERVICES) if services is None else services
    unknown = [name for name in wanted if name not in PROBES]
    if unknown:
        raise ValueError(f"unknown services {unknown}; known: {', '.join(SERVICES)}")
    th = thresholds or HealthThresholds()
    with sweep_clients():  # one ClickHouse client for the probes that need one
        return list(
            await asyncio.gather(
                *(run_check(name, PROBES[name], stack, timeout_s, th) for name in wanted)
            )
        )


@task(name="check-services", persist_result=False, timeout_seconds=30)
async def check_services(
    stack: Stack,
    timeout_s: float,
    services: list[str] | None,
    thresholds: HealthThresholds,
) -> list[ServiceHealth]:
    """Every check at once, each bounded by ``timeout_s``; logs the bad ones."""
    results = await run_checks(stack, timeout_s, services, thresholds)
    logger = get_run_logger()
    for result in results:
        if result.status != "healthy":
            logger.warning(
                "%s %s (%.0f ms): %s",
                result.service,
                result.status,
                result.latency_ms,
                result.reason,
            )
    return results
