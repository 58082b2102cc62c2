"""The queue judge: age decides, the reason tells a stalled consumer from a slow one; a
backlog rising sweep after sweep is growth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from tasks.decisions.health import ServiceHealth
from tasks.decisions.queues import (
    GrowthLimits,
    QueueLimits,
    QueueStats,
    judge_queues,
    with_backlog_growth,
)

LIMITS = QueueLimits(wait_degraded_s=120, wait_unhealthy_s=600, failed_degraded=5000)


def queue(**fields: object) -> QueueStats:
    base: dict[str, object] = {"name": "ingestion-queue", "waiting": 0, "active": 0}
    base.update({"delayed": 0, "failed": 0})
    base.update(fields)
    return QueueStats.model_validate(base)


def test_no_queue_yet_is_healthy_and_says_so() -> None:
    assert judge_queues([], LIMITS) == (
        "healthy",
        "no BullMQ queue in Redis yet (Langfuse creates them on first use)",
    )


def test_a_large_burst_of_young_jobs_is_not_an_alert() -> None:
    status, reason = judge_queues(
        [queue(waiting=50_000, active=8, oldest_waiting_s=30, last_completed_s=0.1)], LIMITS
    )
    assert status == "healthy"
    assert reason == "1 queue(s): 50000 waiting, 8 active, 0 failed (oldest 30 s)"


def test_jobs_waiting_and_none_completing_is_a_stalled_consumer() -> None:
    degraded = judge_queues([queue(waiting=40, oldest_waiting_s=300, last_completed_s=900)], LIMITS)
    assert degraded[0] == "degraded"
    assert "oldest 5 min, none completed since it arrived: stalled consumer" in degraded[1]
    assert "restart langfuse-worker" in degraded[1]
    never = judge_queues([queue(waiting=40, oldest_waiting_s=700, last_completed_s=None)], LIMITS)
    assert never[0] == "unhealthy" and "stalled consumer" in never[1]


def test_a_worker_that_completes_but_falls_behind_is_told_to_scale() -> None:
    status, reason = judge_queues(
        [queue(waiting=9000, active=8, oldest_waiting_s=200, last_completed_s=1)], LIMITS
    )
    assert status == "degraded"
    assert "8 active, last completion 1 s ago: the worker falls behind" in reason
    assert "stalled" not in reason


def test_failed_jobs_piling_up_are_degraded() -> None:
    status, reason = judge_queues([queue(failed=5000)], LIMITS)
    assert (status, reason.split(";")[0]) == (
        "degraded",
        "ingestion-queue: 5000 failed jobs kept: Langfuse does not reprocess them",
    )
    assert judge_queues([queue(failed=4999)], LIMITS)[0] == "healthy"


def test_the_worst_queue_comes_first_and_every_queue_is_tallied() -> None:
    status, reason = judge_queues(
        [
            queue(name="trace-upsert", failed=6000),
            queue(name="ingestion-queue-2", waiting=3, oldest_waiting_s=601),
            queue(name="ingestion-queue-1", waiting=1, oldest_waiting_s=1),
        ],
        LIMITS,
    )
    assert status == "unhealthy"
    assert reason.startswith("ingestion-queue-2: 3 waiting, oldest 10 min")
    assert "trace-upsert: 6000 failed" in reason
    assert reason.endswith("3 queue(s): 4 waiting, 0 active, 6000 failed")


@given(
    st.lists(
        st.builds(
            QueueStats,
            name=st.sampled_from(["a", "b", "c"]),
            waiting=st.integers(0, 10**6),
            active=st.integers(0, 100),
            delayed=st.integers(0, 100),
            failed=st.integers(0, 10**4),
            oldest_waiting_s=st.none() | st.floats(0, 10**5),
            last_completed_s=st.none() | st.floats(0, 10**5),
        ),
        max_size=6,
    )
)
def test_status_follows_the_oldest_job_and_the_failed_count(queues: list[QueueStats]) -> None:
    status, _ = judge_queues(queues, LIMITS)
    ages = [q.oldest_waiting_s or 0 for q in queues if q.waiting]
    oldest = max(ages, default=0)
    if oldest >= LIMITS.wait_unhealthy_s:
        assert status == "unhealthy"
    elif oldest >= LIMITS.wait_degraded_s or any(q.failed >= 5000 for q in queues):
        assert status == "degraded"
    else:
        assert status == "healthy"


# ---- growth across sweeps -----------------------------------------------------------------

GROWTH = GrowthLimits(growth_sweeps=3, growth_degraded_jobs=300, growth_unhealthy_jobs=3000)
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def queues_read(waiting: int, status: str = "healthy") -> ServiceHealth:
    return ServiceHealth(
        service="langfuse-queues",
        status=status,  # type: ignore[arg-type]
        latency_ms=3.0,
        reason=f"1 queue(s): {waiting} waiting, 0 active, 0 failed",
        measures={"queue_waiting_jobs": float(waiting)},
    )


def sweeps(
    counts: list[int], gap_s: int = 60, limits: GrowthLimits = GROWTH
) -> tuple[ServiceHealth, list[tuple[int, int]]]:
    """Sweeps ``gap_s`` apart reading these backlogs; the last result and the backlog kept."""
    kept: list[tuple[int, int]] = []
    results: list[ServiceHealth] = []
    for i, waiting in enumerate(counts):
        at = T0 + timedelta(seconds=i * gap_s)
        results, kept = with_backlog_growth([queues_read(waiting)], kept, at, limits)
    return results[0], kept


def test_a_backlog_rising_at_every_sweep_is_degraded_then_unhealthy() -> None:
    found, kept = sweeps([100, 300, 500, 700])
    assert found.status == "degraded"
    assert found.reason.startswith(
        "the queues' backlog rose at each of the last 3 sweeps, 100 to 700 waiting "
        "(200 jobs/min over 3 min): more jobs arrive than langfuse-worker completes"
    )
    assert found.reason.endswith("; 1 queue(s): 700 waiting, 0 active, 0 failed")
    assert found.measures["queue_backlog_growth_jobs_per_minute"] == 200.0
    assert len(kept) == 4  # no more than the streak needs
    assert sweeps([0, 2000, 4000, 6000])[0].status == "unhealthy"
    # sweeps run by hand within the same second count as well
    assert sweeps([100, 300, 500, 700], gap_s=0)[0].status == "degraded"


def test_a_burst_that_drains_small_growth_and_gaps_are_not_growth() -> None:
    assert sweeps([0, 5000, 9000, 4000, 8000])[0].status == "healthy"  # fell once: no streak
    assert sweeps([100, 150, 200, 250])[0].status == "healthy"  # rising, but only 150 jobs
    # the monitor stopped for ten minutes between two points: the count starts again
    assert sweeps([100, 300, 500, 700], gap_s=600)[0].status == "healthy"


def test_a_slower_sweep_schedule_judges_growth_with_its_own_gap() -> None:
    # every 5 minutes, the worker starting each sweep a few seconds late
    assert sweeps([100, 300, 500, 700], gap_s=309)[0].status == "healthy"
    slower = GROWTH.model_copy(update={"max_gap_s": 900})
    found, _ = sweeps([100, 300, 500, 700], gap_s=309, limits=slower)
    assert found.status == "degraded"
    assert "(39 jobs/min over 15 min)" in found.reason


def test_the_worse_status_wins_and_an_unread_queue_breaks_the_streak() -> None:
    kept: list[tuple[int, int]] = []
    for i, waiting in enumerate([100, 300, 500]):
        _, kept = with_backlog_growth(
            [queues_read(waiting)], kept, T0 + timedelta(minutes=i), GROWTH
        )
    already = queues_read(700, status="unhealthy")
    (found,), _ = with_backlog_growth([already], kept, T0 + timedelta(minutes=3), GROWTH)
    assert found.status == "unhealthy" and "rose at each of the last 3 sweeps" in found.reason
    unread = ServiceHealth(
        service="langfuse-queues", status="unhealthy", latency_ms=1.0, reason="cannot read"
    )
    _, reset = with_backlog_growth([unread], kept, T0 + timedelta(minutes=3), GROWTH)
    assert reset == []
