"""Ingestion lag as a service level: how long a request through LiteLLM takes to become a
readable trace in Langfuse, measured by a canary, judged against thresholds.

Langfuse ingests asynchronously (web queues, worker writes); traces 30-40 minutes late
(langfuse#6546) or OTLP requests answered 200 and never queued (#16112) leave every
health check green. The ``ingestion-canary`` flow sends one tagged, tokenless completion
through LiteLLM on its own period and records how long its trace took (or that it never
came); the sweep's ``ingestion-lag`` probe judges the samples here:

- the **latest** sample decides: lag from ``degraded_s`` is degraded, from
  ``unhealthy_s`` unhealthy; a trace that never arrived within the canary's deadline is
  unhealthy (dropped, or a queue nobody drains);
- samples stop coming (the canary is not running) after ``3 x period``: degraded;
- the reason gives **p50 and p95 over the last day**.

The samples live in a Prefect Variable (the control plane, not the stack), trimmed to a
day and to the Variable's size limit by :func:`trim`.

Pure: no Prefect, no I/O.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from tasks.decisions.health import HealthStatus

__all__ = ["CANARY_TAG", "LagLimits", "LagSample", "judge_lag", "percentile", "trim"]

CANARY_TAG = "ops-canary"  # on every canary trace, so people can filter them out
MAX_CHARS = 4500  # under Prefect's 5,000-character Variable limit
WINDOW = timedelta(days=1)


class LagSample(BaseModel):
    """One canary: when it was sent, and the seconds until its trace was readable."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    lag_s: float | None = Field(
        default=None, ge=0, description="None: not readable within the canary's deadline."
    )
    error: str | None = Field(
        default=None, description="Why no lag was measured (LiteLLM refused the canary)."
    )


class LagLimits(BaseModel):
    model_config = ConfigDict(frozen=True)

    period_s: float = Field(gt=0, description="How often the canary runs.")
    degraded_s: float = Field(gt=0)
    unhealthy_s: float = Field(gt=0)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def trim(samples: list[LagSample], now: datetime) -> list[LagSample]:
    """The samples of the last day, oldest dropped first until they fit the Variable."""
    kept = sorted((s for s in samples if now - s.at <= WINDOW), key=lambda s: s.at)
    while kept and len(json.dumps([s.model_dump(mode="json") for s in kept])) > MAX_CHARS:
        kept.pop(0)
    return kept


def judge_lag(
    samples: list[LagSample], now: datetime, limits: LagLimits
) -> tuple[HealthStatus, str]:
    recent = [s for s in samples if now - s.at <= WINDOW]
    if not recent:
        return "healthy", "no canary yet (the ingestion-canary deployment measures the lag)"
    latest = max(recent, key=lambda s: s.at)
    lags = [s.lag_s for s in recent if s.lag_s is not None]
    lost = sum(1 for s in recent if s.lag_s is None and s.error is None)
    day = (
        f"p50 {percentile(lags, 50):.1f} s, p95 {percentile(lags, 95):.1f} s over "
        f"{len(lags)} canaries in the last day"
        if lags
        else "no canary arrived in the last day"
    )
    if lost:
        day += f", {lost} never arrived"
    age_s = (now - latest.at).total_seconds()
    if age_s > 3 * limits.period_s:
        return "degraded", (
            f"no canary for {age_s / 60:.0f} min (period {limits.period_s / 60:g} min): the "
            f"ingestion-canary deployment is not running; check its schedule and runs; {day}"
        )
    if latest.error is not None:
        return "degraded", f"the latest canary could not be sent: {latest.error}; {day}"
    if latest.lag_s is None:
        return "unhealthy", (
            "the latest canary trace never became readable in Langfuse: ingestion dropped or "
            f"stalled; check langfuse-worker and its queues; {day}"
        )
    reason = f"latest canary readable after {latest.lag_s:.1f} s; {day}"
    if latest.lag_s >= limits.unhealthy_s:
        return "unhealthy", f"{reason}: traces arrive far too late; check langfuse-worker"
    if latest.lag_s >= limits.degraded_s:
        return "degraded", f"{reason}: traces arrive late; check langfuse-worker's queues"
    return "healthy", reason
