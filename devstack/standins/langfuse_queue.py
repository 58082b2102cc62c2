"""The stand-in's ingestion queue: a real BullMQ queue in the devstack's real Redis.

Langfuse's web accepts an ingestion request, puts it on the ``ingestion-queue`` and
answers; langfuse-worker consumes the queue and writes to ClickHouse. The stand-in does
the same with the ``bullmq`` package (the Python port of the Node library Langfuse uses,
same keys and Lua scripts): web enqueues (:class:`Producer`), the worker role consumes
(:class:`Consumer`) and hands each job back to web's ``/__standin/apply``, which stores
it. A worker told to ``stall`` keeps answering its health check and stops taking jobs:
the failure a queue probe exists to see (langfuse#15509).

Both run an asyncio loop in a thread of their own: the HTTP handlers are threads.
``REDIS_CONNECTION_STRING`` (as Langfuse takes it) turns the queue on; without it web
stores at once. Web stores at once too when Redis refuses the job, and says so in its
stats, so a Redis outage shows as failed enqueues, not as lost traces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import urllib.request
from collections.abc import Coroutine
from typing import Any

QUEUE = "ingestion-queue"
PREFIX = "bull"
# How long an idle worker blocks on the queue's marker before it looks again (bullmq's
# default is 5 s). Measured on the devstack with the default: now and then the worker
# missed a job's wake-up and took it only when the next job arrived, 20-45 s later, so a
# deploy-verify canary's trace looked lost. With 1 s every trace was stored within the second.
DRAIN_DELAY_S = 1
JOB_OPTS = {"removeOnComplete": True, "removeOnFail": 10_000, "attempts": 3}


class _Loop:
    """An asyncio loop in a daemon thread, for callers that are threads."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)


def _connection(url: str):  # type: ignore[no-untyped-def]
    import redis.asyncio

    return redis.asyncio.Redis.from_url(
        url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
    )


class Producer:
    """Web's side: put an ingestion job on the queue."""

    def __init__(self, url: str) -> None:
        from bullmq import Queue

        self._loop = _Loop("ingestion-producer")

        async def make() -> Any:
            return Queue(QUEUE, {"connection": _connection(url), "prefix": PREFIX})

        self._queue = self._loop.run(make(), 10)

    @classmethod
    def from_env(cls) -> Producer | None:
        url = os.environ.get("REDIS_CONNECTION_STRING")
        return cls(url) if url else None

    def enqueue(self, kind: str, payload: Any) -> bool:
        """True once the queue holds the job; False when Redis refused it."""
        try:
            self._loop.run(self._queue.add(kind, {"kind": kind, "payload": payload}, JOB_OPTS), 6)
            return True
        except Exception:
            return False


class Consumer:
    """The worker's side: take jobs and hand them to web's ``/__standin/apply``."""

    def __init__(self, url: str, web_url: str, concurrency: int = 8) -> None:
        self._url, self._web_url, self._concurrency = url, web_url, concurrency
        self._loop = _Loop("ingestion-consumer")
        self._worker: Any = None
        self.stalled = False
        self.hold_s = 0.0  # "delay": each job is stored only once it is this old
        self._loop.run(self._start(), 10)

    @classmethod
    def from_env(cls) -> Consumer | None:
        url, web = os.environ.get("REDIS_CONNECTION_STRING"), os.environ.get("STANDIN_WEB_URL")
        return cls(url, web) if url and web else None

    async def _start(self) -> None:
        from bullmq import Worker

        self._worker = Worker(
            QUEUE,
            self._process,
            {
                "connection": self._url,
                "prefix": PREFIX,
                "concurrency": self._concurrency,
                "drainDelay": DRAIN_DELAY_S,
            },
        )

    async def _process(self, job: Any, token: str) -> str:
        # The fault "delay" holds each job until it is hold_s old, as a slow worker would.
        wait_s = job.timestamp / 1000 + self.hold_s - time.time()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        body = json.dumps(job.data).encode()
        request = urllib.request.Request(
            f"{self._web_url}/__standin/apply",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=10).read())
        return "stored"

    def stall(self) -> None:
        """Stop taking jobs (the ones in hand finish); health keeps answering."""
        if not self.stalled:
            self.stalled = True
            self._loop.run(self._worker.pause(do_not_wait_active=True), 10)

    def resume(self) -> None:
        if self.stalled:
            self.stalled = False
            self._loop.loop.call_soon_threadsafe(self._worker.resume)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run(self._worker.close(), 10)
