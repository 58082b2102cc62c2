"""Opening an off-site set for a drill or a restore.

:func:`fetch_offsite_set` opens a set from the off-site target into a bucket of the
primary S3 (a scratch bucket for a drill, or the backup bucket of a stack rebuilt from
nothing) under its own keys, checking every object's plaintext sha256 and size against
``offsite.json``; the set's manifest goes there last, so drills and restores then read it
like any set. Each failure names the object and the cause: missing, damaged, encrypted
to another key, no identity that opens it.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, BinaryIO, Literal, cast

import urllib3
from minio.error import MinioException
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from blocks.stack import Stack
from tasks.age_stream import DecryptionFailed, HashingReader, decrypt_stream
from tasks.decisions.checks import failed, passed
from tasks.decisions.manifest import BackupManifest, backup_id_time, manifest_key, trust_manifest
from tasks.decisions.offsite import OffsiteObject, sealed_key
from tasks.errors import OffsiteError
from tasks.offsite import PART_SIZE, list_offsite_sets, offsite_failure, offsite_target
from tasks.restore.backup_set import ManifestOutcome, load_backup_manifest

if TYPE_CHECKING:
    from minio import Minio
    from pyrage.x25519 import Identity

    from blocks.offsite import OffsiteTarget

__all__ = [
    "discard_opened_set",
    "fetch_offsite_set",
    "load_set",
    "offsite_scratch_bucket",
    "open_offsite_set",
    "opened_stack",
]

_S3_ERRORS = (MinioException, urllib3.exceptions.HTTPError, OSError)


@task(name="fetch-offsite-set", retries=0, cache_policy=NO_CACHE)
def fetch_offsite_set(stack: Stack, backup_id: str | None, into_bucket: str) -> BackupManifest:
    """Open an off-site set into ``into_bucket`` of the primary S3 under its own keys.

    Every object is decrypted to a temporary file, its plaintext sha256 and size checked
    against ``offsite.json``, then uploaded; the set's manifest goes last, after it was
    checked against the primary manifest's own digest. Raises :class:`OffsiteError`
    naming the object and the cause: missing, damaged, encrypted to another key, no
    identity that opens it.
    """
    logger = get_run_logger()
    target = offsite_target(stack)
    identities = target.identities()
    off = target.client()
    sets = list_offsite_sets(stack, off)
    if backup_id is None:
        complete = [s for s in sets if s.manifest is not None]
        if not complete:
            raise OffsiteError(
                f"no complete off-site set of {stack.stack_name} on {target.describe()}"
            )
        found = complete[-1]
    else:
        matches = [s for s in sets if s.backup_id == backup_id]
        if not matches:
            raise OffsiteError(f"set {backup_id} is not on the off-site target {target.describe()}")
        found = matches[0]
    if found.manifest is None:
        raise OffsiteError(f"off-site set {found.backup_id} is incomplete: {found.problem}")
    record = found.manifest
    if not identities:
        raise OffsiteError(
            "no age identity to open the off-site set: set OFFSITE_AGE_IDENTITY (the "
            f"AGE-SECRET-KEY-1... of key {record.key_fingerprint}) where drills and restores run"
        )
    if record.key_fingerprint not in target.identity_fingerprints():
        raise OffsiteError(
            f"off-site set {record.backup_id} is encrypted to key {record.key_fingerprint}; "
            f"the configured identity is key {', '.join(target.identity_fingerprints())}: "
            "set OFFSITE_AGE_IDENTITY to that key's AGE-SECRET-KEY-1... line"
        )
    primary = stack.s3()
    try:
        if not primary.bucket_exists(into_bucket):
            primary.make_bucket(into_bucket)
    except _S3_ERRORS as exc:
        raise OffsiteError(
            f"bucket {into_bucket} on the primary S3 could not be made: {stack.error_line(exc)}"
        ) from None
    started = time.monotonic()
    manifest_obj = record.manifest_object()
    assert manifest_obj is not None
    ordered = [o for o in record.objects if o is not manifest_obj] + [manifest_obj]
    manifest: BackupManifest | None = None
    for obj in ordered:
        body = _open_object(stack, target, off, obj, identities)
        try:
            if obj is manifest_obj:
                raw = body.read()
                manifest, problem = trust_manifest(
                    raw,
                    stack.stack_name,
                    record.backup_id,
                    manifest_key(stack.stack_name, record.backup_id),
                )
                if manifest is None:
                    raise OffsiteError(f"off-site set {record.backup_id}: {problem}")
                body.seek(0)
            primary.put_object(
                into_bucket, obj.key, cast(BinaryIO, body), obj.size, part_size=PART_SIZE
            )
        except _S3_ERRORS as exc:
            raise OffsiteError(
                f"upload of {obj.key} into {into_bucket} failed: {stack.error_line(exc)}"
            ) from None
        finally:
            body.close()
    assert manifest is not None
    logger.info(
        "off-site set %s opened into bucket %s: %d objects, %.1f MB, in %.1f s (set age %.1f h)",
        record.backup_id,
        into_bucket,
        len(ordered),
        record.plain_bytes / 1e6,
        time.monotonic() - started,
        (datetime.now(UTC) - backup_id_time(record.backup_id)).total_seconds() / 3600,
    )
    return manifest


def _open_object(
    stack: Stack, target: OffsiteTarget, off: Minio, obj: OffsiteObject, identities: list[Identity]
) -> tempfile.SpooledTemporaryFile[bytes]:
    """The object's plaintext in a spooled file (memory up to 8 MiB, then disk), checked."""
    key = sealed_key(target.prefix, obj.key)
    spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
        8 * 1024 * 1024
    )
    try:
        response = off.get_object(target.bucket, key)
    except MinioException as exc:
        spool.close()
        code = getattr(exc, "code", "")
        if code == "NoSuchKey":
            raise OffsiteError(
                f"off-site object {key} is missing: the set cannot be restored"
            ) from None
        raise offsite_failure(stack, f"read of {key}", exc) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        spool.close()
        raise offsite_failure(stack, f"read of {key}", exc) from None
    try:
        sealed = HashingReader(response)
        plain = _HashingSink(spool)
        decrypt_stream(sealed, cast(BinaryIO, plain), identities)
    except DecryptionFailed as exc:
        spool.close()
        raise OffsiteError(f"off-site object {key} does not decrypt: {exc}") from None
    finally:
        response.close()
        response.release_conn()
    if (plain.size, plain.sha256) != (obj.size, obj.sha256):
        spool.close()
        raise OffsiteError(
            f"off-site object {key} decrypts to {plain.size} bytes sha256 {plain.sha256[:16]}; "
            f"offsite.json records {obj.size} bytes sha256 {obj.sha256[:16]}"
        )
    spool.seek(0)
    return spool


class _HashingSink:
    """A writer that hashes and counts what it passes on to ``sink``."""

    def __init__(self, sink: tempfile.SpooledTemporaryFile[bytes]) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        self._sink.flush()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def offsite_scratch_bucket(stack: Stack) -> str:
    """The primary-S3 bucket an off-site set is opened into for a drill."""
    return f"{stack.backup_bucket}-from-offsite"[:63]


def opened_stack(stack: Stack) -> Stack:
    """The stack reading its sets from the scratch bucket off-site sets are opened into."""
    return stack.model_copy(update={"backup_bucket": offsite_scratch_bucket(stack)})


@task(name="open-offsite-set", retries=0, cache_policy=NO_CACHE)
def open_offsite_set(stack: Stack, backup_id: str | None) -> ManifestOutcome:
    """Open the off-site set into the scratch bucket (read it there through
    :func:`opened_stack`); its manifest, with the check that says where the set came from
    or why it could not be opened."""
    try:
        manifest = fetch_offsite_set.fn(stack, backup_id, offsite_scratch_bucket(stack))
    except OffsiteError as exc:
        return ManifestOutcome(
            manifest=None, check=failed("offsite-set", str(exc), component="set")
        )
    target = offsite_target(stack)
    return ManifestOutcome(
        manifest=manifest,
        check=passed(
            "offsite-set",
            f"set {manifest.backup_id} opened from the off-site target {target.describe()}: "
            "every object decrypted and its sha256 matched",
            component="set",
        ),
    )


def load_set(
    stack: Stack, backup_id: str | None, source: Literal["primary", "offsite"]
) -> tuple[Stack, ManifestOutcome]:
    """The stack to read the set through, and the set's manifest (with its check).

    ``primary``: the stack itself and its bucket. ``offsite``: the set opened from the
    off-site target into the scratch bucket, and the stack reading from there; the
    caller removes it afterwards (:func:`discard_opened_set`).
    """
    if source == "offsite":
        return opened_stack(stack), open_offsite_set(stack, backup_id)
    return stack, load_backup_manifest(stack, backup_id)


def discard_opened_set(opened: Stack, backup_id: str) -> int:
    """Delete an opened set from the scratch bucket (plain function, safe in ``finally``)."""
    from minio.deleteobjects import DeleteObject

    client = opened.s3()
    prefix = f"{opened.stack_name}/{backup_id}/"
    keys = [
        o.object_name
        for o in client.list_objects(opened.backup_bucket, prefix=prefix, recursive=True)
        if o.object_name is not None
    ]
    errors = list(client.remove_objects(opened.backup_bucket, [DeleteObject(k) for k in keys]))
    if errors:
        raise OffsiteError(f"could not remove the opened set: {errors[0]}")
    return len(keys)
