"""What every probe shares: the thresholds, a reading, the thread pool for blocking
drivers, and the HTTP helpers."""

from __future__ import annotations

import asyncio
import contextvars
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, TypeVar

import certifi
import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from blocks.stack import Stack
from tasks.decisions.health import HealthStatus

__all__ = [
    "BLOCKING",
    "HealthThresholds",
    "Probe",
    "Reading",
    "http_get",
    "http_reading",
    "in_thread",
    "ok",
    "percent",
    "reason_of",
]

# Blocking drivers run here. Sized for many stacks swept by one worker: a thread
# stuck on a dead host holds its slot until its socket timeout, never longer.
BLOCKING = ThreadPoolExecutor(max_workers=128, thread_name_prefix="health-probe")
T = TypeVar("T")
# One TLS context for every probe: building one per client costs tens of milliseconds
# of loop time, which 50 stacks x 6 HTTP checks would turn into seconds.
TLS = ssl.create_default_context(cafile=certifi.where())


class HealthThresholds(BaseModel):
    """Where degraded begins; defaults match the runbook."""

    model_config = ConfigDict(frozen=True)

    postgres_connections_degraded_pct: float = Field(
        default=80.0, ge=1, le=100, description="Connections used vs max_connections."
    )
    redis_memory_degraded_pct: float = Field(
        default=90.0, ge=1, le=100, description="used_memory vs maxmemory."
    )
    clickhouse_free_disk_degraded_pct: float = Field(
        default=10.0, ge=0, le=100, description="Free disk below this is degraded."
    )
    clickhouse_free_disk_unhealthy_pct: float = Field(
        default=3.0, ge=0, le=100, description="Free disk below this is unhealthy."
    )
    backup_max_age_h: float = Field(
        default=26.0, gt=0, le=24 * 30, description="Newest complete backup older: degraded."
    )
    offsite_max_age_h: float = Field(
        default=50.0,
        gt=0,
        le=24 * 30,
        description="Newest complete off-site copy older: degraded (a day's copy may fail "
        "and be caught up by the next run without paging).",
    )
    queue_wait_degraded_s: float = Field(
        default=120.0,
        gt=0,
        le=86_400,
        description="A queue's oldest waiting job older than this: degraded.",
    )
    queue_wait_unhealthy_s: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="A queue's oldest waiting job older than this: unhealthy.",
    )
    queue_failed_degraded: int = Field(
        default=5000, ge=1, description="Failed jobs kept by one queue at or above: degraded."
    )
    queue_growth_sweeps: int = Field(
        default=5,
        ge=2,
        le=30,
        description="The waiting jobs rising at each of this many sweeps in a row is a streak.",
    )
    queue_growth_degraded_jobs: int = Field(
        default=1000, ge=1, description="A streak that added this many waiting jobs: degraded."
    )
    queue_growth_unhealthy_jobs: int = Field(
        default=10_000, ge=1, description="A streak that added this many: unhealthy."
    )
    queue_growth_max_gap_s: int = Field(
        default=300,
        ge=60,
        description="Sweeps further apart than this (the monitor was stopped) start the "
        "streak again. Keep it above the sweep's interval: with OPS_HEALTH_SWEEP_CRON "
        "slower than every 4 minutes, raise it (e.g. 900 for every 5 minutes).",
    )
    redis_spend_buffer_degraded_bytes: int = Field(
        default=64 * 2**20,
        ge=1,
        description="One of LiteLLM's Redis spend buffers holding this many bytes: degraded.",
    )
    postgres_xid_age_degraded: int = Field(
        default=1_000_000_000, ge=1, le=2**31, description="Transaction-ID age: degraded."
    )
    postgres_xid_age_unhealthy: int = Field(
        default=1_500_000_000, ge=1, le=2**31, description="Transaction-ID age: unhealthy."
    )
    postgres_transaction_degraded_s: float = Field(
        default=3600.0, gt=0, description="A transaction open longer: degraded."
    )
    postgres_idle_in_transaction_degraded_s: float = Field(
        default=600.0, gt=0, description="A session idle in a transaction longer: degraded."
    )
    clickhouse_system_logs_ratio: float = Field(
        default=1.0, gt=0, description="system.*_log bytes above this times the data: degraded."
    )
    clickhouse_system_logs_min_bytes: int = Field(
        default=2**30, ge=0, description="...and above this many bytes (small stacks stay quiet)."
    )
    clickhouse_parts_degraded_pct: float = Field(
        default=50.0, gt=0, le=100, description="Parts in one partition vs parts_to_throw_insert."
    )
    ingestion_lag_degraded_s: float = Field(
        default=120.0, gt=0, description="The latest canary's trace later than this: degraded."
    )
    ingestion_lag_unhealthy_s: float = Field(
        default=600.0, gt=0, description="...later than this, or never: unhealthy."
    )
    ingestion_canary_period_s: float = Field(
        default=600.0,
        gt=0,
        description="The ingestion-canary deployment's period (OPS_INGESTION_CANARY_CRON); "
        "no sample for 3 periods: degraded.",
    )
    certificate_degraded_days: float = Field(
        default=21.0, gt=0, description="A public certificate expiring sooner: degraded."
    )
    certificate_unhealthy_days: float = Field(
        default=7.0, gt=0, description="...sooner than this, or refused: unhealthy."
    )
    litellm_requires_db: bool | None = Field(
        default=None,
        description="LiteLLM without a database (no keys, no spend) is degraded; "
        "None follows the stack block's litellm_requires_db (LITELLM_REQUIRES_DB).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> HealthThresholds:
        if self.queue_wait_unhealthy_s <= self.queue_wait_degraded_s:
            raise ValueError(
                f"queue_wait_unhealthy_s ({self.queue_wait_unhealthy_s:g}) must be above "
                f"queue_wait_degraded_s ({self.queue_wait_degraded_s:g}): raise the first or "
                "lower the second"
            )
        if self.queue_growth_unhealthy_jobs <= self.queue_growth_degraded_jobs:
            raise ValueError(
                f"queue_growth_unhealthy_jobs ({self.queue_growth_unhealthy_jobs}) must be "
                f"above queue_growth_degraded_jobs ({self.queue_growth_degraded_jobs}): raise "
                "the first or lower the second"
            )
        return self


class Reading(NamedTuple):
    """What one probe of a service read: its status and the one-line reason."""

    status: HealthStatus
    reason: str
    measures: dict[str, float] | None = None  # names in tasks.decisions.health.MEASURES


# A probe of one service: reads it within timeout_s, judged against the thresholds.
Probe = Callable[[Stack, float, HealthThresholds], Awaitable[Reading]]


def ok(reason: str) -> Reading:
    return Reading("healthy", reason)


def reason_of(stack: Stack, error: BaseException | str) -> str:
    """An error as part of a reason: scrubbed, its first line, at most 200 characters."""
    return stack.error_line(error, limit=200, lines="first")


async def in_thread(fn: Callable[[], T]) -> T:
    # the caller's context goes along (the sweep's shared clients: tasks/health/shared.py)
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(BLOCKING, context.run, fn)


def percent(used: float, total: float) -> float:
    return 100.0 * used / total if total > 0 else 0.0


async def http_get(url: str, timeout_s: float) -> httpx.Response:
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), verify=TLS) as client:
        return await client.get(url)


def http_reading(name: str, response: httpx.Response) -> Reading | None:
    """Unhealthy for an HTTP error status, None when the status is fine."""
    if response.status_code >= 400:
        body = response.text.strip().replace("\n", " ")[:120]
        return Reading("unhealthy", f"{name} answered HTTP {response.status_code}: {body}")
    return None
