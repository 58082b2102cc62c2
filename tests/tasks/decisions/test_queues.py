"""The queue judge: age decides, the reason tells a stalled consumer from a slow one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tasks.decisions.queues import QueueLimits, QueueStats, judge_queues

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
