"""Notification block documents built from the environment, one per channel that is set.

Chat channels and Opsgenie are *built-in* Prefect notification blocks, so both our
flows and the server's automations (which can only load blocks the server process can
import) use the same document. PagerDuty is our own ``PagerDutyEvents`` block
(``blocks/pagerduty.py``): Prefect's built-in ``PagerDutyWebHook`` can only trigger,
so every incident it opened would stay open; ours triggers with a dedup key per stack
and service and resolves it on recovery. The server cannot load it, so the automations
(crashed runs, missing sweeps) reach the chat channels and Opsgenie, not the pager.
A variable that is not set creates nothing; a channel's route in the stack block takes
the severities its ``min_severity`` allows:

=========================  ==========================  ============  =================
variable                   block document              block type    default severity
=========================  ==========================  ============  =================
``SLACK_WEBHOOK_URL``      ``<stack>-slack``           slack-webhook       warning
``DISCORD_WEBHOOK_URL``    ``<stack>-discord``         discord-webhook     warning
``TEAMS_WEBHOOK_URL``      ``<stack>-teams``           ms-teams-webhook    warning
``ALERT_WEBHOOK_URL``      ``<stack>-webhook``         custom-webhook      warning
``PAGERDUTY_ROUTING_KEY``  ``<stack>-pagerduty``       pagerduty-events    critical
``OPSGENIE_API_KEY``       ``<stack>-opsgenie``        opsgenie-webhook    critical
=========================  ==========================  ============  =================

``PAGERDUTY_EVENTS_URL`` points the pager at another Events API v2 endpoint (EU
accounts: ``https://events.eu.pagerduty.com/v2/enqueue``).

``<CHANNEL>_MIN_SEVERITY`` (``SLACK_MIN_SEVERITY=info``, ``PAGERDUTY_MIN_SEVERITY=...``)
overrides the default severity of one channel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import get_args
from urllib.parse import urlsplit

from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.notifications import (
    CustomWebhookNotificationBlock,
    DiscordWebhook,
    MicrosoftTeamsWebhook,
    OpsgenieWebhook,
    SlackWebhook,
)
from pydantic import SecretStr, ValidationError

from blocks.pagerduty import PagerDutyEvents
from tasks.decisions.alerts import NotificationRoute, Severity
from tasks.errors import StackConfigError

__all__ = [
    "BUILTIN_NOTIFICATION_TYPES",
    "CHANNELS",
    "CHANNEL_VARIABLES",
    "Channel",
    "ChannelDocument",
    "channels_from_env",
    "is_builtin",
    "is_our_pager",
]

# Block types the Prefect server itself can load for an automation's SendNotification.
BUILTIN_NOTIFICATION_TYPES: frozenset[str] = frozenset(
    {
        "slack-webhook",
        "discord-webhook",
        "ms-teams-webhook",
        "custom-webhook",
        "pager-duty-webhook",
        "opsgenie-webhook",
        "mattermost-webhook",
        "twilio-sms",
        "sendgrid-email",
    }
)


def _slack(env: Mapping[str, str]) -> NotificationBlock:
    # The URL is the operator's own setting; a receiver on Railway's private network
    # is legitimate, so private addresses are allowed.
    return SlackWebhook(url=SecretStr(env["SLACK_WEBHOOK_URL"]), allow_private_urls=True)


def _discord(env: Mapping[str, str]) -> NotificationBlock:
    # https://discord.com/api/webhooks/<id>/<token>
    parts = [p for p in urlsplit(env["DISCORD_WEBHOOK_URL"]).path.split("/") if p]
    if len(parts) < 2 or not parts[-2].isdigit():
        raise StackConfigError(
            "DISCORD_WEBHOOK_URL is not a Discord webhook URL: expected "
            "https://discord.com/api/webhooks/<id>/<token> (Server settings -> Integrations "
            "-> Webhooks -> Copy Webhook URL)"
        )
    return DiscordWebhook(webhook_id=SecretStr(parts[-2]), webhook_token=SecretStr(parts[-1]))


def _teams(env: Mapping[str, str]) -> NotificationBlock:
    return MicrosoftTeamsWebhook(url=SecretStr(env["TEAMS_WEBHOOK_URL"]), allow_private_urls=True)


def _webhook(env: Mapping[str, str]) -> NotificationBlock:
    return CustomWebhookNotificationBlock(
        name="alert webhook",
        url=env["ALERT_WEBHOOK_URL"],
        json_data={"title": "{{subject}}", "text": "{{body}}"},
        timeout=10,
        allow_private_urls=True,
    )


def _pagerduty(env: Mapping[str, str]) -> NotificationBlock:
    events_url = env.get("PAGERDUTY_EVENTS_URL", "").strip()
    return PagerDutyEvents(
        routing_key=SecretStr(env["PAGERDUTY_ROUTING_KEY"].strip()),
        **({"events_url": events_url} if events_url else {}),
    )


def _opsgenie(env: Mapping[str, str]) -> NotificationBlock:
    region = env.get("OPSGENIE_REGION", "us").lower()
    if region not in ("us", "eu"):
        raise StackConfigError("OPSGENIE_REGION must be 'us' or 'eu'")
    return OpsgenieWebhook(
        apikey=SecretStr(env["OPSGENIE_API_KEY"]),
        region_name=region,
        tags=["litellm-langfuse-ops"],
    )


@dataclass(frozen=True)
class Channel:
    """One kind of channel: the variable that turns it on and how to build its block."""

    key: str
    variable: str
    block_type: str
    default_severity: Severity
    build: Callable[[Mapping[str, str]], NotificationBlock]

    def document_name(self, stack: str) -> str:
        return f"{stack}-{self.key}"

    def slug(self, stack: str) -> str:
        return f"{self.block_type}/{self.document_name(stack)}"

    def severity(self, env: Mapping[str, str]) -> Severity:
        variable = f"{self.key.upper()}_MIN_SEVERITY"
        value = env.get(variable, "").strip().lower() or self.default_severity
        if value not in get_args(Severity):
            raise StackConfigError(f"{variable} must be one of info, warning, critical")
        return value  # type: ignore[return-value]


CHANNELS: tuple[Channel, ...] = (
    Channel("slack", "SLACK_WEBHOOK_URL", "slack-webhook", "warning", _slack),
    Channel("discord", "DISCORD_WEBHOOK_URL", "discord-webhook", "warning", _discord),
    Channel("teams", "TEAMS_WEBHOOK_URL", "ms-teams-webhook", "warning", _teams),
    Channel("webhook", "ALERT_WEBHOOK_URL", "custom-webhook", "warning", _webhook),
    Channel("pagerduty", "PAGERDUTY_ROUTING_KEY", "pagerduty-events", "critical", _pagerduty),
    Channel("opsgenie", "OPSGENIE_API_KEY", "opsgenie-webhook", "critical", _opsgenie),
)
CHANNEL_VARIABLES: tuple[str, ...] = tuple(channel.variable for channel in CHANNELS)


@dataclass(frozen=True)
class ChannelDocument:
    """A block document to save, and the route the stack block gets for it."""

    channel: Channel
    name: str
    block: NotificationBlock
    route: NotificationRoute


def channels_from_env(env: Mapping[str, str], stack: str) -> list[ChannelDocument]:
    """The channel documents the environment asks for; none for an unset variable."""
    documents = []
    for channel in CHANNELS:
        if not env.get(channel.variable, "").strip():
            continue
        try:
            block = channel.build(env)
        except (ValueError, ValidationError) as exc:
            if isinstance(exc, StackConfigError):
                raise
            raise StackConfigError(
                f"{channel.variable} is not a valid {channel.block_type} setting "
                f"({type(exc).__name__}); copy the URL or key again from the service"
            ) from None
        documents.append(
            ChannelDocument(
                channel=channel,
                name=channel.document_name(stack),
                block=block,
                route=NotificationRoute(
                    block=channel.slug(stack), min_severity=channel.severity(env)
                ),
            )
        )
    return documents


def is_builtin(route: NotificationRoute) -> bool:
    """Whether the server can load this route's block for an automation."""
    return route.block.split("/", 1)[0] in BUILTIN_NOTIFICATION_TYPES


def is_our_pager(route: NotificationRoute) -> bool:
    """A route to our PagerDutyEvents block: flows page through it, automations cannot."""
    return route.block.split("/", 1)[0] == PagerDutyEvents.get_block_type_slug()
