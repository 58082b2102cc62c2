"""Alerts through Prefect notification blocks, routed by severity.

Every flow alerts the same way: build an :class:`Alert`, call :func:`send_alert`. The
stack block's ``notifications`` routes name block documents (built-in SlackWebhook,
DiscordWebhook, PagerDutyWebHook, MicrosoftTeamsWebhook, OpsgenieWebhook,
CustomWebhookNotificationBlock, or our own blocks) and the lowest severity each takes.

Channels are sent to concurrently, each with its own timeout; one that fails is
logged and counted and never fails the caller or delays the others. Apprise-based
blocks swallow failures unless asked, so every send runs inside
``raise_on_failure()``. Blocks of ours that understand alerts natively (Block Kit,
PagerDuty trigger/resolve with a dedup key) expose ``send_alert(alert)`` and get the
structured alert instead of flat text.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Literal
from urllib.parse import urlsplit

from prefect import task
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from blocks.stack import (
    SEVERITY_RANK,
    NotificationRoute,
    Severity,
    Stack,
    scrub_values,
    secret_forms,
)

SEND_TIMEOUT_S = 10.0
# Emitted when a failed run's alert reached no channel; the stack's
# ``ops-undeliverable/<stack>`` automation notifies from the server instead.
UNDELIVERABLE_EVENT = "ops.alert.undeliverable"


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


class ChannelResult(BaseModel):
    block: str
    ok: bool
    error: str | None = None
    seconds: float


class DeliveryReport(BaseModel):
    sent: int
    failed: int
    results: list[ChannelResult]

    @classmethod
    def nothing(cls) -> DeliveryReport:
        """The report of an alert that was not needed."""
        return cls(sent=0, failed=0, results=[])


# scheme://[user[:password]@]host[:port] and whatever follows, up to a space or quote.
_URL_RE = re.compile(
    r"(?P<base>[A-Za-z][A-Za-z0-9+.-]*://)(?:[^/\s'\"<>?#@]*@)?"
    r"(?P<host>[^/\s'\"<>?#]+)(?P<rest>[^\s'\"<>]*)"
)


def redact_urls(text: str) -> str:
    """Every URL in ``text`` cut to ``scheme://host[:port]/***``.

    Webhook URLs carry their token in the path or the query (Slack, Teams, Discord,
    custom receivers), and HTTP errors quote the URL they failed on.
    """

    def cut(match: re.Match[str]) -> str:
        rest = match.group("rest")
        return match.group("base") + match.group("host") + ("/***" if rest.strip("/") else rest)

    return _URL_RE.sub(cut, text)


def block_secret_values(block: object) -> list[str]:
    """The secrets of a loaded channel block, in every escaped form.

    Values of ``SecretStr``/``SecretDict`` fields, and the password, path and query of
    every URL the block holds (secret or not: a webhook URL is a credential).
    """
    found: list[str] = []

    def visit(value: object, secret: bool) -> None:
        if hasattr(value, "get_secret_value"):
            visit(value.get_secret_value(), True)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                visit(getattr(value, name, None), secret)
        elif isinstance(value, Mapping):
            for item in value.values():
                visit(item, secret)
        elif isinstance(value, list | tuple | set):
            for item in value:
                visit(item, secret)
        elif isinstance(value, str):
            if secret:
                found.append(value)
            if "://" in value:
                try:
                    parts = urlsplit(value)
                    password = parts.password
                except ValueError:
                    return
                tail = parts.path + (f"?{parts.query}" if parts.query else "")
                found.extend(v for v in (password, tail, parts.query) if v and v.strip("/"))

    visit(block, False)
    return secret_forms(found)


def scrub_channel_error(stack: Stack, block: object | None, text: str) -> str:
    """An error text of one channel, safe to log and return: no stack secret, no
    secret of the channel's block, no URL beyond its host."""
    extra = block_secret_values(block) if block is not None else []
    return scrub_values(stack.scrub(redact_urls(text)), extra)


# The secrets of the channel being sent to, for the HTTP client's own request logs
# ("HTTP Request: POST https://hooks.slack.com/services/T/B/<token>"). A context
# variable: each concurrent send runs in its own task, so each sees its own block.
_CHANNEL_SECRETS: ContextVar[tuple[str, ...] | None] = ContextVar(
    "ops_notify_channel_secrets", default=None
)


class _ChannelLogFilter(logging.Filter):
    """Scrubs HTTP client records emitted while a channel is being sent to."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = _CHANNEL_SECRETS.get()
        if values is not None:
            record.msg = scrub_values(redact_urls(record.getMessage()), values)
            record.args = None
        return True


_LOG_FILTER = _ChannelLogFilter()
for _name in ("httpx", "httpcore"):
    if not any(isinstance(f, _ChannelLogFilter) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(_LOG_FILTER)


def _logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("ops.notify")


async def _send_one(block_slug: str, alert: Alert, stack: Stack) -> ChannelResult:
    started = time.monotonic()
    block: Any = None
    try:
        block = await Block.aload(block_slug)
        _CHANNEL_SECRETS.set(tuple(block_secret_values(block)))
        async with asyncio.timeout(SEND_TIMEOUT_S):
            if hasattr(block, "send_alert"):
                await block.send_alert(alert)
            else:
                subject = f"[{alert.stack}] {alert.title}"
                with block.raise_on_failure():
                    if hasattr(block, "anotify"):
                        await block.anotify(alert.text(), subject)
                    else:
                        await block.notify(alert.text(), subject)
        return ChannelResult(block=block_slug, ok=True, seconds=time.monotonic() - started)
    except Exception as exc:  # one channel never fails the others
        message = scrub_channel_error(stack, block, f"{type(exc).__name__}: {exc}")[:500]
        return ChannelResult(
            block=block_slug, ok=False, error=message, seconds=time.monotonic() - started
        )


async def deliver(stack: Stack, alert: Alert) -> DeliveryReport:
    """Send ``alert`` to every route that takes its severity, concurrently."""
    alert = alert.model_copy(
        update={
            "title": stack.scrub(alert.title),
            "body": stack.scrub(alert.body),
            "services": [
                {key: stack.scrub(value) for key, value in entry.items()}
                for entry in alert.services
            ],
        }
    )
    sends = [(route, part_for_route(alert, route)) for route in stack.notifications]
    routed = [(route, part) for route, part in sends if part is not None]
    routes = [route for route, _ in routed]
    results = await asyncio.gather(*(_send_one(r.block, part, stack) for r, part in routed))
    logger = _logger()
    for result in results:
        if result.ok:
            logger.info("alert %r sent to %s", alert.title, result.block)
        else:
            logger.warning("alert %r NOT sent to %s: %s", alert.title, result.block, result.error)
    if not routes:
        logger.warning(
            "no notification route takes severity %s for stack %s: alert %r not sent",
            alert.severity,
            alert.stack,
            alert.title,
        )
    failed = sum(1 for r in results if not r.ok)
    return DeliveryReport(sent=len(results) - failed, failed=failed, results=list(results))


# Never cached (two equal alerts are two messages) and nothing worth persisting.
@task(name="send-alert", retries=0, cache_policy=NO_CACHE, persist_result=False)
async def send_alert(stack: Stack, alert: Alert) -> DeliveryReport:
    """Route one alert to the stack's channels; never raises for a failing channel."""
    return await deliver(stack, alert)


def run_link(stack: Stack, flow_run_id: object) -> str | None:
    """Link to a flow run in the Prefect UI, when the stack knows the UI's URL."""
    if not stack.ui_url:
        return None
    return f"{stack.ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"


def report_undeliverable(
    stack_name: str, source: str, reason: str, flow_run_id: object | None = None
) -> None:
    """Emit :data:`UNDELIVERABLE_EVENT` for ``stack_name``: an alert reached nobody.

    The stack's ``ops-undeliverable/<stack>`` automation (see
    :mod:`deployments.automations`) turns it into a notification sent by the server.
    ``reason`` must be scrubbed already; the payload never carries the alert body.
    """
    related = []
    if flow_run_id is not None:
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                "prefect.resource.role": "flow-run",
            }
        )
    emit_event(
        event=UNDELIVERABLE_EVENT,
        resource={
            "prefect.resource.id": f"ops.stack.{stack_name}",
            "prefect.resource.name": stack_name,
            "ops.stack": stack_name,
        },
        related=related,
        payload={"source": source, "reason": reason[:500]},
    )


def alert_on_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow ``on_failure`` hook: tell the stack's channels what broke, with the cause.

    The stack is the run's ``stack`` parameter; the message is the state's message
    (our errors say what broke and what to do), scrubbed of secret values. When the
    stack block does not load, or no channel took the alert, the hook emits
    :data:`UNDELIVERABLE_EVENT` so the server's automation tells someone instead.
    """
    from prefect.utilities.asyncutils import run_coro_as_sync

    logger = _logger()
    stack_name = str(flow_run.parameters.get("stack", "production"))
    try:
        stack = Stack.load_stack(stack_name)
    except Exception as exc:
        logger.error("cannot alert: stack block %r did not load: %s", stack_name, exc)
        report_undeliverable(
            stack_name,
            flow.name,
            f"run {flow_run.name!r} of {flow.name} ended {state.name}, and its alert was not "
            f"sent: stack block {stack_name!r} did not load ({type(exc).__name__})",
            flow_run.id,
        )
        return
    alert = Alert(
        stack=stack_name,
        source=flow.name,
        title=f"{flow.name} failed on {stack_name}",
        body=f"Flow run {flow_run.name!r} ended {state.name}: {state.message or 'no message'}",
        severity="critical",
        dedup_key=f"{stack_name}/{flow.name}/failure",
        link=run_link(stack, flow_run.id),
    )
    report: DeliveryReport | None = run_coro_as_sync(deliver(stack, alert))
    if report is None or report.sent == 0:
        failures = "; ".join(
            f"{r.block}: {r.error}" for r in (report.results if report else []) if not r.ok
        )
        reason = (
            f"run {flow_run.name!r} of {flow.name} ended {state.name}, and its alert reached "
            f"no channel: {failures or 'no notification route takes critical alerts'}"
        )
        logger.error("%s", reason)
        report_undeliverable(stack_name, flow.name, stack.scrub(reason), flow_run.id)
