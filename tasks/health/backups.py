"""Object storage and the age of the newest backup set, on the primary and off site."""

from __future__ import annotations

from datetime import UTC, datetime

from minio.error import S3Error
from urllib3.exceptions import HTTPError

from blocks.stack import Stack
from tasks.errors import OffsiteError, StorageError
from tasks.health.base import HealthThresholds, Reading, in_thread, ok, reason_of
from tasks.storage import newest_complete_manifest

__all__ = [
    "check_backup_freshness",
    "check_object_storage",
    "check_offsite_freshness",
    "freshness_reading",
]


async def check_object_storage(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    client = stack.s3(timeout_s=timeout_s, retries=0)
    try:
        exists = await in_thread(lambda: client.bucket_exists(stack.backup_bucket))
    except S3Error as exc:
        return Reading("unhealthy", f"S3 refused HEAD {stack.backup_bucket}: {exc.code}")
    except HTTPError as exc:
        return Reading("unhealthy", "S3 unreachable: " + reason_of(stack, str(exc)))
    if not exists:
        return Reading(
            "unhealthy", f"backup bucket {stack.backup_bucket!r} does not exist: create it"
        )
    return ok(f"bucket {stack.backup_bucket} reachable")


async def check_backup_freshness(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    try:
        # Sockets give up after timeout_s and never retry: a probe answers in time.
        client = stack.s3(timeout_s=timeout_s, retries=0)
        manifest = await in_thread(lambda: newest_complete_manifest(stack, client))
    except StorageError as exc:
        return Reading("unhealthy", "cannot list backup sets: " + reason_of(stack, str(exc)))
    return freshness_reading(
        None if manifest is None else manifest.finished_at,
        datetime.now(UTC),
        th.backup_max_age_h,
        f"{stack.backup_bucket}/{stack.stack_name}/",
    )


async def check_offsite_freshness(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    if stack.offsite is None:
        return ok("no off-site target configured (OFFSITE_* variables)")
    # Imported only for a stack that has a target: every sweep's process start pays for
    # what it imports.
    from tasks.offsite import bucket_protection, newest_offsite_set

    target = stack.offsite
    try:
        client = target.client(timeout_s=timeout_s, retries=0)
        newest = await in_thread(lambda: newest_offsite_set(stack, client))
        protection = await in_thread(lambda: bucket_protection(client, target.bucket))
    except OffsiteError as exc:
        return Reading(
            "unhealthy", "cannot list the off-site copies: " + reason_of(stack, str(exc))
        )
    reading = freshness_reading(
        None if newest is None else newest.copied_at,
        datetime.now(UTC),
        th.offsite_max_age_h,
        f"{target.bucket}/{target.prefix}{stack.stack_name}/ (off-site)",
    )
    return Reading(reading.status, f"{reading.reason}; {protection}")


def freshness_reading(
    finished_at: datetime | None, now: datetime, max_age_h: float, where: str
) -> Reading:
    """No complete set is unhealthy; a newest set older than ``max_age_h`` is degraded."""
    if finished_at is None:
        return Reading("unhealthy", f"no complete backup set under {where}: run the backup flow")
    if finished_at.tzinfo is None:
        finished_at = finished_at.replace(tzinfo=UTC)
    age_h = (now - finished_at).total_seconds() / 3600
    reason = f"newest complete backup {age_h:.1f} h old"
    if age_h > max_age_h:
        return Reading("degraded", f"{reason} (> {max_age_h:g} h): check the backup flow's runs")
    return ok(reason)
