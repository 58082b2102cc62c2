"""The alert state machine, grouping and inhibition: pure functions, tested exhaustively."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.decisions.alerting import (
    AlertPolicy,
    Decision,
    Notice,
    Silence,
    StackState,
    closing_switched_off,
    decide,
    trailing,
)
from tasks.decisions.delivery import dedup_key, group_notices
from tasks.decisions.health import SERVICES, HealthStatus, ServiceHealth

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
STATUS: dict[str, HealthStatus] = {"h": "healthy", "d": "degraded", "u": "unhealthy"}
statuses = st.sampled_from("hdu")
policies = st.builds(
    AlertPolicy,
    alert_after=st.integers(1, 6),
    recover_after=st.integers(1, 6),
    reminder_every_min=st.integers(1, 90),
    max_reminders=st.integers(0, 5),
    flap_window=st.just(12),
    flap_threshold=st.integers(3, 11),
)


def result(service: str, code: str, reason: str = "probe said so") -> ServiceHealth:
    return ServiceHealth(service=service, status=STATUS[code], latency_ms=3.0, reason=reason)


def run(
    sequence: str,
    policy: AlertPolicy | None = None,
    service: str = "postgres",
    silences: list[Silence] | None = None,
    state: StackState | None = None,
    start: int = 0,
) -> tuple[StackState, list[tuple[int, Notice]]]:
    """One sweep a minute; returns the final state and (sweep index, notice) pairs."""
    state = state or StackState()
    told: list[tuple[int, Notice]] = []
    for i, code in enumerate(sequence, start=start):
        decision = decide(
            state, [result(service, code)], T0 + timedelta(minutes=i), policy, silences
        )
        state = decision.state
        told.extend((i, notice) for notice in decision.notices)
    return state, told


def kinds(told: Iterable[tuple[int, Notice]]) -> list[str]:
    return [notice.kind for _, notice in told]


# ---- the rules, one by one ------------------------------------------------------------


def test_three_failures_in_a_row_alert_once_at_the_third() -> None:
    _, told = run("hhuuuuu")
    assert [(i, n.kind, n.severity) for i, n in told] == [(4, "alert", "critical")]


def test_alert_after_a_long_healthy_run_is_not_blocked_by_history() -> None:
    # The original monitor required the *previous* status to be healthy: never fired.
    _, told = run("h" * 30 + "uuu")
    assert kinds(told) == ["alert"]


def test_single_blip_sends_nothing() -> None:
    _, told = run("hhhuhhhhhhhhhhhuhhhhhhhhhhhhuhhh")
    assert told == []


def test_recovery_once_and_only_after_an_alert() -> None:
    _, told = run("uuuhhhhhh")
    assert kinds(told) == ["alert", "recovery"]
    assert told[1][1].severity == "critical"  # the pager that was triggered gets its resolve
    _, told = run("uuhhhuuhhh")
    assert told == []  # never alerted: no recovery either


def test_reminders_every_m_minutes_capped_at_k() -> None:
    policy = AlertPolicy(reminder_every_min=30, max_reminders=2)
    _, told = run("uuu" + "u" * 200, policy)
    assert [(i, n.kind) for i, n in told] == [(2, "alert"), (32, "reminder"), (62, "reminder")]


def test_degraded_goes_to_chat_and_escalates_once_when_unhealthy() -> None:
    _, told = run("dddduuuuuudu")
    assert [(n.kind, n.severity) for _, n in told] == [
        ("alert", "warning"),
        ("escalation", "critical"),
    ]


def test_flapping_alerts_once_not_every_time() -> None:
    _, told = run("hu" * 60)
    assert kinds(told).count("alert") == 1
    assert all(n.flapping for _, n in told)
    assert "recovery" not in kinds(told)


def test_flapping_incident_recovers_once_after_calming_down() -> None:
    _, told = run("hu" * 20 + "h" * 20)
    assert kinds(told)[0] == "alert"
    assert kinds(told)[-1] == "recovery"
    assert kinds(told).count("recovery") == 1


def test_stack_silence_stops_everything_and_outage_alerts_when_it_ends() -> None:
    silence = Silence(until=T0 + timedelta(minutes=10), reason="maintenance")
    _, told = run("uuuuuuuuuuuuuu", silences=[silence])
    assert [(i, n.kind) for i, n in told] == [(10, "alert")]


def test_service_silence_leaves_other_services_alone() -> None:
    silence = Silence(service="redis", until=T0 + timedelta(hours=1))
    state = StackState()
    told: list[Notice] = []
    for i in range(5):
        decision = decide(
            state,
            [result("redis", "u"), result("clickhouse", "u")],
            T0 + timedelta(minutes=i),
            silences=[silence],
        )
        state, told = decision.state, told + decision.notices
    assert [(n.service, n.kind) for n in told] == [("clickhouse", "alert")]


def test_recovery_during_a_silence_is_told_after_it() -> None:
    state, told = run("uuu")
    assert kinds(told) == ["alert"]
    silence = Silence(until=T0 + timedelta(minutes=8))
    _, told = run("hhhhhhhh", state=state, silences=[silence], start=3)
    assert [(i, n.kind) for i, n in told] == [(8, "recovery")]


def test_state_survives_a_restart_through_json() -> None:
    # The sweep persists the state as JSON between runs: a new worker continues.
    state, told = run("uu")
    assert told == []
    revived = StackState.model_validate_json(state.model_dump_json())
    state, told = run("u", state=revived, start=2)
    assert kinds(told) == ["alert"]
    revived = StackState.model_validate_json(state.model_dump_json())
    _, told = run("uuuu", state=revived, start=3)
    assert told == []  # not re-sent


def test_status_changes_are_reported_once_per_change() -> None:
    state = StackState()
    seen = []
    for i, code in enumerate("hhuuh"):
        decision = decide(state, [result("redis", code)], T0 + timedelta(minutes=i))
        state = decision.state
        seen += [(i, c.previous, c.status) for c in decision.changes]
    assert seen == [(0, None, "healthy"), (2, "healthy", "unhealthy"), (4, "unhealthy", "healthy")]


# ---- grouping and inhibition ------------------------------------------------------------


def sweep_all(state: StackState, bad: dict[str, str], minute: int) -> Decision:
    results = [result(s, bad.get(s, "h"), f"{s} probe") for s in SERVICES]
    return decide(state, results, T0 + timedelta(minutes=minute))


def test_dependency_down_is_one_page_listing_the_impacted_services() -> None:
    state = StackState()
    down = {"postgres": "u", "langfuse-web": "u", "langfuse-worker": "u", "litellm-readiness": "u"}
    for minute in range(3):
        decision = sweep_all(state, down, minute)
        state = decision.state
    alert = group_notices("prod", decision, link="http://ui/runs/flow-run/1")
    assert alert is not None
    assert alert.severity == "critical"
    assert alert.title == "postgres unhealthy; 3 impacted"
    postgres = alert.services[0]
    assert postgres["service"] == "postgres"
    assert postgres["impacts"] == "langfuse-web, langfuse-worker, litellm-readiness"
    assert postgres["dedup_key"] == "prod/postgres"
    impacted = {e["service"]: e for e in alert.services[1:]}
    assert set(impacted) == {"langfuse-web", "langfuse-worker", "litellm-readiness"}
    assert all(
        e["impacted_by"] == "postgres" and e["severity"] == "warning" for e in impacted.values()
    )
    # The pager's share is the root cause only.
    pager = alert.for_route("critical")
    assert pager is not None
    assert [e["service"] for e in pager.services] == ["postgres"]
    chat = alert.for_route("warning")
    assert chat is not None and len(chat.services) == 4
    assert "impacted by postgres" in chat.text()
    assert "Run: http://ui/runs/flow-run/1" in chat.text()


def test_impacted_service_still_broken_after_its_dependency_recovers_pages_itself() -> None:
    state = StackState()
    for minute in range(3):
        state = sweep_all(state, {"postgres": "u", "langfuse-web": "u"}, minute).state
    decision = sweep_all(state, {"langfuse-web": "u"}, 3)
    assert [(n.service, n.kind, n.severity) for n in decision.notices] == [
        ("langfuse-web", "escalation", "critical")
    ]


def test_a_service_failing_before_its_dependency_is_not_listed_as_impacted_by_it() -> None:
    state = StackState()
    for minute in range(3):  # LiteLLM's readiness fails for its own reason, and pages
        state = sweep_all(state, {"litellm-readiness": "u"}, minute).state
    for minute in range(3, 6):  # then Postgres fails too
        decision = sweep_all(state, {"litellm-readiness": "u", "postgres": "u"}, minute)
        state = decision.state
    assert "litellm-readiness" not in decision.impacted_by
    alert = group_notices("prod", decision)
    assert alert is not None
    (postgres,) = [e for e in alert.services if e["service"] == "postgres"]
    assert postgres["impacts"] == ""
    assert alert.title == "postgres unhealthy"


def test_several_services_in_one_sweep_are_one_message() -> None:
    state = StackState()
    for minute in range(3):
        decision = sweep_all(state, {"redis": "u", "clickhouse": "d"}, minute)
        state = decision.state
    alert = group_notices("prod", decision)
    assert alert is not None
    assert [e["service"] for e in alert.services] == ["clickhouse", "redis"]
    assert alert.for_route("critical") is not None
    pager = alert.for_route("critical")
    assert pager is not None and [e["service"] for e in pager.services] == ["redis"]


def test_nothing_to_tell_is_no_message() -> None:
    assert group_notices("prod", sweep_all(StackState(), {}, 0)) is None


def test_policy_rejects_settings_that_break_the_window() -> None:
    with pytest.raises(ValueError, match="flap_window"):
        AlertPolicy(alert_after=20, flap_window=12)


# ---- properties over every sequence -----------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.lists(statuses, min_size=1, max_size=120).map("".join), policies)
def test_invariants_hold_for_any_sequence(sequence: str, policy: AlertPolicy) -> None:
    _, told = run(sequence, policy)
    open_ = False
    reminders = escalations = 0
    last_told: int | None = None
    for i, notice in told:
        history = sequence[: i + 1][-policy.flap_window :]
        if notice.kind == "alert":
            assert not open_, "alert while an incident is open"
            assert history[-1] != "h"
            assert trailing(history, "du") >= policy.alert_after or notice.flapping
            open_, reminders, escalations = True, 0, 0
        elif notice.kind == "recovery":
            assert open_, "recovery without an alert"
            assert trailing(history, "h") >= policy.recover_after
            open_ = False
        elif notice.kind == "reminder":
            assert open_
            reminders += 1
            assert reminders <= policy.max_reminders
            assert last_told is not None and i - last_told >= policy.reminder_every_min
        else:
            assert open_ and notice.severity == "critical"
            escalations += 1
            assert escalations <= 1
        last_told = i
    assert len({i for i, _ in told}) == len(told), "more than one notice per sweep"


@settings(max_examples=300, deadline=None)
@given(st.lists(statuses, min_size=12, max_size=120).map("".join))
def test_no_storm_at_most_two_alerts_in_any_flap_window(sequence: str) -> None:
    policy = AlertPolicy()
    _, told = run(sequence, policy)
    alerts = [i for i, n in told if n.kind == "alert"]
    for start in range(len(sequence)):
        assert sum(1 for i in alerts if start <= i < start + policy.flap_window) <= 2
    for a, b in itertools.pairwise(alerts):
        assert b - a >= policy.alert_after + policy.recover_after


@settings(max_examples=300, deadline=None)
@given(st.lists(statuses, min_size=1, max_size=80).map("".join), st.integers(0, 80))
def test_nothing_is_sent_during_a_silence(sequence: str, minutes: int) -> None:
    silence = Silence(until=T0 + timedelta(minutes=minutes))
    _, told = run(sequence, silences=[silence])
    assert all(i >= minutes for i, _ in told)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 40), st.integers(0, 40))
def test_lone_blips_never_notify(before: int, after: int) -> None:
    _, told = run("h" * before + "u" + "h" * after)
    assert told == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(statuses, min_size=len(SERVICES), max_size=len(SERVICES)), min_size=1, max_size=40
    )
)
def test_persisted_state_fits_a_prefect_variable(sweeps: list[list[str]]) -> None:
    """Whatever the sweeps, the stored (packed) state of every service the sweep knows,
    each remembering a reason as long as the machine keeps, fits Prefect's 5,000
    characters (json.dumps, as Prefect measures)."""
    state = StackState()
    long_reason = "x" * 400
    for minute, codes in enumerate(sweeps):
        results = [result(s, c, long_reason) for s, c in zip(SERVICES, codes, strict=True)]
        state = decide(state, results, T0 + timedelta(minutes=minute)).state
    assert len(json.dumps(state.packed())) <= 5000


@settings(max_examples=200, deadline=None)
@given(st.lists(statuses, min_size=1, max_size=60).map("".join), st.integers(0, 59))
def test_restart_at_any_point_changes_nothing(sequence: str, cut: int) -> None:
    _, straight = run(sequence)
    cut = min(cut, len(sequence))
    state, first = run(sequence[:cut])
    revived = StackState.model_validate_json(state.model_dump_json())
    _, second = run(sequence[cut:], state=revived, start=cut)
    assert [(i, n.kind) for i, n in first + second] == [(i, n.kind) for i, n in straight]


def test_dedup_key_is_stable_per_stack_and_service() -> None:
    assert dedup_key("prod", "postgres") == "prod/postgres"
    assert dedup_key("prod", "postgres") != dedup_key("staging", "postgres")


def test_a_probe_switched_off_during_its_incident_resolves_it_saying_why() -> None:
    state, told = run("uuu")
    assert kinds(told) == ["alert"] and state.services["postgres"].open
    assert closing_switched_off(state, ["redis"]) == []  # only the switched-off ones
    for minute in range(3, 10):
        closing = closing_switched_off(state, ["postgres"])
        if not closing:
            break
        decision = decide(state, closing, T0 + timedelta(minutes=minute))
        state = decision.state
        told.extend((minute, notice) for notice in decision.notices)
    assert kinds(told) == ["alert", "recovery"]
    assert "switched off" in told[-1][1].reason
    assert not state.services["postgres"].open
    assert closing_switched_off(state, ["postgres"]) == []  # then nothing more is said
