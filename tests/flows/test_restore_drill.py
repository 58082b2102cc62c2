"""restore-drill against the devstack: good sets pass, every corruption fails, nothing is left.

Backup sets come from the backup flow; corrupt variants are copies of a good set under
new backup ids (objects copied in S3, then one thing damaged), so each test names
exactly the damage it expects the drill to report.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from minio import Minio
from minio.commonconfig import CopySource

from blocks.stack import Stack
from devstack.core import PROJECT, Devstack
from devstack.seed import clickhouse_client
from flows.restore_drill import RestoreDrillConfig, restore_drill
from tasks.decisions.manifest import BackupManifest, StoredObject, manifest_key, new_backup_id
from tasks.storage import newest_complete_manifest
from tests.prefect_api import run_logs

STACK = "devstack"
# Every test here runs while traffic flows through the stack (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("traffic")


# ---- helpers shared with test_restore.py ------------------------------------------------------


def make_backup_set(stack: Stack) -> BackupManifest:
    """A complete set, made by the backup flow."""
    from flows.backup import backup

    backup(stack=STACK)
    manifest = newest_complete_manifest(stack)
    assert manifest is not None, "the backup flow made no complete set"
    return manifest


def minio(devstack: Devstack) -> Minio:
    client: Minio = devstack.minio_client()
    return client


def copy_set(
    devstack: Devstack,
    manifest: BackupManifest,
    edit_manifest: Callable[[dict[str, Any]], None] | None = None,
    with_manifest: bool = True,
) -> tuple[str, BackupManifest]:
    """Copy every object of ``manifest``'s set under a fresh backup id; returns id + manifest."""
    client = minio(devstack)
    bucket = manifest.bucket
    new_id = new_backup_id()
    old_prefix, new_prefix = manifest.prefix, f"{manifest.stack}/{new_id}/"
    for obj in client.list_objects(bucket, prefix=old_prefix, recursive=True):
        name = obj.object_name
        assert name is not None
        if name == manifest.key:
            continue
        client.copy_object(bucket, new_prefix + name[len(old_prefix) :], CopySource(bucket, name))
    text = manifest.model_dump_json().replace(old_prefix, new_prefix)
    copied = BackupManifest.model_validate_json(text).model_copy(update={"backup_id": new_id})
    data = copied.model_dump(mode="json")
    if edit_manifest is not None:
        edit_manifest(data)
    copied = BackupManifest.model_validate(data)
    if with_manifest:
        raw = copied.to_json()
        client.put_object(bucket, manifest_key(manifest.stack, new_id), io.BytesIO(raw), len(raw))
    return new_id, copied


def rewrite_object(
    devstack: Devstack, bucket: str, key: str, change: Callable[[bytes], bytes]
) -> None:
    client = minio(devstack)
    response = client.get_object(bucket, key)
    try:
        data = response.read()
    finally:
        response.close()
        response.release_conn()
    new = change(data)
    client.put_object(bucket, key, io.BytesIO(new), len(new))


def pg_scratch(devstack: Devstack) -> list[str]:
    with psycopg.connect(devstack.admin_dsn("postgres")) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'drill\\_%'")
        return [r[0] for r in rows]


def ch_scratch(devstack: Devstack) -> list[str]:
    client = clickhouse_client(devstack)
    try:
        rows = client.query("SELECT name FROM system.databases WHERE startsWith(name, 'drill_')")
        return [r[0] for r in rows.result_rows]
    finally:
        client.close()


def assert_nothing_left(devstack: Devstack) -> None:
    assert pg_scratch(devstack) == []
    assert ch_scratch(devstack) == []


def drill(backup_id: str | None = None, **config: Any) -> Any:
    return restore_drill(stack=STACK, config=RestoreDrillConfig(backup_id=backup_id, **config))


def failed_drill(backup_id: str, **config: Any) -> str:
    """Run a drill that must fail; the failure's message."""
    with pytest.raises(Exception) as caught:
        drill(backup_id, **config)
    return str(caught.value)


def scan_for_secrets(stack: Stack, texts: list[str]) -> None:
    for text in texts:
        for secret in stack.secret_values():
            assert secret not in text


def run_texts(flow_run_ids: list[Any], artifact_keys: list[str]) -> list[str]:
    """Every log line of the runs and every version of the artifacts, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
    )

    texts = run_logs(flow_run_ids)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=artifact_keys))
        )
        texts += [str(a.data) + str(a.description) for a in artifacts]
    return texts


def latest_drill_report() -> str:
    """The markdown of the newest restore-drill artifact of the stack."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"restore-drill-{STACK}"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return str(artifact.data)


def flow_runs_of(name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))
        return [run.id for run in runs]


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_set(devstack: Devstack, stack: Stack) -> BackupManifest:
    return make_backup_set(stack)


@pytest.fixture
def clean(devstack: Devstack) -> Iterator[None]:
    yield
    assert_nothing_left(devstack)


# ---- tests ------------------------------------------------------------------------------------


def test_drill_of_a_good_set_passes_and_leaves_no_scratch_database(devstack, good_set, clean):
    report = drill(good_set.backup_id)
    assert report.passed, report.failure_message()
    names = {c.name for c in report.checks}
    assert {"manifest", "postgres-dump-checksum", "postgres-restore", "postgres-row-counts",
            "postgres-required-tables", "scratch-dropped"} <= names  # fmt: skip
    assert any(n.startswith("clickhouse-row-counts") for n in names)
    assert {t.component for t in report.timings} == {"postgres", "clickhouse"}
    assert report.rpo_seconds is not None and report.set_size == good_set.total_size


def test_drill_defaults_to_the_newest_complete_set(devstack, stack, good_set, clean):
    report = drill(None)
    assert report.passed
    newest = newest_complete_manifest(stack)
    assert newest is not None and report.backup_id == newest.backup_id


def test_drill_in_stream_mode_passes_too(devstack, good_set, clean):
    report = drill(good_set.backup_id, postgres_mode="stream")
    assert report.passed, report.failure_message()
    assert report.postgres_mode == "stream"


def test_one_flipped_byte_in_the_dump_fails_the_drill(devstack, good_set, clean):
    backup_id, copied = copy_set(devstack, good_set)

    def flip(data: bytes) -> bytes:
        middle = len(data) // 2
        return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]

    rewrite_object(devstack, copied.bucket, copied.postgres.dump_key, flip)
    message = failed_drill(backup_id, postgres_mode="stream")
    assert "postgres-dump-checksum failed: sha256 mismatch" in message
    # A restore that did not pass has no RTO row: only ClickHouse's restore completed.
    report = latest_drill_report()
    assert "| clickhouse | `" in report
    assert "| postgres | `" not in report


def test_a_flipped_byte_is_caught_before_pg_restore_in_download_mode(devstack, good_set, clean):
    backup_id, copied = copy_set(devstack, good_set)
    rewrite_object(
        devstack, copied.bucket, copied.postgres.dump_key,
        lambda d: d[:100] + bytes([d[100] ^ 0xFF]) + d[101:],
    )  # fmt: skip
    message = failed_drill(backup_id, postgres_mode="download")
    assert "sha256 mismatch" in message
    assert "postgres-restore skipped" in message


def test_a_manifest_naming_another_sets_dump_fails_as_such(devstack, good_set, clean):
    def point_back(data: dict[str, Any]) -> None:
        data["postgres"]["dump_key"] = good_set.postgres.dump_key  # exists, in another set

    backup_id, copied = copy_set(devstack, good_set, edit_manifest=point_back)
    message = failed_drill(backup_id)
    assert "postgres-dump-present failed" in message
    assert f"is outside the set ({copied.prefix})" in message
    assert "missing from the bucket" not in message


def test_a_truncated_dump_fails_the_drill(devstack, good_set, clean):
    backup_id, copied = copy_set(devstack, good_set)
    rewrite_object(devstack, copied.bucket, copied.postgres.dump_key, lambda d: d[: len(d) // 2])
    message = failed_drill(backup_id)
    assert "postgres-dump-present failed" in message and "(truncated)" in message


def test_a_set_without_manifest_fails_the_drill(devstack, good_set, clean):
    backup_id, _ = copy_set(devstack, good_set, with_manifest=False)
    message = failed_drill(backup_id)
    assert "manifest failed: manifest missing" in message


def test_a_manifest_whose_row_counts_disagree_fails_the_drill(devstack, good_set, clean):
    def one_more_row(data: dict[str, Any]) -> None:
        data["postgres"]["table_rows"]["public.LiteLLM_Config"] += 1

    backup_id, _ = copy_set(devstack, good_set, edit_manifest=one_more_row)
    message = failed_drill(backup_id)
    assert "postgres-row-counts failed" in message
    want = good_set.postgres.table_rows["public.LiteLLM_Config"]
    assert f"public.LiteLLM_Config has {want} rows, the manifest says {want + 1}" in message


def remove_a_traces_data_file(devstack: Devstack, copied: BackupManifest) -> str:
    """Delete one data file of the traces table from the set's ClickHouse backup; its key."""
    client = minio(devstack)
    victim = next(
        o.object_name
        for o in client.list_objects(
            copied.bucket, prefix=copied.clickhouse[0].s3_prefix, recursive=True
        )
        if o.object_name and o.object_name.endswith(".bin") and "/traces/" in o.object_name
    )
    client.remove_object(copied.bucket, victim)
    return victim


def test_a_clickhouse_backup_with_a_file_removed_fails_the_drill(devstack, good_set, clean):
    backup_id, copied = copy_set(devstack, good_set)
    victim = remove_a_traces_data_file(devstack, copied)
    message = failed_drill(backup_id)
    assert "ClickHouse backup folder damaged" in message and victim in message


def test_a_clickhouse_backup_larger_than_the_free_disk_is_not_restored(devstack, good_set, clean):
    def huge(data: dict[str, Any]) -> None:
        data["clickhouse"][0]["size"] = 10**16  # 10 PB: more than any disk here

    backup_id, copied = copy_set(devstack, good_set, edit_manifest=huge)
    message = failed_drill(backup_id, postgres=False)
    assert "clickhouse-free-space failed: clickhouse: not enough free space on ClickHouse disk" in (
        message
    )
    assert "(system.disks unreserved_space)" in message
    assert f"clickhouse-restore[{copied.clickhouse[0].database}] skipped: no room" in message
    assert ch_scratch(devstack) == []  # nothing was restored


# ---- room to restore: checked before anything is written ---------------------------------------


def tight_stack(stack: Stack, name: str, free: int) -> str:
    """Save a block of the same stack whose Postgres volume has ``free`` bytes left."""
    from tasks.restore import pg_server, pg_used_bytes

    used = pg_used_bytes(pg_server(stack, None))
    values = {**stack.model_dump(), "postgres_volume_size": used + free}
    Stack(**values).save(name, overwrite=True)
    return name


def test_a_drill_that_does_not_fit_fails_before_writing_and_leaves_nothing(
    devstack, stack, good_set, clean
):
    name = tight_stack(stack, "devstack-tight", free=10_000_000)  # 10 MB left on the volume
    config = RestoreDrillConfig(backup_id=good_set.backup_id, clickhouse=False)
    with pytest.raises(Exception) as caught:
        restore_drill(stack=name, config=config)
    message = str(caught.value)
    assert "postgres-free-space failed: postgres: not enough free space on Postgres" in message
    assert "MB free (POSTGRES_VOLUME_SIZE" in message and "nothing was written" in message
    assert "DRILL_DATABASE_URL" in message  # the fix: a scratch server for drills
    assert "postgres-restore skipped: no room (see postgres-free-space)" in message
    assert pg_scratch(devstack) == []
    report = latest_drill_report()
    assert "| postgres-free-space | postgres | failed |" in report
    assert "postgres-row-counts" not in report  # pg_restore never ran


def test_unknown_free_space_follows_the_policy(devstack, good_set, clean):
    # The devstack block gives no volume size: Postgres's free space is unknown.
    report = drill(good_set.backup_id, clickhouse=False)  # auto: a small set proceeds
    assert report.passed, report.failure_message()
    (space,) = [c for c in report.checks if c.name == "postgres-free-space"]
    assert space.message.startswith("postgres: free space unknown: the volume size of Postgres")
    assert "set POSTGRES_VOLUME_SIZE to check it; proceeding" in space.message
    message = failed_drill(good_set.backup_id, clickhouse=False, space_unknown="refuse")
    assert "postgres-free-space failed: postgres: free space unknown" in message
    assert "refused (space_unknown is 'refuse'); nothing was written" in message
    assert pg_scratch(devstack) == []


def test_a_failed_drill_alerts_the_stacks_channels(devstack, stack, good_set, receiver, clean):
    backup_id, _ = copy_set(devstack, good_set, with_manifest=False)
    failed_drill(backup_id)
    alerts = receiver.received("/custom")
    assert any(
        "restore-drill failed" in (a["json"] or {}).get("title", "")
        and "manifest missing" in (a["json"] or {}).get("text", "")
        for a in alerts
    ), alerts


def start_drill_process(devstack: Devstack, backup_id: str) -> subprocess.Popen[bytes]:
    """A drill in its own process, returned once its Postgres scratch database exists."""
    code = (
        "from flows.restore_drill import restore_drill, RestoreDrillConfig\n"
        f"restore_drill(stack={STACK!r}, config=RestoreDrillConfig(backup_id={backup_id!r}))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=PROJECT, env=devstack.client_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not pg_scratch(devstack):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("the drill ended (or hung) before its scratch database appeared")
    return proc


def test_a_cancelled_drill_drops_its_scratch_databases_on_the_way_out(devstack, good_set, clean):
    proc = start_drill_process(devstack, good_set.backup_id)
    try:
        proc.send_signal(signal.SIGTERM)  # what the worker sends when a run is cancelled
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0  # it did not run to completion
    assert_nothing_left(devstack)


def test_a_killed_drill_leaves_a_scratch_database_that_the_next_drill_drops(
    devstack, good_set, clean
):
    proc = start_drill_process(devstack, good_set.backup_id)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    left = pg_scratch(devstack)
    assert len(left) == 1 and left[0].startswith(f"drill_{STACK}_")

    report = drill(good_set.backup_id)
    assert report.passed
    assert left[0] not in pg_scratch(devstack)


def test_no_secret_in_any_log_artifact_or_alert(devstack, stack, good_set, receiver, clean):
    backup_id, _ = copy_set(devstack, good_set, with_manifest=False)
    failed_drill(backup_id)
    drill(good_set.backup_id, notify_success=True)
    texts = run_texts(flow_runs_of("restore-drill"), [f"restore-drill-{STACK}"])
    assert any("restore drill passed" in t for t in texts)  # the scan saw real content
    texts += [str(a["body"]) + str(a["json"]) for a in receiver.received("")]
    scan_for_secrets(stack, texts)


def test_sha_of_copied_dump_matches_manifest(devstack, good_set):
    """The copies above start identical to the good set (so each test's damage is the only one)."""
    _, copied = copy_set(devstack, good_set)
    response = minio(devstack).get_object(copied.bucket, copied.postgres.dump_key)
    try:
        digest = hashlib.sha256(response.read()).hexdigest()
    finally:
        response.close()
        response.release_conn()
    assert digest == copied.postgres.dump_sha256
    assert isinstance(copied.objects[0], StoredObject)


@pytest.fixture
def partitions_and_large_objects(devstack: Devstack) -> Iterator[None]:
    """A partitioned table (two partitions) and two large objects in the stack's database."""
    with psycopg.connect(devstack.admin_dsn("railway"), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE ops_events (id int, at date) PARTITION BY RANGE (at);"
            "CREATE TABLE ops_events_2026_01 PARTITION OF ops_events "
            "  FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');"
            "CREATE TABLE ops_events_2026_02 PARTITION OF ops_events "
            "  FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');"
            "INSERT INTO ops_events SELECT g, '2026-01-15' FROM generate_series(1, 30) g;"
            "INSERT INTO ops_events SELECT g, '2026-02-15' FROM generate_series(1, 12) g;"
        )
        conn.execute("SELECT lo_from_bytea(0, 'attachment one'), lo_from_bytea(0, 'two')")
    try:
        yield
    finally:
        with psycopg.connect(devstack.admin_dsn("railway"), autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS ops_events")
            conn.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata")


def test_partitions_count_once_and_large_objects_are_restored_and_checked(
    devstack, stack, partitions_and_large_objects, clean
):
    manifest = make_backup_set(stack)
    dump = manifest.postgres
    assert dump.partitioned_tables == ["public.ops_events"]
    assert dump.table_rows["public.ops_events"] == 42  # what a user's count(*) says
    assert dump.total_rows == sum(dump.table_rows.values()) - 42  # counted once, in partitions
    assert dump.large_objects is not None and dump.large_objects.count == 2
    assert dump.large_objects.digest

    report = drill(manifest.backup_id)
    assert report.passed, report.failure_message()
    (check,) = [c for c in report.checks if c.name == "postgres-large-objects"]
    assert check.message == "2 large objects, content matches"

    def one_more(data: dict[str, Any]) -> None:
        data["postgres"]["large_objects"]["count"] = 3

    backup_id, _ = copy_set(devstack, manifest, edit_manifest=one_more)
    message = failed_drill(backup_id)
    assert "postgres-large-objects failed" in message
    assert "2 large objects restored, the manifest says 3" in message
