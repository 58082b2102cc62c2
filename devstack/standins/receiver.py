"""Test stand-in for notification endpoints: records every webhook POST.

There is no internet here, so Slack, Discord, Teams, PagerDuty, Opsgenie and
custom webhooks all point at this one receiver, each under its own path prefix
(e.g. /slack/..., /discord/..., /pagerduty/...). Tests then read back what
was sent.

    python devstack/standins/receiver.py --port 15000

POST /<anything>     record {"path","headers","body","json","received_at","status"}; 200 "ok"
                     (header names lower-cased)
                     (paths under /pagerduty answer 202 like the Events API v2)
GET  /__received     JSON list of records (?path_prefix=/slack to filter); readiness
DELETE /__received   forget all records
POST /__fail         {"path_prefix": "/slack", "status": 500} -> matching POSTs fail
                     with that status (still recorded); status 0 clears that prefix
DELETE /__fail       clear all failure rules
Stops on SIGTERM. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from serve import serve


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.records: list[dict] = []
        self.failures: dict[str, int] = {}  # path prefix -> HTTP status

    def failure_for(self, path: str) -> int | None:
        with self.lock:
            # Longest prefix wins, so a specific rule can override a broad one.
            matches = [p for p in self.failures if path.startswith(p)]
            return self.failures[max(matches, key=len)] if matches else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ReceiverStandin"
    state: State

    def log_message(self, fmt, *args):
        pass

    def _send(self, status: int, payload, content_type="application/json"):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path != "/__received":
            return self._send(404, {"message": "not found"})
        prefix = (parse_qs(url.query).get("path_prefix") or [""])[0]
        with self.state.lock:
            records = [r for r in self.state.records if r["path"].startswith(prefix)]
        self._send(200, records)

    def do_DELETE(self):
        path = urlsplit(self.path).path
        with self.state.lock:
            if path == "/__received":
                self.state.records.clear()
            elif path == "/__fail":
                self.state.failures.clear()
            else:
                return self._send(404, {"message": "not found"})
        self._send(200, {"ok": True})

    def do_POST(self):
        url = urlsplit(self.path)
        raw = self._read()
        if url.path == "/__fail":
            try:
                rule = json.loads(raw or b"{}")
                prefix, status = str(rule["path_prefix"]), int(rule.get("status", 0))
            except (ValueError, KeyError, TypeError):
                return self._send(400, {"message": 'expected {"path_prefix": "/x", "status": 500}'})
            with self.state.lock:
                if status:
                    self.state.failures[prefix] = status
                else:
                    self.state.failures.pop(prefix, None)
            return self._send(200, {"ok": True})

        text = raw.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        record = {
            # The full path (with any query string) is kept: some senders put
            # routing keys or tokens there.
            "path": self.path,
            "headers": {
                k.lower(): v for k, v in self.headers.items()
            },  # lower-case: HTTP names are case-insensitive
            "body": text,
            "json": parsed,
            "received_at": datetime.now(UTC).isoformat(),
        }
        # Failed deliveries are recorded too (with the status they got): tests check
        # retries and fallbacks.
        status = self.state.failure_for(url.path)
        record["status"] = status or (202 if url.path.startswith("/pagerduty") else 200)
        with self.state.lock:
            self.state.records.append(record)
        if status:
            return self._send(status, {"error": f"receiver fault {status}"})
        if url.path.startswith("/pagerduty"):
            dedup = (parsed or {}).get("dedup_key") if isinstance(parsed, dict) else None
            return self._send(
                202,
                {
                    "status": "success",
                    "message": "Event processed",
                    "dedup_key": dedup or uuid.uuid4().hex,
                },
            )
        self._send(200, b"ok", "text/plain; charset=utf-8")  # what Slack answers


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    opts = ap.parse_args(argv)
    handler = type("BoundHandler", (Handler,), {"state": State()})
    return serve(handler, opts.port, "webhook receiver stand-in")


if __name__ == "__main__":
    sys.exit(main())
