"""PagerDuty Events API v2: trigger with a stable dedup key, resolve on recovery.

Prefect's built-in ``PagerDutyWebHook`` can only trigger, so every incident it opens
stays open until someone closes it by hand. This block sends one event per service of
an alert: ``trigger`` for an alert, escalation or reminder (PagerDuty folds repeats
into the open incident by ``dedup_key``), ``resolve`` for a recovery, with the dedup
key ``<stack>/<service>``. Services reported as impacted by a failing dependency are
not paged: the dependency's incident lists them::

    from blocks.pagerduty import PagerDutyEvents
    PagerDutyEvents(routing_key="R0UT1NGKEY").save("ops-pager")
    # stack route: {"block": "pagerduty-events/ops-pager", "min_severity": "critical"}
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Literal

import httpx
from prefect.blocks.abstract import NotificationBlock
from pydantic import BaseModel, Field, SecretStr, field_validator

from tasks.errors import NotificationError

__all__ = [
    "PD_SEVERITY",
    "EventAction",
    "PagerDutyEvent",
    "PagerDutyEvents",
    "events_for",
]

if TYPE_CHECKING:
    from tasks.decisions.alerts import Alert

EventAction = Literal["trigger", "resolve"]
PD_SEVERITY: dict[str, str] = {"critical": "critical", "warning": "warning", "info": "info"}


class PagerDutyEvent(BaseModel):
    """One Events v2 event, before the routing key is added."""

    event_action: EventAction
    dedup_key: str
    summary: str = ""
    severity: str = "critical"
    component: str = ""
    group: str = ""
    details: dict[str, str] = Field(default_factory=dict)
    link: str | None = None


def events_for(alert: Alert, source: str) -> list[PagerDutyEvent]:
    """The events one alert makes: per service line, or one for a plain alert."""
    if not alert.services:
        key = alert.dedup_key or f"{alert.stack}/{alert.source}"
        action: EventAction = "resolve" if alert.kind == "recovery" else "trigger"
        return [
            PagerDutyEvent(
                event_action=action,
                dedup_key=key,
                summary=f"[{alert.stack}] {alert.title}"[:1024],
                severity=PD_SEVERITY[alert.severity],
                component=alert.source,
                group=alert.stack,
                details={"body": alert.body[:2000]},
                link=alert.link,
            )
        ]
    events = []
    for entry in alert.services:
        if entry.get("impacted_by"):
            continue  # the failing dependency's incident carries it
        service = entry.get("service", "?")
        key = entry.get("dedup_key") or f"{alert.stack}/{service}"
        kind = entry.get("kind", "alert")
        details = {
            k: entry[k] for k in ("status", "reason", "since", "impacts", "kind") if entry.get(k)
        }
        events.append(
            PagerDutyEvent(
                event_action="resolve" if kind == "recovery" else "trigger",
                dedup_key=key,
                summary=f"[{alert.stack}] {service} {entry.get('status', '')}: "
                f"{entry.get('reason', '')}"[:1024],
                severity=PD_SEVERITY.get(entry.get("severity", alert.severity), "critical"),
                component=service,
                group=alert.stack,
                details=details,
                link=alert.link,
            )
        )
    return events


class PagerDutyEvents(NotificationBlock):
    """PagerDuty Events API v2 with resolve; load it with ``PagerDutyEvents.load("ops-pager")``."""

    _block_type_name = "PagerDuty Events"
    _block_type_slug = "pagerduty-events"
    _description = "PagerDuty Events API v2: trigger with a stable dedup key, resolve on recovery."

    routing_key: SecretStr = Field(
        description="Integration (routing) key of the PagerDuty service."
    )
    events_url: str = Field(
        default="https://events.pagerduty.com/v2/enqueue",
        description="Events API v2 endpoint (EU accounts: https://events.eu.pagerduty.com/...).",
    )
    source: str = Field(default="litellm-langfuse-ops", description="Event source shown in PD.")
    timeout_s: float = Field(default=10.0, gt=0, le=60, description="Seconds per request.")

    @field_validator("events_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value

    def _body(self, event: PagerDutyEvent) -> dict[str, object]:
        body: dict[str, object] = {
            "routing_key": self.routing_key.get_secret_value(),
            "event_action": event.event_action,
            "dedup_key": event.dedup_key,
        }
        if event.event_action == "trigger":
            body["payload"] = {
                "summary": event.summary or event.dedup_key,
                "source": self.source,
                "severity": event.severity,
                "component": event.component,
                "group": event.group,
                "class": "health",
                "custom_details": event.details,
            }
            if event.link:
                body["links"] = [{"href": event.link, "text": "Prefect flow run"}]
        return body

    async def send_events(self, events: list[PagerDutyEvent]) -> None:
        """Send all events concurrently; raise once, naming every refused dedup key."""

        async def one(client: httpx.AsyncClient, event: PagerDutyEvent) -> str | None:
            try:
                response = await client.post(self.events_url, json=self._body(event))
            except httpx.HTTPError as exc:
                return f"{event.event_action} {event.dedup_key}: {type(exc).__name__}"
            if response.status_code != 202:
                return f"{event.event_action} {event.dedup_key}: HTTP {response.status_code}"
            return None

        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            errors = [e for e in await asyncio.gather(*(one(client, e) for e in events)) if e]
        if errors:
            raise NotificationError("PagerDuty refused: " + "; ".join(errors))

    async def send_alert(self, alert: Alert) -> None:
        await self.send_events(events_for(alert, self.source))

    async def notify(self, body: str, subject: str | None = None) -> None:
        # A plain notification (e.g. from an automation) triggers an incident keyed by
        # its subject, so the same automation firing again folds into it.
        key = "prefect/" + hashlib.sha256((subject or body).encode()).hexdigest()[:16]
        event = PagerDutyEvent(
            event_action="trigger",
            dedup_key=key,
            summary=(subject or body)[:1024],
            details={"body": body[:2000]},
        )
        try:
            await self.send_events([event])
        except NotificationError:
            if self._raise_on_failure:
                raise
            self.logger.exception("PagerDuty notification failed")
