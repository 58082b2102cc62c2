"""backup against the devstack: round trip, snapshot consistency, faults, pruning, secrets.

Every run here is a real flow run on the devstack's Prefect server. Faults are made
deterministic with the dump's hooks (``tasks.postgres.dump_hooks``): a service is
stopped from inside the stream once a given number of bytes has passed, or rows are
written from another connection right after the snapshot is exported.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from minio import Minio
from psycopg import sql
from pydantic import SecretStr

from blocks.stack import Stack
from devstack.core import PROJECT, Devstack
from tasks.backup import ensure_backup_slot, one_backup_at_a_time
from tasks.decisions.manifest import BackupManifest, manifest_key, new_backup_id, set_id_of_key
from tasks.decisions.retention import RetentionPolicy
from tasks.postgres import dump_hooks
from tasks.storage import list_backup_sets, list_multipart_uploads
from tests.flows.backup_helpers import (
    BUCKET,
    MIB,
    STACK,
    assert_failed_cleanly,
    assert_no_secrets,
    bucket_keys,
    fingerprint,
    manifest_of,
    new_set_ids,
    pg_restore_stream,
    restore_clickhouse_counts,
    run,
    run_id,
    summary_of,
    texts_of_runs,
    wait_for_alert,
)
from tests.prefect_api import state_names, task_runs_when

# Every test here runs while traffic flows through the stack (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("traffic")
# Tables the traffic writes: their live rows move on after the snapshot.
MOVING_TABLES = {"public.LiteLLM_SpendLogs", "public.LiteLLM_DailyUserSpend"}
SPEND_LOGS = 'public."LiteLLM_SpendLogs"'


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(devstack: Devstack) -> Minio:
    client: Minio = devstack.minio_client()
    return client


@pytest.fixture
def scratch_db(devstack: Devstack) -> Iterator[str]:
    name = f"backup_rt_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(devstack.admin_dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(devstack.admin_dsn("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# ---- round trip --------------------------------------------------------------------------


def test_round_trip_restores_every_table_and_clickhouse_counts(
    devstack: Devstack, stack: Stack, s3: Minio, scratch_db: str, receiver: Any
) -> None:
    state = run()
    result = summary_of(state)
    manifest = manifest_of(s3, result.backup_id)

    # The manifest describes the set: objects, sizes, checksums, versions, counts.
    assert manifest.stack == STACK and manifest.backup_id == result.backup_id
    assert manifest.tool_versions["pg_dump"] and manifest.tool_versions["postgres"]
    assert {o.kind for o in manifest.objects} == {"postgres-dump", "clickhouse-backup"}
    for obj in manifest.objects:
        assert s3.stat_object(BUCKET, obj.key).size == obj.size
    tables = manifest.postgres.table_rows
    for table in ["public.LiteLLM_SpendLogs", "public.LiteLLM_ProxyModelTable",
                  "public.LiteLLM_VerificationToken", "langfuse.users", "langfuse.prompts"]:  # fmt: skip
        assert table in tables
    assert tables["public.LiteLLM_SpendLogs"] >= 100_000

    # pg_restore of the streamed dump: every table has exactly the rows of the snapshot.
    sha = pg_restore_stream(devstack, s3, manifest.postgres.dump_key, scratch_db)
    assert sha == manifest.postgres.dump_sha256
    source, restored = devstack.admin_dsn("railway"), devstack.admin_dsn(scratch_db)
    for table, rows in tables.items():
        restored_print = fingerprint(restored, table)
        assert restored_print[0] == rows, table
        if table not in MOVING_TABLES:
            assert restored_print == fingerprint(source, table), table  # jsonb, bytea, arrays

    # ClickHouse RESTORE ... AS gives the recorded counts: the rows the backup holds,
    # counted in the restored parts before a merge folds Langfuse's duplicate versions.
    restored_ch = restore_clickhouse_counts(devstack, stack, manifest)
    for ch in manifest.clickhouse:
        assert ch.status == "BACKUP_CREATED"
        assert restored_ch[ch.database] == ch.table_rows
        assert sum(ch.table_rows.values()) > 0

    # The report and the progress artifacts exist; the set is the newest complete one.
    texts = texts_of_runs([run_id(state)])
    assert any(t.startswith(f"backup-report-{STACK} ") and result.backup_id in t for t in texts)
    assert any("pg_dump of railway" in t and " 100" in t for t in texts)
    complete = [s for s in list_backup_sets(stack) if s.complete]
    assert complete[-1].backup_id == result.backup_id
    assert_no_secrets(stack, [state], receiver)


def test_rows_written_during_the_dump_are_not_in_it(
    devstack: Devstack, stack: Stack, s3: Minio, scratch_db: str, receiver: Any
) -> None:
    source = devstack.admin_dsn("railway")
    written: list[str] = []

    def write_rows(snapshot_id: str) -> None:
        # Another connection commits rows after the snapshot is exported, before
        # the rows are counted and before pg_dump starts.
        with psycopg.connect(source) as conn:
            conn.execute(
                f'INSERT INTO {SPEND_LOGS} (request_id, call_type, "startTime", "endTime") '
                "SELECT 'during-dump-' || g, 'acompletion', now(), now() "
                "FROM generate_series(1, 25) g"
            )
        written.append(snapshot_id)

    try:
        with dump_hooks(after_snapshot=write_rows):
            state = run()
        manifest = manifest_of(s3, summary_of(state).backup_id)
        assert written == [manifest.postgres.snapshot_id]
        with psycopg.connect(source) as conn:
            live = conn.execute(
                f"SELECT count(*), count(*) FILTER (WHERE request_id LIKE 'during-dump-%') "
                f"FROM {SPEND_LOGS}"
            ).fetchone()
        assert live is not None and live[1] == 25
        in_snapshot = manifest.postgres.table_rows["public.LiteLLM_SpendLogs"]
        assert in_snapshot <= live[0] - 25  # the traffic's rows land too, after the snapshot
        pg_restore_stream(devstack, s3, manifest.postgres.dump_key, scratch_db)
        with psycopg.connect(devstack.admin_dsn(scratch_db)) as conn:
            row = conn.execute(
                f"SELECT count(*), count(*) FILTER (WHERE request_id LIKE 'during-dump-%') "
                f"FROM {SPEND_LOGS}"
            ).fetchone()
        assert row == (in_snapshot, 0)
    finally:
        with psycopg.connect(source) as conn:
            conn.execute(f"DELETE FROM {SPEND_LOGS} WHERE request_id LIKE 'during-dump-%'")
    assert_no_secrets(stack, [state], receiver)


# ---- faults ------------------------------------------------------------------------------


def test_postgres_stopped_mid_dump_fails_alerts_and_the_next_run_succeeds(
    devstack: Devstack, stack: Stack, s3: Minio, receiver: Any
) -> None:
    run()  # at least one complete set exists before the fault
    before = bucket_keys(s3)
    run_started = new_backup_id(datetime.now(UTC) - timedelta(seconds=1))[:16]
    stopped_at: list[int] = []

    def stop_postgres(streamed: int) -> None:
        if not stopped_at:
            stopped_at.append(streamed)
            devstack.stop_service("postgres")

    try:
        with dump_hooks(on_bytes=stop_postgres):
            failed = run(part_size_mb=5)
    finally:
        devstack.start_service("postgres")
    assert stopped_at and stopped_at[0] < 14 * MIB  # stopped with most of the dump to come
    assert_failed_cleanly(failed, s3, before, "pg_dump exited with code")
    alert = wait_for_alert(receiver, "pg_dump exited with code")
    assert "backup failed on devstack" in str(alert["json"])
    # No dump object: the multipart upload was aborted, not completed half-way.
    for backup_id in new_set_ids(before, bucket_keys(s3)):
        assert not any(k.startswith(f"{STACK}/{backup_id}/postgres/") for k in bucket_keys(s3))
    unfinished = [set_id_of_key(STACK, u.key) or "" for u in list_multipart_uploads(stack)]
    assert not [i for i in unfinished if i[:16] >= run_started]  # none from the failed run

    summary_of(recovered := run())
    assert_no_secrets(stack, [failed, recovered], receiver)


def test_s3_stopped_mid_upload_fails_alerts_and_the_next_run_succeeds(
    devstack: Devstack, stack: Stack, s3: Minio, receiver: Any
) -> None:
    run()
    before = bucket_keys(s3)
    stopped_at: list[int] = []

    def stop_s3(streamed: int) -> None:
        # One upload thread, 5 MiB parts: the first part went up, the second is full.
        if streamed > 10 * MIB and not stopped_at:
            stopped_at.append(streamed)
            devstack.stop_service("s3")

    try:
        with dump_hooks(on_bytes=stop_s3):
            failed = run(part_size_mb=5, upload_threads=1)
    finally:
        devstack.start_service("s3")
    assert stopped_at
    assert_failed_cleanly(failed, s3, before, "S3 upload of")
    wait_for_alert(receiver, "S3 upload of")
    # The upload could not be aborted while S3 was down: it is left unfinished, and
    # retention reports it (kept until its grace period ends).
    failed_set = new_backup_id(datetime.now(UTC))[:8]  # today's sets
    left = [u for u in list_multipart_uploads(stack) if u.upload_id in (failed.message or "")]
    assert len(left) == 1 and left[0].key.startswith(f"{STACK}/{failed_set}")
    summary_of(recovered := run())
    plan = next(
        t for t in texts_of_runs([run_id(recovered)]) if t.startswith(f"backup-retention-{STACK} ")
    )
    assert f"upload {left[0].key}" in plan and "younger than 24 h" in plan
    # The run that succeeded says the failure is over, and resolves the page it opened.
    wait_for_alert(receiver, "backup recovered on devstack")
    resolves = [
        r["json"]
        for r in receiver.received("/pagerduty")
        if r["json"].get("event_action") == "resolve"
        and r["json"].get("dedup_key") == "devstack/backup/failure"
    ]
    assert len(resolves) == 1
    assert_no_secrets(stack, [failed, recovered], receiver)


@pytest.fixture
def clickhouse_fault_stack(devstack: Devstack) -> Iterator[str]:
    """A stack document whose ClickHouse-side S3 endpoint answers every request 501."""
    name = "devstack-chfault"
    # A new block (not the loaded one, whose save would overwrite the devstack document).
    broken = Stack.from_env(
        {**devstack.env(), "CLICKHOUSE_S3_ENDPOINT": devstack.receiver_url}, stack_name=STACK
    )
    broken.notifications = Stack.load_stack(STACK).notifications
    broken.save(name, overwrite=True)
    yield name
    assert Stack.load_stack(STACK).clickhouse_s3_endpoint is None  # the real one untouched


def test_a_failed_clickhouse_backup_fails_alerts_and_the_next_run_succeeds(
    devstack: Devstack, stack: Stack, s3: Minio, receiver: Any, clickhouse_fault_stack: str
) -> None:
    run()
    before = bucket_keys(s3)
    failed = run(stack=clickhouse_fault_stack)
    assert_failed_cleanly(failed, s3, before, "BACKUP_FAILED")
    alert = wait_for_alert(receiver, "BACKUP_FAILED")
    assert "ClickHouse" in str(alert["json"])
    (failed_set,) = new_set_ids(before, bucket_keys(s3))  # its dump went up, then it failed
    summary_of(recovered := run())
    # The recovered run's retention knows that set's run ended: it is not "in flight".
    plan = next(
        t for t in texts_of_runs([run_id(recovered)]) if t.startswith(f"backup-retention-{STACK} ")
    )
    line = next(row for row in plan.split("{") if failed_set in row)
    assert "its run ended Failed" in line and "may be in flight" not in line
    assert_no_secrets(stack, [failed, recovered], receiver)


def test_a_wrong_s3_secret_fails_at_once_with_the_fix_and_is_not_retried(
    devstack: Devstack, stack: Stack, s3: Minio, receiver: Any
) -> None:
    name = "devstack-badsecret"
    broken = Stack.load_stack(STACK).model_copy(
        update={"s3_secret_key": SecretStr("not-the-s3-secret")}
    )
    broken.save(name, overwrite=True)
    before = bucket_keys(s3)
    failed = run(stack=name)
    assert_failed_cleanly(failed, s3, before, "SignatureDoesNotMatch")
    assert "No retry can fix this" in (failed.message or "")
    assert "MINIO_ROOT_PASSWORD" in (failed.message or "")
    task_runs = task_runs_when(
        run_id(failed),
        lambda runs: any(t.state and t.state.is_failed() for t in runs),
        "the failed task's state recorded",
    )
    failed_tasks = [t for t in task_runs if t.state and t.state.is_failed()]
    assert all(t.run_count == 1 for t in failed_tasks), [
        (t.name, t.run_count) for t in failed_tasks
    ]
    wait_for_alert(receiver, "SignatureDoesNotMatch")


def test_a_retried_run_does_not_redo_the_finished_dump(
    devstack: Devstack, stack: Stack, s3: Minio, receiver: Any
) -> None:
    devstack.stop_service("clickhouse")
    try:
        failed = run()
    finally:
        devstack.start_service("clickhouse")
    assert failed.is_failed() and "ClickHouse" in (failed.message or "")
    sets = [s for s in list_backup_sets(stack) if not s.complete]
    backup_id = sets[-1].backup_id
    dump_key = f"{STACK}/{backup_id}/postgres/railway.dump"
    dumped = s3.stat_object(BUCKET, dump_key)

    prefect = Path(sys.executable).parent / "prefect"
    done = subprocess.run(
        [str(prefect), "flow-run", "retry", str(run_id(failed)), "--entrypoint",
         "flows/backup.py:backup"],
        env=devstack.client_env(), cwd=PROJECT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    manifest = manifest_of(s3, backup_id)  # the same set, now complete
    assert manifest.postgres.dump_key == dump_key
    again = s3.stat_object(BUCKET, dump_key)
    assert (again.etag, again.last_modified) == (dumped.etag, dumped.last_modified)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id(failed))
    assert flow_run.state is not None and flow_run.state.is_completed()
    task_runs = task_runs_when(
        run_id(failed),
        lambda runs: len(state_names(runs, "dump-postgres")) == 2,
        "both attempts' dump states recorded",
    )
    assert sorted(state_names(task_runs, "dump-postgres")) == ["Cached", "Completed"]
    assert_no_secrets(stack, [failed], receiver)


def test_one_backup_per_stack_at_a_time(devstack: Devstack, s3: Minio, receiver: Any) -> None:
    before = bucket_keys(s3)
    ensure_backup_slot.fn(STACK)
    with one_backup_at_a_time(STACK, wait_s=5):
        blocked = run(lock_timeout_s=1)
    assert blocked.is_failed()
    assert "another backup of devstack" in (blocked.message or "")
    assert bucket_keys(s3) == before  # it did nothing at all
    wait_for_alert(receiver, "another backup of devstack")


# ---- retention against the real bucket ------------------------------------------------------


FOREIGN = {
    "devstack/README.txt": b"hand-placed notes",
    "devstack/2025-01-01/dump.sql.gz": b"an old manual dump",
    "devstack-old/20200101T000000Z-aaaaaa/manifest.json": b"{}",
    "other/20200101T000000Z-aaaaaa/postgres/railway.dump": b"another stack",
    "backup-2020-01-01.sql.gz": b"the original daemon's file",
}


def plant(s3: Minio, key: str, data: bytes) -> None:
    import io

    s3.put_object(BUCKET, key, io.BytesIO(data), len(data))


def old_complete_set(s3: Minio, template: BackupManifest, days_ago: int) -> str:
    """A complete set from ``days_ago`` days back: a copy of a real manifest, re-dated."""
    started = datetime.now(UTC) - timedelta(days=days_ago)
    backup_id = new_backup_id(started)
    manifest = template.model_copy(
        update={"backup_id": backup_id, "started_at": started, "finished_at": started}
    )
    plant(s3, f"{STACK}/{backup_id}/postgres/railway.dump", b"old dump")
    plant(s3, manifest_key(STACK, backup_id), manifest.to_json())
    return backup_id


def test_prune_keeps_policy_sets_and_never_touches_foreign_objects(
    devstack: Devstack, stack: Stack, s3: Minio, receiver: Any
) -> None:
    template = manifest_of(s3, summary_of(run()).backup_id)
    for key, data in FOREIGN.items():
        plant(s3, key, data)
    old = [old_complete_set(s3, template, days) for days in (400, 200, 100, 50, 20)]
    # A set without manifest from long ago, whose objects were just written: the
    # grace period counts from its last activity, so it may still be in flight.
    stale_id = new_backup_id(template.started_at.replace(year=2020))
    plant(s3, f"{STACK}/{stale_id}/postgres/railway.dump", b"partial")
    policy = {"keep_last": 1, "keep_within_days": 0, "keep_daily": 1, "keep_weekly": 0,
              "keep_monthly": 2, "min_keep": 2}  # fmt: skip

    # Dry run: the plan says what would go; nothing goes.
    before = bucket_keys(s3)
    dry = summary_of(dry_state := run(retention=RetentionPolicy(**policy), dry_run=True))
    assert set(old) & set(dry.would_delete_sets) and dry.deleted_sets == []
    assert before <= bucket_keys(s3)

    real = summary_of(real_state := run(retention=RetentionPolicy(**policy)))
    after = bucket_keys(s3)
    assert set(FOREIGN) <= after  # someone else's objects survive
    assert real.deleted_sets and set(real.deleted_sets) <= set(dry.would_delete_sets) | {
        dry.backup_id
    }
    for backup_id in real.deleted_sets:
        assert not any(k.startswith(f"{STACK}/{backup_id}/") for k in after)
    assert manifest_key(STACK, real.backup_id) in after  # the newest complete set
    assert f"{STACK}/{stale_id}/postgres/railway.dump" in after  # incomplete, within grace
    complete = [s.backup_id for s in list_backup_sets(stack) if s.complete]
    assert len(complete) >= 2
    # The plan artifact lists every set with a reason.
    texts = texts_of_runs([run_id(real_state)])
    plan = next(t for t in texts if t.startswith(f"backup-retention-{STACK} "))
    assert "DELETE" in plan and "newest complete set" in plan and stale_id in plan
    assert_no_secrets(stack, [dry_state, real_state], receiver)
    for key in FOREIGN:
        s3.remove_object(BUCKET, key)
    s3.remove_object(BUCKET, f"{STACK}/{stale_id}/postgres/railway.dump")


def test_an_older_pg_dump_is_refused_before_anything_is_written(
    devstack: Devstack, stack: Stack, s3: Minio, receiver: Any, tmp_path: Path
) -> None:
    fake = tmp_path / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    fake.chmod(0o755)
    before = bucket_keys(s3)
    refused = run(pg_dump_path=str(fake))
    assert refused.is_failed()
    assert "pg_dump 9.6 is older than the PostgreSQL 15" in (refused.message or "")
    assert bucket_keys(s3) == before
    wait_for_alert(receiver, "is older than the PostgreSQL")
    assert_no_secrets(stack, [refused], receiver)
