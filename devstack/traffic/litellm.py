"""Chat completions through the real LiteLLM proxy, open-loop at a fixed rate.

The schedule does not wait for answers (at most ``concurrency`` in flight); requests
rotate over the mock models, a share is streamed (read to ``[DONE]``) and a share is
sent on purpose to the failing model. Every request the proxy answered becomes a
``SpendLogRow`` on the queue the spend writer drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from devstack.traffic.report import Tally, reason
from devstack.traffic.schedule import FAILING_MODEL, pick
from devstack.traffic.spend import SpendLogRow

if TYPE_CHECKING:
    from devstack.core import Devstack

__all__ = ["ChatCompletions"]


class ChatCompletions:
    """The request schedule and each request through ``/v1/chat/completions``."""

    def __init__(
        self,
        stack: Devstack,
        tally: Tally,
        *,
        run_id: str,
        api_key: str,
        rate: float,
        duration_s: float | None,
        max_requests: int | None,
        stream_share: float,
        fail_share: float,
        concurrency: int,
    ) -> None:
        self.stack = stack
        self.tally = tally
        self.run_id = run_id
        self.api_key = api_key
        self.rate = rate
        self.duration_s = duration_s
        self.max_requests = max_requests
        self.stream_share = stream_share
        self.fail_share = fail_share
        self.concurrency = concurrency

    async def send(
        self,
        client: httpx.AsyncClient,
        spend_rows: asyncio.Queue[SpendLogRow | None],
        stop: asyncio.Event,
    ) -> None:
        """Send on schedule until the duration or request count is reached or ``stop``
        is set, then wait for every request in flight."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        slots = asyncio.Semaphore(self.concurrency)
        in_flight: set[asyncio.Task[None]] = set()
        index = failing = 0
        while self.max_requests is None or index < self.max_requests:
            due = start + index / self.rate
            if self.duration_s is not None and due - start >= self.duration_s:
                break
            if not await _sleep_until(due, stop):
                break
            # Open loop: the schedule never waits for answers. When every connection is
            # busy and a backlog has formed, the slot is dropped (and counted) rather than
            # queued without bound.
            if len(in_flight) >= self.concurrency * 2:
                self.tally.count("skipped")
                index += 1
                continue
            model, stream = pick(
                index, failing, fail_share=self.fail_share, stream_share=self.stream_share
            )
            failing += model == FAILING_MODEL
            task = asyncio.create_task(
                self._one_request(client, slots, spend_rows, index, model, stream)
            )
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            index += 1
        # Drain: what was sent is answered and written before the run ends.
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _one_request(
        self,
        client: httpx.AsyncClient,
        slots: asyncio.Semaphore,
        spend_rows: asyncio.Queue[SpendLogRow | None],
        index: int,
        model: str,
        stream: bool,
    ) -> None:
        async with slots:
            to_failing = model == FAILING_MODEL
            self.tally.count("sent")
            self.tally.count("sent_to_failing" if to_failing else "sent_to_ok")
            if stream:
                self.tally.count("streaming")
            user = f"traffic-user-{index % 25}"
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": f"traffic {self.run_id} #{index}"}],
                "user": user,
                # A session of ten turns: LiteLLM's callback files them under one trace,
                # so each turn is an update of that trace (a new version in ClickHouse).
                "metadata": {
                    "tags": ["devstack-traffic"],
                    "session_id": f"traffic-{self.run_id}-{index // 10}",
                },
            }
            if stream:
                body["stream"] = True
                body["stream_options"] = {"include_usage": True}
            headers = {"Authorization": f"Bearer {self.stack.creds.litellm_master_key}"}
            url = f"{self.stack.url('litellm')}/v1/chat/completions"
            started_wall = datetime.now(UTC).replace(tzinfo=None)
            started = time.monotonic()
            failure: str | None = None
            usage: dict[str, Any] = {}
            cost = 0.0
            call_id = ""
            try:
                if stream:
                    async with client.stream("POST", url, json=body, headers=headers) as response:
                        call_id, cost = _call_facts(response)
                        if response.status_code != 200:
                            await response.aread()
                            failure = f"HTTP {response.status_code}"
                        else:
                            done, usage = await _read_stream(response)
                            if not done:
                                failure = "stream ended before [DONE]"
                else:
                    response = await client.post(url, json=body, headers=headers)
                    call_id, cost = _call_facts(response)
                    if response.status_code != 200:
                        failure = f"HTTP {response.status_code}"
                    else:
                        usage = response.json().get("usage") or {}
            except httpx.HTTPError as exc:
                failure = reason(exc)
            latency = time.monotonic() - started
            self.tally.record(to_failing, stream, failure, latency)
            if failure is not None and not failure.startswith("HTTP") and not call_id:
                # The proxy never answered: LiteLLM logs nothing for such a request.
                return
            await spend_rows.put(
                SpendLogRow(
                    request_id=call_id or f"traffic-{uuid.uuid4()}",
                    model_group=model,
                    model=model,
                    provider="anthropic" if model.startswith("claude") else "openai",
                    user=user,
                    api_key=self.api_key,
                    start=started_wall,
                    end=datetime.now(UTC).replace(tzinfo=None),
                    ok=failure is None,
                    spend=cost,
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0),
                )
            )


async def _sleep_until(due: float, stop: asyncio.Event) -> bool:
    """Sleep until loop time ``due``; False if asked to stop meanwhile."""
    delay = due - asyncio.get_running_loop().time()
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return not stop.is_set()


def _call_facts(response: httpx.Response) -> tuple[str, float]:
    call_id = response.headers.get("x-litellm-call-id", "")
    try:
        cost = float(response.headers.get("x-litellm-response-cost") or 0)
    except ValueError:
        cost = 0.0
    return call_id, cost


async def _read_stream(response: httpx.Response) -> tuple[bool, dict[str, Any]]:
    import json

    usage: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return True, usage
        with contextlib.suppress(ValueError):
            usage = json.loads(data).get("usage") or usage
    return False, usage
