"""Block documents of the devstack: its stack block and channels pointing at the receiver.

Run as ``python -m devstack.blocks`` with the devstack env (PREFECT_API_URL and the
stack's variables) so it talks to the devstack's Prefect server.
"""

from __future__ import annotations

import os

from prefect.blocks.notifications import CustomWebhookNotificationBlock

from blocks.stack import NotificationRoute, Stack

WEBHOOK_DOC = "devstack-webhook"


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
    stack = Stack.from_env(env, stack_name=env["STACK_NAME"])
    stack.notifications = [
        NotificationRoute(block=f"custom-webhook/{WEBHOOK_DOC}", min_severity="warning")
    ]
    stack.save(env["STACK_NAME"], overwrite=True)
    return stack


if __name__ == "__main__":
    save_devstack_blocks()
