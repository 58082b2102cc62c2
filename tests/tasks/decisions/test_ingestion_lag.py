"""The ingestion-lag judge: the latest canary decides, the day gives p50/p95."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from tasks.decisions.ingestion_lag import LagLimits, LagSample, judge_lag, percentile, trim

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LIMITS = LagLimits(period_s=600, degraded_s=120, unhealthy_s=600)


def sample(minutes_ago: float, lag_s: float | None, error: str | None = None) -> LagSample:
    return LagSample(at=NOW - timedelta(minutes=minutes_ago), lag_s=lag_s, error=error)


def test_no_canary_yet_is_healthy_and_says_how_to_get_one() -> None:
    assert judge_lag([], NOW, LIMITS) == (
        "healthy",
        "no canary yet (the ingestion-canary deployment measures the lag)",
    )


def test_the_latest_lag_decides_and_the_day_is_summarised() -> None:
    day = [sample(10 * i + 1, float(i + 1)) for i in range(20)]  # 1..20 s, newest 1 s
    status, reason = judge_lag(day, NOW, LIMITS)
    assert status == "healthy"
    assert reason == (
        "latest canary readable after 1.0 s; p50 10.0 s, p95 19.0 s over 20 canaries in the "
        "last day"
    )
    late = [sample(0.5, 130.0), *day]
    assert judge_lag(late, NOW, LIMITS)[0] == "degraded"
    assert "traces arrive late" in judge_lag(late, NOW, LIMITS)[1]
    assert judge_lag([sample(0.5, 601.0), *day], NOW, LIMITS)[0] == "unhealthy"


def test_a_canary_that_never_arrived_is_unhealthy_and_counted() -> None:
    status, reason = judge_lag([sample(1, None), sample(11, 2.0)], NOW, LIMITS)
    assert status == "unhealthy"
    assert reason.startswith("the latest canary trace never became readable in Langfuse")
    assert reason.endswith("over 1 canaries in the last day, 1 never arrived")


def test_a_canary_that_stopped_running_is_degraded() -> None:
    status, reason = judge_lag([sample(31, 2.0)], NOW, LIMITS)
    assert status == "degraded"
    assert reason.startswith("no canary for 31 min (period 10 min)")


def test_a_canary_litellm_refused_is_degraded_with_the_reason() -> None:
    status, reason = judge_lag([sample(1, None, "LiteLLM answered HTTP 401")], NOW, LIMITS)
    assert status == "degraded" and "could not be sent: LiteLLM answered HTTP 401" in reason


def test_trim_keeps_one_day_within_the_variable_limit() -> None:
    many = [sample(i, 1.234) for i in range(0, 3000, 5)]  # two days every 5 min
    kept = trim(many, NOW)
    assert all(NOW - s.at <= timedelta(days=1) for s in kept)
    assert len(json.dumps([s.model_dump(mode="json") for s in kept])) <= 4500
    assert kept[-1].at == NOW  # the newest is never the one dropped
    assert kept == sorted(kept, key=lambda s: s.at)


@given(st.lists(st.floats(0, 10**4), min_size=1, max_size=300), st.floats(0, 100))
def test_percentile_is_a_value_of_the_list_and_monotone(values: list[float], q: float) -> None:
    p = percentile(values, q)
    assert p in values
    assert percentile(values, min(100.0, q + 10)) >= p
