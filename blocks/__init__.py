"""Prefect blocks of this product; importing the package registers them with Prefect."""

from blocks.pagerduty import PagerDutyEvents
from blocks.slack import SlackBlockKit
from blocks.stack import Stack
from tasks.decisions.alerts import NotificationRoute

__all__ = ["NotificationRoute", "PagerDutyEvents", "SlackBlockKit", "Stack"]
