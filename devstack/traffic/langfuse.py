"""Direct Langfuse ingestion beside the LiteLLM callback's, at a lower rate.

Each batch creates a trace, updates the previous one and scores it; now and then an
earlier score id is sent again with a new value. Langfuse upserts by id, so rows for
existing ids keep landing in ClickHouse as they do in production.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from devstack.traffic.report import Tally, reason

if TYPE_CHECKING:
    from devstack.core import Devstack

__all__ = ["langfuse_batch", "send_langfuse"]


def langfuse_batch(run_id: str, tick: int) -> list[dict[str, Any]]:
    """A new trace, an update of the previous one, and a score; every fifth tick
    re-sends an earlier score id with a new value (Langfuse upserts scores by id)."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def event(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "type": kind, "timestamp": now, "body": body}

    trace_id = f"traffic-{run_id}-{tick}"
    batch = [
        event(
            "trace-create",
            {
                "id": trace_id,
                "timestamp": now,
                "name": "traffic",
                "userId": f"traffic-user-{tick % 25}",
                "sessionId": f"traffic-{run_id}",
                "input": {"tick": tick},
                "tags": ["devstack-traffic"],
            },
        )
    ]
    if tick > 0:
        previous = f"traffic-{run_id}-{tick - 1}"
        batch.append(
            event(
                "trace-create",
                {"id": previous, "output": {"done": True}, "metadata": {"updated": str(tick)}},
            )
        )
        batch.append(
            event(
                "score-create",
                {
                    "id": f"score-{run_id}-{tick - 1}",
                    "traceId": previous,
                    "name": "quality",
                    "value": (tick % 10) / 10,
                    "dataType": "NUMERIC",
                },
            )
        )
    if tick >= 5 and tick % 5 == 0:
        batch.append(
            event(
                "score-create",
                {
                    "id": f"score-{run_id}-{tick - 5}",
                    "traceId": f"traffic-{run_id}-{tick - 5}",
                    "name": "quality",
                    "value": 1.0,
                    "dataType": "NUMERIC",
                    "comment": "re-scored",
                },
            )
        )
    return batch


async def send_langfuse(
    client: httpx.AsyncClient,
    stack: Devstack,
    tally: Tally,
    done: asyncio.Event,
    *,
    run_id: str,
    rate: float,
) -> None:
    """Post a batch to the ingestion API ``rate`` times a second until ``done`` is set."""
    c = stack.creds
    token = base64.b64encode(f"{c.langfuse_public_key}:{c.langfuse_secret_key}".encode())
    headers = {"Authorization": f"Basic {token.decode()}"}
    url = f"{stack.url('langfuse')}/api/public/ingestion"
    start = asyncio.get_running_loop().time()
    tick = 0
    while not done.is_set():
        due = start + tick / rate
        delay = due - asyncio.get_running_loop().time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), delay)
            if done.is_set():
                break
        try:
            response = await client.post(
                url, json={"batch": langfuse_batch(run_id, tick)}, headers=headers
            )
            if response.status_code == 207:
                tally.count("langfuse_events", len(response.json().get("successes", [])))
                for error in response.json().get("errors", []):
                    tally.langfuse_error(f"event {error.get('status')}")
            else:
                tally.langfuse_error(f"HTTP {response.status_code}")
        except httpx.HTTPError as exc:
            tally.langfuse_error(reason(exc))
        tick += 1
