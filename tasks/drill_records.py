"""Drill verdicts in the bucket: ``<stack>/<backup-id>/drill.json`` beside each drilled set.

Written by every drill at its end, passed or failed (:func:`record_drill_verdict`), read
by retention and the backup report (:func:`read_drill_verdicts`). The bucket, not the
Prefect database, is the record: flow runs and artifacts are vacuumed after a week,
and a control plane rebuilt from scratch must still know which sets are proven. The
model and the judge of a stored record are pure (:mod:`tasks.decisions.drill_record`).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from blocks.stack import Stack
from tasks.decisions.drill import DrillReport
from tasks.decisions.drill_record import (
    DrillRecord,
    DrillVerdict,
    drill_record_key,
    record_verdict,
    trust_drill_record,
)
from tasks.decisions.manifest import set_id_of_key
from tasks.retry import RETRY_TRANSIENT
from tasks.storage import StoredEntry, put_small_object, read_optional_object

__all__ = ["read_drill_verdicts", "record_drill_verdict", "verdict_of"]


def verdict_of(report: DrillReport, flow_run_id: str | None) -> DrillVerdict:
    """What a drill report says about its set, as drill.json keeps it."""
    return DrillVerdict(
        verdict="passed" if report.passed else "failed",
        at=report.finished_at,
        flow_run_id=flow_run_id,
        failed_checks=[check.name for check in report.problems],
        source="primary",
    )


@task(name="record-drill-verdict", cache_policy=NO_CACHE, **RETRY_TRANSIENT)
def record_drill_verdict(stack: Stack, report: DrillReport) -> DrillRecord:
    """Write the drill's verdict into ``drill.json`` beside its set, the newest first.

    Only a set whose manifest loaded is drilled far enough to be judged: a set that is
    missing or incomplete gets no record (one would make a missing set look present).
    """
    if report.backup_id is None:
        raise ValueError("a drill without a set has no verdict to record")
    key = drill_record_key(stack.stack_name, report.backup_id)
    raw = read_optional_object(stack, key)
    previous = trust_drill_record(raw, stack.stack_name, report.backup_id) if raw else None
    record = record_verdict(
        previous, stack.stack_name, report.backup_id, verdict_of(report, flow_run.get_id())
    )
    put_small_object(stack, key, record.to_json(), "application/json")
    get_run_logger().info("Drill verdict %s written: %s", record.latest.verdict, key)
    return record


def read_drill_verdicts(stack: Stack, entries: list[StoredEntry]) -> dict[str, DrillVerdict]:
    """Backup id -> newest verdict, for every set whose listing shows a ``drill.json``.

    One GET per drilled set (a few hundred bytes each); a record that does not parse
    counts as "not drilled".
    """
    client = stack.s3()
    verdicts: dict[str, DrillVerdict] = {}
    for entry in entries:
        backup_id = set_id_of_key(stack.stack_name, entry.key)
        if backup_id is None or entry.key != drill_record_key(stack.stack_name, backup_id):
            continue
        raw = read_optional_object(stack, entry.key, client)
        record = trust_drill_record(raw, stack.stack_name, backup_id) if raw else None
        if record is not None:
            verdicts[backup_id] = record.latest
    return verdicts
