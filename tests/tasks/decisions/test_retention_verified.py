"""Restore-verified retention: the newest set a drill proved is never pruned.

Random histories as in ``test_retention.py``, each set drilled or not, its newest
verdict passed or failed, its ``drill.json`` in the listing like any object of a set.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.decisions.drill_record import DrillVerdict, drill_record_key
from tasks.decisions.manifest import backup_id_time, manifest_key, new_backup_id, set_id_of_key
from tasks.decisions.retention import (
    ObjectRecord,
    RetentionPlan,
    RetentionPolicy,
    check_plan,
    plan_retention,
)
from tasks.errors import RetentionError
from tests.tasks.decisions.test_retention import (
    NOW,
    STACK,
    assert_invariants,
    histories,
    set_objects,
)


def verdict(passed: bool, backup_id: str) -> DrillVerdict:
    return DrillVerdict(
        verdict="passed" if passed else "failed",
        at=backup_id_time(backup_id) + timedelta(hours=1),
        failed_checks=[] if passed else ["postgres-rows"],
    )


@st.composite
def verified_histories(draw: st.DrawFn) -> dict[str, object]:
    """A random history whose sets (complete or not) were drilled or not, with verdicts."""
    history = draw(histories())
    objects: list[ObjectRecord] = list(history["objects"])  # type: ignore[call-overload]
    ids = sorted({i for o in objects if (i := set_id_of_key(STACK, o.key)) is not None})
    verdicts: dict[str, DrillVerdict] = {}
    for backup_id in ids:
        outcome = draw(st.sampled_from(["not drilled", "passed", "failed"]))
        if outcome == "not drilled":
            continue
        verdicts[backup_id] = verdict(outcome == "passed", backup_id)
        activity = min(backup_id_time(backup_id) + timedelta(hours=1), NOW)
        objects.append(
            ObjectRecord(key=drill_record_key(STACK, backup_id), size=300, last_modified=activity)
        )
    history["objects"] = objects
    history["verdicts"] = verdicts
    history["policy"] = history["policy"].model_copy(update={"require_verified": True})  # type: ignore[attr-defined]
    return history


def plan_for(history: dict[str, object], **policy: object) -> RetentionPlan:
    return plan_retention(
        STACK,
        history["objects"],  # type: ignore[arg-type]
        complete_ids=history["complete"],  # type: ignore[arg-type]
        uploads=history["uploads"],  # type: ignore[arg-type]
        policy=history["policy"].model_copy(update=policy),  # type: ignore[attr-defined]
        now=NOW,
        current_backup_id=history["current"],  # type: ignore[arg-type]
        verdicts=history["verdicts"],  # type: ignore[arg-type]
    )


@settings(max_examples=400, deadline=None)
@given(verified_histories())
def test_verified_retention_never_prunes_the_newest_verified_set(
    history: dict[str, object],
) -> None:
    plan = plan_for(history)
    assert_invariants(history, plan)  # every plain invariant still holds
    complete: set[str] = history["complete"]  # type: ignore[assignment]
    verdicts: dict[str, DrillVerdict] = history["verdicts"]  # type: ignore[assignment]
    policy: RetentionPolicy = history["policy"]  # type: ignore[assignment]
    deleted = set(plan.deleted_sets)
    passed = {i for i, v in verdicts.items() if v.verdict == "passed"}
    verified = sorted(complete & passed, reverse=True)
    assert plan.newest_verified == (verified[0] if verified else None)
    if verified:
        # The newest verified set survives, and nothing newer that no drill judged yet.
        assert verified[0] not in deleted
        assert not {i for i in complete if i > verified[0] and i not in verdicts} & deleted
        # At least min_keep verified sets remain (or all there are).
        assert len(set(verified) - deleted) >= min(policy.min_keep, len(verified))
    # A set whose drill failed, or an incomplete one with a verdict, is never "verified".
    for decision in plan.sets:
        assert decision.verified == (decision.backup_id in verified)
        assert decision.drill == verdicts.get(decision.backup_id)


@settings(max_examples=200, deadline=None)
@given(verified_histories())
def test_require_verified_only_ever_keeps_more(history: dict[str, object]) -> None:
    plain = plan_for(history, require_verified=False)
    verified = plan_for(history)
    assert set(verified.deleted_sets) <= set(plain.deleted_sets)
    assert {u.key for u in verified.aborts} == {u.key for u in plain.aborts}


def weekly_drilled_history(days: int) -> dict[str, object]:
    """Daily sets; the Sunday ones drilled (the newest passed, the one before failed)."""
    objects: list[ObjectRecord] = []
    complete: set[str] = set()
    for day in range(days, -1, -1):
        backup_id = new_backup_id(NOW.replace(hour=3, minute=0) - timedelta(days=day))
        objects += set_objects(backup_id, True, backup_id_time(backup_id))
        complete.add(backup_id)
    return {
        "objects": objects,
        "complete": complete,
        "uploads": [],
        "current": max(complete),
        "verdicts": {},
        "policy": RetentionPolicy(
            keep_last=1, keep_within_days=0, keep_daily=0, keep_weekly=0, keep_monthly=0, min_keep=1
        ),
    }


def test_keep_last_one_still_keeps_the_newest_verified_set_and_what_is_newer() -> None:
    history = weekly_drilled_history(20)
    ids = sorted(history["complete"])  # type: ignore[call-overload]
    passed, failed_later, undrilled = ids[5], ids[9], ids[10:]
    history["verdicts"] = {
        ids[2]: verdict(True, ids[2]),
        passed: verdict(True, passed),
        failed_later: verdict(False, failed_later),
    }
    plain = plan_for(history, require_verified=False)
    assert plain.deleted_sets == ids[:-1]  # keep_last=1: only the newest

    plan = plan_for(history, require_verified=True)
    kept = set(plan.kept_complete)
    assert passed in kept and set(undrilled) <= kept
    assert failed_later not in kept  # its drill failed: no grace for it
    assert ids[2] not in kept  # min_keep 1 verified: the newest one is enough
    reasons = {d.backup_id: " ".join(d.reasons) for d in plan.sets}
    assert "newest verified set (drill passed" in reasons[passed]
    assert "not drilled yet" in reasons[undrilled[0]]
    rows = {row["backup_id"]: row for row in plan.rows()}
    assert rows[passed]["drill"].startswith("passed ")
    assert rows[failed_later]["drill"].startswith("FAILED ")
    assert "postgres-rows" in rows[failed_later]["drill"]
    assert rows[undrilled[0]]["drill"] == "not drilled"

    # min_keep counts verified sets too: two verified sets stay.
    two = plan_for(history, require_verified=True, min_keep=2)
    assert ids[2] in two.kept_complete and "min_keep 2 verified" in " ".join(
        next(d for d in two.sets if d.backup_id == ids[2]).reasons
    )


def test_without_any_verified_set_the_plain_rules_decide() -> None:
    history = weekly_drilled_history(10)
    ids = sorted(history["complete"])  # type: ignore[call-overload]
    history["verdicts"] = {ids[3]: verdict(False, ids[3])}
    assert plan_for(history, require_verified=True).deleted_sets == ids[:-1]


def test_undecided_policy_keeps_the_plain_rules() -> None:
    history = weekly_drilled_history(10)
    ids = sorted(history["complete"])  # type: ignore[call-overload]
    history["verdicts"] = {ids[3]: verdict(True, ids[3])}
    assert plan_for(history, require_verified=None).deleted_sets == ids[:-1]


def test_a_plan_deleting_the_newest_verified_set_is_refused() -> None:
    history = weekly_drilled_history(10)
    ids = sorted(history["complete"])  # type: ignore[call-overload]
    history["verdicts"] = {ids[3]: verdict(True, ids[3])}
    plan = plan_for(history, require_verified=True)
    tampered = plan.model_copy(deep=True)
    for decision in tampered.sets:
        if decision.backup_id in (ids[3], ids[4]):
            decision.action = "delete"
            decision.delete_keys = [manifest_key(STACK, decision.backup_id)]
    with pytest.raises(RetentionError, match="newest verified set") as refused:
        check_plan(
            tampered,
            history["objects"],  # type: ignore[arg-type]
            history["complete"],  # type: ignore[arg-type]
            verdicts=history["verdicts"],  # type: ignore[arg-type]
        )
    assert "not drilled yet" in str(refused.value)
