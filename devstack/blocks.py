"""Block documents of the devstack: its stack block and channels pointing at the receiver.

Channels: the built-in custom webhook (``<receiver>/custom``, warning and up), our Slack
Block Kit block (``<receiver>/slack``, warning and up) and our PagerDuty Events block
(``<receiver>/pagerduty``, critical only).

Run as ``python -m devstack.blocks`` with the devstack env (PREFECT_API_URL and the
stack's variables) so it talks to the devstack's Prefect server.
"""

from __future__ import annotations

import os

from prefect.blocks.notifications import CustomWebhookNotificationBlock

from blocks.pagerduty import PagerDutyEvents
from blocks.slack import SlackBlockKit
from blocks.stack import Stack
from devstack.core import PAGERDUTY_ROUTING_KEY
from tasks.decisions.alerts import NotificationRoute

__all__ = ["PAGERDUTY_DOC", "SLACK_DOC", "WEBHOOK_DOC", "save_devstack_blocks"]

WEBHOOK_DOC = "devstack-webhook"
SLACK_DOC = "devstack-slack"
PAGERDUTY_DOC = "devstack-pagerduty"


def save_devstack_blocks(env: dict[str, str] | None = None) -> Stack:
    env = dict(env or os.environ)
    receiver = env["RECEIVER_URL"]
    CustomWebhookNotificationBlock(
        name="devstack receiver",
        url=f"{receiver}/custom",
        json_data={"title": "{{subject}}", "text": "{{body}}"},
        allow_private_urls=True,
        timeout=5,
    ).save(WEBHOOK_DOC, overwrite=True)
    SlackBlockKit(webhook_url=f"{receiver}/slack", timeout_s=5).save(SLACK_DOC, overwrite=True)
    PagerDutyEvents(
        routing_key=PAGERDUTY_ROUTING_KEY, events_url=f"{receiver}/pagerduty", timeout_s=5
    ).save(PAGERDUTY_DOC, overwrite=True)
    stack = Stack.from_env(env, stack_name=env["STACK_NAME"])
    stack.notifications = [
        NotificationRoute(block=f"custom-webhook/{WEBHOOK_DOC}", min_severity="warning"),
        NotificationRoute(block=f"slack-block-kit/{SLACK_DOC}", min_severity="warning"),
        NotificationRoute(block=f"pagerduty-events/{PAGERDUTY_DOC}", min_severity="critical"),
    ]
    stack.save(env["STACK_NAME"], overwrite=True)
    return stack


if __name__ == "__main__":
    save_devstack_blocks()
