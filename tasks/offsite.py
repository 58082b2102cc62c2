"""The off-site copy: every complete set sealed with age into a second S3 target, checked,
pruned by its own policy, and read back for drills and restores.

- :func:`copy_offsite` copies every complete primary set that is not off-site yet (the
  run's own first, then any a failed run left behind: the next run catches up), object
  by object: read from the primary, plaintext hashed and checked against the primary
  manifest, encrypted as a stream, uploaded, and the ciphertext read back from the
  target and compared; ``offsite.json`` last (see :mod:`tasks.decisions.offsite`).
- :func:`prune_offsite` applies the off-site retention policy with the invariants of the
  primary's (never the last good set, never an object outside our sets).
- opening a set again for a drill or a restore is :mod:`tasks.restore.from_offsite`.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import urllib3
from minio.error import MinioException
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel

from blocks.stack import Stack
from tasks.age_stream import EncryptingReader, HashingReader
from tasks.decisions import retention
from tasks.decisions.clickhouse_backup import descriptor_files
from tasks.decisions.manifest import (
    MANIFEST_NAME,
    BackupManifest,
    set_id_of_key,
    set_prefix,
    stack_prefix,
)
from tasks.decisions.offsite import (
    OFFSITE_MANIFEST_NAME,
    OffsiteManifest,
    OffsiteObject,
    offsite_manifest_key,
    sealed_key,
    trust_offsite_manifest,
)
from tasks.errors import OffsiteError
from tasks.storage import list_backup_sets, list_stack_objects

if TYPE_CHECKING:
    from minio import Minio

    from blocks.offsite import OffsiteTarget

__all__ = [
    "OffsiteCopyReport",
    "OffsiteSet",
    "bucket_protection",
    "copy_offsite",
    "get_bytes",
    "list_offsite_sets",
    "newest_offsite_set",
    "offsite_failure",
    "offsite_target",
    "prune_offsite",
]

PART_SIZE = 16 * 1024 * 1024
_S3_ERRORS = (MinioException, urllib3.exceptions.HTTPError, OSError)


class OffsiteCopyReport(BaseModel):
    """What one run copied off-site."""

    target: str
    copied_sets: list[str]
    already_offsite: int
    objects: int
    plain_bytes: int
    stored_bytes: int
    seconds: float


class OffsiteSet(BaseModel):
    """One set found on the target: complete (offsite.json trusted) or not."""

    backup_id: str
    manifest: OffsiteManifest | None
    problem: str | None
    objects: int


def offsite_target(stack: Stack) -> OffsiteTarget:
    if stack.offsite is None:
        raise OffsiteError(
            f"stack {stack.stack_name} has no off-site target: set the OFFSITE_* variables "
            "(README, 'Off-site copy')"
        )
    return stack.offsite


def offsite_failure(stack: Stack, action: str, exc: BaseException) -> OffsiteError:
    target = offsite_target(stack)
    return OffsiteError(
        f"off-site {action} failed ({target.endpoint}, bucket {target.bucket}): "
        f"{stack.error_line(exc, limit=300, lines='join')}"
    )


# ---- listing --------------------------------------------------------------------------


def list_offsite_sets(stack: Stack, client: Minio | None = None) -> list[OffsiteSet]:
    """Every set of the stack on the target, oldest first."""
    target = offsite_target(stack)
    client = client or target.client()
    grouped: dict[str, int] = {}
    manifests: set[str] = set()
    base = target.prefix
    try:
        for obj in client.list_objects(
            target.bucket, prefix=base + stack_prefix(stack.stack_name), recursive=True
        ):
            if obj.object_name is None or obj.is_dir:
                continue
            key = obj.object_name[len(base) :]
            backup_id = set_id_of_key(stack.stack_name, key)
            if backup_id is None:
                continue
            grouped[backup_id] = grouped.get(backup_id, 0) + 1
            if key == set_prefix(stack.stack_name, backup_id) + OFFSITE_MANIFEST_NAME:
                manifests.add(backup_id)
    except _S3_ERRORS as exc:
        raise offsite_failure(stack, "listing", exc) from None
    found = []
    for backup_id, count in sorted(grouped.items()):
        manifest: OffsiteManifest | None = None
        if backup_id in manifests:
            key = offsite_manifest_key(base, stack.stack_name, backup_id)
            try:
                raw = get_bytes(client, target.bucket, key)
            except _S3_ERRORS as exc:
                raise offsite_failure(stack, f"read of {key}", exc) from None
            manifest, problem = trust_offsite_manifest(raw, stack.stack_name, backup_id, key)
        found.append(
            OffsiteSet(backup_id=backup_id, manifest=manifest, problem=problem, objects=count)
        )
    return found


def newest_offsite_set(stack: Stack, client: Minio | None = None) -> OffsiteManifest | None:
    """The newest complete off-site copy (one GET: only the newest offsite.json that parses)."""
    target = offsite_target(stack)
    client = client or target.client()
    base = target.prefix
    candidates = []
    try:
        for obj in client.list_objects(
            target.bucket, prefix=base + stack_prefix(stack.stack_name), recursive=True
        ):
            key = (obj.object_name or "")[len(base) :]
            backup_id = set_id_of_key(stack.stack_name, key)
            if backup_id and key == set_prefix(stack.stack_name, backup_id) + OFFSITE_MANIFEST_NAME:
                candidates.append(backup_id)
        for backup_id in sorted(candidates, reverse=True):
            key = offsite_manifest_key(base, stack.stack_name, backup_id)
            manifest, _ = trust_offsite_manifest(
                get_bytes(client, target.bucket, key), stack.stack_name, backup_id, key
            )
            if manifest is not None:
                return manifest
    except _S3_ERRORS as exc:
        raise offsite_failure(stack, "listing", exc) from None
    return None


def bucket_protection(client: Minio, bucket: str) -> str:
    """Whether the off-site bucket keeps old versions or locks objects (against an
    attacker with the keys deleting the copies), as a line for operators, with the fix."""
    versioning = "unknown"
    lock = "unknown"
    with contextlib.suppress(*_S3_ERRORS):
        versioning = (client.get_bucket_versioning(bucket).status or "Off").lower()
    try:
        config = client.get_object_lock_config(bucket)
        lock = f"on ({config.mode}, {config.duration})" if config.mode else "off"
    except MinioException as exc:
        lock = "off" if "ObjectLockConfiguration" in str(exc) else "unknown"
    except (urllib3.exceptions.HTTPError, OSError):
        pass
    line = f"off-site bucket versioning {versioning}, object lock {lock}"
    if versioning != "enabled" and not lock.startswith("on"):
        line += (
            " (enable versioning or object lock on it: a stolen key could otherwise "
            "delete every copy)"
        )
    return line


def get_bytes(client: Minio, bucket: str, key: str) -> bytes:
    response = client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


# ---- copy -----------------------------------------------------------------------------


@task(name="copy-offsite", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def copy_offsite(stack: Stack, backup_id: str) -> OffsiteCopyReport:
    """Copy ``backup_id`` and every other complete set not yet off-site; report."""
    logger = get_run_logger()
    target = offsite_target(stack)
    started = time.monotonic()
    off = target.client()
    primary = stack.s3()
    done = {s.backup_id for s in list_offsite_sets(stack, off) if s.manifest is not None}
    complete = {s.backup_id: s.manifest for s in list_backup_sets(stack) if s.manifest}
    todo = [i for i in sorted(complete, reverse=True) if i not in done]
    # The run's own set first: it is the one whose absence off-site matters most.
    todo.sort(key=lambda i: i != backup_id)
    report = OffsiteCopyReport(
        target=target.describe(),
        copied_sets=[],
        already_offsite=len(done),
        objects=0,
        plain_bytes=0,
        stored_bytes=0,
        seconds=0.0,
    )
    for set_id in todo:
        manifest = complete[set_id]
        assert manifest is not None
        copied = _copy_set(stack, target, primary, off, manifest)
        report.copied_sets.append(set_id)
        report.objects += len(copied.objects)
        report.plain_bytes += copied.plain_bytes
        report.stored_bytes += copied.stored_bytes
        logger.info(
            "off-site: %s copied, %d objects, %.1f MB sealed in %.1f s (key %s)",
            set_id,
            len(copied.objects),
            copied.stored_bytes / 1e6,
            copied.seconds,
            copied.key_fingerprint,
        )
    report.seconds = time.monotonic() - started
    if not todo:
        logger.info("off-site: every complete set is already there (%d)", len(done))
    return report


def _copy_set(
    stack: Stack, target: OffsiteTarget, primary: Minio, off: Minio, manifest: BackupManifest
) -> OffsiteManifest:
    started = time.monotonic()
    expected = {o.key: (o.size, o.sha256) for o in manifest.objects}
    entries = [
        e
        for e in list_stack_objects(stack, primary)
        if e.key.startswith(manifest.prefix) and not e.key.endswith("/" + OFFSITE_MANIFEST_NAME)
    ]
    sizes = _descriptor_sizes(stack, primary, manifest)
    objects = []
    for entry in entries:
        copied = _copy_object(stack, target, primary, off, entry.key)
        want_size, want_sha = expected.get(entry.key, (sizes.get(entry.key, entry.size), None))
        if copied.size != want_size or (want_sha is not None and copied.sha256 != want_sha):
            raise OffsiteError(
                f"off-site copy of {entry.key}: read {copied.size} bytes with sha256 "
                f"{copied.sha256[:16]}, the set records {want_size} bytes"
                + (f" and sha256 {want_sha[:16]}" if want_sha else "")
                + ": the primary object changed or is damaged; the set is not copied"
            )
        objects.append(copied)
    missing = sorted(set(expected) - {o.key for o in objects})
    if missing:
        raise OffsiteError(f"off-site copy of {manifest.backup_id}: objects missing: {missing[:3]}")
    record = OffsiteManifest(
        stack=stack.stack_name,
        backup_id=manifest.backup_id,
        key_fingerprint=target.fingerprint,
        source_bucket=stack.backup_bucket,
        copied_at=datetime.now(UTC),
        seconds=time.monotonic() - started,
        objects=objects,
    )
    key = offsite_manifest_key(target.prefix, stack.stack_name, manifest.backup_id)
    body = record.to_json()
    try:
        import io

        off.put_object(target.bucket, key, io.BytesIO(body), len(body), "application/json")
    except _S3_ERRORS as exc:
        raise offsite_failure(stack, f"write of {key}", exc) from None
    return record


def _descriptor_sizes(stack: Stack, primary: Minio, manifest: BackupManifest) -> dict[str, int]:
    """Sizes of the ClickHouse backups' files as their (sha256-checked) descriptors list."""
    sizes: dict[str, int] = {}
    for obj in manifest.objects:
        if obj.kind != "clickhouse-backup":
            continue
        raw = get_bytes(primary, stack.backup_bucket, obj.key)
        folder = obj.key.rsplit("/", 1)[0] + "/"
        for name, size in descriptor_files(raw):
            sizes[folder + name] = size
    return sizes


def _copy_object(
    stack: Stack, target: OffsiteTarget, primary: Minio, off: Minio, key: str
) -> OffsiteObject:
    dest = sealed_key(target.prefix, key)
    try:
        response = primary.get_object(stack.backup_bucket, key)
    except _S3_ERRORS as exc:
        raise read_failure(stack, key, exc) from None
    try:
        plain = HashingReader(response)
        with EncryptingReader(plain, [target.recipient()]) as sealed_stream:
            sealed = HashingReader(sealed_stream)
            off.put_object(target.bucket, dest, sealed, length=-1, part_size=PART_SIZE)  # type: ignore[arg-type]
    except _S3_ERRORS as exc:
        raise offsite_failure(stack, f"upload of {dest}", exc) from None
    except Exception as exc:  # pyrage's EncryptError wraps the source's failure
        raise offsite_failure(stack, f"encryption of {key}", exc) from None
    finally:
        response.close()
        response.release_conn()
    # Read back what the target stored: the copy counts only if it is what we sent.
    try:
        back = off.get_object(target.bucket, dest)
        try:
            stored = HashingReader(back)
            while stored.read(1024 * 1024):
                pass
        finally:
            back.close()
            back.release_conn()
    except _S3_ERRORS as exc:
        raise offsite_failure(stack, f"read-back of {dest}", exc) from None
    if (stored.size, stored.sha256) != (sealed.size, sealed.sha256):
        raise OffsiteError(
            f"off-site object {dest} reads back as {stored.size} bytes sha256 "
            f"{stored.sha256[:16]}, {sealed.size} bytes sha256 {sealed.sha256[:16]} were sent"
        )
    return OffsiteObject(
        key=key,
        size=plain.size,
        sha256=plain.sha256,
        stored_size=sealed.size,
        stored_sha256=sealed.sha256,
    )


def read_failure(stack: Stack, key: str, exc: BaseException) -> OffsiteError:
    return OffsiteError(
        f"off-site copy: read of {stack.backup_bucket}/{key} failed: "
        f"{stack.error_line(exc, limit=300, lines='join')}"
    )


# ---- retention ------------------------------------------------------------------------


@task(name="prune-offsite", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def prune_offsite(
    stack: Stack, backup_id: str, policy: retention.RetentionPolicy, dry_run: bool
) -> list[str]:
    """Apply the off-site policy; the deleted (or, dry run, deletable) set ids."""
    logger = get_run_logger()
    target = offsite_target(stack)
    off = target.client()
    base = target.prefix
    try:
        listing = [
            retention.ObjectRecord(
                key=o.object_name[len(base) :], size=o.size or 0, last_modified=o.last_modified
            )
            for o in off.list_objects(
                target.bucket, prefix=base + stack_prefix(stack.stack_name), recursive=True
            )
            if o.object_name is not None and not o.is_dir
        ]
    except _S3_ERRORS as exc:
        raise offsite_failure(stack, "listing", exc) from None
    complete = {s.backup_id for s in list_offsite_sets(stack, off) if s.manifest is not None}
    # The policy speaks of sets and their manifest: off-site, offsite.json plays that part.
    records = [
        r.model_copy(
            update={"key": r.key.replace("/" + OFFSITE_MANIFEST_NAME, "/" + MANIFEST_NAME)}
        )
        if r.key.endswith("/" + OFFSITE_MANIFEST_NAME)
        else r
        for r in listing
    ]
    plan = retention.plan_retention(
        stack.stack_name,
        records,
        complete_ids=complete,
        uploads=[],
        policy=policy,
        now=datetime.now(UTC),
        current_backup_id=backup_id,
    )
    doomed = plan.deleted_sets
    logger.info(
        "off-site retention: keep %d complete sets, %s %s",
        len(plan.kept_complete),
        "would delete" if dry_run else "delete",
        ", ".join(doomed) or "nothing",
    )
    if dry_run or not doomed:
        return doomed
    from minio.deleteobjects import DeleteObject

    # Back to the stored names (the sealed manifest.json.age never ends in /manifest.json).
    keys = [
        base
        + (
            k[: -len(MANIFEST_NAME)] + OFFSITE_MANIFEST_NAME
            if k.endswith("/" + MANIFEST_NAME)
            else k
        )
        for k in plan.delete_keys
    ]
    # offsite.json first: a set half-deleted is then incomplete, never complete and damaged.
    try:
        for k in [k for k in keys if k.endswith("/" + OFFSITE_MANIFEST_NAME)]:
            off.remove_object(target.bucket, k)
        errors = list(off.remove_objects(target.bucket, [DeleteObject(k) for k in keys]))
    except _S3_ERRORS as exc:
        raise offsite_failure(stack, "pruning", exc) from None
    if errors:
        raise OffsiteError(f"off-site pruning left {len(errors)} object(s): {errors[0]}")
    return doomed
