"""Delivery-aware alerting: a notice counts as told only once its channel accepted it. Pure.

The alert machine (:mod:`tasks.decisions.alerting`) decides *what* to tell; this module
remembers, per service and channel, what a channel has not accepted yet, and plans each
sweep's sends so nothing a channel refused is forgotten:

- :func:`plan_sends`: per channel (a route of the stack), the notices it takes this
  sweep (by severity; a trigger-only pager takes no reminder or recovery) plus what it
  still owes: refused notices still relevant are sent again with the new ones, or on
  their own once the channel's backoff has passed: the next sweep, then after 2, 4, 8
  and at most 15 sweeps (minutes at the production cadence; a fast game day backs off
  as fast).
- :func:`record_delivery`: after the sends, a channel that accepted owes nothing; one
  that refused keeps the notices it was given (merged with what it owed) and backs off.
- What is owed is stored per channel and service as two letters (kind: alert,
  escalation, reminder, recovery as ``a e r v``; severity ``i w c``), so the state stays
  small with every channel refusing every service, and merged: a channel that never
  got the alert gets the alert (with the current status) even if the incident has
  since escalated or been reminded of; an alert it never got and a recovery cancel out
  (nothing to resolve); a newer incident supersedes an undelivered recovery. A refused
  recovery (a PagerDuty resolve) is kept until accepted.
- Relevance: alert, escalation and reminder are owed only while the incident is open,
  a recovery only while it is closed; entries of routes the stack no longer has go.

:func:`group_notices` makes one channel's message of its notices (one per sweep and
channel); :func:`undelivered_critical` names the critical notices of this sweep that no channel
accepted: the sweep emits ``ops.alert.undeliverable`` for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from tasks.decisions.alerting import (
    ChannelBackoff,
    Decision,
    Notice,
    NoticeKind,
    ServiceState,
    StackState,
)
from tasks.decisions.alerts import (
    FOLLOW_UPS,
    SEVERITY_RANK,
    TRIGGER_ONLY_PAGERS,
    Alert,
    NotificationRoute,
    Severity,
    group_title,
)

__all__ = [
    "RETRY_MAX_SWEEPS",
    "dedup_key",
    "group_notices",
    "merge_owed",
    "owed_notice",
    "plan_sends",
    "record_delivery",
    "relevant",
    "retry_after",
    "takes",
    "undelivered_critical",
]

RETRY_MAX_SWEEPS = 15

_OPEN_KINDS: frozenset[str] = frozenset({"alert", "escalation", "reminder"})


def retry_after(failures: int) -> int:
    """Sweeps to wait after ``failures`` refusals in a row: 1 (the next), 2, 4, 8, ... 15."""
    return int(min(2 ** max(failures - 1, 0), RETRY_MAX_SWEEPS))


def takes(route: NotificationRoute, kind: str, severity: Severity) -> bool:
    """Whether ``route`` receives a notice of this kind and severity."""
    if SEVERITY_RANK[severity] < SEVERITY_RANK[route.min_severity]:
        return False
    return not (route.block.split("/", 1)[0] in TRIGGER_ONLY_PAGERS and kind in FOLLOW_UPS)


_KINDS: dict[str, NoticeKind] = {
    "a": "alert",
    "e": "escalation",
    "r": "reminder",
    "v": "recovery",
}
_SEVERITIES: dict[str, Severity] = {"i": "info", "w": "warning", "c": "critical"}


def _word(kind: str, severity: str) -> str:
    return ("v" if kind == "recovery" else kind[0]) + severity[0]


def _split(word: str) -> tuple[NoticeKind, Severity]:
    return _KINDS[word[0]], _SEVERITIES[word[1]]


def merge_owed(owed: str | None, kind: NoticeKind, severity: Severity) -> str | None:
    """What a channel owes after also missing a ``kind`` notice; None when nothing."""
    if owed is None:
        return _word(kind, severity)
    old_kind, old_severity = _split(owed)
    top = max(old_severity, severity, key=lambda s: SEVERITY_RANK[s])
    if kind == "recovery":
        # It never heard of the incident: there is nothing to resolve.
        return None if old_kind == "alert" else _word("recovery", severity)
    if old_kind == "recovery":
        return _word(kind, severity)  # a new incident supersedes the recovery
    if old_kind == "alert":
        return _word("alert", top)  # it still needs the alert, at today's severity
    if old_kind == "escalation" or kind == "escalation":
        return _word("escalation", top)
    return _word(kind, top)


def relevant(owed: str, service: ServiceState | None) -> bool:
    """Whether a notice owed about ``service`` still says something true."""
    kind, _ = _split(owed)
    if service is None:
        return False
    return service.open if kind in _OPEN_KINDS else not service.open


def owed_notice(name: str, owed: str, service: ServiceState) -> Notice:
    """The notice to send again, built from what the service is now."""
    kind, severity = _split(owed)
    return Notice(
        service=name,
        kind=kind,
        status="healthy" if kind == "recovery" else service.status,
        severity=severity,
        reason=service.reason,
        since=service.bad_since or service.since,
    )


def plan_sends(
    state: StackState,
    notices: Sequence[Notice],
    routes: Sequence[NotificationRoute],
) -> dict[str, list[Notice]]:
    """Per channel (route block), the notices to send it this sweep."""
    plan: dict[str, list[Notice]] = {}
    for route in routes:
        new = [n for n in notices if takes(route, n.kind, n.severity)]
        backoff = state.backoff.get(route.block)
        due = bool(new) or backoff is None or backoff.next_sweep <= state.sweeps
        lines: dict[str, Notice] = {n.service: n for n in new}
        if due:
            for name, owed in state.owed.get(route.block, {}).items():
                service = state.services.get(name)
                fresh = lines.get(name)
                if fresh is None:
                    # Owed alone: sent again while it still says something true.
                    if service is not None and relevant(owed, service):
                        lines[name] = owed_notice(name, owed, service)
                    continue
                # A new notice merges with what the channel missed (e.g. it never got
                # the alert: the recovery is moot).
                merged = merge_owed(owed, fresh.kind, fresh.severity)
                if merged is None:
                    del lines[name]
                else:
                    kind, severity = _split(merged)
                    lines[name] = fresh.model_copy(update={"kind": kind, "severity": severity})
        kept = [n for n in lines.values() if takes(route, n.kind, n.severity)]
        if kept:
            plan[route.block] = kept
    return plan


def record_delivery(
    state: StackState,
    sent: Mapping[str, Sequence[Notice]],
    accepted: Mapping[str, bool],
    routes: Sequence[NotificationRoute],
) -> StackState:
    """The state after the sends: what each channel still owes, and its backoff."""
    blocks = {route.block for route in routes}
    owed: dict[str, dict[str, str]] = {}
    for block in blocks:
        kept = {
            name: word
            for name, word in state.owed.get(block, {}).items()
            if relevant(word, state.services.get(name))
        }
        given = sent.get(block, ())
        if accepted.get(block, False):
            for notice in given:
                kept.pop(notice.service, None)
        else:
            route = next(r for r in routes if r.block == block)
            for notice in given:
                kind = notice.kind
                if kind == "escalation" and not takes(route, "alert", "warning"):
                    # A pager heard nothing of the incident before its escalation: for
                    # it the escalation is the opening (and a recovery then is moot).
                    kind = "alert"
                word = merge_owed(kept.pop(notice.service, None), kind, notice.severity)
                if word is not None:
                    kept[notice.service] = word
        if kept:
            owed[block] = dict(sorted(kept.items()))
    backoff = {block: b for block, b in state.backoff.items() if block in owed}
    for block in sent:
        if block in owed and not accepted.get(block, False):
            failures = backoff[block].failures + 1 if block in backoff else 1
            backoff[block] = ChannelBackoff(
                failures=failures, next_sweep=state.sweeps + retry_after(failures)
            )
    # A channel that owes nothing has no backoff: its next notice goes out at once.
    return state.model_copy(update={"owed": owed, "backoff": backoff})


def undelivered_critical(
    notices: Sequence[Notice],
    sent: Mapping[str, Sequence[Notice]],
    accepted: Mapping[str, bool],
) -> list[Notice]:
    """This sweep's critical notices that no channel accepted."""
    lost: list[Notice] = []
    for notice in notices:
        if notice.severity != "critical":
            continue
        took = [
            block
            for block, given in sent.items()
            if any(n.service == notice.service for n in given)
        ]
        if not any(accepted.get(block, False) for block in took):
            lost.append(notice)
    return lost


def group_notices(stack: str, decision: Decision, link: str | None = None) -> Alert | None:
    """One message for the whole sweep, or None when there is nothing to tell.

    Each line carries its own severity (the router sends a pager only the critical
    lines) and a dedup key per stack and service (the pager resolves it on recovery).
    A failing dependency's line names the services it impacts.
    """
    if not decision.notices:
        return None
    impacts: dict[str, list[str]] = {}
    for service, cause in decision.impacted_by.items():
        impacts.setdefault(cause, []).append(service)
    order = {kind: i for i, kind in enumerate(("alert", "escalation", "reminder", "recovery"))}
    notices = sorted(
        decision.notices, key=lambda n: (n.impacted_by is not None, order[n.kind], n.service)
    )
    entries = [
        {
            "service": n.service,
            "kind": n.kind,
            "status": n.status,
            "severity": n.severity,
            "reason": n.reason,
            "since": n.since.isoformat() if n.since else "",
            "impacted_by": n.impacted_by or "",
            "impacts": ", ".join(sorted(impacts.get(n.service, [])))
            if n.kind != "recovery"
            else "",
            "flapping": "true" if n.flapping else "false",
            "dedup_key": dedup_key(stack, n.service),
        }
        for n in notices
    ]
    severity = max((n.severity for n in notices), key=lambda s: SEVERITY_RANK[s])
    kinds = {n.kind for n in notices}
    kind: Literal["alert", "reminder", "recovery"] = (
        "recovery" if kinds == {"recovery"} else "reminder" if kinds == {"reminder"} else "alert"
    )
    return Alert(
        stack=stack,
        source="health-sweep",
        title=group_title(stack, entries),
        body=f"Health sweep of stack {stack}:",
        severity=severity,
        kind=kind,
        dedup_key=f"{stack}/health",
        link=link,
        services=entries,
    )


def dedup_key(stack: str, service: str) -> str:
    """Stable per stack and service: the pager's trigger and resolve share it."""
    return f"{stack}/{service}"
