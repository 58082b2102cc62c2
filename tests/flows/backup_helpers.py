"""What the backup tests share: one flow run, the bucket read back, the secret scan.

A run is read back the way an operator would check it: the manifest and the objects in
the bucket, the dump streamed into ``pg_restore``, each ClickHouse backup restored into
a scratch database and counted, and every log line, artifact and alert scanned for
secrets.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from typing import Any

import psycopg
from minio import Minio
from psycopg import sql

from blocks.stack import Stack
from devstack.core import Devstack
from devstack.seed import clickhouse_client
from flows.backup import BackupConfig, BackupSummary, backup
from tasks.decisions.manifest import BackupManifest, manifest_key, set_id_of_key
from tests.prefect_api import run_logs

__all__ = [
    "BUCKET",
    "MIB",
    "STACK",
    "assert_failed_cleanly",
    "assert_no_secrets",
    "bucket_keys",
    "fingerprint",
    "manifest_of",
    "new_set_ids",
    "pg_restore_stream",
    "restore_clickhouse_counts",
    "run",
    "run_id",
    "summary_of",
    "texts_of_runs",
    "wait_for_alert",
]

STACK = "devstack"
BUCKET = "backups"
MIB = 1024 * 1024


def run(stack: str = STACK, **config: Any) -> Any:
    """One backup flow run; its final state (never raises)."""
    return backup(stack=stack, config=BackupConfig(**config), return_state=True)


def summary_of(state: Any) -> BackupSummary:
    assert state.is_completed(), state.message
    result: BackupSummary = state.result()
    return result


def manifest_of(s3: Minio, backup_id: str) -> BackupManifest:
    response = s3.get_object(BUCKET, manifest_key(STACK, backup_id))
    try:
        return BackupManifest.from_json(response.read())
    finally:
        response.close()
        response.release_conn()


def bucket_keys(s3: Minio) -> set[str]:
    return {o.object_name for o in s3.list_objects(BUCKET, recursive=True) if o.object_name}


def new_set_ids(before: set[str], after: set[str]) -> set[str]:
    return {i for key in after - before if (i := set_id_of_key(STACK, key)) is not None}


def assert_failed_cleanly(state: Any, s3: Minio, before: set[str], cause: str) -> None:
    """Failed, naming the cause; no manifest for the run's set; nothing deleted."""
    assert state.is_failed()
    assert cause in (state.message or "")
    after = bucket_keys(s3)
    assert before <= after, f"objects were deleted: {sorted(before - after)[:5]}"
    for backup_id in new_set_ids(before, after):
        assert manifest_key(STACK, backup_id) not in after


def wait_for_alert(receiver: Any, needle: str) -> dict[str, Any]:
    """The alert about the failure (the on_failure hook posts before the run returns)."""
    alerts = [a for a in receiver.received("/custom") if needle in str(a["json"])]
    assert alerts, f"no alert naming {needle!r}: {receiver.received('/custom')}"
    return alerts[0]


def run_id(state: Any) -> uuid.UUID:
    return state.state_details.flow_run_id  # type: ignore[no-any-return]


def texts_of_runs(flow_run_ids: list[uuid.UUID]) -> list[str]:
    """Every log line and artifact of the runs, read back from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    texts = run_logs(flow_run_ids)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids))
        )
        texts += [f"{a.key} {a.description} {a.data}" for a in artifacts]
    return texts


def assert_no_secrets(stack: Stack, states: list[Any], receiver: Any) -> None:
    """Neither the S3 secret nor the Postgres password (nor any other secret) leaked."""
    texts = texts_of_runs([run_id(s) for s in states])
    texts += [f"{a['body']} {a['json']}" for a in receiver.received("")]
    texts += [str(s.message) for s in states]
    assert len(texts) > 10  # the scan read something
    secrets = stack.secret_values()
    password = psycopg.conninfo.conninfo_to_dict(stack.postgres_dsn.get_secret_value())["password"]
    assert stack.s3_secret_key.get_secret_value() in secrets and password
    for text in texts:
        for secret in [*secrets, str(password)]:
            assert secret not in text


def fingerprint(dsn: str, table: str) -> tuple[int, str]:
    """(rows, digest of every row's text) of a schema-qualified table."""
    schema, _, name = table.partition(".")
    query = sql.SQL(
        "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '') "
        "FROM {} t"
    ).format(sql.Identifier(schema, name))
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def pg_restore_stream(devstack: Devstack, s3: Minio, key: str, database: str) -> str:
    """Stream the dump from S3 into pg_restore (archive order, one process); its sha256."""
    env = {**os.environ, "PGPASSWORD": devstack.creds.postgres_password}
    argv = ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "-h", "127.0.0.1",
            "-p", str(devstack.ports["postgres"]), "-U", "postgres", "-d", database]  # fmt: skip
    digest = hashlib.sha256()
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    response = s3.get_object(BUCKET, key)
    try:
        assert process.stdin is not None
        for chunk in response.stream(1 * MIB):
            digest.update(chunk)
            process.stdin.write(chunk)
    finally:
        response.close()
        response.release_conn()
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr.decode()[-2000:]
    return digest.hexdigest()


def restore_clickhouse_counts(
    devstack: Devstack, stack: Stack, manifest: BackupManifest
) -> dict[str, dict[str, int]]:
    """RESTORE ... AS a scratch database from each backup; row counts per table."""
    client = clickhouse_client(devstack)
    counts: dict[str, dict[str, int]] = {}
    try:
        for ch in manifest.clickhouse:
            scratch = f"backup_rt_{uuid.uuid4().hex[:8]}"
            url = f"{stack.clickhouse_s3}/{BUCKET}/{ch.s3_prefix}"
            secret = stack.s3_secret_key.get_secret_value()
            source = f"FROM S3('{url}', '{stack.s3_access_key}', '{secret}')"
            restore = f"RESTORE DATABASE {ch.database} AS {scratch} {source}"
            try:
                # Tables first, merges stopped on them, then the data: the parts are
                # counted as restored, before a merge folds duplicate versions away.
                client.command(f"{restore} SETTINGS structure_only = 1")
                for table in ch.table_rows:
                    client.command(f"SYSTEM STOP MERGES {scratch}.`{table}`")
                client.command(restore)
                parts = client.query(
                    "SELECT table, sum(rows) FROM system.parts "
                    "WHERE database = {db:String} AND active GROUP BY table",
                    parameters={"db": scratch},
                ).result_rows
                in_parts = {str(table): int(rows) for table, rows in parts}
                counts[ch.database] = {table: in_parts.get(table, 0) for table in ch.table_rows}
            finally:
                client.command(f"DROP DATABASE IF EXISTS {scratch} SYNC")
    finally:
        client.close()
    return counts
