"""Restore-verified retention against the devstack: drill.json, the kept set, the report.

One short story: a drill writes its verdict beside the set; a backup with
``keep_last=1`` and ``require_verified`` then keeps that verified set (which keep_last
alone would prune) and reports every set's verdict; a backup that quick-drills its own
set records that verdict too.
"""

from __future__ import annotations

from typing import Any

import pytest
from minio import Minio

from blocks.stack import Stack
from devstack.core import Devstack
from flows.restore_drill import RestoreDrillConfig, restore_drill
from tasks.decisions.drill_record import DrillRecord, drill_record_key
from tasks.decisions.retention import RetentionPolicy
from tests.flows.backup_helpers import BUCKET, STACK, run, run_id, summary_of, texts_of_runs

pytestmark = pytest.mark.usefixtures("traffic")

ONLY_THE_NEWEST = {"keep_last": 1, "keep_within_days": 0, "keep_daily": 0, "keep_weekly": 0,
                   "keep_monthly": 0, "min_keep": 1}  # fmt: skip


def drill_record(s3: Minio, backup_id: str) -> DrillRecord:
    response = s3.get_object(BUCKET, drill_record_key(STACK, backup_id))
    try:
        return DrillRecord.model_validate_json(response.read())
    finally:
        response.close()
        response.release_conn()


def test_the_newest_verified_set_survives_keep_last_one_and_the_report_shows_verdicts(
    devstack: Devstack, stack: Stack
) -> None:
    s3: Minio = devstack.minio_client()
    first = summary_of(run(dry_run=True)).backup_id

    report = restore_drill(stack=STACK, config=RestoreDrillConfig(backup_id=first))
    assert report.passed, report.failure_message()
    record = drill_record(s3, first)
    assert record.latest.verdict == "passed" and record.latest.source == "primary"
    assert record.latest.flow_run_id and record.latest.failed_checks == []

    # keep_last=1 alone would prune `first`; require_verified keeps it.
    verified = RetentionPolicy(**ONLY_THE_NEWEST, require_verified=True)
    state = run(retention=verified)
    second = summary_of(state)
    assert first not in second.deleted_sets and second.newest_verified_set == first
    keys = {o.object_name for o in s3.list_objects(BUCKET, prefix=f"{STACK}/{first}/",
                                                   recursive=True)}  # fmt: skip
    assert drill_record_key(STACK, first) in keys and f"{STACK}/{first}/manifest.json" in keys
    texts = texts_of_runs([run_id(state)])
    backup_report = next(t for t in texts if t.startswith(f"backup-report-{STACK} "))
    assert "## Drill verdicts" in backup_report and "counts only sets that passed" in backup_report
    assert f"`{first}` | passed " in backup_report
    assert f"`{second.backup_id}` | not drilled | keep" in backup_report

    # A backup that quick-drills its set: verified at once, so `first` may go now.
    quick = summary_of(run(retention=verified, drill_after_backup=True))
    assert drill_record(s3, quick.backup_id).latest.verdict == "passed"
    assert quick.newest_verified_set == quick.backup_id
    assert first in quick.deleted_sets
    assert not list(s3.list_objects(BUCKET, prefix=f"{STACK}/{first}/", recursive=True))


def test_a_drill_of_a_missing_set_writes_no_record(devstack: Devstack, receiver: Any) -> None:
    s3: Minio = devstack.minio_client()
    missing = "20200101T000000Z-abcdef"
    with pytest.raises(Exception, match="manifest missing"):
        restore_drill(stack=STACK, config=RestoreDrillConfig(backup_id=missing))
    assert not list(s3.list_objects(BUCKET, prefix=f"{STACK}/{missing}/", recursive=True))
