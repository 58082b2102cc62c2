"""One ClickHouse client for all the probes of one sweep.

clickhouse-connect opens a client with a handshake that reads the server's version,
time zone and its whole ``system.settings``; three probes (``clickhouse``, ``migrations``,
``clickhouse-storage``) each opening their own would pay it three times a minute. Within
:func:`sweep_clients` (``run_checks`` opens it) they share one client, which the library
documents as safe across threads without a session (we open none). A failed connect is
kept and raised to every probe that asks, so ClickHouse down or hanging costs one
connect timeout, not one per probe. Outside a sweep, each caller gets its own client.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar

from clickhouse_connect.driver.client import Client

from blocks.stack import Stack
from tasks.clickhouse import clickhouse_client

__all__ = ["probe_clickhouse", "sweep_clients"]


class _SharedClickHouse:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # one connect at a time; never taken by close()
        self._client: Client | None = None
        self._error: BaseException | None = None
        self._closed = False

    def get(self, stack: Stack, timeout_s: float) -> Client:
        with self._lock:
            if self._closed:
                raise RuntimeError("the sweep ended before this probe connected")
            if self._error is not None:
                raise self._error
            if self._client is None:
                try:
                    client = clickhouse_client(stack, timeout_s, connect_timeout_s=timeout_s)
                except Exception as exc:
                    self._error = exc
                    raise
                self._client = client
                if self._closed:  # the sweep ended during the connect: nobody else closes it
                    self.close()
                    raise RuntimeError("the sweep ended before this probe connected")
            return self._client

    def close(self) -> None:
        """Closes the client without waiting for a connect in progress (a hanging
        ClickHouse holds one until its timeout; the sweep's loop must not): that connect
        closes its own client when it ends."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


_SWEEP: ContextVar[_SharedClickHouse | None] = ContextVar("sweep_clickhouse", default=None)


@contextlib.contextmanager
def sweep_clients() -> Iterator[None]:
    """The probes run inside share their ClickHouse client; closed on the way out."""
    shared = _SharedClickHouse()
    token = _SWEEP.set(shared)
    try:
        yield
    finally:
        _SWEEP.reset(token)
        shared.close()


@contextlib.contextmanager
def probe_clickhouse(stack: Stack, timeout_s: float) -> Iterator[Client]:
    """The sweep's shared client, or a client of its own outside a sweep."""
    shared = _SWEEP.get()
    if shared is not None:
        yield shared.get(stack, timeout_s)
        return
    client = clickhouse_client(stack, timeout_s, connect_timeout_s=timeout_s)
    try:
        yield client
    finally:
        client.close()
