"""Our notification blocks (Slack Block Kit, PagerDuty Events v2) against the receiver."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from prefect.blocks.core import Block

from blocks.pagerduty import PagerDutyEvents, events_for
from blocks.slack import SlackBlockKit
from tasks.decisions.alerts import Alert
from tasks.errors import NotificationError
from tasks.notify import deliver

SINCE = datetime(2026, 11, 22, 10, 2, tzinfo=UTC).isoformat()


def grouped(kind: str = "alert") -> Alert:
    return Alert(
        stack="prod",
        source="health-sweep",
        title="postgres unhealthy; 1 impacted",
        body="Health sweep of stack prod:",
        severity="critical",
        link="http://ui.example/runs/flow-run/1",
        services=[
            {
                "service": "postgres",
                "kind": kind,
                "status": "unhealthy",
                "severity": "critical",
                "reason": "cannot connect: connection refused",
                "since": SINCE,
                "impacts": "langfuse-web",
                "dedup_key": "prod/postgres",
            },
            {
                "service": "langfuse-web",
                "kind": kind,
                "status": "unhealthy",
                "severity": "warning",
                "reason": "answered HTTP 500",
                "since": SINCE,
                "impacted_by": "postgres",
                "dedup_key": "prod/langfuse-web",
            },
        ],
    )


def test_slack_block_kit_message(receiver) -> None:  # type: ignore[no-untyped-def]
    block = SlackBlockKit(webhook_url=f"{receiver.url}/slack/T/B/X")
    asyncio.run(block.send_alert(grouped()))
    [sent] = receiver.received("/slack")
    body = sent["json"]
    assert body["text"] == "postgres unhealthy; 1 impacted"
    types = [b["type"] for b in body["blocks"]]
    assert types == ["header", "section", "section", "actions", "context"]
    postgres = [f["text"] for f in body["blocks"][1]["fields"]]
    assert postgres[0] == "*Service*\npostgres"
    assert postgres[1] == "*Status*\n:red_circle: unhealthy (down)"
    assert postgres[2].startswith("*Since*\n<!date^")
    assert "cannot connect" in postgres[3] and "impacts langfuse-web" in postgres[3]
    impacted = [f["text"] for f in body["blocks"][2]["fields"]]
    assert "impacted by postgres" in impacted[3]
    assert body["blocks"][3]["elements"][0]["url"] == "http://ui.example/runs/flow-run/1"


def test_slack_refusal_raises_for_alerts_and_under_raise_on_failure(receiver) -> None:  # type: ignore[no-untyped-def]
    receiver.fail("/slack", 500)
    block = SlackBlockKit(webhook_url=f"{receiver.url}/slack/T/B/X")
    with pytest.raises(NotificationError, match="HTTP 500"):
        asyncio.run(block.send_alert(grouped()))
    asyncio.run(block.notify("body", "subject"))  # plain notify logs, like Prefect's blocks
    with block.raise_on_failure(), pytest.raises(NotificationError):
        asyncio.run(block.notify("body", "subject"))


def test_pagerduty_triggers_the_root_only_and_resolves_with_the_same_key(receiver) -> None:  # type: ignore[no-untyped-def]
    block = PagerDutyEvents(routing_key="R0UTING", events_url=f"{receiver.url}/pagerduty")
    asyncio.run(block.send_alert(grouped("alert")))
    asyncio.run(block.send_alert(grouped("recovery")))
    sent = [r["json"] for r in receiver.received("/pagerduty")]
    assert [(e["event_action"], e["dedup_key"]) for e in sent] == [
        ("trigger", "prod/postgres"),
        ("resolve", "prod/postgres"),
    ]
    trigger = sent[0]
    assert trigger["routing_key"] == "R0UTING"
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["component"] == "postgres"
    assert trigger["payload"]["group"] == "prod"
    assert trigger["payload"]["custom_details"]["impacts"] == "langfuse-web"
    assert trigger["links"] == [
        {"href": "http://ui.example/runs/flow-run/1", "text": "Prefect flow run"}
    ]


def test_pagerduty_plain_alert_uses_its_dedup_key() -> None:
    failure = Alert(
        stack="prod",
        source="backup",
        title="backup failed",
        body="pg_dump exited 1",
        dedup_key="prod/backup/failure",
    )
    [event] = events_for(failure, "ops")
    assert (event.event_action, event.dedup_key) == ("trigger", "prod/backup/failure")
    [resolve] = events_for(failure.model_copy(update={"kind": "recovery"}), "ops")
    assert resolve.event_action == "resolve"


def test_pagerduty_refusal_names_the_events_and_not_the_key(receiver) -> None:  # type: ignore[no-untyped-def]
    receiver.fail("/pagerduty", 400)
    block = PagerDutyEvents(routing_key="R0UTING", events_url=f"{receiver.url}/pagerduty")
    with pytest.raises(NotificationError) as error:
        asyncio.run(block.send_alert(grouped()))
    assert "trigger prod/postgres: HTTP 400" in str(error.value)
    assert "R0UTING" not in str(error.value)


def test_routing_sends_the_pager_only_the_critical_lines(receiver, stack, devstack) -> None:  # type: ignore[no-untyped-def]
    # The devstack block routes custom-webhook and slack-block-kit from warning,
    # pagerduty-events from critical.
    loaded = asyncio.run(Block.aload(f"llm-stack/{stack.stack_name}"))
    report = asyncio.run(deliver(loaded, grouped()))
    assert (report.sent, report.failed) == (3, 0)
    [page] = receiver.received("/pagerduty")
    assert page["json"]["dedup_key"] == "prod/postgres"
    assert len(receiver.received("/slack")[0]["json"]["blocks"]) == 5  # both services

    receiver.clear()
    degraded = grouped().model_copy(
        update={
            "severity": "warning",
            "services": [
                dict(e, severity="warning", status="degraded") for e in grouped().services
            ],
        }
    )
    report = asyncio.run(deliver(loaded, degraded))
    assert report.sent == 2
    assert receiver.received("/pagerduty") == []  # degraded never pages


def test_our_blocks_round_trip_through_the_server(devstack) -> None:  # type: ignore[no-untyped-def]
    slack = asyncio.run(Block.aload("slack-block-kit/devstack-slack"))
    pager = asyncio.run(Block.aload("pagerduty-events/devstack-pagerduty"))
    assert isinstance(slack, SlackBlockKit)
    assert isinstance(pager, PagerDutyEvents)
    assert slack.webhook_url.get_secret_value().endswith("/slack")
    assert pager.routing_key.get_secret_value() == "devstack-routing-key"
