"""Test stand-in for Langfuse web (and, with --role worker, langfuse-worker).

Langfuse ships only as container images and there is no container engine
here, so tests talk to this instead. It implements just what the ops flows and
LiteLLM's `langfuse` callback touch: health/readiness, legacy batch ingestion,
OTLP trace export (what LiteLLM >= 1.106 with langfuse SDK v4 sends), project
lookup and trace lookup. Everything is kept in memory; with CLICKHOUSE_URL,
CLICKHOUSE_USER and CLICKHOUSE_PASSWORD set (as real Langfuse takes them) every
ingested trace, observation and score is also written to ClickHouse's
`traces`/`observations`/`scores` the way langfuse-worker writes them (see
clickhouse_writer.py): an update is a new version of the row.

    python devstack/standins/langfuse.py --port 13000 --public-key pk-lf-x --secret-key sk-lf-x
    python devstack/standins/langfuse.py --port 13030 --role worker

Test-only control (no auth), under /__standin/:
    POST /__standin/fault {"mode": "ok"|"hang"|"error500"|"drop_ingestion"}
    GET  /__standin/fault        current mode
    GET  /__standin/traces       JSON list of stored trace ids
    GET  /__standin/stats        traces held, ClickHouse rows written/pending/dropped, errors
    POST /__standin/reset        forget all traces

Unlike real Langfuse, ingested data is visible at once (no queue/worker delay).
Readiness: GET /api/public/health (web), GET /api/health (worker). Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hmac
import json
import re
import struct
import sys
import threading
import zlib
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from clickhouse_writer import ClickHouseWriter, observation_row, score_row, trace_row
from serve import serve

VERSION = "3.x-standin"
PROJECT = {"id": "standin-project", "name": "standin", "metadata": {}}
FAULT_MODES = {"ok", "hang", "error500", "drop_ingestion"}
OBSERVATION_TYPES = {
    "span-create": "SPAN",
    "span-update": "SPAN",
    "generation-create": "GENERATION",
    "generation-update": "GENERATION",
    "event-create": "EVENT",
}


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


# --- minimal protobuf reader ------------------------------------------------
# The OTLP exporter in langfuse SDK v4 posts application/x-protobuf. Decoding
# the few messages we need by hand keeps the stand-in free of extra packages.


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def pb_fields(buf: bytes):
    """Yield (field_number, value) for one message; length-delimited values stay bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, value


def pb_any_value(buf: bytes):
    for field, value in pb_fields(buf):
        if field == 1:
            return value.decode("utf-8", "replace")
        if field == 2:
            return bool(value)
        if field == 3:
            return value - (1 << 64) if value >= 1 << 63 else value
        if field == 4:
            return struct.unpack("<d", value)[0]
        if field == 5:  # ArrayValue
            return [pb_any_value(v) for f, v in pb_fields(value) if f == 1]
        if field == 6:  # KeyValueList
            return dict(pb_key_value(v) for f, v in pb_fields(value) if f == 1)
        if field == 7:
            return value.hex()
    return None


def pb_key_value(buf: bytes) -> tuple[str, object]:
    key, value = "", None
    for field, raw in pb_fields(buf):
        if field == 1:
            key = raw.decode("utf-8", "replace")
        elif field == 2:
            value = pb_any_value(raw)
    return key, value


def otlp_spans_from_protobuf(body: bytes) -> list[dict]:
    """ExportTraceServiceRequest -> flat list of span dicts
    (trace_id, span_id, parent_id, name, start, end, attributes)."""
    spans = []
    for f1, resource_spans in pb_fields(body):
        if f1 != 1:
            continue
        for f2, scope_spans in pb_fields(resource_spans):
            if f2 != 2:
                continue
            for f3, span in pb_fields(scope_spans):
                if f3 != 2:
                    continue
                item = {
                    "trace_id": "",
                    "span_id": "",
                    "parent_id": "",
                    "name": "",
                    "start": 0,
                    "end": 0,
                    "attributes": {},
                }
                for field, value in pb_fields(span):
                    if field == 1:
                        item["trace_id"] = value.hex()
                    elif field == 2:
                        item["span_id"] = value.hex()
                    elif field == 4:
                        item["parent_id"] = value.hex()
                    elif field == 5:
                        item["name"] = value.decode("utf-8", "replace")
                    elif field == 7:
                        item["start"] = struct.unpack("<Q", value)[0]
                    elif field == 8:
                        item["end"] = struct.unpack("<Q", value)[0]
                    elif field == 9:
                        key, val = pb_key_value(value)
                        item["attributes"][key] = val
                spans.append(item)
    return spans


def _json_any_value(value: dict):
    if not isinstance(value, dict):
        return value
    for key in ("stringValue", "boolValue", "doubleValue", "bytesValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_json_any_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return {
            kv["key"]: _json_any_value(kv.get("value"))
            for kv in value["kvlistValue"].get("values", [])
        }
    return None


def otlp_spans_from_json(doc: dict) -> list[dict]:
    # OTLP/JSON encodes trace and span ids as hex strings.
    spans = []
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                spans.append(
                    {
                        "trace_id": str(span.get("traceId", "")).lower(),
                        "span_id": str(span.get("spanId", "")).lower(),
                        "parent_id": str(span.get("parentSpanId", "") or "").lower(),
                        "name": span.get("name", ""),
                        "start": int(span.get("startTimeUnixNano", 0) or 0),
                        "end": int(span.get("endTimeUnixNano", 0) or 0),
                        "attributes": {
                            a["key"]: _json_any_value(a.get("value"))
                            for a in span.get("attributes", [])
                        },
                    }
                )
    return spans


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


# --- state --------------------------------------------------------------------


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
            held = len(self.traces)
        writer = self.writer.stats() if self.writer is not None else {"enabled": False}
        return {"traces": held, "clickhouse": writer}

    def snapshot(self, trace_id: str) -> dict | None:
        with self.lock:
            trace = self.traces.get(trace_id)
            return json.loads(json.dumps(trace)) if trace else None


# --- HTTP -----------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LangfuseStandin"
    state: State
    role: str
    public_key: str
    secret_key: str

    def log_message(self, fmt, *args):
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        encoding = self.headers.get("Content-Encoding", "").lower()
        if encoding == "gzip":
            data = gzip.decompress(data)
        elif encoding == "deflate":
            data = zlib.decompress(data)
        return data

    def _send(self, status: int, payload, content_type="application/json"):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        if not auth.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
        except Exception:
            return False
        return hmac.compare_digest(user.encode(), self.public_key.encode()) and hmac.compare_digest(
            password, self.secret_key
        )

    def _deny(self):
        self._send(401, {"message": "Invalid authorization header", "error": "Unauthorized"})

    def _health(self, payload: dict):
        """Health endpoints are the only ones that obey hang/error500."""
        mode, released = self.state.mode, self.state.mode_changed
        if mode == "hang":
            released.wait(self.state.hang_seconds)
            mode = self.state.mode  # after the hang, answer as the current mode says
        if mode == "error500":
            return self._send(500, {"status": "ERROR", "message": "standin fault: error500"})
        self._send(200, payload)

    def do_GET(self):
        url = urlsplit(self.path)
        path, query = url.path.rstrip("/") or "/", parse_qs(url.query)
        if path == "/__standin/traces":
            with self.state.lock:
                return self._send(200, list(self.state.traces))
        if path == "/__standin/fault":
            return self._send(200, {"mode": self.state.mode})
        if path == "/__standin/stats":
            return self._send(200, self.state.stats())
        if self.role == "worker":
            if path == "/api/health":
                return self._health({"status": "OK", "version": VERSION})
            return self._send(404, {"message": "Not found"})
        if path == "/api/public/health":
            return self._health({"status": "OK", "version": VERSION})
        if path == "/api/public/ready":
            return self._health({"status": "OK", "version": VERSION})
        if not path.startswith("/api/public/"):
            return self._send(404, {"message": "Not found"})
        if not self._authorized():
            return self._deny()
        if path == "/api/public/projects":
            return self._send(200, {"data": [PROJECT]})
        match = re.fullmatch(r"/api/public/traces/([^/]+)", path)
        if match:
            trace = self.state.snapshot(match.group(1))
            if trace is None:
                return self._send(
                    404, {"message": "Trace not found", "error": "LangfuseNotFoundError"}
                )
            return self._send(200, trace)
        if path == "/api/public/traces":
            return self._list_traces(query)
        self._send(404, {"message": "Not found"})

    def _list_traces(self, query: dict):
        tags = set(query.get("tags", []))
        name = (query.get("name") or [None])[0]
        limit = int((query.get("limit") or ["50"])[0])
        page = int((query.get("page") or ["1"])[0])
        with self.state.lock:
            items = [
                t
                for t in self.state.traces.values()
                if tags <= set(t.get("tags") or []) and (name is None or t.get("name") == name)
            ]
            items = sorted(items, key=lambda t: t["timestamp"] or "", reverse=True)
            # The list endpoint returns observation ids, not full observations.
            data = [
                {**t, "observations": [o["id"] for o in t["observations"]]}
                for t in items[(page - 1) * limit : page * limit]
            ]
            data = json.loads(json.dumps(data))
        total = len(items)
        self._send(
            200,
            {
                "data": data,
                "meta": {
                    "page": page,
                    "limit": limit,
                    "totalItems": total,
                    "totalPages": (total + limit - 1) // limit,
                },
            },
        )

    def do_POST(self):
        path = urlsplit(self.path).path.rstrip("/")
        body = self._body()
        if path == "/__standin/fault":
            try:
                mode = json.loads(body or b"{}").get("mode", "ok")
            except ValueError:
                mode = None
            if mode not in FAULT_MODES:
                return self._send(400, {"message": f"mode must be one of {sorted(FAULT_MODES)}"})
            self.state.set_mode(mode)
            return self._send(200, {"mode": mode})
        if path == "/__standin/reset":
            with self.state.lock:
                self.state.traces.clear()
            return self._send(200, {"ok": True})
        if self.role == "worker" or not path.startswith("/api/public/"):
            return self._send(404, {"message": "Not found"})
        if not self._authorized():
            return self._deny()
        if path == "/api/public/ingestion":
            return self._ingest(body)
        if path == "/api/public/otel/v1/traces":
            return self._otlp(body)
        self._send(404, {"message": "Not found"})

    def _ingest(self, body: bytes):
        try:
            batch = json.loads(body or b"{}").get("batch", [])
        except ValueError:
            return self._send(400, {"message": "Invalid JSON"})
        store = self.state.mode != "drop_ingestion"
        successes, errors = [], []
        for event in batch:
            event_id = event.get("id")
            try:
                kind, payload = event["type"], event.get("body") or {}
                if store:
                    if kind == "trace-create":
                        self.state.upsert_trace(payload, event.get("timestamp"))
                    elif kind in OBSERVATION_TYPES:
                        self.state.upsert_observation(
                            OBSERVATION_TYPES[kind], payload, event.get("timestamp")
                        )
                    elif kind == "score-create":
                        self.state.add_score(payload, event.get("timestamp"))
                successes.append({"id": event_id, "status": 201})
            except (KeyError, TypeError, AttributeError) as exc:
                errors.append(
                    {"id": event_id, "status": 400, "message": "Invalid event", "error": str(exc)}
                )
        self._send(207, {"successes": successes, "errors": errors})

    def _otlp(self, body: bytes):
        is_json = self.headers.get("Content-Type", "").startswith("application/json")
        try:
            spans = (
                otlp_spans_from_json(json.loads(body or b"{}"))
                if is_json
                else otlp_spans_from_protobuf(body)
            )
        except Exception as exc:
            return self._send(400, {"message": f"Could not parse OTLP payload: {exc}"})
        if self.state.mode != "drop_ingestion":
            for span in spans:
                if span["trace_id"]:
                    self.state.add_otel_span(span)
        # An empty ExportTraceServiceResponse: `{}` in JSON, zero bytes in protobuf.
        if is_json:
            return self._send(200, {})
        self._send(200, b"", "application/x-protobuf")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--role", choices=["web", "worker"], default="web")
    ap.add_argument("--public-key", default="pk-lf-standin")
    ap.add_argument("--secret-key", default="sk-lf-standin")
    ap.add_argument("--hang-seconds", type=float, default=120.0)
    opts = ap.parse_args(argv)

    # Only web ingests; the worker role has nothing to write.
    writer = ClickHouseWriter.from_env() if opts.role == "web" else None
    if writer is not None:
        writer.start()
    handler = type(
        "BoundHandler",
        (Handler,),
        {
            "state": State(opts.hang_seconds, writer),
            "role": opts.role,
            "public_key": opts.public_key,
            "secret_key": opts.secret_key,
        },
    )
    return serve(
        handler,
        opts.port,
        f"langfuse stand-in ({opts.role})",
        on_close=writer.stop if writer is not None else None,
    )


if __name__ == "__main__":
    sys.exit(main())
