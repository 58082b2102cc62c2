"""health-sweep's control plane: through the real worker, a server restart, many stacks, a heartbeat.

Sweeps run as the scheduler runs them (a deployment on the devstack's pool, limit 1,
CANCEL_NEW): a restarted worker continues the count, a restarted server keeps no slot,
late runs skip without satisfying the watcher; one broken stack fails alone; every
sweep pings an outside monitor.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitConfig, FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.states import Scheduled
from prefect.variables import Variable

from devstack.core import PROJECT, Devstack
from flows.health_sweep import SKIPPED, health_sweep
from tasks.decisions.alerting import AlertPolicy, StackState
from tasks.errors import HealthSweepError
from tasks.health_state import state_variable, status_variable
from tests.flows.test_health_sweep import STACK, config, counts
from tests.flows.test_health_sweep import fresh as fresh
from tests.flows.test_health_sweep import langfuse_fault as langfuse_fault
from tests.prefect_api import run_logs

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
    r"Finished in state Crashed|Service 'EventsWorker' failed",
    # The worker's suspension and cancellation observers fall back to polling when the
    # server's websocket goes away; when the worker stops later, Prefect asks the cancelled
    # polling task for its exception, which raises inside the callback (a Prefect bug,
    # logged as ERROR).
    r"FlowRun(Suspending|Cancelling)Observer\._handle_polling_task_done",
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
        # A sweep that breaks inside: a service list the config would refuse at its door
        # (HealthSweepConfig validates names), put past the validation on purpose.
        broken = config("postgres").model_copy(update={"services": ["no-such-service"]})
        with pytest.raises(HealthSweepError, match="unknown services"):
            asyncio.run(health_sweep(name, broken))
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
