"""The Langfuse stand-in's memory: traces with their observations and scores.

Events arrive from legacy batch ingestion or as OTLP spans (``add_otel_span`` maps
Langfuse's span attributes onto the same trace and observation fields). With a
ClickHouse writer every change is also queued as a full new row version, the way
langfuse-worker writes it (see clickhouse_writer.py).
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

from clickhouse_writer import ClickHouseWriter, observation_row, score_row, trace_row

PROJECT = {"id": "standin-project", "name": "standin", "metadata": {}}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def nanos_iso(nanos: int) -> str | None:
    if not nanos:
        return None
    return (
        datetime.fromtimestamp(nanos / 1e9, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _maybe_json(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _prefixed(attrs: dict, prefix: str) -> dict:
    """Langfuse flattens metadata dicts into `<prefix>.<key>` attributes."""
    out = {}
    whole = attrs.get(prefix)
    if isinstance(_maybe_json(whole), dict):
        out.update(_maybe_json(whole))
    for key, value in attrs.items():
        if key.startswith(prefix + "."):
            out[key[len(prefix) + 1 :]] = _maybe_json(value)
    return out


class State:
    def __init__(self, hang_seconds: float, writer: ClickHouseWriter | None = None):
        self.lock = threading.Lock()
        self.traces: dict[str, dict] = {}
        # Each change is also queued as a full ClickHouse row (None: memory only).
        self.writer = writer
        self.observation_created: dict[str, datetime] = {}
        self.mode = "ok"
        self.hang_seconds = hang_seconds
        # Hanging requests wait on this; a mode change sets it to release them
        # at once, and installs a fresh event for the next hang.
        self.mode_changed = threading.Event()
        # Ingestion through the queue: jobs enqueued, refused by Redis, stored.
        self.ingestion = {"enqueued": 0, "enqueue_failed": 0, "applied": 0}

    def count(self, what: str) -> None:
        with self.lock:
            self.ingestion[what] += 1

    def set_mode(self, mode: str):
        with self.lock:
            self.mode = mode
            released, self.mode_changed = self.mode_changed, threading.Event()
        released.set()

    def _trace(self, trace_id: str, timestamp: str | None = None) -> dict:
        # Langfuse creates a trace implicitly when an observation names one.
        trace = self.traces.get(trace_id)
        if trace is None:
            stamp = timestamp or now_iso()
            trace = self.traces[trace_id] = {
                "id": trace_id,
                "timestamp": stamp,
                "name": None,
                "input": None,
                "output": None,
                "sessionId": None,
                "release": None,
                "version": None,
                "userId": None,
                "metadata": {},
                "tags": [],
                "public": False,
                "environment": "default",
                "projectId": PROJECT["id"],
                "htmlPath": f"/project/{PROJECT['id']}/traces/{trace_id}",
                "latency": 0,
                "totalCost": 0,
                "observations": [],
                "scores": [],
                "createdAt": stamp,
                "updatedAt": stamp,
            }
        return trace

    def upsert_trace(self, body: dict, timestamp: str | None):
        with self.lock:
            trace = self._trace(str(body["id"]), body.get("timestamp") or timestamp)
            for key, value in body.items():
                if key == "metadata" and isinstance(value, dict):
                    trace["metadata"].update(value)
                elif value is not None and key != "id":
                    trace[key] = value
            trace["updatedAt"] = now_iso()
            if self.writer is not None:
                self.writer.add("traces", trace_row(trace))

    def upsert_observation(self, obs_type: str, body: dict, timestamp: str | None):
        with self.lock:
            trace = self._trace(str(body.get("traceId") or body["id"]), timestamp)
            for obs in trace["observations"]:
                if obs["id"] == body.get("id"):
                    obs.update({k: v for k, v in body.items() if v is not None})
                    break
            else:
                obs = {"type": obs_type, "startTime": body.get("startTime") or timestamp, **body}
                obs["traceId"] = trace["id"]
                trace["observations"].append(obs)
            trace["updatedAt"] = now_iso()
            if self.writer is not None:
                created = self.observation_created.setdefault(str(obs["id"]), datetime.now(UTC))
                self.writer.add("observations", observation_row(obs, PROJECT["id"], created))

    def add_score(self, body: dict, timestamp: str | None = None):
        with self.lock:
            if body.get("traceId"):
                self._trace(str(body["traceId"]))["scores"].append(body)
            if self.writer is not None:
                self.writer.add("scores", score_row(body, PROJECT["id"], timestamp))

    def add_otel_span(self, span: dict):
        attrs = span["attributes"]
        trace_body = {
            "id": span["trace_id"],
            "name": attrs.get("langfuse.trace.name")
            or (None if span["parent_id"] else span["name"]),
            "userId": attrs.get("user.id") or attrs.get("langfuse.user.id"),
            "sessionId": attrs.get("session.id") or attrs.get("langfuse.session.id"),
            "tags": _maybe_json(attrs.get("langfuse.trace.tags")),
            "metadata": _prefixed(attrs, "langfuse.trace.metadata"),
            "input": _maybe_json(attrs.get("langfuse.trace.input")),
            "output": _maybe_json(attrs.get("langfuse.trace.output")),
            "release": attrs.get("langfuse.release"),
            "version": attrs.get("langfuse.version"),
            "environment": attrs.get("langfuse.environment"),
        }
        self.upsert_trace(trace_body, nanos_iso(span["start"]))
        self.upsert_observation(
            str(attrs.get("langfuse.observation.type") or "span").upper(),
            {
                "id": span["span_id"],
                "traceId": span["trace_id"],
                "name": span["name"],
                "parentObservationId": span["parent_id"] or None,
                "startTime": nanos_iso(span["start"]),
                "endTime": nanos_iso(span["end"]),
                "model": attrs.get("langfuse.observation.model.name"),
                "input": _maybe_json(attrs.get("langfuse.observation.input")),
                "output": _maybe_json(attrs.get("langfuse.observation.output")),
                "metadata": _prefixed(attrs, "langfuse.observation.metadata"),
                "level": attrs.get("langfuse.observation.level") or "DEFAULT",
                "usageDetails": _maybe_json(attrs.get("langfuse.observation.usage_details")),
            },
            nanos_iso(span["start"]),
        )

    def stats(self) -> dict:
        with self.lock:
            held, ingestion = len(self.traces), dict(self.ingestion)
        writer = self.writer.stats() if self.writer is not None else {"enabled": False}
        return {"traces": held, "clickhouse": writer, "ingestion": ingestion}

    def snapshot(self, trace_id: str) -> dict | None:
        with self.lock:
            trace = self.traces.get(trace_id)
            return json.loads(json.dumps(trace)) if trace else None
