"""The status server answers Railway's health check while the Prefect API is not up yet
(it starts before the worker's bootstrap), and reads the API once it answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

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


def test_probe_measures_are_gauges_with_their_help_and_full_precision() -> None:
    from datetime import UTC, datetime

    from deployments.status_server import metrics_text
    from tasks.health_state import HealthStatusDoc, ServiceStatusDoc

    doc = HealthStatusDoc(
        stack='a"b',
        checked_at=datetime(2026, 12, 1, tzinfo=UTC),
        overall="degraded",
        sweeps=3,
        notifications_sent=0,
        channel_failures=0,
        services=[
            ServiceStatusDoc(
                service="clickhouse-storage",
                status="degraded",
                latency_ms=12.0,
                reason="system logs 70 GiB",
                measures={"clickhouse_system_log_bytes": 71_790_000_123.0},
            ),
            ServiceStatusDoc(service="redis", status="healthy", latency_ms=1.0, reason="ok"),
        ],
    )
    lines = metrics_text({'a"b': doc, "other": None}).splitlines()
    assert (
        "# HELP ops_probe_clickhouse_system_log_bytes Bytes of ClickHouse's system.*_log tables."
        in lines
    )
    assert "# TYPE ops_probe_clickhouse_system_log_bytes gauge" in lines
    assert (
        'ops_probe_clickhouse_system_log_bytes{stack="a\\"b",service="clickhouse-storage"} '
        "71790000123.0"
    ) in lines
    # a measure no service reported has no family at all
    assert not any("ops_probe_redis" in line for line in lines)


def test_capacity_forecasts_are_gauges_of_the_served_stacks_only(devstack: Devstack) -> None:
    """What the daily capacity flow left in its Variables is on /metrics between runs."""
    from prefect.variables import Variable

    from tasks.capacity import history_variable
    from tasks.decisions.capacity import StoreHistory

    def history(
        stack: str, store: str, days: float | None, last_day: str = "2026-12-01"
    ) -> StoreHistory:
        return StoreHistory(
            points=[("2026-11-20", 900 * 2**20), (last_day, 1000 * 2**20)],
            stack=stack,
            store=store,
            limit=2000 * 2**20 if days is not None else None,
            growth_per_day=100 * 2**20,
            days_until_full=days,
        )

    saved = {
        history_variable("capgauge", "postgres.railway"): history(
            "capgauge", "postgres.railway", 10.0
        ),
        history_variable("capgauge", "s3.backups"): history("capgauge", "s3.backups", None),
        # a table that left the largest tables on Nov 25: its Variable stays, not current
        history_variable("capgauge", "postgres.table.old"): history(
            "capgauge", "postgres.table.old", 5.0, last_day="2026-11-25"
        ),
        history_variable("capgauge-other", "redis.memory"): history(
            "capgauge-other", "redis.memory", 1.0
        ),
    }
    for name, value in saved.items():
        Variable.set(name, value.model_dump(mode="json"), overwrite=True)
    try:
        for url in _serve(devstack.client_env(), "capgauge"):
            deadline = time.monotonic() + 60
            while "ops_capacity_bytes" not in (
                text := httpx.get(f"{url}/metrics", timeout=10).text
            ):
                assert time.monotonic() < deadline, text
                time.sleep(0.2)
    finally:
        for name in saved:
            Variable.unset(name)
    lines = text.splitlines()
    assert 'ops_capacity_days_until_full{stack="capgauge",store="postgres.railway"} 10.0' in lines
    assert 'ops_capacity_bytes{stack="capgauge",store="postgres.railway"} 1048576000.0' in lines
    assert (
        'ops_capacity_limit_bytes{stack="capgauge",store="postgres.railway"} 2097152000.0' in lines
    )
    assert (
        'ops_capacity_growth_bytes_per_day{stack="capgauge",store="s3.backups"} 104857600.0'
        in lines
    )
    # no limit, no forecast: the store has no days-until-full line rather than a made-up one
    assert not any(
        line.startswith('ops_capacity_days_until_full{stack="capgauge",store="s3.backups"}')
        for line in lines
    )
    assert "# TYPE ops_capacity_days_until_full gauge" in lines
    assert "capgauge-other" not in text  # a stack this server does not serve
    assert "postgres.table.old" not in text
    # when the stack was last measured, so a stopped capacity flow can be alerted on
    day = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert f'ops_capacity_latest_day_timestamp_seconds{{stack="capgauge"}} {day!r}' in lines
