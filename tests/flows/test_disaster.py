"""The disaster drill: the project's backups and Langfuse's bucket are gone; the off-site
target, its keys and the age identity bring Postgres, ClickHouse and the Langfuse objects
back.

With traffic flowing, the stack ``devstack-dr`` (the devstack's servers, its own sets and
its own Langfuse bucket, an off-site target) takes two sets, which are copied and
mirrored off-site. Then its primary side is destroyed: every object of its sets in the
backup bucket, and the Langfuse bucket with everything in it. ``restore`` with
``source='offsite'`` reads nothing from the primary: it opens the newest set from the
off-site target, restores it into new databases (the devstack's live ones stay: the rest
of the suite runs on them), checks every count against the manifest, puts the Langfuse
objects back byte for byte, and reports the time it took (RTO) and the set's age (RPO).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator

import pytest
from minio.deleteobjects import DeleteObject

from blocks.stack import Stack
from devstack.core import Devstack
from flows.backup import backup
from flows.restore import RestoreConfig, restore
from tasks.decisions.manifest import BackupManifest
from tasks.storage import read_object
from tests.flows.test_restore import pg_counts
from tests.flows.test_restore import targets as targets

STACK = "devstack-dr"
BUCKET = "langfuse-dr"
pytestmark = pytest.mark.usefixtures("traffic")


@pytest.fixture(scope="module")
def dr_stack(devstack: Devstack) -> Iterator[Stack]:
    env = {**devstack.env(), **devstack.offsite_env(), "LANGFUSE_S3_BUCKET": BUCKET}
    stack = Stack.from_env(env, stack_name=STACK)
    stack.notifications = Stack.load_stack("devstack").notifications
    stack.save(STACK, overwrite=True)
    yield stack


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_off_site_side_alone_brings_the_stack_back(
    devstack: Devstack, dr_stack: Stack, targets: tuple[str, str]
) -> None:
    s3 = devstack.minio_client()
    if not s3.bucket_exists(BUCKET):
        s3.make_bucket(BUCKET)
    uploads = {f"events/project-1/{i:04d}.json": f'{{"event": {i}}}'.encode() for i in range(40)}
    # A media attachment larger than what is sealed or opened in memory: it streams
    # through a multipart upload both ways.
    uploads["media/project-1/attachment.bin"] = os.urandom(12 * 1024 * 1024)
    for key, body in uploads.items():
        s3.put_object(BUCKET, key, io.BytesIO(body), len(body))
    backup(stack=STACK)
    last = backup(stack=STACK)
    assert last.offsite_copied_sets == [last.backup_id]
    assert last.offsite_mirrored_objects == 0  # the first run mirrored them; nothing new
    manifest = BackupManifest.from_json(read_object(dr_stack, last.manifest_key))

    # The disaster: the project's backups of this stack and Langfuse's bucket are gone.
    for bucket, prefix in (("backups", f"{STACK}/"), (BUCKET, "")):
        doomed = [
            DeleteObject(o.object_name)
            for o in s3.list_objects(bucket, prefix=prefix, recursive=True)
            if o.object_name
        ]
        assert not list(s3.remove_objects(bucket, doomed))
    s3.remove_bucket(BUCKET)
    assert not list(s3.list_objects("backups", prefix=f"{STACK}/", recursive=True))

    pg, ch = targets
    summary = restore(
        stack=STACK,
        config=RestoreConfig(
            source="offsite",
            postgres_target=pg,
            clickhouse_target=ch,
            langfuse_buckets=True,
            dry_run=False,
        ),
    )
    assert summary.backup_id == last.backup_id and summary.source == "offsite"
    assert [r.passed for r in summary.restored] == [True, True]
    # Postgres: every table's rows as the manifest recorded them in the set's snapshot.
    assert pg_counts(devstack, pg) == manifest.postgres.table_rows
    # ClickHouse: the restore compared every table with the manifest before it passed.
    ch_checks = next(r for r in summary.restored if r.engine == "clickhouse").checks
    assert any(c.name.startswith("clickhouse-row-counts") and c.passed for c in ch_checks)
    # Langfuse's objects, byte for byte.
    assert summary.bucket_objects_restored == len(uploads)
    for key, body in uploads.items():
        response = s3.get_object(BUCKET, key)
        try:
            assert sha(response.read()) == sha(body), key
        finally:
            response.close()
            response.release_conn()
    assert summary.seconds is not None and summary.seconds > 0
    assert summary.set_age_s is not None and summary.set_age_s >= 0
    # The scratch bucket the set was opened into holds nothing afterwards.
    assert not list(s3.list_objects("backups-from-offsite", prefix=f"{STACK}/", recursive=True))
