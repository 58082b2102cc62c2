"""Object storage (S3 / MinIO): backup sets, streaming uploads, listings, deletes.

Plain S3 through the ``minio`` SDK, so any S3 server works (MinIO on Railway,
SeaweedFS in the devstack). Every error is re-raised as :class:`StorageError` with
the operation, bucket and key, scrubbed of secret values.

Read side, shared by every flow that needs "the last good backup":
:func:`list_backup_sets` (every set with its objects, for retention) and
:func:`newest_complete_manifest` (cheap: set prefixes from one non-recursive listing,
then manifests newest first; the health sweep asks it every minute). A set is complete
only when its ``manifest.json`` exists and parses, never because objects exist.

:meth:`blocks.stack.Stack.s3` is the one place an S3 client is built, with the caller's timeout
and retries.
"""

from __future__ import annotations

import io
from datetime import datetime

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error
from pydantic import BaseModel, Field

from blocks.stack import Stack
from tasks.decisions.manifest import (
    MANIFEST_NAME,
    BackupManifest,
    backup_id_time,
    is_backup_id,
    manifest_key,
    set_id_of_key,
    set_prefix,
    stack_prefix,
    trust_manifest,
)
from tasks.errors import StorageError
from tasks.retry import advice

__all__ = [
    "BackupSetInfo",
    "MultipartUpload",
    "StoredEntry",
    "abort_multipart_upload",
    "delete_objects",
    "group_backup_sets",
    "list_backup_sets",
    "list_multipart_uploads",
    "list_prefix",
    "list_set_ids",
    "list_stack_objects",
    "newest_complete_manifest",
    "object_size",
    "put_small_object",
    "read_object",
    "read_optional_object",
    "storage_error",
]


def storage_error(stack: Stack, action: str, exc: BaseException) -> StorageError:
    """A StorageError saying what was attempted and why it failed, with secrets scrubbed."""
    reason = stack.error_line(exc)
    hint = advice(
        exc,
        "Check that the S3 service is up and that the access key may read and write "
        f"bucket {stack.backup_bucket!r}.",
    )
    return StorageError(f"S3 {action} failed on {stack.s3_endpoint}: {reason}. {hint}")


class StoredEntry(BaseModel):
    """One object as the listing shows it."""

    key: str
    size: int
    last_modified: datetime | None


class BackupSetInfo(BaseModel):
    """One backup set as found in the bucket: complete (manifest parses) or not."""

    backup_id: str
    prefix: str
    started_at: datetime = Field(description="Time encoded in the backup id (run start).")
    complete: bool = Field(description="True only when manifest.json exists and parses.")
    manifest: BackupManifest | None = None
    problem: str | None = Field(default=None, description="Why the set is incomplete.")
    objects: int = Field(ge=0, description="Number of objects under the set's prefix.")
    size: int = Field(ge=0, description="Bytes under the set's prefix.")
    newest_object_at: datetime | None = Field(
        default=None, description="Last-modified time of the newest object of the set."
    )


def list_stack_objects(stack: Stack, client: Minio | None = None) -> list[StoredEntry]:
    """Every object under ``<bucket>/<stack>/`` (sets and anything else placed there)."""
    client = client or stack.s3()
    try:
        return [
            StoredEntry(key=obj.object_name, size=obj.size or 0, last_modified=obj.last_modified)
            for obj in client.list_objects(
                stack.backup_bucket, prefix=stack_prefix(stack.stack_name), recursive=True
            )
            if obj.object_name is not None and not obj.is_dir
        ]
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise storage_error(
            stack, f"listing of {stack.backup_bucket}/{stack.stack_name}/", exc
        ) from None


def read_object(stack: Stack, key: str, client: Minio | None = None) -> bytes:
    """A whole (small) object: manifests, descriptors."""
    client = client or stack.s3()
    try:
        response = client.get_object(stack.backup_bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise storage_error(stack, f"read of {stack.backup_bucket}/{key}", exc) from None


_MISSING = ("NoSuchKey", "NoSuchObject", "ResourceNotFound")


def read_optional_object(stack: Stack, key: str, client: Minio | None = None) -> bytes | None:
    """A whole (small) object, or None when it does not exist (one GET either way)."""
    client = client or stack.s3()
    try:
        response = client.get_object(stack.backup_bucket, key)
    except S3Error as exc:
        if exc.code in _MISSING:
            return None
        raise storage_error(stack, f"read of {stack.backup_bucket}/{key}", exc) from None
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise storage_error(stack, f"read of {stack.backup_bucket}/{key}", exc) from None
    try:
        return bytes(response.read())
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise storage_error(stack, f"read of {stack.backup_bucket}/{key}", exc) from None
    finally:
        response.close()
        response.release_conn()


def list_set_ids(stack: Stack, client: Minio | None = None) -> list[str]:
    """The backup ids under ``<stack>/``, oldest first, from one non-recursive listing.

    S3 answers with the set prefixes only (delimiter ``/``), never with the thousands
    of objects inside them, so this costs one request per 1,000 sets.
    """
    client = client or stack.s3()
    prefix = stack_prefix(stack.stack_name)
    try:
        names = [
            obj.object_name
            for obj in client.list_objects(stack.backup_bucket, prefix=prefix, recursive=False)
            if obj.object_name is not None and obj.is_dir
        ]
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise storage_error(stack, f"listing of {stack.backup_bucket}/{prefix}", exc) from None
    ids = (name[len(prefix) :].rstrip("/") for name in names if name.startswith(prefix))
    return sorted(backup_id for backup_id in ids if is_backup_id(backup_id))


def _read_manifest(
    stack: Stack, backup_id: str, client: Minio
) -> tuple[BackupManifest | None, str | None]:
    key = manifest_key(stack.stack_name, backup_id)
    raw = read_optional_object(stack, key, client)
    if raw is None:
        return None, "no manifest.json"
    return trust_manifest(raw, stack.stack_name, backup_id, key)


def group_backup_sets(stack_name: str, entries: list[StoredEntry]) -> dict[str, list[StoredEntry]]:
    """Objects grouped by the set they belong to; objects outside any set are left out."""
    sets: dict[str, list[StoredEntry]] = {}
    for entry in entries:
        backup_id = set_id_of_key(stack_name, entry.key)
        if backup_id is not None:
            sets.setdefault(backup_id, []).append(entry)
    return sets


def list_backup_sets(stack: Stack) -> list[BackupSetInfo]:
    """Every backup set of the stack, oldest first, each marked complete or not.

    Complete means ``manifest.json`` exists, parses, and names this set. Everything
    else under ``<stack>/<backup-id>/`` is an incomplete set (a failed run, or one in
    flight), reported with the time of its newest object.
    """
    client = stack.s3()
    sets: list[BackupSetInfo] = []
    for backup_id, entries in sorted(
        group_backup_sets(stack.stack_name, list_stack_objects(stack, client)).items()
    ):
        has_manifest = any(
            e.key.endswith(f"/{MANIFEST_NAME}") and e.key.count("/") == 2 for e in entries
        )
        # Only sets whose listing shows a manifest cost a GET.
        manifest, problem = (
            _read_manifest(stack, backup_id, client) if has_manifest else (None, "no manifest.json")
        )
        times = [e.last_modified for e in entries if e.last_modified is not None]
        sets.append(
            BackupSetInfo(
                backup_id=backup_id,
                prefix=set_prefix(stack.stack_name, backup_id),
                started_at=backup_id_time(backup_id),
                complete=manifest is not None,
                manifest=manifest,
                problem=problem,
                objects=len(entries),
                size=sum(e.size for e in entries),
                newest_object_at=max(times) if times else None,
            )
        )
    return sets


def newest_complete_manifest(stack: Stack, client: Minio | None = None) -> BackupManifest | None:
    """The manifest of the newest complete backup set, or None when there is none.

    One non-recursive listing for the set ids, then manifests newest first (backup ids
    sort by time), stopping at the first that parses: usually two requests, at most
    one more per set, whatever the number of objects in the sets. Pass a ``client``
    with a short timeout for probes.
    """
    client = client or stack.s3()
    for backup_id in reversed(list_set_ids(stack, client)):
        manifest, _problem = _read_manifest(stack, backup_id, client)
        if manifest is not None:
            return manifest
    return None


# ---- writes, deletes and multipart uploads ---------------------------------------------

_ERRORS = (MinioException, urllib3.exceptions.HTTPError, OSError)


def list_prefix(stack: Stack, prefix: str) -> list[StoredEntry]:
    """Every object under ``prefix`` in the backup bucket."""
    client = stack.s3()
    try:
        return [
            StoredEntry(key=obj.object_name, size=obj.size or 0, last_modified=obj.last_modified)
            for obj in client.list_objects(stack.backup_bucket, prefix=prefix, recursive=True)
            if obj.object_name is not None and not obj.is_dir
        ]
    except _ERRORS as exc:
        raise storage_error(stack, f"listing of {stack.backup_bucket}/{prefix}", exc) from None


def put_small_object(stack: Stack, key: str, data: bytes, content_type: str) -> None:
    """Write a small object (a manifest) in one request."""
    client = stack.s3()
    try:
        client.put_object(
            stack.backup_bucket, key, io.BytesIO(data), len(data), content_type=content_type
        )
    except _ERRORS as exc:
        raise storage_error(stack, f"write of {stack.backup_bucket}/{key}", exc) from None


def object_size(stack: Stack, key: str) -> int | None:
    """The stored size of ``key``, or None when it does not exist."""
    client = stack.s3()
    try:
        return client.stat_object(stack.backup_bucket, key).size
    except S3Error as exc:
        if exc.code in _MISSING:
            return None
        raise storage_error(stack, f"stat of {stack.backup_bucket}/{key}", exc) from None
    except _ERRORS as exc:
        raise storage_error(stack, f"stat of {stack.backup_bucket}/{key}", exc) from None


def delete_objects(stack: Stack, keys: list[str]) -> int:
    """Delete ``keys`` (batched); an object that is already gone counts as deleted."""
    if not keys:
        return 0
    client = stack.s3()
    try:
        failures = [
            error
            for start in range(0, len(keys), 1000)
            for error in client.remove_objects(
                stack.backup_bucket, [DeleteObject(key) for key in keys[start : start + 1000]]
            )
            if error.code not in ("NoSuchKey", "NoSuchObject")
        ]
    except _ERRORS as exc:
        raise storage_error(stack, f"delete in {stack.backup_bucket}", exc) from None
    if failures:
        first = failures[0]
        raise StorageError(
            f"S3 refused to delete {len(failures)} of {len(keys)} objects in "
            f"{stack.backup_bucket} (first: {first.name}: {first.code} {first.message}). "
            "Check that the access key may delete in the bucket."
        )
    return len(keys)


class MultipartUpload(BaseModel):
    """An upload that was started and never completed or aborted."""

    key: str
    upload_id: str
    initiated: datetime | None


def list_multipart_uploads(stack: Stack) -> list[MultipartUpload]:
    """Unfinished multipart uploads under ``<stack>/``."""
    client = stack.s3()
    uploads: list[MultipartUpload] = []
    marker: str | None = None
    try:
        for _page in range(100):
            # minio exposes ListMultipartUploads only as a private call.
            result = client._list_multipart_uploads(
                stack.backup_bucket, prefix=stack_prefix(stack.stack_name), key_marker=marker
            )
            uploads.extend(
                MultipartUpload(
                    key=upload.object_name,
                    upload_id=upload.upload_id or "",
                    initiated=upload.initiated_time,
                )
                for upload in result.uploads
                if upload.upload_id
            )
            if (
                not result.is_truncated
                or not result.next_key_marker
                or (result.next_key_marker == marker)
            ):
                break
            marker = result.next_key_marker
    except _ERRORS as exc:
        raise storage_error(stack, f"multipart listing of {stack.backup_bucket}", exc) from None
    return uploads


def abort_multipart_upload(stack: Stack, upload: MultipartUpload) -> None:
    """Abort one unfinished upload; one that is already gone counts as aborted."""
    client = stack.s3()
    try:
        client._abort_multipart_upload(stack.backup_bucket, upload.key, upload.upload_id)
    except S3Error as exc:
        if exc.code != "NoSuchUpload":
            raise storage_error(stack, f"abort of upload {upload.key}", exc) from None
    except _ERRORS as exc:
        raise storage_error(stack, f"abort of upload {upload.key}", exc) from None
