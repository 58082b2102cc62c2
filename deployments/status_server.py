"""``/health`` (JSON) and ``/metrics`` (Prometheus text) on the worker service's port.

The original monitor served both from its own process; here the sweeps run as flow
runs, so this small server reads what they publish (the Prefect Variable
``health-status-<stack>``, see ``tasks/health_state.py``) through the Prefect API and
serves it. It runs next to the worker in the worker service::

    python -m deployments.status_server --port $PORT --stacks production,staging

(``--port`` defaults to ``$OPS_HEALTH_PORT`` or ``$PORT``, ``--stacks`` to
``$OPS_HEALTH_STACKS`` or ``$STACK_NAME``). It starts before the worker's bootstrap:
``/health`` answers 200 (``"status": "starting"`` until the Prefect API first answers)
while this server runs, so a platform health check does not restart the worker because
the API is still starting or a database is down; ``/health?strict=1`` answers 503
while starting, when any stack is unhealthy or its latest sweep is older than
``--stale-after`` seconds (the monitor itself stopped).

``/metrics`` also serves the latest forecast of the daily ``capacity`` flow, read from its
per-store Variables every ``CAPACITY_EVERY_S``: ``ops_capacity_bytes``,
``ops_capacity_limit_bytes``, ``ops_capacity_growth_bytes_per_day`` and
``ops_capacity_days_until_full`` per store, so a dashboard can draw days until full, and
``ops_capacity_latest_day_timestamp_seconds`` per stack, so a stopped flow shows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import VariableFilter, VariableFilterName
from prefect.client.schemas.objects import Variable
from pydantic import ValidationError

from tasks.decisions.capacity import StoreHistory
from tasks.decisions.health import MEASURES
from tasks.health_state import HealthStatusDoc, status_variable

__all__ = [
    "CACHE_S",
    "CAPACITY_EVERY_S",
    "FIRST_READ_WAIT_S",
    "STATUS_VALUE",
    "StatusReader",
    "health_body",
    "main",
    "make_handler",
    "metrics_text",
]

STATUS_VALUE: dict[str, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}
CACHE_S = 5.0
CAPACITY_EVERY_S = 60.0  # the capacity flow runs daily; its Variables change rarely
CAPACITY_DROPPED_AFTER_DAYS = 2  # the capacity flow runs daily
CAPACITY_PAGE = 200  # Variables per request: the server refuses more than its default limit, 200
FIRST_READ_WAIT_S = 2.0


class StatusReader:
    """Reads the published status of each stack every ``CACHE_S``, in its own thread.

    A request never waits on the Prefect API: it gets the latest read. The server starts
    before the worker's bootstrap, while the API may still be starting (or retried by
    the client for a minute); until the first read has finished a request waits at most
    ``FIRST_READ_WAIT_S`` and then gets a ``starting`` answer (200 unless strict).
    """

    def __init__(self, stacks: Sequence[str], interval_s: float = CACHE_S) -> None:
        self.stacks = list(stacks)
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._docs: dict[str, HealthStatusDoc | None] = {}
        self._error: str | None = "starting: the Prefect API has not answered yet"
        self._first = threading.Event()  # the first read has finished, well or not
        self._answered = False  # the API has answered once
        self._stop = threading.Event()
        self._capacity: list[StoreHistory] = []
        self._capacity_read_at: float | None = None
        self._capacity_error: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._loop, name="status-reader", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def read(
        self, wait_s: float = FIRST_READ_WAIT_S
    ) -> tuple[dict[str, HealthStatusDoc | None], str | None, bool]:
        """The latest status per stack, the API's error if any, and whether still starting
        (the API has not answered yet)."""
        self._first.wait(wait_s)
        with self._lock:
            return dict(self._docs), self._error, not self._answered

    def capacity(self) -> list[StoreHistory]:
        """The latest forecast of every store of the served stacks (as last read)."""
        with self._lock:
            return list(self._capacity)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._refresh()
            except Exception as exc:  # the thread must outlive any one failed read
                with self._lock:
                    self._error = f"status reader: {type(exc).__name__}"
            self._first.set()
            self._stop.wait(self.interval_s)

    def _refresh(self) -> None:
        docs: dict[str, HealthStatusDoc | None] = {}
        try:
            with get_client(sync_client=True) as client:
                for stack in self.stacks:
                    variable = client.read_variable_by_name(status_variable(stack))
                    docs[stack] = (
                        HealthStatusDoc.model_validate(variable.value)
                        if variable is not None and variable.value
                        else None
                    )
        except (httpx.HTTPError, OSError, ValidationError) as exc:
            # Serve the last known status, and say the API is not answering.
            with self._lock:
                self._error = f"Prefect API: {type(exc).__name__}"
            return
        with self._lock:
            self._docs = docs
            self._error = None
            self._answered = True
        now = time.monotonic()
        if self._capacity_read_at is None or now - self._capacity_read_at >= CAPACITY_EVERY_S:
            # The health docs above stand regardless; the last forecasts read stay served.
            try:
                stores = self._read_capacity()
            except (httpx.HTTPError, OSError, ValueError) as exc:  # ValueError: not JSON
                self._capacity_failed(exc)
                return
            self._capacity_failed(None)
            with self._lock:
                self._capacity, self._capacity_read_at = stores, now

    def _capacity_failed(self, exc: Exception | None) -> None:
        """Says once in the service's log that the forecasts are not read, and why."""
        error = None
        if exc is not None:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            error = type(exc).__name__ + (f" (HTTP {status})" if status else "")
        if error != self._capacity_error:
            print(
                f"capacity forecasts not read from the Prefect API: {error}"
                if error
                else "capacity forecasts read again",
                file=sys.stderr,
                flush=True,
            )
        self._capacity_error = error

    def _read_capacity(self) -> list[StoreHistory]:
        """Every capacity Variable (``capacity-<stack>-<store>``) of the served stacks."""
        found: list[StoreHistory] = []
        # Prefect's client reads Variables only without a filter; the filter is built
        # from Prefect's own schema rather than written by hand.
        names = VariableFilter(name=VariableFilterName(like_="capacity-"))
        with get_client(sync_client=True) as client:
            offset = 0
            while True:
                body = {
                    "variables": names.model_dump(mode="json", exclude_unset=True),
                    "limit": CAPACITY_PAGE,
                    "offset": offset,
                }
                page = Variable.model_validate_list(
                    client.request("POST", "/variables/filter", json=body).json()
                )
                for variable in page:
                    with contextlib.suppress(ValidationError, TypeError):
                        history = StoreHistory.model_validate(variable.value)
                        if history.stack in self.stacks and history.store and history.points:
                            found.append(history)
                if len(page) < CAPACITY_PAGE:
                    return sorted(measured(found), key=lambda h: (h.stack, h.store))
                offset += CAPACITY_PAGE


def measured(histories: Sequence[StoreHistory]) -> list[StoreHistory]:
    """The stores the latest capacity run of their stack measured.

    A store whose latest point is more than ``CAPACITY_DROPPED_AFTER_DAYS`` older than its
    stack's newest (a table that left the largest tables, a bucket removed) keeps its
    Variable, so its history goes on if it comes back, but is not served as current."""
    newest: dict[str, date] = {}
    for h in histories:
        day = date.fromisoformat(h.points[-1][0])
        newest[h.stack] = max(day, newest.get(h.stack, day))
    return [
        h
        for h in histories
        if (newest[h.stack] - date.fromisoformat(h.points[-1][0])).days
        <= CAPACITY_DROPPED_AFTER_DAYS
    ]


def health_body(
    docs: dict[str, HealthStatusDoc | None],
    error: str | None,
    stale_after_s: float,
    starting: bool = False,
) -> tuple[dict[str, object], bool]:
    """The /health document, and whether a strict check should fail."""
    now = datetime.now(UTC)
    stacks: dict[str, object] = {}
    worst = "healthy"
    failing = error is not None or starting
    for stack, doc in docs.items():
        if doc is None:
            stacks[stack] = {"overall": "unknown", "note": "no sweep published yet"}
            failing = True
            continue
        age = (now - doc.checked_at).total_seconds()
        stale = age > stale_after_s
        failing = failing or stale or doc.overall == "unhealthy"
        if STATUS_VALUE[doc.overall] > STATUS_VALUE[worst]:
            worst = doc.overall
        stacks[stack] = {
            "overall": doc.overall,
            "checked_at": doc.checked_at.isoformat(),
            "age_s": round(age, 1),
            "stale": stale,
            "services": {
                s.service: {
                    "status": s.status,
                    "reason": s.reason,
                    "latency_ms": s.latency_ms,
                    "since": s.since.isoformat() if s.since else None,
                    "alerting": s.alerting,
                }
                for s in doc.services
            },
        }
    status = worst if docs and all(docs.values()) else "unknown"
    body: dict[str, object] = {"status": "starting" if starting else status, "stacks": stacks}
    if error:
        body["error"] = error
    return body, failing


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


CAPACITY_GAUGES: dict[str, tuple[str, str]] = {
    "ops_capacity_bytes": ("bytes", "Bytes the store held at the latest capacity run."),
    "ops_capacity_limit_bytes": ("limit", "Bytes the store can hold, where known."),
    "ops_capacity_growth_bytes_per_day": (
        "growth_per_day",
        "Growth in bytes a day (trend of the last week's daily points).",
    ),
    "ops_capacity_days_until_full": (
        "days_until_full",
        "Days until the store is full at that growth, where a limit is known.",
    ),
}


def _capacity_value(history: StoreHistory, field: str) -> float | None:
    if field == "bytes":
        return float(history.points[-1][1])
    value = getattr(history, field)
    return None if value is None else float(value)


def metrics_text(
    docs: dict[str, HealthStatusDoc | None], capacity: Sequence[StoreHistory] = ()
) -> str:
    """Prometheus exposition format (text 0.0.4)."""
    families: list[tuple[str, str, str, list[str]]] = [
        ("ops_health_status", "gauge", "Service status: 0 healthy, 1 degraded, 2 unhealthy.", []),
        ("ops_health_up", "gauge", "1 when the service is healthy.", []),
        ("ops_health_check_latency_seconds", "gauge", "Latency of the latest check.", []),
        ("ops_health_alerting", "gauge", "1 while an incident is open for the service.", []),
        ("ops_health_last_sweep_timestamp_seconds", "gauge", "End of the latest sweep.", []),
        ("ops_health_sweeps_total", "counter", "Sweeps run for the stack.", []),
        ("ops_health_notifications_sent_total", "counter", "Messages delivered.", []),
        (
            "ops_health_notification_failures_total",
            "counter",
            "Channel deliveries that failed.",
            [],
        ),
    ]
    rows = {name: lines for name, _, _, lines in families}
    for stack, doc in docs.items():
        if doc is None:
            continue
        st = _label(stack)
        for s in doc.services:
            labels = f'stack="{st}",service="{_label(s.service)}"'
            rows["ops_health_status"].append(
                f"ops_health_status{{{labels}}} {STATUS_VALUE[s.status]}"
            )
            rows["ops_health_up"].append(f"ops_health_up{{{labels}}} {int(s.status == 'healthy')}")
            rows["ops_health_check_latency_seconds"].append(
                f"ops_health_check_latency_seconds{{{labels}}} {s.latency_ms / 1000:.4f}"
            )
            rows["ops_health_alerting"].append(f"ops_health_alerting{{{labels}}} {int(s.alerting)}")
        label = f'stack="{st}"'
        rows["ops_health_last_sweep_timestamp_seconds"].append(
            f"ops_health_last_sweep_timestamp_seconds{{{label}}} {doc.checked_at.timestamp():.3f}"
        )
        rows["ops_health_sweeps_total"].append(f"ops_health_sweeps_total{{{label}}} {doc.sweeps}")
        rows["ops_health_notifications_sent_total"].append(
            f"ops_health_notifications_sent_total{{{label}}} {doc.notifications_sent}"
        )
        rows["ops_health_notification_failures_total"].append(
            f"ops_health_notification_failures_total{{{label}}} {doc.channel_failures}"
        )
    for measure, help_text in MEASURES.items():
        metric = f"ops_probe_{measure}"
        lines = [
            f'{metric}{{stack="{_label(stack)}",service="{_label(s.service)}"}} '
            f"{float(s.measures[measure])!r}"
            for stack, doc in docs.items()
            if doc is not None
            for s in doc.services
            if measure in s.measures
        ]
        if lines:
            families.append((metric, "gauge", help_text, lines))
    latest: dict[str, date] = {}
    for h in capacity:
        day = date.fromisoformat(h.points[-1][0])
        latest[h.stack] = max(day, latest.get(h.stack, day))
    if latest:
        metric = "ops_capacity_latest_day_timestamp_seconds"
        help_text = (
            "Start (UTC) of the day of the stack's latest capacity point; over 2 days old, "
            "the daily capacity flow has stopped and the forecasts are stale."
        )
        lines = [
            f'{metric}{{stack="{_label(stack)}"}} '
            f"{datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()!r}"
            for stack, day in sorted(latest.items())
        ]
        families.append((metric, "gauge", help_text, lines))
    for metric, (field, help_text) in CAPACITY_GAUGES.items():
        lines = [
            f'{metric}{{stack="{_label(h.stack)}",store="{_label(h.store)}"}} {value!r}'
            for h in capacity
            if (value := _capacity_value(h, field)) is not None
        ]
        if lines:
            families.append((metric, "gauge", help_text, lines))
    out: list[str] = []
    for name, kind, help_text, lines in families:
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *lines]
    return "\n".join(out) + "\n"


def make_handler(reader: StatusReader, stale_after_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ops-status"

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds is not news

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            docs, error, starting = reader.read()
            if url.path == "/health":
                body, failing = health_body(docs, error, stale_after_s, starting)
                strict = parse_qs(url.query).get("strict", ["0"])[0] not in ("0", "")
                code = 503 if strict and failing else 200
                self._send(code, json.dumps(body).encode(), "application/json")
            elif url.path == "/metrics":
                text = metrics_text(docs, reader.capacity())
                self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
            else:
                self._send(404, b'{"error": "try /health or /metrics"}', "application/json")

    return Handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="status_server", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("OPS_HEALTH_PORT") or os.environ.get("PORT") or 8080),
    )
    parser.add_argument("--host", default=os.environ.get("OPS_HEALTH_HOST", "0.0.0.0"))
    parser.add_argument(
        "--stacks",
        default=os.environ.get("OPS_HEALTH_STACKS") or os.environ.get("STACK_NAME", "production"),
        help="comma-separated stack names",
    )
    parser.add_argument("--stale-after", type=float, default=180.0, help="seconds")
    args = parser.parse_args(argv)
    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    reader = StatusReader(stacks)
    reader.start()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(reader, args.stale_after))
    server.daemon_threads = True
    signal.signal(
        signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start()
    )
    print(f"/health and /metrics for {', '.join(stacks)} on {args.host}:{args.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        reader.stop()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
