"""Test stand-in for Railway's public GraphQL API (only the query deploy-verify sends).

There is no internet here. This answers the project query that lists services with the
latest deployment of each service instance, as Railway's API shapes it:

    project(id) { services { edges { node { id name
        serviceInstances { edges { node { environmentId latestDeployment { id status } } } }
    } } } }

    python devstack/standins/railway_api.py --port 14000 --token rw-token \
        --project-id proj-1 --environment-id env-1

POST /graphql/v2      the query; `Authorization: Bearer <token>` required (401 otherwise);
                      an unknown project id answers `errors` like Railway does
Test-only control (no auth):
POST /__standin/services {"litellm": "SUCCESS", "postgres": "FAILED", ...}
                      replace the services and their latest deployment status
                      (null = never deployed)
GET  /__standin/services   current services; readiness
Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from serve import serve

DEFAULT_SERVICES = {
    name: "SUCCESS"
    for name in (
        "litellm",
        "langfuse-web",
        "langfuse-worker",
        "postgres",
        "clickhouse",
        "redis",
        "minio",
        "prefect-server",
        "prefect-worker",
    )
}


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.services: dict[str, str | None] = dict(DEFAULT_SERVICES)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "RailwayApiStandin"
    state: State
    token: str
    project_id: str
    environment_id: str

    def log_message(self, fmt, *args):
        pass

    def _send(self, status: int, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return None

    def do_GET(self):
        if urlsplit(self.path).path == "/__standin/services":
            with self.state.lock:
                return self._send(200, self.state.services)
        self._send(404, {"message": "Not found"})

    def do_POST(self):
        path = urlsplit(self.path).path.rstrip("/")
        body = self._json()
        if path == "/__standin/services":
            if not isinstance(body, dict):
                return self._send(400, {"message": "a JSON object of service -> status"})
            with self.state.lock:
                self.state.services = dict(body)
            return self._send(200, body)
        if path != "/graphql/v2":
            return self._send(404, {"message": "Not found"})
        if self.headers.get("Authorization", "") != f"Bearer {self.token}":
            return self._send(401, {"errors": [{"message": "Not Authorized"}]})
        if not isinstance(body, dict) or "project(" not in str(body.get("query", "")):
            return self._send(400, {"errors": [{"message": "unsupported query in stand-in"}]})
        variables = body.get("variables") or {}
        if variables.get("projectId") != self.project_id:
            return self._send(200, {"data": None, "errors": [{"message": "Project not found"}]})
        with self.state.lock:
            services = dict(self.state.services)
        edges = []
        for number, (name, status) in enumerate(sorted(services.items()), start=1):
            deployment = None if status is None else {"id": f"dep-{number}", "status": status}
            instance = {"environmentId": self.environment_id, "latestDeployment": deployment}
            edges.append(
                {
                    "node": {
                        "id": f"svc-{number}",
                        "name": name,
                        "serviceInstances": {"edges": [{"node": instance}]},
                    }
                }
            )
        self._send(200, {"data": {"project": {"services": {"edges": edges}}}})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--project-id", default="proj-standin")
    ap.add_argument("--environment-id", default="env-standin")
    opts = ap.parse_args(argv)
    handler = type(
        "BoundHandler",
        (Handler,),
        {
            "state": State(),
            "token": opts.token,
            "project_id": opts.project_id,
            "environment_id": opts.environment_id,
        },
    )
    return serve(handler, opts.port, "railway api stand-in")


if __name__ == "__main__":
    sys.exit(main())
