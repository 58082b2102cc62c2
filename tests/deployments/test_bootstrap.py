"""The bootstrap against the devstack's real Prefect server: idempotent, channels only
from what is set, routes kept when the environment has none, automations by name."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from blocks.stack import Stack
from deployments.automations import (
    FAILURE_EVENTS,
    automation_names,
    failure_name,
    undeliverable_name,
    watcher_name,
)
from deployments.bootstrap import BootstrapReport, bootstrap, main
from deployments.settings import SCHEDULES, ControlPlaneSettings
from devstack.core import Devstack
from devstack.demo import bootstrap_env
from tasks.decisions.alerts import NotificationRoute
from tasks.notify import report_undeliverable


async def _automations(stack: str) -> list:
    async with get_client() as client:
        found = []
        for name in automation_names(stack):
            found.extend(await client.read_automations_by_name(name))
        return found


async def _delete_automations(stack: str) -> None:
    async with get_client() as client:
        for automation in await _automations(stack):
            await client.delete_automation(automation.id)


@pytest.fixture
def stack_name(devstack: Devstack) -> Iterator[str]:
    name = f"ctl-{secrets.token_hex(3)}"
    yield name
    # a watcher left behind would alert every 5 minutes for a stack without sweeps
    asyncio.run(_delete_automations(name))


def _run(env: dict[str, str], stack: str, window: float = 300) -> BootstrapReport:
    settings = ControlPlaneSettings(
        stack=stack, work_pool="devstack", watcher_window=timedelta(seconds=window)
    )
    return asyncio.run(bootstrap(env, settings))


def test_bootstrap_twice_changes_nothing_the_second_time(
    stack_env: dict[str, str], stack_name: str, devstack: Devstack
) -> None:
    env = {
        **stack_env,
        "ALERT_WEBHOOK_URL": f"{devstack.receiver_url}/bootstrap-test",
        "PAGERDUTY_ROUTING_KEY": "r" * 32,
    }
    first = _run(env, stack_name)
    assert {(s.kind, s.outcome) for s in first.changed()} >= {
        ("channel", "created"),
        ("stack block", "created"),
        ("automation", "created"),
    }
    second = _run(env, stack_name)
    assert second.changed() == []
    assert [(s.kind, s.name, s.outcome) for s in second.steps if s.kind == "automation"] == [
        ("automation", failure_name(stack_name), "unchanged"),
        ("automation", watcher_name(stack_name), "unchanged"),
        ("automation", undeliverable_name(stack_name), "unchanged"),
    ]
    assert len(asyncio.run(_automations(stack_name))) == 3


def test_channels_and_routes_come_from_the_variables_that_are_set(
    stack_env: dict[str, str], stack_name: str, devstack: Devstack
) -> None:
    env = {
        **stack_env,
        "ALERT_WEBHOOK_URL": f"{devstack.receiver_url}/bootstrap-test",
        "PAGERDUTY_ROUTING_KEY": "r" * 32,
        "SLACK_WEBHOOK_URL": "",
    }
    _run(env, stack_name)
    stack = Stack.load_stack(stack_name)
    assert stack.notifications == [
        NotificationRoute(block=f"custom-webhook/{stack_name}-webhook", min_severity="warning"),
        NotificationRoute(
            block=f"pagerduty-events/{stack_name}-pagerduty", min_severity="critical"
        ),
    ]
    for block_type, key in (
        ("slack-webhook", "slack"),
        ("discord-webhook", "discord"),
        ("ms-teams-webhook", "teams"),
        ("opsgenie-webhook", "opsgenie"),
    ):
        with pytest.raises(ValueError):
            Block.load(f"{block_type}/{stack_name}-{key}")
    assert stack.litellm_master_key.get_secret_value() == stack_env["LITELLM_MASTER_KEY"]


def test_routes_added_in_the_ui_survive_a_bootstrap_without_channel_variables(
    stack_env: dict[str, str], stack_name: str, devstack: Devstack
) -> None:
    _run({**stack_env, "ALERT_WEBHOOK_URL": f"{devstack.receiver_url}/bootstrap-test"}, stack_name)
    report = _run(stack_env, stack_name)
    assert Stack.load_stack(stack_name).notifications == [
        NotificationRoute(block=f"custom-webhook/{stack_name}-webhook", min_severity="warning")
    ]
    (step,) = [s for s in report.steps if s.kind == "stack block"]
    assert step.outcome == "unchanged" and "kept 1 existing route" in step.note


def test_a_route_added_in_the_ui_survives_a_bootstrap_with_channel_variables(
    stack_env: dict[str, str], stack_name: str, devstack: Devstack
) -> None:
    env = {
        **stack_env,
        "ALERT_WEBHOOK_URL": f"{devstack.receiver_url}/bootstrap-test",
        "PAGERDUTY_ROUTING_KEY": "r" * 32,
    }
    _run(env, stack_name)
    # An operator adds a Block Kit route in the UI (a document the environment does not manage).
    stack = Stack.load_stack(stack_name)
    ui_route = NotificationRoute(block="slack-block-kit/devstack-slack", min_severity="warning")
    stack.notifications = [*stack.notifications, ui_route]
    stack.save(stack_name, overwrite=True)
    # The worker restarts; PAGERDUTY_ROUTING_KEY was removed from its variables meanwhile.
    env.pop("PAGERDUTY_ROUTING_KEY")
    report = _run(env, stack_name)
    assert Stack.load_stack(stack_name).notifications == [
        NotificationRoute(block=f"custom-webhook/{stack_name}-webhook", min_severity="warning"),
        ui_route,
    ]
    (step,) = [s for s in report.steps if s.kind == "stack block"]
    assert "kept 1 added in the UI" in step.note


def test_automations_notify_the_channels_with_the_configured_window(
    stack_env: dict[str, str], stack_name: str, devstack: Devstack
) -> None:
    _run(
        {**stack_env, "ALERT_WEBHOOK_URL": f"{devstack.receiver_url}/bootstrap-test"},
        stack_name,
        window=45,
    )
    automations = {a.name: a for a in asyncio.run(_automations(stack_name))}
    watcher = automations[watcher_name(stack_name)]
    failure = automations[failure_name(stack_name)]
    assert watcher.trigger.posture == "Proactive"
    assert watcher.trigger.within == timedelta(seconds=45)
    assert watcher.trigger.expect == {"prefect.flow-run.Completed"}
    # flows report Failed/TimedOut themselves; the server reports what they cannot
    assert failure.trigger.expect == set(FAILURE_EVENTS)
    assert "prefect.flow-run.Crashed" in failure.trigger.expect
    webhook = Block.load(f"custom-webhook/{stack_name}-webhook")
    for automation in (watcher, failure):
        assert [a.block_document_id for a in automation.actions] == [webhook._block_document_id]
    # a changed window updates the watcher in place: still one automation of that name
    report = _run(
        {**stack_env, "ALERT_WEBHOOK_URL": f"{devstack.receiver_url}/bootstrap-test"},
        stack_name,
        window=60,
    )
    assert [s.outcome for s in report.steps if s.name == watcher_name(stack_name)] == ["updated"]
    assert len(asyncio.run(_automations(stack_name))) == 3


def test_an_undeliverable_alert_reaches_the_channels_through_the_server(
    stack_env: dict[str, str], stack_name: str, devstack: Devstack, receiver: Any
) -> None:
    """A failed run whose own alert reached nobody is still reported, by the server."""
    path = f"/undeliverable-{stack_name}"
    _run({**stack_env, "ALERT_WEBHOOK_URL": f"{devstack.receiver_url}{path}"}, stack_name)
    # A Prefect server on PostgreSQL arms a new automation when its NOTIFY reaches the
    # triggers service, a moment after the API answered: an event sent in between finds
    # no trigger. So the failed run reports again until the server has said it once.
    deadline = time.monotonic() + 60
    received: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not received:
        report_undeliverable(
            stack_name, "backup", "run 'brave-fox' of backup ended Failed: no channel", uuid4()
        )
        resend = time.monotonic() + 5
        while time.monotonic() < resend and not received:
            received = receiver.received(path)
            time.sleep(0.5)
    assert received, "the undeliverable automation sent nothing"
    title = str(received[0]["json"]["title"])
    text = str(received[0]["json"]["text"])
    assert title == f"[{stack_name}] a failed run could not alert: backup"
    assert "run 'brave-fox' of backup ended Failed" in text


def test_a_stack_environment_with_problems_fails_with_every_problem_and_no_secret(
    stack_env: dict[str, str], stack_name: str, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    for key, value in stack_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LITELLM_MASTER_KEY", "not-sk-" + stack_env["LITELLM_MASTER_KEY"])
    monkeypatch.delenv("CLICKHOUSE_URL")
    assert main(["--stack", stack_name, "--work-pool", "devstack"]) == 1
    err = capsys.readouterr().err
    assert "LITELLM_MASTER_KEY" in err and "CLICKHOUSE_URL" in err
    assert stack_env["LITELLM_MASTER_KEY"] not in err


def test_a_missing_backup_bucket_is_created_once(
    stack_env: dict[str, str], stack_name: str, devstack: Devstack
) -> None:
    bucket = f"{stack_name}-backups"
    env = {**stack_env, "BACKUP_BUCKET": bucket}
    client = devstack.minio_client()
    try:
        first = _run(env, stack_name)
        assert ("bucket", bucket, "created") in [(s.kind, s.name, s.outcome) for s in first.steps]
        assert client.bucket_exists(bucket)
        second = _run(env, stack_name)
        assert ("bucket", bucket, "unchanged") in [
            (s.kind, s.name, s.outcome) for s in second.steps
        ]
    finally:
        if client.bucket_exists(bucket):
            client.remove_bucket(bucket)


def test_an_automation_paused_by_an_operator_stays_paused(
    stack_env: dict[str, str], stack_name: str, devstack: Devstack
) -> None:
    env = {**stack_env, "ALERT_WEBHOOK_URL": f"{devstack.receiver_url}/bootstrap-test"}
    _run(env, stack_name)

    async def pause_watcher() -> None:
        async with get_client() as client:
            (watcher,) = await client.read_automations_by_name(watcher_name(stack_name))
            await client.pause_automation(watcher.id)

    asyncio.run(pause_watcher())
    report = _run(env, stack_name)
    assert report.changed() == []
    enabled = {a.name: a.enabled for a in asyncio.run(_automations(stack_name))}
    assert enabled == {
        failure_name(stack_name): True,
        watcher_name(stack_name): False,
        undeliverable_name(stack_name): True,
    }


def test_the_pager_from_the_environment_triggers_and_resolves_one_incident_per_service(
    stack_env: dict[str, str], stack_name: str, devstack: Devstack, receiver
) -> None:
    from tasks.decisions.alerts import Alert
    from tasks.decisions.delivery import dedup_key
    from tasks.notify import deliver

    path = f"/pagerduty-{stack_name}"
    env = {
        **stack_env,
        "ALERT_WEBHOOK_URL": f"{devstack.receiver_url}/chat-{stack_name}",
        "PAGERDUTY_ROUTING_KEY": "r" * 32,
        "PAGERDUTY_EVENTS_URL": f"{devstack.receiver_url}{path}",
    }
    report = _run(env, stack_name)
    # the pager is ours by design, not a route the automations forgot
    assert not [w for w in report.warnings if "pagerduty" in w]
    stack = Stack.load_stack(stack_name)

    def line(kind: str, status: str) -> dict[str, str]:
        return {
            "service": "postgres", "kind": kind, "status": status, "severity": "critical",
            "reason": "cannot connect", "dedup_key": dedup_key(stack_name, "postgres"),
        }  # fmt: skip

    for kind, status in (("alert", "unhealthy"), ("recovery", "healthy")):
        alert = Alert(
            stack=stack_name, source="health-sweep", title=f"postgres {status}", body="sweep",
            severity="critical", kind=kind, services=[line(kind, status)],
        )  # fmt: skip
        delivered = asyncio.run(deliver(stack, alert))
        assert delivered.failed == 0 and delivered.sent == 2
    events = [r["json"] for r in receiver.received(path)]
    assert [(e["event_action"], e["dedup_key"]) for e in events] == [
        ("trigger", f"{stack_name}/postgres"),
        ("resolve", f"{stack_name}/postgres"),
    ]


async def _drill_schedule(stack: str) -> tuple[UUID, Any]:
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(f"restore-drill/{stack}")
        (schedule,) = [s for s in deployment.schedules if s.slug == SCHEDULES["restore-drill"].slug]
        return deployment.id, schedule


async def _delete_deployments_and_pool(stack: str, pool: str) -> None:
    async with get_client() as client:
        for deployment in await client.read_deployments():
            if deployment.name == stack:
                await client.delete_deployment(deployment.id)
        with contextlib.suppress(ObjectNotFound):
            await client.delete_work_pool(pool)


def test_a_schedule_paused_in_the_ui_stays_paused_across_deploys_unless_the_variable_is_set(
    stack_name: str, devstack: Devstack
) -> None:
    # a pool of its own without a worker: nothing of this stack ever runs
    pool = f"{stack_name}-pool"
    settings = ControlPlaneSettings(stack=stack_name, work_pool=pool)
    env = {
        **bootstrap_env(devstack),
        "OPS_HEALTH_SWEEP_ACTIVE": "false",
        "OPS_BACKUP_ACTIVE": "false",
        "OPS_DEPLOY_VERIFY_ACTIVE": "false",
        "OPS_INGESTION_CANARY_ACTIVE": "false",
        "OPS_CAPACITY_ACTIVE": "false",
    }
    env.pop("OPS_RESTORE_DRILL_ACTIVE", None)  # the drill's schedule: default, active

    def deploy(extra: dict[str, str] | None = None) -> BootstrapReport:
        return asyncio.run(bootstrap({**env, **(extra or {})}, settings, deploy=True))

    try:
        deploy()
        deployment_id, schedule = asyncio.run(_drill_schedule(stack_name))
        assert schedule.active

        async def pause() -> None:
            async with get_client() as client:
                await client.update_deployment_schedule(deployment_id, schedule.id, active=False)

        asyncio.run(pause())
        report = deploy()
        _, kept = asyncio.run(_drill_schedule(stack_name))
        assert (kept.id, kept.active) == (schedule.id, False)
        lines = [line for line in report.render().splitlines() if "stays paused" in line]
        assert len(lines) == 1
        assert f"restore-drill/{stack_name}" in lines[0]
        assert "OPS_RESTORE_DRILL_ACTIVE=true" in lines[0]
        assert report.changed() == []

        report = deploy({"OPS_RESTORE_DRILL_ACTIVE": "true"})
        _, resumed = asyncio.run(_drill_schedule(stack_name))
        assert (resumed.id, resumed.active) == (schedule.id, True)
        assert "stays paused" not in report.render()
    finally:
        asyncio.run(_delete_deployments_and_pool(stack_name, pool))
