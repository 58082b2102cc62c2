"""drill.json: the newest verdict first, a short history, and a judge of what is stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasks.decisions.drill_record import (
    DRILL_HISTORY_MAX,
    DrillVerdict,
    drill_record_key,
    record_verdict,
    trust_drill_record,
    verdict_text,
)

AT = datetime(2026, 11, 22, 4, 3, tzinfo=UTC)
SET = "20261122T030000Z-1a2b3c"


def test_the_newest_verdict_counts_and_the_history_stays_short() -> None:
    record = None
    for n in range(DRILL_HISTORY_MAX + 3):
        outcome = "failed" if n % 2 else "passed"
        record = record_verdict(
            record, "prod", SET, DrillVerdict(verdict=outcome, at=AT + timedelta(days=n))
        )
    assert record is not None
    assert len(record.verdicts) == DRILL_HISTORY_MAX
    assert record.latest.at == AT + timedelta(days=DRILL_HISTORY_MAX + 2)
    assert trust_drill_record(record.to_json(), "prod", SET) == record


def test_a_record_of_another_set_or_garbage_counts_as_not_drilled() -> None:
    record = record_verdict(None, "prod", SET, DrillVerdict(verdict="passed", at=AT))
    assert trust_drill_record(record.to_json(), "prod", "20261122T030000Z-ffffff") is None
    assert trust_drill_record(record.to_json(), "staging", SET) is None
    assert trust_drill_record(b"{not json", "prod", SET) is None
    assert (
        trust_drill_record(b'{"stack": "prod", "backup_id": "x", "verdicts": []}', "prod", SET)
        is None
    )
    assert drill_record_key("prod", SET) == f"prod/{SET}/drill.json"


def test_verdict_text() -> None:
    assert verdict_text(None) == "not drilled"
    assert verdict_text(DrillVerdict(verdict="passed", at=AT)) == "passed 2026-11-22 04:03 UTC"
    failed = DrillVerdict(verdict="failed", at=AT, failed_checks=["a", "b", "c", "d"])
    assert verdict_text(failed) == "FAILED 2026-11-22 04:03 UTC (a, b, c ... and 1 more)"
