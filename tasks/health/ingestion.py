"""Ingestion lag: the ingestion canary's samples (Variable ``ingestion-lag-<stack>``, read
from the Prefect API, not the stack) judged by ``tasks.decisions.ingestion_lag``."""

from __future__ import annotations

from datetime import UTC, datetime

from blocks.stack import Stack
from tasks.decisions.ingestion_lag import LagLimits, judge_lag
from tasks.health.base import HealthThresholds, Reading

__all__ = ["check_ingestion_lag"]


async def check_ingestion_lag(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    # Imported here: only this probe talks to the Prefect API.
    from tasks.ingestion_canary import read_lag_samples

    samples = await read_lag_samples(stack.stack_name)
    limits = LagLimits(
        period_s=th.ingestion_canary_period_s,
        degraded_s=th.ingestion_lag_degraded_s,
        unhealthy_s=th.ingestion_lag_unhealthy_s,
    )
    status, reason = judge_lag(samples, datetime.now(UTC), limits)
    latest = max(samples, key=lambda sample: sample.at, default=None)
    if latest is None or latest.lag_s is None:
        return Reading(status, reason)
    return Reading(status, reason, {"ingestion_lag_seconds": round(latest.lag_s, 2)})
