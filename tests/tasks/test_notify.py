"""Alert delivery: a failing channel leaks none of its secrets; an alert that reaches
nobody is reported as an event for the server's automation."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import httpx
import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from pydantic import SecretStr

from blocks.stack import Stack
from devstack.core import Devstack
from tasks.decisions.alerts import Alert, NotificationRoute
from tasks.notify import (
    UNDELIVERABLE_EVENT,
    alert_on_failure,
    block_secret_values,
    deliver,
    redact_urls,
)

PATH_TOKEN = "hookpath" + "Q" * 24
QUERY_TOKEN = "querytok" + "Z" * 24
HEADER_TOKEN = "hdr-" + "W" * 24


@pytest.fixture
def leaky_webhook(receiver: Any) -> Iterator[tuple[str, str]]:
    """A custom webhook whose URL carries a token in path and query; the receiver
    answers it 500. Yields (route slug, receiver path)."""
    name = f"leaky-{secrets.token_hex(3)}"
    path = f"/{name}"
    block = CustomWebhookNotificationBlock(
        name=name,
        url=f"{receiver.url}{path}/{PATH_TOKEN}?token={QUERY_TOKEN}",
        json_data={"title": "{{subject}}", "text": "{{body}}"},
        headers={"X-Token": "{{token}}"},
        secrets={"token": HEADER_TOKEN},
        allow_private_urls=True,
        timeout=5,
    )
    block_id = block.save(name, overwrite=True)
    receiver.fail(path, 500)
    yield f"custom-webhook/{name}", path

    async def delete() -> None:
        async with get_client() as client:
            await client.delete_block_document(block_id)

    asyncio.run(delete())


def alert(stack: Stack) -> Alert:
    return Alert(
        stack=stack.stack_name, source="backup", title="backup failed", body="pg_dump exited 1"
    )


def test_a_failing_webhook_leaks_no_token_to_logs_or_report(
    stack: Stack,
    leaky_webhook: tuple[str, str],
    receiver: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    route, path = leaky_webhook
    own = stack.model_copy(update={"notifications": [NotificationRoute(block=route)]})
    with caplog.at_level(logging.INFO):
        report = asyncio.run(deliver(own, alert(own)))
    assert receiver.received(path), "the webhook was called"
    assert (report.sent, report.failed) == (0, 1)
    error = report.results[0].error or ""
    assert "500" in error  # the operator still sees why
    assert "127.0.0.1" in error  # and where
    exposed = report.model_dump_json() + caplog.text
    for token in (PATH_TOKEN, QUERY_TOKEN, HEADER_TOKEN):
        assert token not in exposed
    for secret in stack.secret_values():
        assert secret not in exposed


def test_block_secrets_include_url_tokens_and_secret_fields() -> None:
    webhook = CustomWebhookNotificationBlock(
        name="x",
        url=f"https://hooks.example.com/services/{PATH_TOKEN}?token={QUERY_TOKEN}",
        secrets={"token": HEADER_TOKEN},
    )
    values = block_secret_values(webhook)
    assert HEADER_TOKEN in values
    assert any(PATH_TOKEN in v for v in values) and any(QUERY_TOKEN in v for v in values)
    assert "hooks.example.com" not in " ".join(values)  # the host stays readable


def test_redact_urls_keeps_scheme_and_host_only() -> None:
    text = (
        "Server error '500' for url 'https://u:pw@hooks.example.com:8443/services/T/B/X?k=v'\n"
        "see https://developer.mozilla.org/ and http://h:1"
    )
    assert redact_urls(text) == (
        "Server error '500' for url 'https://hooks.example.com:8443/***'\n"
        "see https://developer.mozilla.org/ and http://h:1"
    )


def test_a_secret_str_field_of_a_block_is_a_secret() -> None:
    from blocks.slack import SlackBlockKit

    block = SlackBlockKit(webhook_url=SecretStr(f"https://hooks.slack.com/services/{PATH_TOKEN}"))
    assert any(PATH_TOKEN in v for v in block_secret_values(block))


def _undeliverable_events(devstack: Devstack, stack_name: str, since: datetime) -> list[Any]:
    body = {
        "filter": {
            "occurred": {"since": since.isoformat()},
            "resource": {"id": [f"ops.stack.{stack_name}"]},
            "event": {"name": [UNDELIVERABLE_EVENT]},
        },
        "limit": 10,
    }
    found = httpx.post(f"{devstack.prefect_api_url}/events/filter", json=body, timeout=5)
    found.raise_for_status()
    return list(found.json()["events"])


def _wait_for_event(devstack: Devstack, stack_name: str, since: datetime) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = _undeliverable_events(devstack, stack_name, since)
        if events:
            return dict(events[0])
        time.sleep(0.5)
    raise AssertionError(f"no {UNDELIVERABLE_EVENT} event for {stack_name} within 30 s")


def _failed_run(stack_name: str) -> tuple[Any, Any, Any]:
    flow = SimpleNamespace(name="backup")
    flow_run = SimpleNamespace(id=uuid4(), name="brave-fox", parameters={"stack": stack_name})
    state = SimpleNamespace(name="Failed", message="pg_dump exited 1")
    return flow, flow_run, state


def test_a_failure_hook_without_its_stack_block_emits_an_undeliverable_event(
    devstack: Devstack,
) -> None:
    since = datetime.now(UTC)
    name = f"missing-{secrets.token_hex(3)}"
    flow, flow_run, state = _failed_run(name)
    alert_on_failure(flow, flow_run, state)
    event = _wait_for_event(devstack, name, since)
    assert event["payload"]["source"] == "backup"
    assert "did not load" in event["payload"]["reason"]
    # The failed run is named. Prefect's events worker may add the run context it last
    # saw in this test process; in a flow's own hook that is the failed run itself.
    assert {
        "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
        "prefect.resource.role": "flow-run",
    } in event["related"]


def test_a_failure_alert_that_every_channel_refuses_emits_an_undeliverable_event(
    devstack: Devstack, stack: Stack, leaky_webhook: tuple[str, str]
) -> None:
    route, _path = leaky_webhook
    name = f"refused-{secrets.token_hex(3)}"
    own = stack.model_copy(
        update={"stack_name": name, "notifications": [NotificationRoute(block=route)]}
    )
    block_id = own.save(name, overwrite=True)
    since = datetime.now(UTC)
    try:
        flow, flow_run, state = _failed_run(name)
        alert_on_failure(flow, flow_run, state)
        event = _wait_for_event(devstack, name, since)
    finally:

        async def delete() -> None:
            async with get_client() as client:
                await client.delete_block_document(block_id)

        asyncio.run(delete())
    reason = event["payload"]["reason"]
    assert route in reason and "500" in reason
    for token in (PATH_TOKEN, QUERY_TOKEN, HEADER_TOKEN):
        assert token not in reason
