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
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitConfig, FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.states import Scheduled
from prefect.variables import Variable

from devstack.core import PROJECT, Devstack
from flows.health_sweep import SKIPPED, HealthSweepConfig, SweepSummary, health_sweep
from tasks.decisions.alerting import AlertPolicy, Silence, StackState
from tasks.errors import HealthSweepError
from tasks.health import HealthThresholds
from tasks.health_state import (
    read_status,
    set_silences,
    silences_variable,
    state_variable,
    status_variable,
)
from tests.prefect_api import run_logs

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


# ---- through the real worker: restarts and downtime -------------------------------------


@pytest.fixture(scope="module")
def deployment(devstack: Devstack) -> Iterator[DeploymentResponse]:
    params = {
        "stack": STACK,
        "config": config("langfuse-web").model_dump(mode="json"),
    }
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("health-sweep")
        deployment_id = client.create_deployment(
            flow_id=flow_id,
            name="health-test",
            work_pool_name="devstack",
            entrypoint="flows/health_sweep.py:health_sweep",
            path=str(PROJECT),
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT)}}
            ],
            parameters=params,
            concurrency_limit=1,
            concurrency_options=ConcurrencyLimitConfig(
                limit=1, collision_strategy="CANCEL_NEW"
            ).model_dump(exclude={"limit"}),  # type: ignore[arg-type]
        )
        yield client.read_deployment(deployment_id)
        client.delete_deployment(deployment_id)


def run_on_worker(deployment: DeploymentResponse, scheduled_ago_s: float = 0) -> FlowRun:
    """A run of the deployment, as the scheduler makes it, waited for until it ends."""
    when = datetime.now(UTC) - timedelta(seconds=scheduled_ago_s)
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(
            deployment.id, state=Scheduled(scheduled_time=when)
        )
        return wait_final(run.id)


def wait_final(run_id: Any, timeout: float = 180) -> FlowRun:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(0.5)
    raise AssertionError(f"flow run {run_id} did not finish within {timeout:.0f}s")


def sweeps_done() -> int:
    raw = Variable.get(state_variable(STACK))
    return StackState.model_validate(raw).sweeps if raw else 0


def restart_worker(devstack: Devstack) -> None:
    devstack.stop_service("prefect_worker")
    devstack.start_service("prefect_worker")


def test_a_restarted_worker_continues_the_count_and_does_not_resend(  # type: ignore[no-untyped-def]
    fresh, devstack: Devstack, deployment, langfuse_fault
) -> None:
    receiver = fresh
    langfuse_fault("error500")
    for _ in range(2):
        assert run_on_worker(deployment).state_name == "Completed"
    assert counts(receiver)["/custom"] == 0
    restart_worker(devstack)
    assert run_on_worker(deployment).state_name == "Completed"
    assert counts(receiver) == {"/custom": 1, "/slack": 1, "/pagerduty": 1}  # the third in a row
    restart_worker(devstack)
    assert run_on_worker(deployment).state_name == "Completed"
    assert counts(receiver) == {"/custom": 1, "/slack": 1, "/pagerduty": 1}  # not re-sent
    assert sweeps_done() == 4


def wait_running(run_id: Any, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_running():
                return
            assert run.state is None or not run.state.is_final(), run.state
            time.sleep(0.2)
    raise AssertionError(f"flow run {run_id} did not start within {timeout:.0f}s")


@pytest.mark.prefect_log_allows(
    r"(?i)connect(ion)? ?(refused|error|failed)|ConnectError|Server disconnected|"
    r"ReadError|RemoteProtocolError|httpx\.\w+Error|Failed to (send|report|update)|"
    r"Cannot connect|Connection reset|while the server",
    # The run that was sweeping when the server went away: its lease renewal fails and
    # Prefect stops it (Crashed) rather than risk two sweeps at once; its events wait.
    r"concurrency lease renewal|Concurrency lease renewal failed|Crash detected|"
    r"Finished in state Crashed|Service 'EventsWorker' failed with \d+ pending items",
)
def test_a_prefect_server_restart_mid_sweep_does_not_keep_the_sweep_slot(  # type: ignore[no-untyped-def]
    fresh, devstack: Devstack, deployment, langfuse_fault
) -> None:
    # A sweep that takes ~20 s (Langfuse hangs, 20 s timeout); the Prefect server is
    # restarted while it runs. The deployment's slot (limit 1, CANCEL_NEW) is held by a
    # lease; a lease lost with the server would keep the slot taken, and every later
    # sweep would be cancelled. The next sweeps must run. (The sweep caught by the
    # restart cannot renew its lease and Prefect stops it: it ends Crashed.)
    langfuse_fault("hang")
    slow = config("langfuse-web").model_copy(update={"timeout_s": 20.0})
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"stack": STACK, "config": slow.model_dump(mode="json")},
            state=Scheduled(scheduled_time=datetime.now(UTC)),
        )
    wait_running(run.id)
    devstack.stop_service("prefect_server")
    devstack.start_service("prefect_server")
    wait_final(run.id, timeout=300)
    langfuse_fault("ok")
    later = [run_on_worker(deployment) for _ in range(2)]
    assert [r.state_name for r in later] == ["Completed", "Completed"]


def test_missed_sweeps_after_downtime_do_not_run_one_after_another(  # type: ignore[no-untyped-def]
    fresh, devstack: Devstack, deployment
) -> None:
    assert run_on_worker(deployment).state_name == "Completed"
    assert sweeps_done() == 1
    # The worker was down for five minutes: five runs are overdue when it comes back.
    with get_client(sync_client=True) as client:
        late = [
            client.create_flow_run_from_deployment(
                deployment.id,
                state=Scheduled(scheduled_time=datetime.now(UTC) - timedelta(minutes=m)),
            )
            for m in range(5, 0, -1)
        ]
    finals = [wait_final(run.id) for run in late]
    # A late run checked nothing: it ends "Skipped" (type COMPLETED), never "Completed",
    # so the watcher, which waits for a Completed sweep, is not satisfied by it.
    assert {run.state_name for run in finals} <= {SKIPPED, "Cancelled"}
    assert SKIPPED in {run.state_name for run in finals}
    assert all(run.state_type.value in ("COMPLETED", "CANCELLED") for run in finals)
    assert sweeps_done() == 1  # none of them swept
    assert run_on_worker(deployment).state_name == "Completed"
    assert sweeps_done() == 2  # the current one does


def test_a_stack_that_cannot_be_swept_fails_alone_and_the_others_are_swept(  # type: ignore[no-untyped-def]
    fresh, langfuse_fault
) -> None:
    langfuse_fault("error500")
    cfg = config("langfuse-web").model_copy(
        update={"policy": AlertPolicy(alert_after=1, flap_window=4, flap_threshold=3)}
    )
    with pytest.raises(HealthSweepError) as caught:
        asyncio.run(health_sweep(STACK, cfg, more_stacks=["no-such-stack"]))
    message = str(caught.value)
    assert "1 of 2 stack(s) could not be swept: no-such-stack" in message
    assert "The other 1 were swept and alerted as usual" in message
    # The stack that loads was swept, published and alerted as if alone.
    assert sweeps_done() == 1
    assert len(fresh.received("/custom")) == 1


def test_each_sweep_pings_the_heartbeat_and_a_broken_one_pings_fail(  # type: ignore[no-untyped-def]
    fresh, devstack: Devstack
) -> None:
    from blocks.stack import Stack

    token = uuid.uuid4().hex
    name = "devstack-heartbeat"
    base = Stack.load(STACK)
    values = {field: getattr(base, field) for field in Stack.model_fields}
    values.update(stack_name=name, heartbeat_url=f"{devstack.receiver_url}/hc/{token}")
    Stack(**values).save(name, overwrite=True)
    try:
        summary = asyncio.run(health_sweep(name, config("postgres", "redis")))
        assert summary.overall == "healthy"
        pings = [r["path"] for r in fresh.received(f"/hc/{token}")]
        assert [urlsplit(p).path for p in pings] == [f"/hc/{token}/start", f"/hc/{token}"]
        assert len({parse_qs(urlsplit(p).query)["rid"][0] for p in pings}) == 1  # one run

        fresh.clear()
        with pytest.raises(HealthSweepError, match="unknown services"):
            asyncio.run(health_sweep(name, config("no-such-service")))
        start, fail = fresh.received(f"/hc/{token}")
        assert urlsplit(start["path"]).path == f"/hc/{token}/start"
        assert urlsplit(fail["path"]).path == f"/hc/{token}/fail"
        assert "unknown services" in fail["body"]

        # A monitor that refuses never fails the sweep, and its URL stays out of the logs.
        fresh.clear()
        fresh.fail(f"/hc/{token}", 503)
        state = asyncio.run(health_sweep(name, config("postgres"), return_state=True))
        assert state.is_completed()
        logs = " ".join(run_logs([state.state_details.flow_run_id]))
        assert "heartbeat start of stack devstack-heartbeat not delivered" in logs
        assert token not in logs
    finally:
        for variable in (state_variable(name), status_variable(name)):
            Variable.unset(variable)
        Stack.delete(name)


# ---- /health and /metrics -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_server_serves_health_and_metrics(fresh, devstack: Devstack, langfuse_fault) -> None:  # type: ignore[no-untyped-def]
    langfuse_fault("error500")
    sweep(config("langfuse-web", "redis"))
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
    finally:
        server.terminate()
        server.wait(timeout=10)
