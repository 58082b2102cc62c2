"""Tasks that talk to Langfuse's public API (basic auth: public key, secret key).

Langfuse ingests asynchronously (web queues, worker writes to ClickHouse), so a trace
sent a moment ago is looked up by polling ``GET /api/public/traces/{id}`` until it
appears or the deadline passes. 404 means "not yet"; 401/403 means the keys are wrong,
which no amount of waiting fixes.
"""

from __future__ import annotations

import time

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from blocks.stack import Stack
from tasks.decisions.checks import CheckResult
from tasks.decisions.deploy_judges import judge_trace

__all__ = [
    "wait_for_trace",
]


@task(name="wait-for-trace", cache_policy=NO_CACHE, persist_result=False)
def wait_for_trace(
    stack: Stack, trace_id: str, timeout_s: float, poll_s: float, request_timeout_s: float
) -> CheckResult:
    """Poll Langfuse for ``trace_id`` until found, refused, or ``timeout_s`` has passed."""
    logger = get_run_logger()
    auth = (stack.langfuse_public_key, stack.langfuse_secret_key.get_secret_value())
    url = f"{stack.langfuse_url}/api/public/traces/{trace_id}"
    started = time.monotonic()
    deadline = started + timeout_s
    last_status: int | None = None
    with httpx.Client(auth=auth, timeout=request_timeout_s) as client:
        while True:
            try:
                response = client.get(url)
                last_status = response.status_code
            except httpx.HTTPError as exc:
                logger.info("trace lookup failed, retrying: %s", stack.error_line(str(exc)))
                response = None
            if response is not None:
                if response.is_success:
                    return judge_trace(True, trace_id, time.monotonic() - started, 200, timeout_s)
                if response.status_code in (401, 403):
                    break
            if time.monotonic() + poll_s > deadline:
                break
            time.sleep(poll_s)  # polling an external system: Langfuse ingests asynchronously
    return judge_trace(False, trace_id, time.monotonic() - started, last_status, timeout_s)
