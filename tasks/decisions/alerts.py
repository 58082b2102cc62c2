"""Alerts as data: severities, routes, the alert model, and which part each route gets.

Pure: no Prefect, no driver, no I/O (``tasks.decisions`` import contract). The blocks
that deliver alerts (``blocks/slack.py``, ``blocks/pagerduty.py``) and the sender
(``tasks/notify.py``) build on these.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "FOLLOW_UPS",
    "KIND_WORDS",
    "SEVERITY_RANK",
    "TRIGGER_ONLY_PAGERS",
    "Alert",
    "NotificationRoute",
    "Severity",
    "group_title",
    "part_for_route",
    "service_line",
    "without_follow_ups",
]

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}


class NotificationRoute(BaseModel):
    """One notification channel and the lowest severity it receives.

    ``block`` is a Prefect block document slug, ``<block-type-slug>/<document-name>``
    (``slack-webhook/ops-chat``, ``pager-duty-webhook/ops-pager``). Chat channels take
    ``warning`` (degraded services, failed runs); a pager takes ``critical`` only.
    """

    model_config = ConfigDict(frozen=True)

    block: str = Field(description="Block document slug: <block-type-slug>/<document-name>.")
    min_severity: Severity = Field(
        default="warning", description="Lowest severity sent here: info, warning or critical."
    )

    @field_validator("block")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9-]+/[A-Za-z0-9_.-]+", value):
            raise ValueError(
                "must be '<block-type-slug>/<document-name>', e.g. 'slack-webhook/ops-chat'"
            )
        return value

    def accepts(self, severity: Severity) -> bool:
        return SEVERITY_RANK[severity] >= SEVERITY_RANK[self.min_severity]


class Alert(BaseModel):
    """One message to people: what happened, how bad, where to look."""

    stack: str
    source: str = Field(description="Flow or check that raised it, e.g. 'backup'.")
    title: str
    body: str
    severity: Severity = "critical"
    kind: Literal["alert", "reminder", "recovery", "info"] = "alert"
    dedup_key: str | None = Field(
        default=None, description="Stable key per stack and service, so a pager can resolve it."
    )
    link: str | None = Field(default=None, description="Link to the flow run in the UI.")
    services: list[dict[str, str]] = Field(
        default_factory=list,
        description="Per-service lines for grouped alerts: service, status, reason, since.",
    )

    def text(self) -> str:
        lines = [self.body, *(service_line(entry) for entry in self.services)]
        if self.link:
            lines.append(f"Run: {self.link}")
        return "\n".join(line for line in lines if line)

    def for_route(self, min_severity: Severity) -> Alert | None:
        """The part of this alert a route taking ``min_severity`` and up receives.

        Grouped alerts carry a severity per service: a chat channel gets every line, a
        pager only the lines at its severity (a degraded service never pages). None
        when nothing is left for the route.
        """
        if not self.services:
            return self if SEVERITY_RANK[self.severity] >= SEVERITY_RANK[min_severity] else None
        kept = [
            entry
            for entry in self.services
            if SEVERITY_RANK[entry.get("severity", self.severity)] >= SEVERITY_RANK[min_severity]
        ]
        if not kept:
            return None
        if len(kept) == len(self.services):
            return self
        return self.model_copy(
            update={
                "services": kept,
                "title": group_title(self.stack, kept),
                "severity": max(
                    (entry.get("severity", self.severity) for entry in kept),
                    key=lambda s: SEVERITY_RANK[s],
                ),
            }
        )


# Built-in pagers can only trigger: a reminder would open a second incident and a
# recovery one that says "recovered". They get alerts and escalations, nothing else;
# the PagerDutyEvents block (blocks/pagerduty.py) resolves its incidents instead.
TRIGGER_ONLY_PAGERS: frozenset[str] = frozenset({"pager-duty-webhook", "opsgenie-webhook"})
FOLLOW_UPS: frozenset[str] = frozenset({"reminder", "recovery"})


def without_follow_ups(alert: Alert) -> Alert | None:
    """What a trigger-only pager receives of ``alert``: no reminder or recovery line."""
    if not alert.services:
        return None if alert.kind in FOLLOW_UPS else alert
    kept = [entry for entry in alert.services if entry.get("kind", "alert") not in FOLLOW_UPS]
    if not kept:
        return None
    if len(kept) == len(alert.services):
        return alert
    return alert.model_copy(
        update={
            "services": kept,
            "title": group_title(alert.stack, kept),
            "kind": "alert",
            "severity": max(
                (entry.get("severity", alert.severity) for entry in kept),
                key=lambda s: SEVERITY_RANK[s],
            ),
        }
    )


def part_for_route(alert: Alert, route: NotificationRoute) -> Alert | None:
    """The part of ``alert`` one route receives: its severities; for a trigger-only
    pager no follow-ups."""
    part = alert.for_route(route.min_severity)
    if part is not None and route.block.split("/", 1)[0] in TRIGGER_ONLY_PAGERS:
        return without_follow_ups(part)
    return part


KIND_WORDS: dict[str, str] = {
    "alert": "is",
    "escalation": "got worse:",
    "reminder": "still",
    "recovery": "recovered",
}


def service_line(entry: dict[str, str]) -> str:
    """``postgres: unhealthy since 10:02 UTC: cannot connect (impacts langfuse-web)``."""
    kind = entry.get("kind", "alert")
    status = "healthy" if kind == "recovery" else entry.get("status", "")
    since = entry.get("since", "")
    line = f"- {entry.get('service', '?')} [{kind}]: {status}"
    if since and kind != "recovery":
        line += f" since {since[11:16]} UTC"
    if kind == "recovery" and since:
        line += f" (bad since {since[11:16]} UTC)"
    if kind != "recovery":
        line += f": {entry.get('reason', '')}"
    if entry.get("impacted_by"):
        line += f" (impacted by {entry['impacted_by']})"
    if entry.get("impacts"):
        line += f" (impacts {entry['impacts']})"
    if entry.get("flapping") == "true":
        line += " (flapping)"
    return line


def group_title(stack: str, services: list[dict[str, str]]) -> str:
    """One line naming what changed, roots first: ``postgres unhealthy; 2 impacted``.

    The stack is not repeated: channels prefix the subject with ``[<stack>]``.
    """
    roots = [e for e in services if not e.get("impacted_by")]
    impacted = len(services) - len(roots)
    bad = [e for e in roots if e.get("kind") != "recovery"]
    recovered = [e for e in roots if e.get("kind") == "recovery"]
    parts = []
    if bad:
        parts.append(", ".join(f"{e['service']} {e.get('status', '')}" for e in bad[:4]))
        if len(bad) > 4:
            parts[-1] += f" and {len(bad) - 4} more"
    if recovered:
        parts.append("recovered: " + ", ".join(e["service"] for e in recovered[:4]))
    if impacted:
        parts.append(f"{impacted} impacted")
    if roots and all(e.get("kind") == "reminder" for e in roots):
        parts.insert(0, "reminder")
    return "; ".join(parts or [f"health of {stack}"])
