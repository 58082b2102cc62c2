"""health-sweep against the devstack: scripted sweeps with real faults, real channels.

Every sweep is a real flow run on the devstack's Prefect server; every message goes
through the stack's notification block documents to the receiver: the built-in custom
webhook (``/custom``), our Slack Block Kit block (``/slack``) and our PagerDuty Events
block (``/pagerduty``, critical only). Faults: the Langfuse stand-in answering 500,
Postgres stopped. Time for reminders is moved by editing the persisted state, exactly
what a sweep 31 minutes later would find.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prefect.variables import Variable

from blocks.stack import Stack
from devstack.core import PROJECT, Devstack
from flows.health_sweep import HealthSweepConfig, SweepSummary, health_sweep
from tasks.decisions.alerting import Silence, StackState
from tasks.decisions.health import ServiceHealth
from tasks.health import HealthThresholds
from tasks.health_state import (
    read_status,
    set_silences,
    silences_variable,
    state_variable,
    status_variable,
)
from tests.flows.deploy_verify_helpers import save_copy

STACK = "devstack"
NO_DB = HealthThresholds(litellm_requires_db=False)
CHANNELS = ("/custom", "/slack", "/pagerduty")


def config(*services: str) -> HealthSweepConfig:
    return HealthSweepConfig(services=list(services), timeout_s=2.0, thresholds=NO_DB)


def sweep(cfg: HealthSweepConfig) -> SweepSummary:
    return asyncio.run(health_sweep(STACK, cfg))


def counts(receiver) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {prefix: len(receiver.received(prefix)) for prefix in CHANNELS}


def reset_health_variables() -> None:
    for name in (state_variable(STACK), status_variable(STACK), silences_variable(STACK)):
        Variable.unset(name)


@pytest.fixture
def fresh(devstack: Devstack, receiver) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    reset_health_variables()
    yield receiver
    reset_health_variables()


@pytest.fixture
def langfuse_fault(devstack: Devstack) -> Iterator[Callable[[str], None]]:
    url = devstack.url("langfuse")

    def set_mode(mode: str) -> None:
        httpx.post(f"{url}/__standin/fault", json={"mode": mode}, timeout=5).raise_for_status()

    yield set_mode
    set_mode("ok")


def move_last_notified_back(minutes: int) -> None:
    state = StackState.model_validate(Variable.get(state_variable(STACK)))
    for service in state.services.values():
        if service.last_notified is not None:
            service.last_notified -= timedelta(minutes=minutes)
    Variable.set(state_variable(STACK), state.model_dump(mode="json"), overwrite=True)


def test_scripted_sweeps_send_exactly_the_expected_messages(fresh, langfuse_fault) -> None:  # type: ignore[no-untyped-def]
    receiver = fresh
    cfg = config("langfuse-web", "redis")
    nothing = {"/custom": 0, "/slack": 0, "/pagerduty": 0}

    assert sweep(cfg).overall == "healthy"
    langfuse_fault("error500")
    sweep(cfg)
    sweep(cfg)
    assert counts(receiver) == nothing  # two bad sweeps: not yet
    third = sweep(cfg)
    assert third.notices == 1
    assert counts(receiver) == {"/custom": 1, "/slack": 1, "/pagerduty": 1}

    alert = receiver.received("/custom")[0]["json"]
    assert alert["title"] == "[devstack] langfuse-web unhealthy"
    assert "HTTP 500" in alert["text"]
    slack = receiver.received("/slack")[0]["json"]
    assert slack["blocks"][0]["type"] == "header"
    fields = [f["text"] for f in slack["blocks"][1]["fields"]]
    assert fields[0] == "*Service*\nlangfuse-web"
    assert "unhealthy" in fields[1]
    trigger = receiver.received("/pagerduty")[0]["json"]
    assert trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == "devstack/langfuse-web"
    assert trigger["payload"]["severity"] == "critical"

    sweep(cfg)
    assert counts(receiver) == {"/custom": 1, "/slack": 1, "/pagerduty": 1}  # no repeat

    move_last_notified_back(31)  # as if the next sweep ran 31 minutes later
    sweep(cfg)
    assert counts(receiver) == {"/custom": 2, "/slack": 2, "/pagerduty": 2}
    assert receiver.received("/custom")[1]["json"]["title"].startswith("[devstack] reminder")
    assert receiver.received("/pagerduty")[1]["json"]["dedup_key"] == "devstack/langfuse-web"

    langfuse_fault("ok")
    sweep(cfg)
    assert counts(receiver)["/custom"] == 2  # one healthy sweep: not yet recovered
    sweep(cfg)
    assert counts(receiver) == {"/custom": 3, "/slack": 3, "/pagerduty": 3}
    recovery = receiver.received("/custom")[2]["json"]
    assert recovery["title"] == "[devstack] recovered: langfuse-web"
    resolve = receiver.received("/pagerduty")[2]["json"]
    assert resolve == {
        "routing_key": "devstack-routing-key",
        "event_action": "resolve",
        "dedup_key": "devstack/langfuse-web",
    }

    # A single blip: nothing.
    receiver.clear()
    langfuse_fault("error500")
    sweep(cfg)
    langfuse_fault("ok")
    sweep(cfg)
    sweep(cfg)
    assert counts(receiver) == nothing

    # A silence: nothing, however long; the outage alerts as soon as it ends.
    asyncio.run(set_silences(STACK, [Silence(until=datetime.now(UTC) + timedelta(hours=1))]))
    langfuse_fault("error500")
    for _ in range(4):
        sweep(cfg)
    assert counts(receiver) == nothing
    asyncio.run(set_silences(STACK, []))
    sweep(cfg)
    assert counts(receiver) == {"/custom": 1, "/slack": 1, "/pagerduty": 1}


def test_a_dependency_down_pages_once_and_lists_the_impacted(  # type: ignore[no-untyped-def]
    fresh, devstack: Devstack, langfuse_fault
) -> None:
    receiver = fresh
    cfg = config("postgres", "langfuse-web", "redis")
    langfuse_fault("error500")  # stands in for Langfuse failing without its database
    with devstack.stopped("postgres"):
        for _ in range(3):
            summary = sweep(cfg)
    statuses = {c.service: c.status for c in summary.checks}
    assert statuses == {"postgres": "unhealthy", "langfuse-web": "unhealthy", "redis": "healthy"}
    pages = receiver.received("/pagerduty")
    assert [(p["json"]["event_action"], p["json"]["dedup_key"]) for p in pages] == [
        ("trigger", "devstack/postgres")
    ]
    assert pages[0]["json"]["payload"]["custom_details"]["impacts"] == "langfuse-web"
    chat = receiver.received("/custom")
    assert len(chat) == 1
    assert chat[0]["json"]["title"] == "[devstack] postgres unhealthy; 1 impacted"
    assert "langfuse-web [alert]: unhealthy" in chat[0]["json"]["text"]
    assert "(impacted by postgres)" in chat[0]["json"]["text"]

    langfuse_fault("ok")
    sweep(cfg)
    sweep(cfg)
    pages = receiver.received("/pagerduty")
    assert [(p["json"]["event_action"], p["json"]["dedup_key"]) for p in pages] == [
        ("trigger", "devstack/postgres"),
        ("resolve", "devstack/postgres"),
    ]
    assert len(receiver.received("/custom")) == 2


def test_one_channel_failing_does_not_stop_the_others(fresh, langfuse_fault) -> None:  # type: ignore[no-untyped-def]
    receiver = fresh
    receiver.fail("/slack", 500)
    langfuse_fault("error500")
    cfg = config("langfuse-web")
    for _ in range(3):
        summary = sweep(cfg)
    assert summary.channels_failed == 1
    assert summary.channels_sent == 2
    assert len(receiver.received("/custom")) == 1
    assert len(receiver.received("/pagerduty")) == 1
    status = asyncio.run(read_status(STACK))
    assert status is not None
    assert status.channel_failures == 1  # counted, for /metrics


def test_status_changes_are_events_and_the_latest_status_is_in_the_api(  # type: ignore[no-untyped-def]
    fresh, devstack: Devstack, langfuse_fault, stack
) -> None:
    started = datetime.now(UTC)
    sweep(config("langfuse-web", "redis"))
    langfuse_fault("error500")
    sweep(config("langfuse-web", "redis"))

    response = httpx.get(f"{devstack.prefect_api_url}/variables/name/{status_variable(STACK)}")
    response.raise_for_status()
    doc = response.json()["value"]
    assert doc["overall"] == "unhealthy"
    assert {s["service"]: s["status"] for s in doc["services"]} == {
        "langfuse-web": "unhealthy",
        "redis": "healthy",
    }
    text = response.text
    for secret in stack.secret_values():
        assert secret not in text

    def events() -> list[dict[str, Any]]:
        body = {
            "filter": {
                "occurred": {"since": started.isoformat()},
                "resource": {"id": ["ops.health.devstack.langfuse-web"]},
            },
            "limit": 50,
        }
        found = httpx.post(f"{devstack.prefect_api_url}/events/filter", json=body, timeout=5)
        found.raise_for_status()
        return list(found.json()["events"])

    deadline = time.monotonic() + 30
    names: list[str] = []
    while time.monotonic() < deadline:
        names = sorted(e["event"] for e in events())
        if len(names) >= 2:
            break
        time.sleep(0.5)
    assert names == ["ops.health.healthy", "ops.health.unhealthy"]
    unhealthy = next(e for e in events() if e["event"] == "ops.health.unhealthy")
    assert unhealthy["resource"]["ops.stack"] == "devstack"
    assert unhealthy["payload"]["previous"] == "healthy"


# ---- /health and /metrics -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_server_serves_health_and_metrics(fresh, devstack: Devstack, langfuse_fault) -> None:  # type: ignore[no-untyped-def]
    langfuse_fault("error500")
    sweep(config("langfuse-web", "redis", "langfuse-queues", "postgres-maintenance"))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "deployments.status_server", "--port", str(port), "--stacks", STACK],
        env=devstack.client_env(),
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        health: httpx.Response | None = None
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert health is not None and health.status_code == 200
        body = health.json()
        assert body["status"] == "unhealthy"
        assert body["stacks"]["devstack"]["services"]["langfuse-web"]["status"] == "unhealthy"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert metrics.headers["content-type"].startswith("text/plain")
        lines = metrics.text.splitlines()
        assert 'ops_health_status{stack="devstack",service="langfuse-web"} 2' in lines
        assert 'ops_health_status{stack="devstack",service="redis"} 0' in lines
        assert any(line.startswith('ops_health_sweeps_total{stack="devstack"} ') for line in lines)
        # what the probes measured, as gauges a dashboard can draw and alert on
        values = {
            line.split("{")[0]: float(line.rsplit(" ", 1)[1])
            for line in lines
            if line.startswith("ops_probe_") and 'stack="devstack"' in line
        }
        assert values["ops_probe_redis_used_memory_bytes"] > 0
        assert values["ops_probe_postgres_xid_age"] > 0
        queue_gauges = {name for name in values if name.startswith("ops_probe_queue_")}
        assert queue_gauges == {
            "ops_probe_queue_waiting_jobs",
            "ops_probe_queue_active_jobs",
            "ops_probe_queue_failed_jobs",
            "ops_probe_queue_oldest_wait_seconds",
        }
        assert "# TYPE ops_probe_queue_waiting_jobs gauge" in lines
        assert not any(line.startswith("ops_probe_ingestion_lag") for line in lines)  # not swept
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_probe_is_switched_off_by_name_and_a_wrong_name_is_refused() -> None:
    config = HealthSweepConfig(skip=["langfuse-queues", "clickhouse-storage"])
    assert "langfuse-queues" not in config.checked()
    assert "clickhouse-storage" not in config.checked() and "redis" in config.checked()
    narrow = HealthSweepConfig(services=["redis", "langfuse-queues"], skip=["langfuse-queues"])
    assert narrow.checked() == ["redis"]
    with pytest.raises(ValueError, match="unknown service\\(s\\) langfuse-queue: use names"):
        HealthSweepConfig(skip=["langfuse-queue"])
    # the stack's own config (OPS_PROBES_OFF) switches probes off too
    assert narrow.checked(["redis"]) == []
    assert "certificates" not in config.checked(["certificates"])


@pytest.mark.usefixtures("devstack")  # the stack block is the devstack's
def test_a_probe_switched_off_in_the_stack_block_is_not_swept() -> None:
    name = "devstack-probes-off"
    save_copy(name, probes_off=["redis"])
    try:
        summary = asyncio.run(health_sweep(name, config("langfuse-web", "redis")))
    finally:
        for variable in (state_variable(name), status_variable(name), silences_variable(name)):
            Variable.unset(variable)
    assert [check.service for check in summary.checks] == ["langfuse-web"]


@pytest.mark.usefixtures("traffic")
def test_a_backlog_rising_sweep_after_sweep_is_degraded_before_it_ages(  # type: ignore[no-untyped-def]
    fresh, devstack: Devstack
) -> None:
    """Traffic flowing, langfuse-worker told to stop consuming: the backlog rises at every
    sweep and the sweep says so while the oldest job is still far from the age limit;
    consuming again, the backlog drains and the queues are healthy."""
    from tasks.health import run_checks

    th = HealthThresholds(
        litellm_requires_db=False,
        queue_wait_degraded_s=3600,  # age alone would take an hour to tell
        queue_wait_unhealthy_s=7200,
        queue_growth_sweeps=3,
        queue_growth_degraded_jobs=3,
        queue_growth_unhealthy_jobs=100_000,
    )
    cfg = HealthSweepConfig(services=["langfuse-queues"], timeout_s=5.0, thresholds=th)
    stack = Stack.load_stack(STACK)

    def waiting() -> int:
        (found,) = asyncio.run(run_checks(stack, 5.0, ["langfuse-queues"], th))
        return int(found.measures["queue_waiting_jobs"])

    def until(ok: Callable[[int], bool], what: str) -> None:
        deadline = time.monotonic() + 90
        while not ok(count := waiting()):
            assert time.monotonic() < deadline, f"{what}: {count} waiting"
            time.sleep(0.2)

    worker = f"{devstack.url('langfuse_worker')}/__standin/fault"
    httpx.post(worker, json={"mode": "stall"}, timeout=10).raise_for_status()
    try:
        seen: list[ServiceHealth] = []
        for _ in range(4):
            before = waiting()
            until(lambda n, before=before: n > before, "the traffic adds jobs nobody takes")
            (found,) = sweep(cfg).checks
            seen.append(found)
    finally:
        httpx.post(worker, json={"mode": "ok"}, timeout=10).raise_for_status()
    assert [f.status for f in seen] == ["healthy", "healthy", "healthy", "degraded"], seen
    assert "the queues' backlog rose at each of the last 3 sweeps" in seen[-1].reason
    assert "scale it or raise its concurrency" in seen[-1].reason
    assert seen[-1].measures["queue_backlog_growth_jobs_per_minute"] > 0

    until(lambda n: n == 0, "the worker drains the backlog")
    (found,) = sweep(cfg).checks
    assert found.status == "healthy", found
