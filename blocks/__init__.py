"""Prefect blocks of this product; importing the package registers them with Prefect."""

from blocks.stack import NotificationRoute, Stack

__all__ = ["NotificationRoute", "Stack"]
