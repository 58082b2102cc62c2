"""What the traffic did: the counts kept while it runs, and the report made of them.

``Tally`` is written by the traffic thread and read by any other; one condition guards
every count, so a report is taken in one piece and ``wait_for`` wakes as soon as a
request completes. ``TrafficReport`` is the frozen snapshot handed out.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from devstack.traffic.schedule import FAILING_MODEL

__all__ = ["LATENCY_WINDOW", "Tally", "TrafficReport", "percentile", "reason"]

# Percentiles are taken over the most recent answers, so a long run stays bounded.
LATENCY_WINDOW = 10_000


class TrafficReport(BaseModel):
    """What the traffic did so far: counts, rate, latency, rows written."""

    model_config = ConfigDict(frozen=True)

    elapsed_s: float
    sent: int = Field(description="requests started")
    completed: int = Field(description="requests answered or failed")
    ok: int
    sent_to_failing: int = Field(description=f"requests sent on purpose to {FAILING_MODEL!r}")
    failed_on_purpose: int
    failed_unexpectedly: dict[str, int] = Field(description="reason -> count")
    streaming: int = Field(description="streaming requests started")
    streamed: int = Field(description="streaming requests read to [DONE]")
    skipped: int = Field(description="schedule slots dropped: every connection was busy")
    achieved_rate: float = Field(description="completed requests per second")
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    spend_log_rows: int
    daily_spend_upserts: int
    postgres_errors: dict[str, int]
    langfuse_events: int = Field(description="ingestion events the stand-in accepted")
    langfuse_errors: dict[str, int]

    @property
    def unexpected(self) -> int:
        return sum(self.failed_unexpectedly.values())

    def summary(self) -> str:
        def reasons(counts: dict[str, int]) -> str:
            return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"

        p50 = f"{self.latency_p50_ms:.0f}" if self.latency_p50_ms is not None else "-"
        p95 = f"{self.latency_p95_ms:.0f}" if self.latency_p95_ms is not None else "-"
        return "\n".join(
            [
                f"{self.elapsed_s:.1f}s: {self.sent} sent, {self.completed} completed "
                f"({self.achieved_rate:.1f}/s), {self.skipped} slots skipped",
                f"  ok {self.ok}; failed on purpose {self.failed_on_purpose}/"
                f"{self.sent_to_failing}; failed unexpectedly {self.unexpected} "
                f"({reasons(self.failed_unexpectedly)})",
                f"  streaming {self.streamed}/{self.streaming} read to the end; "
                f"latency p50 {p50} ms, p95 {p95} ms",
                f"  Postgres: {self.spend_log_rows} spend-log rows, "
                f"{self.daily_spend_upserts} daily-spend upserts, errors: "
                f"{reasons(self.postgres_errors)}",
                f"  Langfuse: {self.langfuse_events} events accepted, errors: "
                f"{reasons(self.langfuse_errors)}",
            ]
        )


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def reason(exc: BaseException) -> str:
    """How an error is counted: by its type, so the report groups alike failures."""
    return type(exc).__name__


class Tally:
    """The running counts behind a ``TrafficReport``, safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._counts: Counter[str] = Counter()
        self._unexpected: Counter[str] = Counter()
        self._pg_errors: Counter[str] = Counter()
        self._lf_errors: Counter[str] = Counter()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._started_at: float | None = None
        self._stopped_at: float | None = None

    def started(self) -> None:
        with self._lock:
            self._started_at = time.monotonic()

    def stopped(self) -> None:
        with self._lock:
            self._stopped_at = time.monotonic()
            self._lock.notify_all()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n
            if key == "completed":
                self._lock.notify_all()

    def postgres_error(self, reason: str) -> None:
        with self._lock:
            self._pg_errors[reason] += 1

    def langfuse_error(self, reason: str) -> None:
        with self._lock:
            self._lf_errors[reason] += 1

    def record(self, to_failing: bool, stream: bool, failure: str | None, latency: float) -> None:
        """One answered (or failed) request: sorted into ok, failed on purpose, or
        failed unexpectedly with its reason."""
        with self._lock:
            if failure is None and to_failing:
                self._unexpected[f"{FAILING_MODEL} answered"] += 1
            elif failure is None:
                self._counts["ok"] += 1
                self._counts["streamed"] += stream
                self._latencies.append(latency)
            elif to_failing and failure.startswith("HTTP 5"):
                self._counts["failed_on_purpose"] += 1
            else:
                self._unexpected[failure] += 1
            self._counts["completed"] += 1
            self._lock.notify_all()

    def wait_for(self, requests: int, timeout_s: float, *, running: Callable[[], bool]) -> None:
        """Block until ``requests`` requests completed; TimeoutError after ``timeout_s``,
        RuntimeError if the traffic ended (``running`` false) before that."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._counts["completed"] < requests:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{self._counts['completed']} of {requests} requests completed "
                        f"within {timeout_s:.0f}s"
                    )
                if not running() and self._stopped_at is not None:
                    raise RuntimeError(
                        f"traffic ended after {self._counts['completed']} of {requests} requests"
                    )
                self._lock.wait(min(remaining, 0.5))

    def report(self) -> TrafficReport:
        with self._lock:
            counts = dict(self._counts)
            latencies = list(self._latencies)
            started = self._started_at or time.monotonic()
            elapsed = (self._stopped_at or time.monotonic()) - started
            unexpected = dict(self._unexpected)
            pg_errors, lf_errors = dict(self._pg_errors), dict(self._lf_errors)
        completed = counts.get("completed", 0)
        p50, p95 = percentile(latencies, 0.50), percentile(latencies, 0.95)
        return TrafficReport(
            elapsed_s=round(elapsed, 3),
            sent=counts.get("sent", 0),
            completed=completed,
            ok=counts.get("ok", 0),
            sent_to_failing=counts.get("sent_to_failing", 0),
            failed_on_purpose=counts.get("failed_on_purpose", 0),
            failed_unexpectedly=unexpected,
            streaming=counts.get("streaming", 0),
            streamed=counts.get("streamed", 0),
            skipped=counts.get("skipped", 0),
            achieved_rate=round(completed / elapsed, 2) if elapsed > 0 else 0.0,
            latency_p50_ms=round(p50 * 1000, 1) if p50 is not None else None,
            latency_p95_ms=round(p95 * 1000, 1) if p95 is not None else None,
            spend_log_rows=counts.get("spend_log", 0),
            daily_spend_upserts=counts.get("daily", 0),
            postgres_errors=pg_errors,
            langfuse_events=counts.get("langfuse_events", 0),
            langfuse_errors=lf_errors,
        )
