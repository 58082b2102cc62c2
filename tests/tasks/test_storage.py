"""Backup sets as the bucket shows them: complete only with a manifest that parses."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from minio import Minio

from blocks.stack import Stack
from devstack.core import Devstack
from tasks.manifest import (
    BackupManifest,
    PostgresDump,
    StoredObject,
    manifest_key,
    new_backup_id,
    postgres_dump_key,
)
from tasks.storage import list_backup_sets, newest_complete_manifest

BUCKET = "backups"
SHA = "a" * 64


def put(s3: Minio, key: str, data: bytes) -> None:
    s3.put_object(BUCKET, key, io.BytesIO(data), len(data))


def manifest_for(stack: str, backup_id: str) -> BackupManifest:
    now = datetime.now(UTC)
    return BackupManifest(
        backup_id=backup_id,
        stack=stack,
        bucket=BUCKET,
        started_at=now,
        finished_at=now,
        objects=[StoredObject(key="k", size=1, sha256=SHA, kind="postgres-dump")],
        postgres=PostgresDump(
            database="railway",
            server_version="15.1",
            pg_dump_version="15.1",
            snapshot_id="s",
            dump_key="k",
            dump_size=1,
            dump_sha256=SHA,
            table_rows={"public.t": 1},
            seconds=0.1,
        ),
    )


@pytest.fixture
def sets_stack(devstack: Devstack, stack: Stack) -> Iterator[tuple[Stack, Minio]]:
    """The devstack's block under its own stack name, so these sets stand alone."""
    s3: Minio = devstack.minio_client()
    own = stack.model_copy(update={"stack_name": "storage-test"})
    yield own, s3
    for obj in s3.list_objects(BUCKET, prefix="storage-test/", recursive=True):
        if obj.object_name:
            s3.remove_object(BUCKET, obj.object_name)


def test_sets_are_complete_only_with_a_manifest_that_parses_and_names_them(
    sets_stack: tuple[Stack, Minio],
) -> None:
    stack, s3 = sets_stack
    base = datetime.now(UTC) - timedelta(hours=5)
    good, failed, garbage, misnamed, newest_failed = (
        new_backup_id(base + timedelta(hours=i)) for i in range(5)
    )
    put(s3, postgres_dump_key("storage-test", good, "railway"), b"dump")
    put(s3, manifest_key("storage-test", good), manifest_for("storage-test", good).to_json())
    put(s3, postgres_dump_key("storage-test", failed, "railway"), b"half a dump")
    put(s3, manifest_key("storage-test", garbage), b"{not json")
    other = manifest_for("storage-test", good).to_json()  # names another set
    put(s3, manifest_key("storage-test", misnamed), other)
    put(s3, postgres_dump_key("storage-test", newest_failed, "railway"), b"x")
    put(s3, "storage-test/notes.txt", b"not a set")

    sets = {s.backup_id: s for s in list_backup_sets(stack)}
    assert list(sets) == sorted(sets)  # oldest first
    assert set(sets) == {good, failed, garbage, misnamed, newest_failed}
    assert sets[good].complete and sets[good].manifest is not None
    assert sets[failed].problem == "no manifest.json" and not sets[failed].complete
    assert "does not parse" in (sets[garbage].problem or "")
    assert "names set" in (sets[misnamed].problem or "")
    assert sets[failed].newest_object_at is not None and sets[failed].objects == 1

    newest = newest_complete_manifest(stack)
    assert newest is not None and newest.backup_id == good


def test_no_sets_means_no_manifest(sets_stack: tuple[Stack, Minio]) -> None:
    stack, _ = sets_stack
    assert list_backup_sets(stack) == []
    assert newest_complete_manifest(stack) is None
