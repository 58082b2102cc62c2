"""The health sweep's variables fit Prefect's limit for any state a stack can reach."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from prefect.types import check_variable_value
from prefect.variables import Variable

from tasks.decisions.alerting import ServiceState, StackState
from tasks.decisions.health import MEASURES, SERVICES, ServiceHealth
from tasks.health_state import REASON_BUDGETS, HealthStatusDoc, state_value, status_value

T0 = datetime(2026, 11, 30, 10, 0, 0, 123456, tzinfo=UTC)
MAX_HISTORY = 30  # AlertPolicy.flap_window's upper bound: the longest history kept
# Reasons as services give them: response bodies in any language, quotes, control
# characters, up to far beyond what a sweep keeps.
REASONS = st.text(alphabet=st.characters(codec="utf-8"), max_size=600)


def worst_case_state(services: list[str], reasons: list[str]) -> StackState:
    """Every incident open, every field at its longest."""
    return StackState(
        sweeps=10**12,
        last_sweep=T0,
        notifications_sent=10**12,
        channel_failures=10**12,
        # the longest backlog a sweep keeps: queue_growth_sweeps at its maximum (30), + 1
        backlog=[(4_000_000_000, 10**12)] * 31,
        services={
            name: ServiceState(
                history=("ud" * MAX_HISTORY)[:MAX_HISTORY],
                status="unhealthy",
                since=T0,
                bad_since=T0 - timedelta(days=400),
                reason=reason,
                open=True,
                notified="unhealthy",
                paged=True,
                last_notified=T0,
                reminders=10**6,
            )
            for name, reason in zip(services, reasons, strict=True)
        },
    )


# Which probe reports which measure (their names' prefixes), at their longest values.
MEASURED_BY = {
    "queue_": "langfuse-queues",
    "ingestion_": "ingestion-lag",
    "postgres_": "postgres-maintenance",
    "clickhouse_": "clickhouse-storage",
    "redis_": "redis",
    "certificate_": "certificates",
}


def measures_of(service: str) -> dict[str, float]:
    return {
        name: -1.2345678901234567e-300
        for name in MEASURES
        if MEASURED_BY[next(p for p in MEASURED_BY if name.startswith(p))] == service
    }


def results_of(services: list[str], reasons: list[str]) -> list[ServiceHealth]:
    return [
        ServiceHealth(
            service=s, status="unhealthy", latency_ms=1e12, reason=r, measures=measures_of(s)
        )
        for s, r in zip(services, reasons, strict=True)
    ]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_state_and_status_fit_prefect_for_any_services_and_reasons(data: st.DataObject) -> None:
    services = data.draw(st.lists(st.sampled_from(SERVICES), min_size=1, unique=True))
    reasons = data.draw(st.lists(REASONS, min_size=len(services), max_size=len(services)))
    state = worst_case_state(services, reasons)
    stored_state = state_value(state)
    stored_status = status_value("production", state, results_of(services, reasons))
    for value in (stored_state, stored_status):
        assert check_variable_value(value) is value  # exactly Prefect's own check
    assert set(StackState.model_validate(stored_state).services) == set(services)
    doc = HealthStatusDoc.model_validate(stored_status)
    assert {s.service for s in doc.services} == set(services)
    # every measure kept whole (the /metrics gauges), whatever the reasons cost
    assert {s.service: s.measures for s in doc.services} == {s: measures_of(s) for s in services}


def test_reasons_are_kept_whole_when_they_fit_and_shortened_only_as_needed() -> None:
    services = list(SERVICES)
    short = worst_case_state(services, ["connection refused"] * len(services))
    assert StackState.model_validate(state_value(short)) == short
    wide = worst_case_state(services, ['\U0001f525\\"\x00' * 200] * len(services))
    kept = StackState.model_validate(state_value(wide))
    lengths = {len(s.reason) for s in kept.services.values()}
    assert len(lengths) == 1 and lengths.pop() in REASON_BUDGETS[1:]


def test_the_worst_state_is_stored_and_read_back_by_the_prefect_server(devstack) -> None:  # type: ignore[no-untyped-def]
    services = list(SERVICES)
    reasons = ['\u00e9\u4e2d"\\\n\x01' * 100] * len(services)
    state = worst_case_state(services, reasons)
    name = "health-state-worst-case-test"

    async def round_trip() -> object:
        await Variable.aset(name, state_value(state), overwrite=True)
        try:
            return await Variable.aget(name)
        finally:
            await Variable.aunset(name)

    stored = StackState.model_validate(asyncio.run(round_trip()))
    assert set(stored.services) == set(services)
    assert all(s.open and s.paged for s in stored.services.values())
