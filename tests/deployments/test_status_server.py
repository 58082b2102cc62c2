"""The status server answers Railway's health check while the Prefect API is not up yet
(it starts before the worker's bootstrap), and reads the API once it answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from deployments.settings import PROJECT_DIR
from devstack.core import Devstack


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(env: dict[str, str], stacks: str) -> Iterator[str]:
    port = _free_port()
    argv = [sys.executable, "-m", "deployments.status_server", "--port", str(port)]
    server = subprocess.Popen(
        [*argv, "--host", "127.0.0.1", "--stacks", stacks],
        env=env,
        cwd=PROJECT_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "the status server exited"
            try:
                httpx.get(f"{url}/metrics", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the status server never listened"
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def no_api(devstack: Devstack) -> Iterator[str]:
    env = devstack.client_env()
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{_free_port()}/api"  # nothing listens
    env["PREFECT_CLIENT_MAX_RETRIES"] = "0"
    yield from _serve(env, "production")


def test_health_answers_starting_while_the_api_is_down(no_api: str) -> None:
    health = httpx.get(f"{no_api}/health", timeout=10)
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "starting"
    assert body["error"].startswith("Prefect API: ")
    strict = httpx.get(f"{no_api}/health?strict=1", timeout=10)
    assert strict.status_code == 503
    metrics = httpx.get(f"{no_api}/metrics", timeout=10)
    assert metrics.status_code == 200 and "# TYPE ops_health_status gauge" in metrics.text


def test_health_reads_the_api_once_it_answers(devstack: Devstack) -> None:
    for url in _serve(devstack.client_env(), "no-sweep-yet"):
        body = httpx.get(f"{url}/health", timeout=10).json()
        assert body["status"] == "unknown" and "error" not in body
        assert body["stacks"]["no-sweep-yet"]["note"] == "no sweep published yet"
