"""The judge of Langfuse's job queues: a backlog, a stalled consumer, failed jobs piling up.

Langfuse's web puts every ingestion request on a BullMQ queue; langfuse-worker consumes
the queues and writes to ClickHouse. A worker that lost its Redis locks stops consuming
and still answers its health check (langfuse#15509): the queues are where it shows. The
probe (``tasks/health/queues.py``) reads each queue's counts, the age of its oldest
waiting job and when a job last completed; this decides.

- The **age of the oldest waiting job** decides the status: a burst that drains keeps it
  young and is never an alert; a queue nobody drains ages until it crosses the degraded,
  then the unhealthy threshold.
- The **reason** tells a stalled consumer (no job completed since the oldest waiting one
  arrived: restart the worker) from a worker that falls behind (jobs complete, not fast
  enough: scale it).
- **Failed jobs** kept above a threshold are degraded: Langfuse does not reprocess them.
- **Growth** across sweeps (:func:`with_backlog_growth`, run by the sweep with the
  backlog it kept in the alert state): the jobs waiting in all queues rose at each of the
  last ``growth_sweeps`` sweeps, by at least ``growth_degraded_jobs`` in all: degraded
  (unhealthy from ``growth_unhealthy_jobs``), before the oldest job is old enough to
  tell. A burst that drains falls at some sweep and never makes a streak.

Pure: no Prefect, no I/O.
"""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise

from pydantic import BaseModel, ConfigDict, Field

from tasks.decisions.health import STATUS_RANK, HealthStatus, ServiceHealth

__all__ = [
    "GrowthLimits",
    "QueueLimits",
    "QueueStats",
    "judge_backlog_growth",
    "judge_queues",
    "with_backlog_growth",
]


class QueueStats(BaseModel):
    """One BullMQ queue as read from Redis."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="The queue's name, e.g. 'ingestion-queue'.")
    waiting: int = Field(ge=0, description="Jobs waiting to be taken (wait + prioritized).")
    active: int = Field(ge=0, description="Jobs a worker holds now.")
    delayed: int = Field(ge=0)
    failed: int = Field(ge=0, description="Failed jobs the queue keeps.")
    oldest_waiting_s: float | None = Field(
        default=None, ge=0, description="Age of the oldest waiting job; None when none waits."
    )
    last_completed_s: float | None = Field(
        default=None,
        ge=0,
        description="Seconds since a job last completed, from the queue's event stream; "
        "None when its recent events hold no completion.",
    )


class QueueLimits(BaseModel):
    model_config = ConfigDict(frozen=True)

    wait_degraded_s: float = Field(gt=0)
    wait_unhealthy_s: float = Field(gt=0)
    failed_degraded: int = Field(ge=1)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _judge_one(q: QueueStats, limits: QueueLimits) -> tuple[HealthStatus, str] | None:
    age = q.oldest_waiting_s
    if q.waiting and age is not None and age >= limits.wait_degraded_s:
        status: HealthStatus = "unhealthy" if age >= limits.wait_unhealthy_s else "degraded"
        stalled = q.last_completed_s is None or q.last_completed_s >= age
        if stalled:
            return status, (
                f"{q.name}: {q.waiting} waiting, oldest {_age(age)}, none completed since it "
                "arrived: stalled consumer; restart langfuse-worker (a worker that lost its "
                "Redis locks stops consuming and still answers healthy)"
            )
        assert q.last_completed_s is not None  # not stalled: a completion was seen
        return status, (
            f"{q.name}: {q.waiting} waiting, oldest {_age(age)}, {q.active} active, last "
            f"completion {_age(q.last_completed_s)} ago: the worker falls behind; scale "
            "langfuse-worker or raise its concurrency"
        )
    if q.failed >= limits.failed_degraded:
        return "degraded", (
            f"{q.name}: {q.failed} failed jobs kept: Langfuse does not reprocess them; "
            "retry or clean them"
        )
    return None


def judge_queues(queues: list[QueueStats], limits: QueueLimits) -> tuple[HealthStatus, str]:
    """The worst queue decides; the reason names the bad queues (worst first), then a tally."""
    if not queues:
        return "healthy", "no BullMQ queue in Redis yet (Langfuse creates them on first use)"
    waiting = sum(q.waiting for q in queues)
    active = sum(q.active for q in queues)
    failed = sum(q.failed for q in queues)
    tally = f"{len(queues)} queue(s): {waiting} waiting, {active} active, {failed} failed"
    findings = [f for q in queues if (f := _judge_one(q, limits)) is not None]
    if not findings:
        ages = [q.oldest_waiting_s for q in queues if q.oldest_waiting_s is not None]
        oldest = f" (oldest {_age(max(ages))})" if ages else ""
        return "healthy", tally + oldest
    findings.sort(key=lambda f: -STATUS_RANK[f[0]])
    worst = findings[0][0]
    return worst, "; ".join([*(reason for _, reason in findings), tally])


class GrowthLimits(BaseModel):
    model_config = ConfigDict(frozen=True)

    growth_sweeps: int = Field(ge=2, le=30)
    growth_degraded_jobs: int = Field(ge=1)
    growth_unhealthy_jobs: int = Field(ge=1)
    max_gap_s: int = Field(
        default=300,
        ge=1,
        description="Points further apart (the monitor was stopped) start the count again.",
    )


Backlog = list[tuple[int, int]]  # (epoch seconds, jobs waiting in all queues), oldest first


def judge_backlog_growth(
    points: Backlog, limits: GrowthLimits
) -> tuple[HealthStatus, str, float] | None:
    """A backlog that rose at each of the last ``growth_sweeps`` sweeps by enough in all:
    status, reason and growth in jobs a minute; None otherwise."""
    last = points[-(limits.growth_sweeps + 1) :]
    if len(last) < limits.growth_sweeps + 1:
        return None
    if not all(after > before for (_, before), (_, after) in pairwise(last)):
        return None
    grown = last[-1][1] - last[0][1]
    minutes = max(1, last[-1][0] - last[0][0]) / 60
    rate = grown / minutes
    if grown < limits.growth_degraded_jobs:
        return None
    status: HealthStatus = "unhealthy" if grown >= limits.growth_unhealthy_jobs else "degraded"
    return (
        status,
        f"the queues' backlog rose at each of the last {limits.growth_sweeps} sweeps, "
        f"{last[0][1]} to {last[-1][1]} waiting ({rate:.0f} jobs/min over "
        f"{_age(minutes * 60)}): more jobs arrive than langfuse-worker completes; scale it "
        "or raise its concurrency before the oldest job ages",
        rate,
    )


def with_backlog_growth(
    results: list[ServiceHealth], points: Backlog, now: datetime, limits: GrowthLimits
) -> tuple[list[ServiceHealth], Backlog]:
    """The queue probe's result with the backlog's growth judged in (the worse status
    wins, the growth leads the reason), and the backlog to keep for the next sweep."""
    index = next((i for i, r in enumerate(results) if r.service == "langfuse-queues"), None)
    if index is None or "queue_waiting_jobs" not in results[index].measures:
        return results, []  # not read this sweep: a streak cannot span the gap
    queue = results[index]
    at = int(now.timestamp())
    kept = [p for p in points if p[0] <= at]  # a clock set back drops what is ahead
    if kept and at - kept[-1][0] > limits.max_gap_s:
        kept = []
    kept = [*kept, (at, int(queue.measures["queue_waiting_jobs"]))][-(limits.growth_sweeps + 1) :]
    found = judge_backlog_growth(kept, limits)
    if found is None:
        return results, kept
    status, reason, rate = found
    judged = queue.model_copy(
        update={
            "status": status if STATUS_RANK[status] > STATUS_RANK[queue.status] else queue.status,
            "reason": f"{reason}; {queue.reason}",
            "measures": {**queue.measures, "queue_backlog_growth_jobs_per_minute": round(rate, 1)},
        }
    )
    return [*results[:index], judged, *results[index + 1 :]], kept
