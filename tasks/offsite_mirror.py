"""Langfuse's buckets mirrored off-site: incremental, age-encrypted, deletions held back.

Langfuse keeps objects that exist nowhere else in its S3 buckets (raw event uploads, media
such as attachments); the database backups do not hold them. Each backup run mirrors every
configured Langfuse bucket to the off-site target::

    <prefix>_buckets/<bucket>/<key>.age       each object, sealed like the sets' objects
    <prefix>_buckets/<bucket>/index.json      what is mirrored: key -> etag, size, ...

Only objects that are new or changed since the last run (by the source's ETag and size,
recorded in the index) are copied, so a day's mirror of a large bucket costs one listing
and the new objects. An object gone from the source is deleted off-site only after
``grace_days`` (a mistaken or malicious deletion in Langfuse can still be undone from the
copy meanwhile). The index is written after the objects: a run that stops half-way copies
the rest next time. Each sealed upload is checked against the ETag the target returns
(MD5 of the ciphertext for a single-part upload).
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import urllib3
from minio.deleteobjects import DeleteObject
from minio.error import MinioException
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel

from blocks.stack import Stack
from tasks.age_stream import DecryptionFailed, EncryptingReader, decrypt_stream
from tasks.errors import OffsiteError
from tasks.offsite import offsite_failure, offsite_target

if TYPE_CHECKING:
    from minio import Minio

    from blocks.offsite import OffsiteTarget

__all__ = [
    "BucketMirror",
    "mirror_bucket",
    "mirror_langfuse_buckets",
    "mirror_prefix",
    "restore_bucket",
    "restore_langfuse_buckets",
]

_S3_ERRORS = (MinioException, urllib3.exceptions.HTTPError, OSError)
# Objects up to this size are sealed in memory and uploaded in one request (its ETag is
# the ciphertext's MD5); larger ones stream through a multipart upload.
_SMALL = 8 * 1024 * 1024
_PART = 16 * 1024 * 1024
_THREADS = 8


class BucketMirror(BaseModel):
    """What one bucket's mirror did."""

    bucket: str
    source_objects: int
    copied: int
    copied_bytes: int
    unchanged: int
    marked_gone: int
    deleted: int
    requests: int
    seconds: float


def mirror_prefix(target: OffsiteTarget, bucket: str) -> str:
    return f"{target.prefix}_buckets/{bucket}/"


@task(name="mirror-langfuse-buckets", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def mirror_langfuse_buckets(stack: Stack, grace_days: float = 7.0) -> list[BucketMirror]:
    """Mirror every Langfuse bucket of the stack off-site; one report per bucket."""
    logger = get_run_logger()
    target = offsite_target(stack)
    buckets = [b for b in (stack.langfuse_bucket, stack.langfuse_media_bucket) if b]
    results = [
        mirror_bucket(stack, target, bucket, grace=timedelta(days=grace_days))
        for bucket in dict.fromkeys(buckets)
    ]
    for r in results:
        logger.info(
            "off-site mirror of %s: %d objects, %d copied (%.1f MB), %d unchanged, "
            "%d gone (held back), %d deleted, %d requests, %.1f s",
            r.bucket,
            r.source_objects,
            r.copied,
            r.copied_bytes / 1e6,
            r.unchanged,
            r.marked_gone,
            r.deleted,
            r.requests,
            r.seconds,
        )
    rows = "\n".join(
        f"| {r.bucket} | {r.source_objects} | {r.copied} | {r.copied_bytes} | {r.unchanged} "
        f"| {r.marked_gone} | {r.deleted} | {r.requests} |"
        for r in results
    )
    create_markdown_artifact(
        key=f"offsite-mirror-{stack.stack_name}",
        markdown=(
            f"# Langfuse buckets mirrored off-site ({target.describe()})\n\n"
            "| bucket | objects | copied | bytes copied | unchanged | gone, held back "
            f"| deleted | requests |\n|---|---|---|---|---|---|---|---|\n{rows}\n"
        ),
        description=f"Off-site mirror of Langfuse's buckets for {stack.stack_name}",
    )
    return results


def mirror_bucket(
    stack: Stack, target: OffsiteTarget, bucket: str, *, grace: timedelta
) -> BucketMirror:
    started = time.monotonic()
    now = datetime.now(UTC)
    source, off = stack.s3(), target.client()
    base = mirror_prefix(target, bucket)
    index_key = base + "index.json"
    requests = 0
    try:
        index = _load_index(off, target.bucket, index_key)
        requests += 1
        listing = {
            o.object_name: (o.etag or "", o.size or 0)
            for o in source.list_objects(bucket, recursive=True)
            if o.object_name is not None and not o.is_dir
        }
        requests += 1 + len(listing) // 1000
    except _S3_ERRORS as exc:
        raise offsite_failure(stack, f"mirror listing of {bucket}", exc) from None
    entries: dict[str, dict[str, Any]] = index.get("objects", {})
    unchanged = 0
    todo: list[tuple[str, str, int]] = []
    for key, (etag, size) in sorted(listing.items()):
        entry = entries.get(key)
        if entry and entry.get("etag") == etag and entry.get("size") == size:
            entry.pop("gone_since", None)
            unchanged += 1
        else:
            todo.append((key, etag, size))
    try:
        # Small objects are latency-bound (a GET and a PUT each): several in flight.
        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            done = pool.map(
                lambda item: _seal(
                    source, bucket, item[0], off, target, base + item[0] + ".age", item[2]
                ),
                todo,
            )
            for (key, etag, size), used in zip(todo, done, strict=True):
                requests += used
                entries[key] = {"etag": etag, "size": size, "copied_at": now.isoformat()}
        copied, copied_bytes = len(todo), sum(size for _, _, size in todo)
        gone = [k for k in entries if k not in listing]
        marked = deleted = 0
        doomed = []
        for key in gone:
            since = entries[key].setdefault("gone_since", now.isoformat())
            if now - datetime.fromisoformat(since) >= grace:
                doomed.append(key)
            else:
                marked += 1
        if doomed:
            errors = list(
                off.remove_objects(target.bucket, [DeleteObject(base + k + ".age") for k in doomed])
            )
            requests += 1 + len(doomed) // 1000
            if errors:
                raise OffsiteError(f"off-site mirror of {bucket}: could not delete {errors[0]}")
            for key in doomed:
                del entries[key]
            deleted = len(doomed)
        body = json.dumps(
            {"bucket": bucket, "updated_at": now.isoformat(), "objects": entries}, indent=1
        ).encode()
        off.put_object(target.bucket, index_key, io.BytesIO(body), len(body), "application/json")
        requests += 1
    except _S3_ERRORS as exc:
        raise offsite_failure(stack, f"mirror of {bucket}", exc) from None
    return BucketMirror(
        bucket=bucket,
        source_objects=len(listing),
        copied=copied,
        copied_bytes=copied_bytes,
        unchanged=unchanged,
        marked_gone=marked,
        deleted=deleted,
        requests=requests,
        seconds=time.monotonic() - started,
    )


def _load_index(off: Minio, bucket: str, key: str) -> dict[str, Any]:
    try:
        response = off.get_object(bucket, key)
    except MinioException as exc:
        if getattr(exc, "code", "") == "NoSuchKey":
            return {}
        raise
    try:
        data: dict[str, Any] = json.loads(response.read())
        return data
    finally:
        response.close()
        response.release_conn()


def _seal(
    source: Minio, bucket: str, key: str, off: Minio, target: OffsiteTarget, dest: str, size: int
) -> int:
    """Copy one object sealed; the requests it took."""
    response = source.get_object(bucket, key)
    try:
        if size <= _SMALL:
            import pyrage

            sealed = pyrage.encrypt(response.read(), [target.recipient()])
            result = off.put_object(target.bucket, dest, io.BytesIO(sealed), len(sealed))
            if (result.etag or "").strip('"') != hashlib.md5(sealed).hexdigest():
                raise OffsiteError(
                    f"off-site mirror: {dest} was stored with ETag {result.etag}, not the "
                    "MD5 of what was sent"
                )
        else:
            with EncryptingReader(response, [target.recipient()]) as stream:
                off.put_object(target.bucket, dest, stream, length=-1, part_size=_PART)  # type: ignore[arg-type]
    finally:
        response.close()
        response.release_conn()
    return 2


@task(name="restore-langfuse-buckets", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def restore_langfuse_buckets(stack: Stack) -> list[BucketMirror]:
    """Put Langfuse's buckets back from their off-site mirror (objects missing or
    different in the bucket); the bucket is created when it does not exist."""
    logger = get_run_logger()
    target = offsite_target(stack)
    buckets = [b for b in (stack.langfuse_bucket, stack.langfuse_media_bucket) if b]
    results = []
    for bucket in dict.fromkeys(buckets):
        result = restore_bucket(stack, target, bucket)
        logger.info(
            "Langfuse bucket %s restored from its off-site mirror: %d objects, %d written "
            "(%.1f MB), %d already there",
            bucket,
            result.source_objects,
            result.copied,
            result.copied_bytes / 1e6,
            result.unchanged,
        )
        results.append(result)
    return results


def restore_bucket(stack: Stack, target: OffsiteTarget, bucket: str) -> BucketMirror:
    """One bucket back from its mirror; a mirrored object that does not open fails it."""
    started = time.monotonic()
    primary, off = stack.s3(), target.client()
    base = mirror_prefix(target, bucket)
    identities = target.identities()
    if not identities:
        raise OffsiteError(
            "no age identity to open the mirror: set OFFSITE_AGE_IDENTITY where restores run"
        )
    requests = 0
    try:
        entries: dict[str, dict[str, Any]] = _load_index(
            off, target.bucket, base + "index.json"
        ).get("objects", {})
        if not primary.bucket_exists(bucket):
            primary.make_bucket(bucket)
        present = {
            o.object_name: o.size or 0
            for o in primary.list_objects(bucket, recursive=True)
            if o.object_name is not None
        }
        requests += 3
        written = written_bytes = already = 0
        for key, entry in sorted(entries.items()):
            if "gone_since" in entry:
                continue  # deleted in Langfuse before the disaster: stays deleted
            if present.get(key) == entry.get("size"):
                already += 1
                continue
            # Decrypted into a spooled file (memory up to 8 MiB, then disk): an attachment
            # of any size is restored in constant memory, and only once it opened whole.
            with tempfile.SpooledTemporaryFile(_SMALL) as spool:
                sealed = off.get_object(target.bucket, base + key + ".age")
                try:
                    decrypt_stream(sealed, spool, identities)
                except DecryptionFailed as exc:
                    raise OffsiteError(
                        f"mirrored object {base}{key}.age does not decrypt: {exc}"
                    ) from None
                finally:
                    sealed.close()
                    sealed.release_conn()
                size = spool.tell()
                if size != entry.get("size"):
                    raise OffsiteError(
                        f"mirrored object {base}{key}.age opens to {size} bytes, the index "
                        f"records {entry.get('size')}"
                    )
                spool.seek(0)
                primary.put_object(bucket, key, cast(BinaryIO, spool), size, part_size=_PART)
            requests += 2
            written += 1
            written_bytes += size
    except _S3_ERRORS as exc:
        raise offsite_failure(stack, f"restore of bucket {bucket}", exc) from None
    return BucketMirror(
        bucket=bucket,
        source_objects=len([e for e in entries.values() if "gone_since" not in e]),
        copied=written,
        copied_bytes=written_bytes,
        unchanged=already,
        marked_gone=0,
        deleted=0,
        requests=requests,
        seconds=time.monotonic() - started,
    )
