"""A heartbeat outside Railway: each sweep pings an operator's monitor (Healthchecks.io style).

A dead worker, a dead Prefect server or a dead Railway project cannot page anyone; an
outside monitor that stops hearing from the sweep can. With ``HEARTBEAT_URL`` set (the
stack block's ``heartbeat_url``, a secret), every sweep of the stack pings, in the
convention Healthchecks.io and its clones (healthchecks, Cronitor's ping API, Uptime
Kuma push) understand:

    <url>/start   the sweep began (the monitor measures its duration)
    <url>         the sweep checked every service and told what there was to tell
    <url>/fail    the sweep broke (a short, scrubbed reason as the body)

each with ``?rid=<flow run id>`` so the monitor pairs start and end. The monitor is
told about the *monitor*, not about the stack's health: a sweep that finds Postgres down
and pages succeeds. A skipped sweep pings nothing. A ping that fails is logged (without
the URL) and never fails the sweep. Unset: nothing is sent.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import httpx
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from blocks.stack import Stack
from tasks.notify import http_logs_scrubbed, redact_urls

__all__ = ["PING_TIMEOUT_S", "Signal", "ping", "ping_url"]

PING_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 10_000  # Healthchecks.io keeps the first 100 kB; a reason needs far less

Signal = Literal["start", "success", "fail"]
_SUFFIX: dict[Signal, str] = {"start": "/start", "success": "", "fail": "/fail"}


def ping_url(base: str, signal: Signal) -> str:
    """``base`` with the signal's suffix: ``/start``, nothing, or ``/fail``."""
    return base.rstrip("/") + _SUFFIX[signal]


def _logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("ops.heartbeat")


async def ping(stack: Stack, signal: Signal, *, run_id: str | None, body: str = "") -> bool:
    """Ping the stack's heartbeat URL; whether the monitor took it (True when unset)."""
    if stack.heartbeat_url is None:
        return True
    url = ping_url(stack.heartbeat_url.get_secret_value(), signal)
    params = {"rid": run_id} if run_id else {}
    content = stack.scrub(body).encode()[:MAX_BODY_BYTES]
    try:
        with http_logs_scrubbed(stack.secret_values()):
            async with httpx.AsyncClient(timeout=PING_TIMEOUT_S) as client:
                response = await client.post(url, params=params, content=content)
                response.raise_for_status()
    except httpx.HTTPError as exc:
        reason = stack.error_line(redact_urls(f"{type(exc).__name__}: {exc}"), limit=200)
        _logger().warning(
            "heartbeat %s of stack %s not delivered: %s", signal, stack.stack_name, reason
        )
        return False
    return True
