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
import contextlib
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from prefect import task
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from pydantic import BaseModel

from blocks.stack import Stack
from tasks.decisions.alerts import Alert, NotificationRoute, part_for_route
from tasks.decisions.redaction import error_line, scrub_values, secret_forms

__all__ = [
    "SEND_TIMEOUT_S",
    "UNDELIVERABLE_EVENT",
    "ChannelResult",
    "DeliveryReport",
    "alert_on_failure",
    "block_secret_values",
    "deliver",
    "http_logs_scrubbed",
    "redact_urls",
    "report_undeliverable",
    "resolve_on_success",
    "run_link",
    "scrub_channel_error",
    "send_alert",
    "send_alerts",
]

SEND_TIMEOUT_S = 10.0
# Emitted when a failed run's alert reached no channel; the stack's
# ``ops-undeliverable/<stack>`` automation notifies from the server instead.
UNDELIVERABLE_EVENT = "ops.alert.undeliverable"


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


@contextlib.contextmanager
def http_logs_scrubbed(values: Sequence[str]) -> Iterator[None]:
    """While inside, HTTP client log records lose ``values`` and every URL's path."""
    token = _CHANNEL_SECRETS.set(tuple(values))
    try:
        yield
    finally:
        _CHANNEL_SECRETS.reset(token)


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
        message = error_line(exc, lambda text: scrub_channel_error(stack, block, text), limit=500)
        return ChannelResult(
            block=block_slug, ok=False, error=message, seconds=time.monotonic() - started
        )


async def deliver(
    stack: Stack, alert: Alert, routes: Sequence[NotificationRoute] | None = None
) -> DeliveryReport:
    """Send ``alert`` to every route that takes its severity, concurrently.

    ``routes`` narrows the send to some of the stack's routes (a notice one channel
    refused is sent again to that channel only).
    """
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
    chosen = stack.notifications if routes is None else list(routes)
    sends = [(route, part_for_route(alert, route)) for route in chosen]
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


@task(name="send-alerts", retries=0, cache_policy=NO_CACHE, persist_result=False)
async def send_alerts(stack: Stack, alerts: Mapping[str, Alert]) -> DeliveryReport:
    """One alert per channel (route block), all at once; never raises for a failing one."""
    routes = {route.block: route for route in stack.notifications}
    reports = await asyncio.gather(
        *(deliver(stack, alert, [routes[block]]) for block, alert in alerts.items())
    )
    results = [result for report in reports for result in report.results]
    failed = sum(1 for r in results if not r.ok)
    return DeliveryReport(sent=len(results) - failed, failed=failed, results=results)


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
    _mark_failure_open(stack_name, flow.name, str(flow_run.name), str(state.name))
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


def _open_failure_name(stack_name: str, flow_name: str) -> str:
    """The Variable that marks a flow's failure alert as open until a run succeeds."""
    name = re.sub(r"[^a-z0-9_-]", "-", f"open-failure-{stack_name}-{flow_name}".lower())
    return name[:255]


def _mark_failure_open(stack_name: str, flow_name: str, run_name: str, state_name: str) -> None:
    from datetime import UTC, datetime

    from prefect.variables import Variable

    try:
        Variable.set(
            _open_failure_name(stack_name, flow_name),
            {"run": run_name, "state": state_name, "at": datetime.now(UTC).isoformat()},
            tags=["ops-alert"],
            overwrite=True,
        )
    except Exception as exc:  # the alert went out; only its later resolve is at stake
        _logger().warning("could not record the open failure of %s: %s", flow_name, exc)


def resolve_on_success(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow ``on_completion`` hook: after a failure was alerted, the next run that
    completes tells the same channels it is over, and resolves the page (same dedup key).

    Sent only when a failure is open; kept open (and sent again by the next success)
    while a channel refuses it, so a pager incident never stays open for ever.
    """
    from prefect.utilities.asyncutils import run_coro_as_sync
    from prefect.variables import Variable

    logger = _logger()
    stack_name = str(flow_run.parameters.get("stack", "production"))
    name = _open_failure_name(stack_name, flow.name)
    try:
        opened = Variable.get(name)
        if not opened:
            return
        stack = Stack.load_stack(stack_name)
    except Exception as exc:
        logger.warning("cannot resolve an earlier failure of %s: %s", flow.name, exc)
        return
    since = opened.get("run", "an earlier run") if isinstance(opened, dict) else "an earlier run"
    alert = Alert(
        stack=stack_name,
        source=flow.name,
        title=f"{flow.name} recovered on {stack_name}",
        body=f"Flow run {flow_run.name!r} completed: the failure of {since!r} is over.",
        severity="critical",
        kind="recovery",
        dedup_key=f"{stack_name}/{flow.name}/failure",
        link=run_link(stack, flow_run.id),
    )
    report: DeliveryReport | None = run_coro_as_sync(deliver(stack, alert))
    if report is not None and report.sent > 0 and all(r.ok for r in report.results):
        Variable.unset(name)
    else:
        logger.warning("the recovery of %s was not accepted by every channel: kept", flow.name)
