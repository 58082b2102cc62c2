"""Delivery-aware alerting: nothing a channel refused is lost, nothing is told twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.decisions.alerting import AlertPolicy, Notice, StackState, decide
from tasks.decisions.alerts import NotificationRoute
from tasks.decisions.delivery import (
    RETRY_MAX_SWEEPS,
    merge_owed,
    plan_sends,
    record_delivery,
    retry_after,
    undelivered_critical,
)
from tasks.decisions.health import HealthStatus, ServiceHealth

T0 = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
STATUS: dict[str, HealthStatus] = {"h": "healthy", "d": "degraded", "u": "unhealthy"}
CHAT = NotificationRoute(block="slack-block-kit/ops-chat", min_severity="warning")
PAGER = NotificationRoute(block="pager-duty-events/ops-pager", min_severity="critical")
ROUTES = [CHAT, PAGER]
POLICY = AlertPolicy(alert_after=2, recover_after=2, reminder_every_min=5, max_reminders=2)
# Sweeps at the end with every channel accepting: longer than the longest backoff.
SETTLE = RETRY_MAX_SWEEPS + 3


def sweep_all(
    codes: str, accepts: dict[str, list[bool]], service: str = "postgres"
) -> tuple[StackState, dict[str, list[Notice]], list[list[Notice]]]:
    """One sweep a minute; what each channel accepted, and each sweep's lost criticals."""
    state = StackState()
    received: dict[str, list[Notice]] = {r.block: [] for r in ROUTES}
    lost: list[list[Notice]] = []
    incident = 0
    for i, code in enumerate(codes):
        now = T0 + timedelta(minutes=i)
        health = ServiceHealth(service=service, status=STATUS[code], latency_ms=1, reason="r")
        decision = decide(state, [health], now, POLICY)
        incident += sum(1 for n in decision.notices if n.kind == "alert")
        plan = plan_sends(decision.state, decision.notices, ROUTES)
        accepted = {block: accepts[block][i] for block in plan}
        for block, notices in plan.items():
            if accepted[block]:
                received[block].extend(
                    n.model_copy(update={"reason": str(incident)}) for n in notices
                )
        state = record_delivery(decision.state, plan, accepted, ROUTES)
        lost.append(undelivered_critical(decision.notices, plan, accepted))
    return state, received, lost


def always(n: int) -> dict[str, list[bool]]:
    return {r.block: [True] * n for r in ROUTES}


def openings(notices: list[Notice]) -> list[str]:
    """The incident story a channel heard: openings (a) and recoveries (v).

    An escalation opens the incident for a channel that had not heard of it (a pager
    gets no degraded alert); after an opening it is an update, as a reminder is. A
    second alert without a recovery between is a duplicate, and shows as "a", "a".
    """
    story: list[str] = []
    for notice in notices:
        if notice.kind == "recovery":
            story.append("v")
        elif notice.kind == "alert" or (
            notice.kind == "escalation" and (not story or story[-1] == "v")
        ):
            story.append("a")
    return story


@settings(max_examples=400, deadline=None)
@given(
    st.text(alphabet="hdu", min_size=1, max_size=60),
    st.lists(st.booleans(), min_size=60, max_size=60),
    st.lists(st.booleans(), min_size=60, max_size=60),
)
def test_a_refusing_channel_ends_up_told_the_truth_once(
    codes: str, chat: list[bool], pager: list[bool]
) -> None:
    # Whatever the channels refused, once they accept again for long enough each one
    # has heard a story that alternates alert/recovery (no duplicate page) and ends
    # where the service is: an open incident alerted, a closed one resolved or untold.
    last = codes[-1]
    tail = last * SETTLE
    accepts = {CHAT.block: chat[: len(codes)] + [True] * SETTLE,
               PAGER.block: pager[: len(codes)] + [True] * SETTLE}  # fmt: skip
    state, received, _ = sweep_all(codes + tail, accepts)
    incident_open = state.services["postgres"].open
    for block, notices in received.items():
        story = openings(notices)
        # No duplicate page: at most one opening per incident of the machine (a notice's
        # reason holds its incident's number here). An undelivered recovery followed by
        # a new incident is superseded by it (the pager's incident simply stays open).
        for number in {n.reason for n in notices}:
            assert openings([n for n in notices if n.reason == number]).count("a") <= 1
        if story:
            assert story[0] == "a", (block, story)
        if incident_open and (block == CHAT.block or state.services["postgres"].paged):
            assert story and story[-1] == "a", (block, story)
        if not incident_open:
            assert not story or story[-1] == "v", (block, story)
    assert state.owed == {} and state.backoff == {}


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="hdu", min_size=1, max_size=60))
def test_channels_that_always_accept_get_exactly_the_machines_notices(codes: str) -> None:
    _, received, lost = sweep_all(codes, always(len(codes)))
    state = StackState()
    told: list[Notice] = []
    for i, code in enumerate(codes):
        health = ServiceHealth(service="postgres", status=STATUS[code], latency_ms=1, reason="r")
        decision = decide(state, [health], T0 + timedelta(minutes=i), POLICY)
        state = decision.state
        told.extend(decision.notices)

    def lines(notices: list[Notice]) -> list[tuple[str, str, str, str]]:
        return [(n.service, n.kind, n.severity, n.status) for n in notices]

    assert lines(received[CHAT.block]) == lines(told)
    pager = [n for n in told if n.severity == "critical"]
    assert lines(received[PAGER.block]) == lines(pager)
    assert not any(lost)


def test_a_refused_page_is_sent_again_next_sweep_not_in_thirty_minutes() -> None:
    codes = "uuuuu"
    accepts = {CHAT.block: [True] * 5, PAGER.block: [False, False, False, True, True]}
    _, received, lost = sweep_all(codes, accepts)
    # Alert at sweep 2 (alert_after=2 -> index 1); the pager refuses at 1 and 2, its
    # backoff is 1 then 2 sweeps, so it is tried again at 2 and at 4, and accepts.
    assert [n.kind for n in received[PAGER.block]] == ["alert"]
    assert [n.kind for n in received[CHAT.block]] == ["alert"]
    assert [len(x) for x in lost] == [0, 0, 0, 0, 0]  # chat took the critical line


def test_a_critical_notice_no_channel_took_is_reported() -> None:
    accepts = {CHAT.block: [False] * 3, PAGER.block: [False] * 3}
    _, received, lost = sweep_all("uuu", accepts)
    assert received == {CHAT.block: [], PAGER.block: []}
    assert [[n.kind for n in x] for x in lost] == [[], ["alert"], []]


def test_a_refused_resolve_is_retried_until_accepted() -> None:
    codes = "uuu" + "hhhhhhhhhhhh"
    pager = [True] * 3 + [False] * 8 + [True] * 4
    accepts = {CHAT.block: [True] * len(codes), PAGER.block: pager}
    state, received, _ = sweep_all(codes, accepts)
    # The recovery (a PagerDuty resolve) is refused from sweep 4 to 10, retried at 5, 7
    # and 11 (backoff 1, 2, 4 sweeps), accepted at 11: the incident is resolved.
    assert openings(received[PAGER.block]) == ["a", "v"]
    assert state.owed == {} and state.backoff == {}


def test_merge_rules() -> None:
    assert merge_owed(None, "alert", "critical") == "ac"
    assert merge_owed("ac", "reminder", "critical") == "ac"  # still needs the alert
    assert merge_owed("aw", "escalation", "critical") == "ac"
    assert merge_owed("ac", "recovery", "critical") is None  # never heard: nothing to resolve
    assert merge_owed("ec", "recovery", "critical") == "vc"
    assert merge_owed("vc", "alert", "critical") == "ac"  # a new incident supersedes it
    assert merge_owed("rw", "escalation", "critical") == "ec"


def test_backoff_is_bounded() -> None:
    assert [retry_after(n) for n in (1, 2, 3, 4, 5, 10)] == [1, 2, 4, 8, 15, 15]
