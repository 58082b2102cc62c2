"""Slack notifications as Block Kit messages, through slack-sdk's incoming-webhook client.

The built-in ``SlackWebhook`` block sends flat text and, pointed anywhere but Slack,
silently sends nothing. This block sends one structured message per alert (per
service: status, reason, since when; a button to the flow run), raises on any answer
but 200, and its URL is configurable (a relay, a test receiver)::

    from blocks.slack import SlackBlockKit
    SlackBlockKit(webhook_url="https://hooks.slack.com/services/T/B/X").save("ops-chat")
    # stack route: {"block": "slack-block-kit/ops-chat", "min_severity": "warning"}

Automations can use it too: ``notify`` is awaitable and the package is registered
with Prefect (entry point ``prefect.collections``).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prefect.blocks.abstract import NotificationBlock
from pydantic import Field, SecretStr, field_validator
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.webhook import WebhookClient

from tasks.errors import NotificationError

__all__ = [
    "KIND_LABEL",
    "MAX_SERVICE_SECTIONS",
    "STATUS_EMOJI",
    "SlackBlockKit",
    "alert_blocks",
    "block_kit_payload",
]

if TYPE_CHECKING:
    from tasks.decisions.alerts import Alert

STATUS_EMOJI: dict[str, str] = {
    "healthy": ":large_green_circle:",
    "degraded": ":large_yellow_circle:",
    "unhealthy": ":red_circle:",
}
KIND_LABEL: dict[str, str] = {
    "alert": "down",
    "escalation": "got worse",
    "reminder": "still down",
    "recovery": "recovered",
}
MAX_SERVICE_SECTIONS = 20  # Slack allows 50 blocks per message


def _since(value: str) -> str:
    """Slack renders ``<!date^...>`` in the reader's time zone; the fallback is UTC."""
    if not value:
        return "-"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    fallback = moment.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def alert_blocks(alert: Alert) -> list[Block]:
    """The Block Kit layout of one alert: header, one section per service, run button."""
    blocks: list[Block] = [HeaderBlock(text=PlainTextObject(text=alert.title[:150]))]
    if alert.body and not alert.services:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=alert.body[:2900])))
    for entry in alert.services[:MAX_SERVICE_SECTIONS]:
        kind = entry.get("kind", "alert")
        status = "healthy" if kind == "recovery" else entry.get("status", "")
        label = f"{STATUS_EMOJI.get(status, '')} {status} ({KIND_LABEL.get(kind, kind)})"
        reason = entry.get("reason", "") if kind != "recovery" else "back to healthy"
        if entry.get("impacted_by"):
            reason += f"\n_impacted by {entry['impacted_by']}_"
        if entry.get("impacts"):
            reason += f"\n_impacts {entry['impacts']}_"
        blocks.append(
            SectionBlock(
                fields=[
                    MarkdownTextObject(text=f"*Service*\n{entry.get('service', '?')}"),
                    MarkdownTextObject(text=f"*Status*\n{label.strip()}"),
                    MarkdownTextObject(text=f"*Since*\n{_since(entry.get('since', ''))}"),
                    MarkdownTextObject(text=f"*Reason*\n{reason[:1900]}"),
                ]
            )
        )
    if len(alert.services) > MAX_SERVICE_SECTIONS:
        more = len(alert.services) - MAX_SERVICE_SECTIONS
        blocks.append(SectionBlock(text=MarkdownTextObject(text=f"... and {more} more")))
    if alert.link:
        blocks.append(
            ActionsBlock(
                elements=[ButtonElement(text=PlainTextObject(text="Open the run"), url=alert.link)]
            )
        )
    blocks.append(
        ContextBlock(
            elements=[
                MarkdownTextObject(
                    text=f"stack *{alert.stack}* · {alert.source} · severity {alert.severity}"
                )
            ]
        )
    )
    return blocks


class SlackBlockKit(NotificationBlock):
    """Slack incoming webhook sending Block Kit messages; load it with ``.load("ops-chat")``."""

    _block_type_name = "Slack Block Kit"
    _block_type_slug = "slack-block-kit"
    _description = "Structured Slack alerts (Block Kit) through an incoming webhook."

    webhook_url: SecretStr = Field(
        description="Incoming webhook URL (https://hooks.slack.com/services/...); it is a secret."
    )
    timeout_s: int = Field(default=10, ge=1, le=60, description="Seconds to wait for Slack.")

    @field_validator("webhook_url")
    @classmethod
    def _http(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value

    def _send(self, text: str, blocks: list[Block]) -> None:
        client = WebhookClient(self.webhook_url.get_secret_value(), timeout=self.timeout_s)
        try:
            response = client.send(text=text, blocks=blocks)
        except OSError as exc:  # urllib: refused, unreachable, timed out
            raise NotificationError(f"Slack webhook unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise NotificationError(
                f"Slack webhook answered HTTP {response.status_code}: {str(response.body)[:200]}"
            )

    async def send_alert(self, alert: Alert) -> None:
        """One Block Kit message for the alert; raises NotificationError if Slack refuses."""
        await asyncio.to_thread(self._send, alert.title, alert_blocks(alert))

    async def notify(self, body: str, subject: str | None = None) -> None:
        blocks: list[Block] = []
        if subject:
            blocks.append(HeaderBlock(text=PlainTextObject(text=subject[:150])))
        blocks.append(SectionBlock(text=MarkdownTextObject(text=body[:2900])))
        try:
            await asyncio.to_thread(self._send, subject or body[:150], blocks)
        except NotificationError:
            if self._raise_on_failure:
                raise
            self.logger.exception("Slack notification failed")


def block_kit_payload(alert: Alert) -> dict[str, Any]:
    """The JSON body sent for ``alert`` (for previews and tests)."""
    return {"text": alert.title, "blocks": [block.to_dict() for block in alert_blocks(alert)]}
