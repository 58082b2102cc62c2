"""The queue probe against the devstack's real Redis, with traffic flowing.

The Langfuse stand-in ingests through a real BullMQ queue (``ingestion-queue``) that its
worker consumes; ``stall`` makes the worker stop consuming while its health check keeps
answering OK: the failure only the queues show (langfuse#15509).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from devstack.core import Devstack
from tasks.decisions.health import ServiceHealth
from tasks.health import HealthThresholds, run_checks

pytestmark = pytest.mark.usefixtures("traffic")

QUICK = HealthThresholds(
    queue_wait_degraded_s=3, queue_wait_unhealthy_s=8, litellm_requires_db=False
)


def probe(stack: Any, thresholds: HealthThresholds = QUICK) -> dict[str, ServiceHealth]:
    found = asyncio.run(run_checks(stack, 5.0, ["langfuse-worker", "langfuse-queues"], thresholds))
    return {r.service: r for r in found}


def until(
    stack: Any, ok: Callable[[dict[str, ServiceHealth]], bool], timeout_s: float, what: str
) -> list[dict[str, ServiceHealth]]:
    """Probe until ``ok`` holds; every reading on the way, for the test to inspect."""
    seen: list[dict[str, ServiceHealth]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        seen.append(probe(stack))
        if ok(seen[-1]):
            return seen
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s: {seen[-1]}"
        time.sleep(0.5)


def ingest_trace(devstack: Devstack) -> str:
    trace_id = str(uuid.uuid4())
    event = {"id": str(uuid.uuid4()), "type": "trace-create", "body": {"id": trace_id}}
    response = httpx.post(
        f"{devstack.url('langfuse')}/api/public/ingestion",
        json={"batch": [event]},
        auth=(devstack.creds.langfuse_public_key, devstack.creds.langfuse_secret_key),
        timeout=10,
    )
    assert response.status_code == 207 and response.json()["successes"], response.text
    return trace_id


def trace_readable(devstack: Devstack, trace_id: str) -> bool:
    auth = (devstack.creds.langfuse_public_key, devstack.creds.langfuse_secret_key)
    url = f"{devstack.url('langfuse')}/api/public/traces/{trace_id}"
    return httpx.get(url, auth=auth, timeout=5).status_code == 200


@pytest.fixture
def worker_fault(devstack: Devstack) -> Iterator[Callable[[str], None]]:
    url = devstack.url("langfuse_worker")

    def set_mode(mode: str) -> None:
        httpx.post(f"{url}/__standin/fault", json={"mode": mode}, timeout=10).raise_for_status()

    yield set_mode
    set_mode("ok")


def test_a_stalled_consumer_goes_degraded_then_unhealthy_and_recovers(
    stack: Any, devstack: Devstack, worker_fault: Callable[[str], None]
) -> None:
    until(stack, lambda r: r["langfuse-queues"].status == "healthy", 60, "a draining queue")
    worker_fault("stall")
    trace_id = ingest_trace(devstack)

    degraded = until(
        stack, lambda r: r["langfuse-queues"].status != "healthy", 60, "the stall seen"
    )[-1]
    assert degraded["langfuse-queues"].status == "degraded"
    assert "none completed since it arrived: stalled consumer" in degraded["langfuse-queues"].reason
    assert "restart langfuse-worker" in degraded["langfuse-queues"].reason
    # The silent part: the worker's own health check says nothing is wrong.
    assert degraded["langfuse-worker"].status == "healthy"
    assert not trace_readable(devstack, trace_id)

    unhealthy = until(stack, lambda r: r["langfuse-queues"].status == "unhealthy", 60, "unhealthy")[
        -1
    ]
    assert "stalled consumer" in unhealthy["langfuse-queues"].reason

    worker_fault("ok")
    recovered = until(stack, lambda r: r["langfuse-queues"].status == "healthy", 90, "recovery")
    assert "0 failed" in recovered[-1]["langfuse-queues"].reason
    deadline = time.monotonic() + 30
    while not trace_readable(devstack, trace_id):  # nothing lost: the queue kept it
        assert time.monotonic() < deadline, f"trace {trace_id} never stored after the stall"
        time.sleep(0.2)


def waiting(reading: ServiceHealth) -> int:
    match = re.search(r"queue\(s\): (\d+) waiting", reading.reason)
    assert match, reading.reason
    return int(match.group(1))


def test_a_burst_that_drains_is_not_an_alert(
    stack: Any, worker_fault: Callable[[str], None]
) -> None:
    """2,000 jobs at once: the queue is deep for a moment, its oldest job stays young."""
    from bullmq import Queue

    async def burst() -> None:
        conn = stack.redis_async(timeout_s=10, decode_responses=True)
        queue = Queue("ingestion-queue", {"connection": conn, "prefix": "bull"})
        try:
            await queue.addBulk(
                [{"name": "batch", "data": {"kind": "batch", "payload": []}}] * 2000
            )
        finally:
            await conn.aclose()

    calm = HealthThresholds(
        queue_wait_degraded_s=60, queue_wait_unhealthy_s=300, litellm_requires_db=False
    )
    worker_fault("stall")  # held while the burst lands, so the probe sees it whole
    asyncio.run(burst())
    seen = [probe(stack, calm)["langfuse-queues"]]
    assert waiting(seen[0]) >= 2000
    worker_fault("ok")
    deadline = time.monotonic() + 120
    while waiting(seen[-1]) > 0:
        assert time.monotonic() < deadline, f"the burst never drained: {seen[-1]}"
        time.sleep(0.2)
        seen.append(probe(stack, calm)["langfuse-queues"])
    assert {r.status for r in seen} == {"healthy"}, seen
