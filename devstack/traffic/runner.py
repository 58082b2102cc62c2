"""``Traffic``: the three kinds of traffic on one event loop, in a background thread.

The caller's thread only starts, stops and reads the counts; the traffic thread runs
the LiteLLM schedule, the Langfuse ingestion and the spend writer side by side on one
HTTP client, and stops them in order: sending first, then the writes still queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx

from devstack.traffic.langfuse import send_langfuse
from devstack.traffic.litellm import ChatCompletions
from devstack.traffic.report import Tally, TrafficReport
from devstack.traffic.spend import SpendLogRow, SpendWriter, write_spend

if TYPE_CHECKING:
    from devstack.core import Devstack

__all__ = ["Traffic", "flowing"]


class Traffic:
    """Drives the devstack from a background thread with its own event loop.

    Use it as a context manager (or ``start()``/``stop()``); ``report()`` gives the
    counts so far at any moment, ``wait_for()`` blocks until enough requests completed.
    Stopping lets in-flight requests finish and their rows be written.
    """

    def __init__(
        self,
        stack: Devstack,
        rate: float = 20.0,
        *,
        duration_s: float | None = None,
        max_requests: int | None = None,
        stream_share: float = 0.2,
        fail_share: float = 0.05,
        langfuse_rate: float | None = None,
        concurrency: int = 32,
        request_timeout_s: float = 30.0,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 requests per second")
        if not (0 <= stream_share <= 1 and 0 <= fail_share <= 1):
            raise ValueError("stream_share and fail_share are fractions between 0 and 1")
        self.stack = stack
        self.rate = rate
        self.duration_s = duration_s or None
        self.max_requests = max_requests
        self.stream_share = stream_share
        self.fail_share = fail_share
        self.langfuse_rate = langfuse_rate if langfuse_rate is not None else max(1.0, rate / 10)
        self.concurrency = concurrency
        self.request_timeout_s = request_timeout_s
        self.run_id = uuid.uuid4().hex[:8]
        self._api_key = hashlib.sha256(stack.creds.litellm_master_key.encode()).hexdigest()

        self._tally = Tally()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ---- control (any thread) -----------------------------------------------------

    def __enter__(self) -> Traffic:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this Traffic was already started")
        self._thread = threading.Thread(target=self._run, name="devstack-traffic", daemon=True)
        self._thread.start()
        self._ready.wait()

    def stop(self, timeout_s: float = 60.0) -> TrafficReport:
        """Stop sending, let in-flight requests and writes finish, and report."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(f"traffic did not drain within {timeout_s:.0f}s")
        if self._error is not None:
            raise RuntimeError(f"traffic failed: {self._error!r}") from self._error
        return self.report()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_for(self, *, requests: int, timeout_s: float) -> TrafficReport:
        """Block until ``requests`` requests completed; TimeoutError after ``timeout_s``."""
        self._tally.wait_for(requests, timeout_s, running=lambda: self.running)
        return self.report()

    def wait(self, timeout_s: float) -> bool:
        """Wait until the traffic ends by itself (duration or request count reached)."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def report(self) -> TrafficReport:
        return self._tally.report()

    # ---- the loop (traffic thread) ----------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by stop(); the thread must not die silently
            self._error = exc
        finally:
            self._tally.stopped()
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._tally.started()
        self._ready.set()
        spend = SpendWriter(
            self.stack.admin_dsn("railway"),
            on_written=self._tally.count,
            on_error=self._tally.postgres_error,
        )
        spend_rows: asyncio.Queue[SpendLogRow | None] = asyncio.Queue()
        completions = ChatCompletions(
            self.stack,
            self._tally,
            run_id=self.run_id,
            api_key=self._api_key,
            rate=self.rate,
            duration_s=self.duration_s,
            max_requests=self.max_requests,
            stream_share=self.stream_share,
            fail_share=self.fail_share,
            concurrency=self.concurrency,
        )
        # Idle connections are dropped well before uvicorn's keep-alive timeout (5 s):
        # a request sent on a connection the server is closing at that instant fails with
        # a ReadError, which is the client's race, not a fault of the stack.
        limits = httpx.Limits(
            max_connections=self.concurrency,
            max_keepalive_connections=self.concurrency,
            keepalive_expiry=2.0,
        )
        async with httpx.AsyncClient(limits=limits, timeout=self.request_timeout_s) as client:
            writer = asyncio.create_task(write_spend(spend, spend_rows))
            sending_done = asyncio.Event()
            langfuse = asyncio.create_task(
                send_langfuse(
                    client,
                    self.stack,
                    self._tally,
                    sending_done,
                    run_id=self.run_id,
                    rate=self.langfuse_rate,
                )
            )
            try:
                await completions.send(client, spend_rows, self._stop)
            finally:
                sending_done.set()
                await spend_rows.put(None)
                await asyncio.gather(writer, langfuse, return_exceptions=True)
                await spend.close()


@contextlib.contextmanager
def flowing(
    stack: Devstack, rate: float, *, warm_up_s: float = 2.0, timeout_s: float = 120.0
) -> Iterator[Traffic]:
    """Traffic at ``rate`` requests/s (a fifth streamed, 5 % to the failing model),
    already flowing when it yields (``warm_up_s`` seconds' worth of requests completed),
    drained and stopped after; ``report()`` on it still gives the final counts."""
    traffic = Traffic(stack, rate=rate, stream_share=0.2, fail_share=0.05)
    traffic.start()
    try:
        traffic.wait_for(requests=int(rate * warm_up_s), timeout_s=timeout_s)
        yield traffic
    finally:
        traffic.stop()
