"""Notification channels from the environment: only those set, routed by severity."""

from __future__ import annotations

import pytest
from prefect.blocks.notifications import DiscordWebhook

from blocks.pagerduty import PagerDutyEvents
from deployments.channels import (
    CHANNEL_VARIABLES,
    CHANNELS,
    channels_from_env,
    is_builtin,
    is_our_pager,
)
from tasks.decisions.alerts import Alert, NotificationRoute, part_for_route
from tasks.errors import StackConfigError

ALL_SET = {
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXX",
    "DISCORD_WEBHOOK_URL": "https://discord.com/api/webhooks/123456789/tok-en_x",
    "TEAMS_WEBHOOK_URL": "https://prod-00.westeurope.logic.azure.com:443/workflows/0a1b2c/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=abc",
    "ALERT_WEBHOOK_URL": "https://alerts.example.com/hook",
    "PAGERDUTY_ROUTING_KEY": "R0UT1NGKEY0000000000000000000000",
    "OPSGENIE_API_KEY": "00000000-0000-0000-0000-000000000000",
}


def test_nothing_set_creates_nothing() -> None:
    assert channels_from_env({}, "production") == []
    assert channels_from_env({name: " " for name in CHANNEL_VARIABLES}, "production") == []


def test_only_the_channels_that_are_set() -> None:
    env = {"SLACK_WEBHOOK_URL": ALL_SET["SLACK_WEBHOOK_URL"], "PAGERDUTY_ROUTING_KEY": "k" * 32}
    documents = channels_from_env(env, "production")
    assert [(d.name, d.route.block, d.route.min_severity) for d in documents] == [
        ("production-slack", "slack-webhook/production-slack", "warning"),
        ("production-pagerduty", "pagerduty-events/production-pagerduty", "critical"),
    ]


def test_every_channel_builds_a_block_of_its_declared_type() -> None:
    documents = channels_from_env(ALL_SET, "staging")
    assert len(documents) == len(CHANNELS) == 6
    for document in documents:
        assert type(document.block).get_block_type_slug() == document.channel.block_type
        # the pager is our own block (it resolves); every other channel is built-in
        assert is_builtin(document.route) == (document.channel.key != "pagerduty")
        assert is_our_pager(document.route) == (document.channel.key == "pagerduty")
    chat = {d.channel.key for d in documents if d.route.min_severity == "warning"}
    pager = {d.channel.key for d in documents if d.route.min_severity == "critical"}
    assert chat == {"slack", "discord", "teams", "webhook"}
    assert pager == {"pagerduty", "opsgenie"}


def test_discord_url_is_split_into_id_and_token() -> None:
    (document,) = channels_from_env({"DISCORD_WEBHOOK_URL": ALL_SET["DISCORD_WEBHOOK_URL"]}, "p")
    assert isinstance(document.block, DiscordWebhook)
    assert document.block.webhook_id.get_secret_value() == "123456789"
    assert document.block.webhook_token.get_secret_value() == "tok-en_x"


def test_a_discord_url_that_is_not_one_names_the_variable() -> None:
    with pytest.raises(StackConfigError, match="DISCORD_WEBHOOK_URL"):
        channels_from_env({"DISCORD_WEBHOOK_URL": "https://example.com/"}, "p")


def test_an_invalid_teams_url_names_the_variable_without_echoing_it() -> None:
    with pytest.raises(StackConfigError, match="TEAMS_WEBHOOK_URL") as caught:
        channels_from_env({"TEAMS_WEBHOOK_URL": "https://example.com/s3cr3t-path"}, "p")
    assert "s3cr3t-path" not in str(caught.value)


def test_severity_of_one_channel_can_be_overridden() -> None:
    env = {"SLACK_WEBHOOK_URL": ALL_SET["SLACK_WEBHOOK_URL"], "SLACK_MIN_SEVERITY": "Critical"}
    (document,) = channels_from_env(env, "p")
    assert document.route.min_severity == "critical"
    with pytest.raises(StackConfigError, match="SLACK_MIN_SEVERITY"):
        channels_from_env({**env, "SLACK_MIN_SEVERITY": "loud"}, "p")


def test_a_route_to_one_of_our_own_blocks_is_not_builtin() -> None:
    from tasks.decisions.alerts import NotificationRoute

    assert not is_builtin(NotificationRoute(block="slack-block-kit/ops"))
    assert is_builtin(NotificationRoute(block="custom-webhook/ops"))


def test_the_pager_routing_key_and_endpoint_come_from_the_environment() -> None:
    env = {"PAGERDUTY_ROUTING_KEY": " R0UT1NG ", "PAGERDUTY_EVENTS_URL": "https://eu.example/v2"}
    (document,) = channels_from_env(env, "p")
    assert isinstance(document.block, PagerDutyEvents)
    assert document.block.routing_key.get_secret_value() == "R0UT1NG"
    assert document.block.events_url == "https://eu.example/v2"
    (default,) = channels_from_env({"PAGERDUTY_ROUTING_KEY": "k"}, "p")
    assert isinstance(default.block, PagerDutyEvents)
    assert default.block.events_url == "https://events.pagerduty.com/v2/enqueue"


def _sweep(*kinds: str) -> Alert:
    lines = [
        {"service": f"svc-{i}", "kind": kind, "status": "unhealthy", "severity": "critical"}
        for i, kind in enumerate(kinds)
    ]
    return Alert(stack="p", source="health-sweep", title="t", body="b", services=lines)


@pytest.mark.parametrize("block", ["pager-duty-webhook/old-pager", "opsgenie-webhook/genie"])
def test_a_trigger_only_pager_never_gets_reminders_or_recoveries(block: str) -> None:
    route = NotificationRoute(block=block, min_severity="critical")
    assert part_for_route(_sweep("reminder"), route) is None
    assert part_for_route(_sweep("recovery", "reminder"), route) is None
    mixed = part_for_route(_sweep("alert", "recovery", "escalation", "reminder"), route)
    assert mixed is not None
    assert [(e["service"], e["kind"]) for e in mixed.services] == [
        ("svc-0", "alert"),
        ("svc-2", "escalation"),
    ]
    plain = Alert(stack="p", source="backup", title="t", body="b", kind="recovery")
    assert part_for_route(plain, route) is None
    assert part_for_route(plain.model_copy(update={"kind": "alert"}), route) is not None


@pytest.mark.parametrize("block", ["pagerduty-events/pager", "custom-webhook/chat"])
def test_a_resolving_pager_and_chat_channels_get_every_line(block: str) -> None:
    route = NotificationRoute(block=block, min_severity="critical")
    alert = _sweep("alert", "recovery", "reminder")
    assert part_for_route(alert, route) == alert
