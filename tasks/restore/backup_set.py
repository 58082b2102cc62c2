"""Loading a backup set for a restore, and checking its objects before anything is restored.

Verify before trusting. A set is read through its manifest only (schema version
checked, and it must describe the set asked for); every object is looked up and its
size compared before anything is restored; the ClickHouse backup's ``.backup``
descriptor is checked against the manifest, and every file it lists must exist with its
size. The Postgres dump's sha256 is checked while it is restored
(:func:`tasks.restore.pg_restore.restore_postgres_dump`).
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ElementTree

from minio import Minio
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from blocks.stack import Stack
from tasks.decisions.checks import CheckResult, failed, passed
from tasks.decisions.clickhouse_backup import descriptor_files
from tasks.decisions.drill import check_object, shorten
from tasks.decisions.manifest import (
    BackupManifest,
    ClickHouseBackup,
    manifest_key,
    trust_manifest,
)
from tasks.storage import list_prefix, newest_complete_manifest, read_optional_object

__all__ = [
    "ManifestOutcome",
    "SetVerification",
    "descriptor_files",
    "load_backup_manifest",
    "object_sizes",
    "verify_set_objects",
]


# ---- the manifest ---------------------------------------------------------------------------


class ManifestOutcome(BaseModel):
    """The set's manifest, when it loaded and is trusted, and the check saying so."""

    manifest: BackupManifest | None
    check: CheckResult


@task(name="load-backup-manifest", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_backup_manifest(stack: Stack, backup_id: str | None) -> ManifestOutcome:
    """The named set's manifest (or the newest complete one), parsed and checked."""
    logger = get_run_logger()
    if backup_id is None:
        newest = newest_complete_manifest(stack)
        if newest is None:
            return ManifestOutcome(
                manifest=None,
                check=failed(
                    "manifest",
                    f"no complete backup set of {stack.stack_name} in bucket "
                    f"{stack.backup_bucket} (no manifest.json that parses): run the backup flow",
                    component="set",
                ),
            )
        logger.info("newest complete backup set: %s", newest.backup_id)
        return ManifestOutcome(manifest=newest, check=_manifest_passed(newest))
    key = manifest_key(stack.stack_name, backup_id)
    raw = read_optional_object(stack, key)
    if raw is None:
        return ManifestOutcome(
            manifest=None,
            check=failed(
                "manifest",
                f"manifest missing: no {key} in bucket {stack.backup_bucket}; the set is "
                "incomplete (a failed or unfinished backup) and cannot be trusted",
                component="set",
            ),
        )
    return _parse_manifest(stack, backup_id, key, raw)


def _parse_manifest(stack: Stack, backup_id: str, key: str, raw: bytes) -> ManifestOutcome:
    manifest, problem = trust_manifest(raw, stack.stack_name, backup_id, key)
    if manifest is None:
        return ManifestOutcome(
            manifest=None, check=failed("manifest", problem or key, component="set")
        )
    return ManifestOutcome(manifest=manifest, check=_manifest_passed(manifest))


def _manifest_passed(manifest: BackupManifest) -> CheckResult:
    return passed(
        "manifest",
        f"schema {manifest.schema_version}, {len(manifest.objects)} objects, written "
        f"{manifest.finished_at.isoformat(timespec='seconds')}",
        component="set",
    )


def object_sizes(stack: Stack, prefix: str) -> dict[str, int]:
    """Every object under ``prefix`` with its size (one listing)."""
    return {entry.key: entry.size for entry in list_prefix(stack, prefix)}


# ---- verifying the set's objects before restoring -------------------------------------------


class SetVerification(BaseModel):
    """What the up-front look at the set's objects found, per component."""

    postgres: CheckResult
    clickhouse: list[CheckResult] = Field(default_factory=list)

    @property
    def checks(self) -> list[CheckResult]:
        return [self.postgres, *self.clickhouse]

    def clickhouse_ok(self, database: str) -> bool:
        return all(c.passed for c in self.clickhouse if c.name.endswith(f"[{database}]"))


@task(name="verify-set-objects", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def verify_set_objects(stack: Stack, manifest: BackupManifest) -> SetVerification:
    """Every object the manifest names is there with its size; ClickHouse files too.

    The dump's sha256 is checked while it is restored (reading 1 GB twice would double
    the drill); the ClickHouse descriptor is small and read here, and it lists the size
    of every data file of the backup, so a removed or cut file shows before RESTORE.
    """
    logger = get_run_logger()
    client = stack.s3()
    sizes = object_sizes(stack, manifest.prefix)
    dump = manifest.postgres
    pg_check = check_object(
        "postgres-dump-present",
        "postgres",
        key=dump.dump_key,
        expected_size=dump.dump_size,
        expected_sha256=None,
        actual_size=sizes.get(dump.dump_key),
        actual_sha256=None,
        set_prefix=manifest.prefix,
    )
    ch_checks: list[CheckResult] = []
    for backup in manifest.clickhouse:
        ch_checks += _verify_clickhouse_backup(stack, manifest, backup, sizes, client)
    for check in [pg_check, *ch_checks]:
        log = logger.info if check.passed else logger.error
        log("%s %s: %s", check.name, check.status, check.message)
    return SetVerification(postgres=pg_check, clickhouse=ch_checks)


def _verify_clickhouse_backup(
    stack: Stack,
    manifest: BackupManifest,
    backup: ClickHouseBackup,
    sizes: dict[str, int],
    client: Minio,
) -> list[CheckResult]:
    tag = f"[{backup.database}]"
    descriptor = next(
        (
            o
            for o in manifest.objects
            if o.kind == "clickhouse-backup" and o.key.startswith(backup.s3_prefix)
        ),
        None,
    )
    if descriptor is None:
        return [
            failed(
                f"clickhouse-descriptor{tag}",
                f"the manifest lists no .backup descriptor under {backup.s3_prefix}",
                component="clickhouse",
            )
        ]
    raw = read_optional_object(stack, descriptor.key, client)
    actual_sha = hashlib.sha256(raw).hexdigest() if raw is not None else None
    desc_check = check_object(
        f"clickhouse-descriptor{tag}",
        "clickhouse",
        key=descriptor.key,
        expected_size=descriptor.size,
        expected_sha256=descriptor.sha256,
        actual_size=len(raw) if raw is not None else None,
        actual_sha256=actual_sha,
        set_prefix=manifest.prefix,
    )
    if not desc_check.passed or raw is None:
        return [desc_check]
    try:
        listed = descriptor_files(raw)
    except ElementTree.ParseError as exc:
        return [
            desc_check,
            failed(
                f"clickhouse-files{tag}",
                f"{descriptor.key} is not XML: {exc}",
                component="clickhouse",
            ),
        ]
    problems: list[str] = []
    for name, size in listed:
        key = backup.s3_prefix + name
        found = sizes.get(key)
        if found is None:
            problems.append(f"{key} missing")
        elif found != size:
            problems.append(f"{key} is {found} bytes, the descriptor says {size}")
    if problems:
        files_check = failed(
            f"clickhouse-files{tag}",
            f"ClickHouse backup folder damaged, {len(problems)} file(s) wrong: {shorten(problems)}",
            component="clickhouse",
        )
    else:
        files_check = passed(
            f"clickhouse-files{tag}",
            f"all {len(listed)} files listed in the descriptor are present with their sizes",
            component="clickhouse",
        )
    return [desc_check, files_check]
