"""The real scheduler: schedules in prefect.yaml become runs, and the worker runs them.

Every other end-to-end test starts its runs by hand, so a server that never creates a
scheduled run (Prefect 3.8.8 with SQLAlchemy 2.1: "Can't evaluate bulk DML statement")
would pass them all while production never sweeps, never backs up and never drills.
Here the bootstrap deploys a stack of its own with every schedule active and due every
minute; the devstack's server (scheduler loop 10 s) must create runs for every
scheduled deployment, and the devstack's process worker must complete them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled
from prefect.variables import Variable

from deployments.automations import automation_names
from deployments.settings import FLOWS, PREFECT_FILE, SCHEDULES
from devstack.core import Devstack
from devstack.demo import run_bootstrap
from flows.backup import backup
from tasks.health_state import status_variable

EVERY_MINUTE = "* * * * *"
# First run at the next minute boundary, then the flows' own time on two shared cores.
DEADLINE_S = 420


def schedule_kinds() -> set[str]:
    """The kinds of schedule prefect.yaml uses (cron, interval, rrule)."""
    spec = yaml.safe_load(PREFECT_FILE.read_text())
    kinds: set[str] = set()
    for deployment in spec["deployments"]:
        for schedule in deployment.get("schedules") or []:
            kinds |= {kind for kind in ("cron", "interval", "rrule") if kind in schedule}
    return kinds


def every_minute_env(active: bool) -> dict[str, str]:
    env = {}
    for spec in SCHEDULES.values():
        env[spec.active_variable] = "true" if active else "false"
        env[spec.active_variable.replace("_ACTIVE", "_CRON")] = EVERY_MINUTE
    return env


async def _deployment_ids(stack: str) -> dict[str, UUID]:
    async with get_client() as client:
        found = {}
        for flow in FLOWS:
            with contextlib.suppress(Exception):
                found[flow] = (await client.read_deployment_by_name(f"{flow}/{stack}")).id
        return found


async def _runs(deployment_id: UUID) -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])
            )
        )


async def _stop_scheduling(deployment_ids: dict[str, UUID]) -> list[str]:
    """Pauses the deployments and cancels their runs that have not started.

    Pausing stops the scheduler and deletes the auto-scheduled runs; a run waiting for a
    concurrency slot or made late survives it, so it is cancelled here. The deployments
    stay until every started run has ended: a run whose deployment is gone fails before
    its flow starts (the server logs errors on its state) and can stay Pending. Returns
    the runs that were not over, so a clean pass means none started meanwhile.
    """
    busy = []
    async with get_client() as client:
        for deployment_id in deployment_ids.values():
            with contextlib.suppress(ObjectNotFound):
                await client.pause_deployment(deployment_id)
            for run in await _runs(deployment_id):
                if run.state is None or run.state.is_final():
                    continue
                busy.append(f"{run.name} ({run.state.name})")
                if run.state.is_scheduled():
                    await client.set_flow_run_state(run.id, Cancelled(message="test ended"))
    return busy


async def _remove(stack: str, deployment_ids: dict[str, UUID]) -> None:
    async with get_client() as client:
        for deployment_id in deployment_ids.values():
            with contextlib.suppress(ObjectNotFound):
                await client.delete_deployment(deployment_id)
        for name in automation_names(stack):
            for automation in await client.read_automations_by_name(name):
                await client.delete_automation(automation.id)


def _end_runs(deployment_ids: dict[str, UUID]) -> None:
    """Runs already started finish before the next test (a backup prunes its stack)."""
    deadline = time.monotonic() + DEADLINE_S
    busy = asyncio.run(_stop_scheduling(deployment_ids))
    while busy and time.monotonic() < deadline:
        time.sleep(2)
        busy = asyncio.run(_stop_scheduling(deployment_ids))
    assert not busy, f"runs of the scheduled stack still running after the test: {busy}"


@pytest.fixture
def scheduled_stack(devstack: Devstack) -> Iterator[str]:
    stack = f"sched-{secrets.token_hex(3)}"
    ids: dict[str, UUID] = {}
    try:
        yield stack
    finally:
        ids = asyncio.run(_deployment_ids(stack))
        try:
            _end_runs(ids)
        finally:
            asyncio.run(_remove(stack, ids))
        s3 = devstack.minio_client()
        for obj in s3.list_objects("backups", prefix=f"{stack}/", recursive=True):
            if obj.object_name:
                s3.remove_object("backups", obj.object_name)


def test_prefect_yaml_uses_only_the_schedule_kinds_tested_here() -> None:
    # A new kind (interval, rrule) needs its own run through the scheduler below.
    assert schedule_kinds() == {"cron"}


def test_the_scheduler_creates_runs_of_every_scheduled_deployment_and_the_worker_runs_them(
    devstack: Devstack, scheduled_stack: str
) -> None:
    stack = scheduled_stack
    # Deployed paused first: the drill needs a complete set of this stack to restore.
    done = run_bootstrap(devstack, env=every_minute_env(active=False), stack=stack)
    assert done.returncode == 0, done.stdout + done.stderr
    assert backup(stack=stack, return_state=True).is_completed()

    done = run_bootstrap(devstack, env=every_minute_env(active=True), stack=stack)
    assert done.returncode == 0, done.stdout + done.stderr
    deployments = asyncio.run(_deployment_ids(stack))
    scheduled = {flow: deployments[flow] for flow in SCHEDULES}

    def completed_scheduled_runs() -> dict[str, Any]:
        found = {}
        for flow, deployment_id in scheduled.items():
            runs = asyncio.run(_runs(deployment_id))
            # A sweep started too late ends Completed-type but named Skipped (it checked
            # nothing, by design): wait for a run that really ran.
            done = [
                r
                for r in runs
                if r.auto_scheduled
                and r.state
                and r.state.is_completed()
                and r.state.name == "Completed"
            ]
            if done:
                found[flow] = done[0]
        return found

    deadline = time.monotonic() + DEADLINE_S
    found = completed_scheduled_runs()
    while len(found) < len(scheduled) and time.monotonic() < deadline:
        time.sleep(2)
        found = completed_scheduled_runs()
    missing = sorted(set(scheduled) - set(found))
    assert not missing, f"no scheduled run completed for {missing} within {DEADLINE_S}s"
    for run in found.values():
        assert run.work_pool_name == "devstack"
        assert run.state is not None and run.state.name == "Completed"
    # The scheduled sweep really checked the stack (a stale sweep exits without a status).
    status: Any = Variable.get(status_variable(stack))
    assert status and status["services"]
    # The restore has no schedule: the scheduler must not have made runs of it.
    assert asyncio.run(_runs(deployments["restore"])) == []
