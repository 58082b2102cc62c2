"""Backup sets as the bucket shows them: complete only with a manifest that parses."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import urllib3
from minio import Minio

from blocks.stack import Stack
from devstack.core import Devstack
from tasks.decisions.manifest import (
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
    """The devstack's block under a stack name of its own, so these sets stand alone.

    A fresh name per test: a filer-backed S3 (SeaweedFS) keeps the emptied folders of
    deleted sets as prefixes.
    """
    s3: Minio = devstack.minio_client()
    own = stack.model_copy(update={"stack_name": f"storage-test-{secrets.token_hex(3)}"})
    yield own, s3
    for obj in s3.list_objects(BUCKET, prefix=f"{own.stack_name}/", recursive=True):
        if obj.object_name:
            s3.remove_object(BUCKET, obj.object_name)


def test_sets_are_complete_only_with_a_manifest_that_parses_and_names_them(
    sets_stack: tuple[Stack, Minio],
) -> None:
    stack, s3 = sets_stack
    name = stack.stack_name
    base = datetime.now(UTC) - timedelta(hours=5)
    good, failed, garbage, misnamed, newest_failed = (
        new_backup_id(base + timedelta(hours=i)) for i in range(5)
    )
    put(s3, postgres_dump_key(name, good, "railway"), b"dump")
    put(s3, manifest_key(name, good), manifest_for(name, good).to_json())
    put(s3, postgres_dump_key(name, failed, "railway"), b"half a dump")
    put(s3, manifest_key(name, garbage), b"{not json")
    other = manifest_for(name, good).to_json()  # names another set
    put(s3, manifest_key(name, misnamed), other)
    put(s3, postgres_dump_key(name, newest_failed, "railway"), b"x")
    put(s3, f"{name}/notes.txt", b"not a set")

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


class CountingPool(urllib3.PoolManager):
    """Records every request the S3 client makes: method, path, query."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []

    def urlopen(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        parts = urlsplit(url)
        self.requests.append((method, unquote(parts.path), parse_qs(parts.query)))
        return super().urlopen(method, url, *args, **kwargs)


def test_newest_manifest_reads_set_prefixes_not_every_object(
    sets_stack: tuple[Stack, Minio],
) -> None:
    """The freshness probe's cost does not grow with the objects inside the sets."""
    stack, s3 = sets_stack
    name = stack.stack_name
    base = datetime.now(UTC) - timedelta(hours=3)
    older, good, running = (new_backup_id(base + timedelta(hours=i)) for i in range(3))
    for backup_id in (older, good):
        put(
            s3,
            manifest_key(name, backup_id),
            manifest_for(name, backup_id).to_json(),
        )
    for backup_id in (older, good, running):
        for part in range(20):  # a ClickHouse backup is a folder of many files
            put(s3, f"{name}/{backup_id}/clickhouse/default/data/{part}.bin", b"x")
    counting = CountingPool()
    client = Minio(
        stack.s3_host,
        access_key=stack.s3_access_key,
        secret_key=stack.s3_secret_key.get_secret_value(),
        secure=stack.s3_secure,
        region=stack.s3_region,
        http_client=counting,
    )

    newest = newest_complete_manifest(stack, client)

    assert newest is not None and newest.backup_id == good
    listings = [(path, query) for method, path, query in counting.requests if "prefix" in query]
    reads = [path for method, path, query in counting.requests if "prefix" not in query]
    assert listings and all(query.get("delimiter") == ["/"] for _path, query in listings)
    # the running set (no manifest yet) and the newest complete one, nothing older
    assert reads == [
        f"/{BUCKET}/{manifest_key(name, running)}",
        f"/{BUCKET}/{manifest_key(name, good)}",
    ]
