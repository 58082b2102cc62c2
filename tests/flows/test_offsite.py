"""The off-site copy against the devstack's second SeaweedFS: sealed with age, checked,
opened by the age CLI, drilled from the off-site side, every damage named, and a target
that is down costs one alert and is caught up by the next backup.

The stack here is ``devstack-offsite``: the devstack's services plus its off-site target
(``Devstack.offsite_env``), so its sets live beside the suite's other sets and apart.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from blocks.stack import Stack
from devstack.core import Devstack
from flows.backup import backup
from flows.restore_drill import RestoreDrillConfig, restore_drill
from tasks.decisions.manifest import BackupManifest, manifest_key
from tasks.decisions.offsite import offsite_manifest_key, sealed_key
from tasks.offsite import list_offsite_sets
from tasks.restore.from_offsite import offsite_scratch_bucket
from tasks.storage import read_object
from tests.flows.test_restore_drill import assert_nothing_left

OFFSITE = "devstack-offsite"
# Every test here runs while traffic flows through the stack (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("traffic")


def save_stack(devstack: Devstack, block: str, **extra: str) -> Stack:
    """A block document ``block`` for the stack ``devstack-offsite``, with ``extra`` set."""
    env = {**devstack.env(), **devstack.offsite_env(), **extra}
    stack = Stack.from_env(env, stack_name=OFFSITE)
    stack.notifications = Stack.load_stack("devstack").notifications
    stack.save(block, overwrite=True)
    return stack


@pytest.fixture(scope="module")
def offsite_stack(devstack: Devstack) -> Stack:
    return save_stack(devstack, OFFSITE)


@pytest.fixture(scope="module")
def first_set(offsite_stack: Stack) -> BackupManifest:
    summary = backup(stack=OFFSITE)
    assert summary.offsite_copied_sets[0] == summary.backup_id
    return BackupManifest.from_json(read_object(offsite_stack, summary.manifest_key))


def target(devstack: Devstack) -> Minio:
    client: Minio = devstack.offsite_client()
    return client


def sealed(stack: Stack, key: str) -> str:
    assert stack.offsite is not None
    return sealed_key(stack.offsite.prefix, key)


def get(client: Minio, key: str) -> bytes:
    response = client.get_object("offsite", key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def drill_offsite(backup_id: str, stack: str = OFFSITE) -> Any:
    config = RestoreDrillConfig(backup_id=backup_id, source="offsite")
    return restore_drill(stack=stack, config=config)


def failed_offsite_drill(backup_id: str, stack: str = OFFSITE) -> str:
    with pytest.raises(Exception) as caught:
        drill_offsite(backup_id, stack)
    return str(caught.value)


@pytest.fixture
def restore_object(devstack: Devstack) -> Iterator[list[tuple[str, bytes]]]:
    """Objects a test damages off-site, put back afterwards."""
    saved: list[tuple[str, bytes]] = []
    yield saved
    for key, data in saved:
        target(devstack).put_object("offsite", key, io.BytesIO(data), len(data))


def test_a_backup_seals_every_object_off_site_and_the_age_cli_opens_them(
    devstack: Devstack, offsite_stack: Stack, first_set: BackupManifest, tmp_path: Path
) -> None:
    client = target(devstack)
    record = get(client, offsite_manifest_key("llm/", OFFSITE, first_set.backup_id))
    assert b'"key_fingerprint"' in record and offsite_stack.offsite is not None
    assert offsite_stack.offsite.fingerprint.encode() in record
    dump = get(client, sealed(offsite_stack, first_set.postgres.dump_key))
    assert dump.startswith(b"age-encryption.org/v1\n")
    # Nothing readable is stored off-site: not the dump, not the manifest.
    assert b"PGDMP" not in dump[:4096]
    sealed_manifest = get(client, sealed(offsite_stack, first_set.key))
    assert first_set.backup_id.encode() not in sealed_manifest
    # An operator opens it with the age CLI alone, and gets the very bytes of the set.
    key_file = tmp_path / "key.txt"
    key_file.write_text(devstack.creds.age_identity + "\n")
    key_file.chmod(0o600)
    (tmp_path / "dump.age").write_bytes(dump)
    opened = subprocess.run(
        ["age", "-d", "-i", str(key_file), str(tmp_path / "dump.age")],
        capture_output=True,
        check=True,
    ).stdout
    assert hashlib.sha256(opened).hexdigest() == first_set.postgres.dump_sha256
    # Every object of the set is there, sealed: the ClickHouse backup's files too.
    primary = {
        o.object_name
        for o in devstack.minio_client().list_objects(
            "backups", prefix=first_set.prefix, recursive=True
        )
    }
    stored = {
        o.object_name
        for o in client.list_objects("offsite", prefix="llm/" + first_set.prefix, recursive=True)
    }
    assert stored == {f"llm/{k}.age" for k in primary} | {
        offsite_manifest_key("llm/", OFFSITE, first_set.backup_id)
    }


def test_a_drill_from_the_off_site_side_passes_and_leaves_nothing(
    devstack: Devstack, offsite_stack: Stack, first_set: BackupManifest
) -> None:
    report = drill_offsite(first_set.backup_id)
    assert report.passed
    opened = next(c for c in report.checks if c.name == "offsite-set")
    assert "opened from the off-site target" in opened.message
    assert_nothing_left(devstack)
    scratch = offsite_scratch_bucket(offsite_stack)
    assert list(devstack.minio_client().list_objects(scratch, recursive=True)) == []


def test_a_flipped_byte_off_site_fails_the_drill_naming_the_object(
    devstack: Devstack,
    offsite_stack: Stack,
    first_set: BackupManifest,
    restore_object: list[tuple[str, bytes]],
) -> None:
    key = sealed(offsite_stack, first_set.postgres.dump_key)
    data = get(target(devstack), key)
    restore_object.append((key, data))
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x01
    target(devstack).put_object("offsite", key, io.BytesIO(bytes(damaged)), len(damaged))
    message = failed_offsite_drill(first_set.backup_id)
    assert f"off-site object {key} does not decrypt" in message
    assert "damaged or truncated" in message
    assert_nothing_left(devstack)


def test_a_missing_object_off_site_fails_the_drill_naming_it(
    devstack: Devstack,
    offsite_stack: Stack,
    first_set: BackupManifest,
    restore_object: list[tuple[str, bytes]],
) -> None:
    ch = first_set.clickhouse[0]
    key = next(
        o.object_name
        for o in target(devstack).list_objects(
            "offsite", prefix="llm/" + ch.s3_prefix, recursive=True
        )
        if o.object_name and "/data/" in o.object_name
    )
    restore_object.append((key, get(target(devstack), key)))
    target(devstack).remove_object("offsite", key)
    message = failed_offsite_drill(first_set.backup_id)
    assert f"off-site object {key} is missing" in message


def test_another_key_fails_the_drill_saying_which_key(
    devstack: Devstack, offsite_stack: Stack, first_set: BackupManifest
) -> None:
    from pyrage import x25519

    other = x25519.Identity.generate()
    save_stack(devstack, "devstack-offsite-otherkey", OFFSITE_AGE_IDENTITY=str(other))
    # The same sets (same stack name), opened with an identity of another key.
    stack = Stack.load_stack("devstack-offsite-otherkey")
    assert stack.stack_name == OFFSITE and stack.offsite is not None
    message = failed_offsite_drill(first_set.backup_id, stack="devstack-offsite-otherkey")
    assert f"encrypted to key {offsite_stack.offsite.fingerprint}" in message
    assert stack.offsite.identity_fingerprints()[0] in message
    assert str(other) not in message


def test_off_site_down_during_a_backup_alerts_once_and_the_next_backup_catches_up(
    devstack: Devstack, offsite_stack: Stack, first_set: BackupManifest, receiver: Any
) -> None:
    with devstack.stopped("offsite"):
        state = backup(stack=OFFSITE, return_state=True)
    assert state.is_failed()
    message = str(state.message)
    assert "complete on the primary, but its off-site copy failed" in message
    missed = message.split("backup set ", 1)[1].split(" ", 1)[0]
    # The primary set is complete: its manifest is there.
    assert read_object(offsite_stack, manifest_key(OFFSITE, missed))
    alerts = [a for a in receiver.received("/custom") if "off-site copy failed" in str(a["json"])]
    assert len(alerts) == 1
    summary = backup(stack=OFFSITE)
    assert summary.offsite_copied_sets[:1] == [summary.backup_id]
    assert missed in summary.offsite_copied_sets
    complete = {s.backup_id for s in list_offsite_sets(offsite_stack) if s.manifest is not None}
    assert {missed, summary.backup_id, first_set.backup_id} <= complete


def test_langfuse_buckets_mirror_incrementally_sealed_and_hold_deletions_back(
    devstack: Devstack, offsite_stack: Stack
) -> None:
    from datetime import timedelta

    import pyrage

    from tasks.offsite_mirror import mirror_bucket, mirror_prefix

    bucket = "langfuse-media-mirror-test"
    source = devstack.minio_client()
    if not source.bucket_exists(bucket):
        source.make_bucket(bucket)
    bodies = {f"media/{i:03d}.bin": f"attachment {i}".encode() * (i + 1) for i in range(20)}
    for key, body in bodies.items():
        source.put_object(bucket, key, io.BytesIO(body), len(body))
    assert offsite_stack.offsite is not None
    off = offsite_stack.offsite
    week = timedelta(days=7)

    first = mirror_bucket(offsite_stack, off, bucket, grace=week)
    assert (first.source_objects, first.copied, first.unchanged) == (20, 20, 0)
    sealed_body = get(target(devstack), mirror_prefix(off, bucket) + "media/007.bin.age")
    assert pyrage.decrypt(sealed_body, off.identities()) == bodies["media/007.bin"]

    changed = b"changed attachment"
    source.put_object(bucket, "media/003.bin", io.BytesIO(changed), len(changed))
    source.remove_object(bucket, "media/004.bin")
    second = mirror_bucket(offsite_stack, off, bucket, grace=week)
    assert (second.copied, second.unchanged, second.marked_gone, second.deleted) == (1, 18, 1, 0)
    # Held back: the deleted object is still off-site during the grace period.
    gone_key = mirror_prefix(off, bucket) + "media/004.bin.age"
    assert get(target(devstack), gone_key)
    third = mirror_bucket(offsite_stack, off, bucket, grace=timedelta(0))
    assert (third.copied, third.deleted) == (0, 1)
    names = {o.object_name for o in target(devstack).list_objects("offsite", prefix=gone_key)}
    assert names == set()


def test_deploy_verify_and_the_sweep_report_the_off_site_copy_and_its_protection(
    devstack: Devstack, offsite_stack: Stack, first_set: BackupManifest
) -> None:
    import asyncio

    from tasks.control_plane import check_offsite_copy
    from tasks.health import HealthThresholds, check_offsite_freshness

    result = check_offsite_copy.fn(offsite_stack, 50.0)
    assert result.passed, result.message
    # The devstack's off-site bucket keeps no versions: said, with the fix.
    assert "versioning" in result.message and "enable versioning or object lock" in result.message
    reading = asyncio.run(check_offsite_freshness(offsite_stack, 5.0, HealthThresholds()))
    assert reading.status == "healthy" and "h old" in reading.reason
    with devstack.stopped("offsite"):
        down = asyncio.run(check_offsite_freshness(offsite_stack, 2.0, HealthThresholds()))
    assert down.status == "unhealthy" and "cannot list the off-site copies" in down.reason
