"""Test stand-in for Langfuse web (and, with --role worker, langfuse-worker).

Langfuse ships only as container images and there is no container engine
here, so tests talk to this instead. It implements just what the ops flows and
LiteLLM's `langfuse` callback touch: health/readiness, legacy batch ingestion,
OTLP trace export (what LiteLLM >= 1.106 with langfuse SDK v4 sends), project
lookup and trace lookup. Everything is kept in memory; with CLICKHOUSE_URL,
CLICKHOUSE_USER and CLICKHOUSE_PASSWORD set (as real Langfuse takes them) every
ingested trace, observation and score is also written to ClickHouse's
`traces`/`observations`/`scores` the way langfuse-worker writes them (see
clickhouse_writer.py): an update is a new version of the row. The HTTP surface is
here; the memory is langfuse_state.py and the OTLP decoding otlp.py.

    python devstack/standins/langfuse.py --port 13000 --public-key pk-lf-x --secret-key sk-lf-x
    python devstack/standins/langfuse.py --port 13030 --role worker

Ingestion goes through a real BullMQ queue in Redis when REDIS_CONNECTION_STRING is set
(langfuse_queue.py): web enqueues, the worker role consumes and hands each job back to
web's /__standin/apply, which stores it; so traces are readable only once the worker has
taken them, as in Langfuse.

Test-only control (no auth), under /__standin/:
    POST /__standin/fault {"mode": "ok"|"hang"|"error500"|"drop_ingestion"|"stall"}
                                 stall (worker role): stop consuming, health stays OK
                                 delay (worker role, with "hold_s"): store each job only
                                 once it is hold_s old
    POST /__standin/apply        store one queued job (the worker calls it)
    GET  /__standin/fault        current mode
    GET  /__standin/traces       JSON list of stored trace ids
    GET  /__standin/stats        traces held, ClickHouse rows written/pending/dropped, errors
    POST /__standin/reset        forget all traces

Without a queue configured, ingested data is visible at once.
Readiness: GET /api/public/health (web), GET /api/health (worker). Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hmac
import json
import re
import sys
import zlib
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from clickhouse_writer import ClickHouseWriter
from langfuse_queue import Consumer, Producer
from langfuse_state import PROJECT, State
from otlp import otlp_spans_from_json, otlp_spans_from_protobuf
from serve import serve

VERSION = "3.x-standin"
FAULT_MODES = {"ok", "hang", "error500", "drop_ingestion", "stall", "delay"}
OBSERVATION_TYPES = {
    "span-create": "SPAN",
    "span-update": "SPAN",
    "generation-create": "GENERATION",
    "generation-update": "GENERATION",
    "event-create": "EVENT",
}

# --- HTTP -----------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LangfuseStandin"
    state: State
    role: str
    producer: Producer | None
    consumer: Consumer | None
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
                request = json.loads(body or b"{}")
                mode, hold_s = request.get("mode", "ok"), float(request.get("hold_s", 0))
            except (ValueError, TypeError, AttributeError):
                mode, hold_s = None, 0.0
            if mode not in FAULT_MODES:
                return self._send(400, {"message": f"mode must be one of {sorted(FAULT_MODES)}"})
            self.state.set_mode(mode)
            if self.consumer is not None:
                (self.consumer.stall if mode == "stall" else self.consumer.resume)()
                self.consumer.hold_s = hold_s if mode == "delay" else 0.0
            return self._send(200, {"mode": mode})
        if path == "/__standin/apply" and self.role == "web":
            job = json.loads(body or b"{}")
            self._apply(job.get("kind"), job.get("payload") or [])
            return self._send(200, {"ok": True})
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
        successes, errors, accepted = [], [], []
        for event in batch:
            event_id = event.get("id") if isinstance(event, dict) else None
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                errors.append({"id": event_id, "status": 400, "message": "Invalid event"})
                continue
            accepted.append(event)
            successes.append({"id": event_id, "status": 201})
        errors += self._accept("batch", accepted)
        self._send(207, {"successes": successes, "errors": errors})

    def _accept(self, kind: str, payload: list) -> list:
        """Queue what was accepted (or store it at once without a queue); errors of the
        events a direct store refused."""
        if not payload or self.state.mode == "drop_ingestion":
            return []
        if self.producer is not None and self.producer.enqueue(kind, payload):
            self.state.count("enqueued")
            return []
        if self.producer is not None:
            self.state.count("enqueue_failed")
        return self._apply(kind, payload)

    def _apply(self, kind: str | None, payload: list) -> list:
        """Store a batch of events or OTLP spans; the errors of events that did not fit."""
        errors = []
        for item in payload:
            try:
                if kind == "otlp":
                    if item["trace_id"]:
                        self.state.add_otel_span(item)
                    continue
                event_kind, event_body = item["type"], item.get("body") or {}
                if event_kind == "trace-create":
                    self.state.upsert_trace(event_body, item.get("timestamp"))
                elif event_kind in OBSERVATION_TYPES:
                    self.state.upsert_observation(
                        OBSERVATION_TYPES[event_kind], event_body, item.get("timestamp")
                    )
                elif event_kind == "score-create":
                    self.state.add_score(event_body, item.get("timestamp"))
            except (KeyError, TypeError, AttributeError) as exc:
                error = {"id": item.get("id"), "status": 400, "message": "Invalid event"}
                errors.append({**error, "error": str(exc)})
        self.state.count("applied")
        return errors

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
        self._accept("otlp", [span for span in spans if span["trace_id"]])
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
    consumer = Consumer.from_env() if opts.role == "worker" else None
    handler = type(
        "BoundHandler",
        (Handler,),
        {
            "state": State(opts.hang_seconds, writer),
            "role": opts.role,
            "producer": Producer.from_env() if opts.role == "web" else None,
            "consumer": consumer,
            "public_key": opts.public_key,
            "secret_key": opts.secret_key,
        },
    )
    return serve(
        handler,
        opts.port,
        f"langfuse stand-in ({opts.role})",
        on_close=writer.stop if writer is not None else consumer.close if consumer else None,
    )


if __name__ == "__main__":
    sys.exit(main())
