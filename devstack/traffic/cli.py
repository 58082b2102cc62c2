"""``python -m devstack traffic``: the traffic from the shell, until a deadline or Ctrl-C."""

from __future__ import annotations

import signal
import threading
import time
from typing import TYPE_CHECKING

from devstack.traffic.runner import Traffic
from devstack.traffic.schedule import FAILING_MODEL

if TYPE_CHECKING:
    from devstack.core import Devstack

__all__ = ["run_traffic"]


def run_traffic(
    stack: Devstack,
    *,
    rate: float,
    duration_s: float = 0.0,
    stream_share: float = 0.2,
    fail_share: float = 0.05,
    concurrency: int = 32,
    every_s: float | None = None,
) -> int:
    """``python -m devstack traffic``: run until the duration ends, Ctrl-C or SIGTERM,
    print the report; exit 1 if anything failed that was not meant to."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    traffic = Traffic(
        stack,
        rate,
        duration_s=duration_s or None,
        stream_share=stream_share,
        fail_share=fail_share,
        concurrency=concurrency,
    )
    print(
        f"traffic: {rate:g} requests/s through {stack.url('litellm')} "
        f"({'until Ctrl-C' if not duration_s else f'{duration_s:g}s'}), "
        f"{stream_share:.0%} streamed, {fail_share:.0%} to {FAILING_MODEL!r}",
        flush=True,
    )
    try:
        traffic.start()
        next_report = time.monotonic() + (every_s or 0)
        while traffic.running and not stop.is_set():
            stop.wait(0.2)
            if every_s and time.monotonic() >= next_report:
                print(traffic.report().summary(), flush=True)
                next_report += every_s
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("traffic: stopping (draining in-flight requests)", flush=True)
    report = traffic.stop()
    print(report.summary(), flush=True)
    return 1 if report.unexpected or report.postgres_errors else 0
