"""Retention plan invariants over random histories of complete, failed and in-flight sets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.decisions.manifest import backup_id_time, manifest_key, new_backup_id, set_id_of_key
from tasks.decisions.retention import (
    ObjectRecord,
    RetentionPlan,
    RetentionPolicy,
    UploadRecord,
    check_plan,
    plan_retention,
)
from tasks.errors import RetentionError

STACK = "prod"
NOW = datetime(2026, 11, 22, 3, 30, tzinfo=UTC)

# Keys someone else put in the bucket: other stacks (one sharing our name as a
# prefix), loose files under our prefix, folders that only look like sets.
FOREIGN_KEYS = [
    "other/20261120T030000Z-aaaaaa/manifest.json",
    "other/20261120T030000Z-aaaaaa/postgres/railway.dump",
    "prod-old/20261001T030000Z-bbbbbb/manifest.json",
    "prod-old/20261001T030000Z-bbbbbb/postgres/railway.dump",
    "prod/README.txt",
    "prod/20261001T030000Z-bbbbbb",
    "prod/2026-10-01/dump.sql.gz",
    "prod/20261001T030000Z-BBBBBB/manifest.json",
    "prod/20261001T030000Z-bbbbb/manifest.json",
    "backup-2026-10-01.sql.gz",
    "prod/manual/20261001T030000Z-cccccc/manifest.json",
]


def set_objects(backup_id: str, complete: bool, activity: datetime) -> list[ObjectRecord]:
    prefix = f"{STACK}/{backup_id}/"
    objects = [
        ObjectRecord(key=f"{prefix}postgres/railway.dump", size=1000, last_modified=activity),
        ObjectRecord(key=f"{prefix}clickhouse/default/.backup", size=10, last_modified=activity),
        ObjectRecord(
            key=f"{prefix}clickhouse/default/data/t/1.bin", size=5, last_modified=activity
        ),
    ]
    if complete:
        objects.append(
            ObjectRecord(key=manifest_key(STACK, backup_id), size=2, last_modified=activity)
        )
    return objects


def _backup_id(draw: st.DrawFn, started: datetime) -> str:
    """A real backup id whose random suffix comes from Hypothesis, so examples replay."""
    suffix = draw(st.text("0123456789abcdef", min_size=6, max_size=6))
    return new_backup_id(started).rsplit("-", 1)[0] + "-" + suffix


@st.composite
def histories(draw: st.DrawFn) -> dict[str, object]:
    """Sets over ~18 months (some days several, some none), some failed, plus this run."""
    offsets = draw(
        st.lists(st.integers(min_value=1, max_value=550 * 24 * 60), max_size=40, unique=True)
    )
    objects: list[ObjectRecord] = []
    complete: set[str] = set()
    ids: list[str] = []
    for minutes in offsets:
        started = NOW - timedelta(minutes=minutes)
        backup_id = _backup_id(draw, started)
        is_complete = draw(st.booleans())
        # A failed run's objects stop at some point after its start (never after now).
        lag = draw(st.integers(min_value=0, max_value=min(minutes, 6 * 60)))
        activity = started + timedelta(minutes=lag)
        objects += set_objects(backup_id, is_complete, activity)
        if is_complete:
            complete.add(backup_id)
        ids.append(backup_id)
    # This run: the newest set, complete (success) or not (it failed, or is in flight).
    current = _backup_id(draw, NOW - timedelta(seconds=30))
    current_ok = draw(st.booleans())
    objects += set_objects(current, current_ok, NOW)
    if current_ok:
        complete.add(current)
    objects += [
        ObjectRecord(key=key, size=1, last_modified=NOW - timedelta(days=900))
        for key in draw(st.lists(st.sampled_from(FOREIGN_KEYS), unique=True))
    ]
    uploads = [
        UploadRecord(
            key=f"{STACK}/{backup_id}/postgres/railway.dump",
            upload_id=f"u-{backup_id}",
            initiated=backup_id_time(backup_id) + timedelta(minutes=1),
        )
        for backup_id in draw(st.lists(st.sampled_from([*ids, current]), unique=True))
        if backup_id_time(backup_id) + timedelta(minutes=1) <= NOW
    ] + [
        UploadRecord(key=key, upload_id=f"f-{key}", initiated=NOW - timedelta(days=400))
        for key in draw(st.lists(st.sampled_from(FOREIGN_KEYS), unique=True, max_size=3))
    ]
    policy = RetentionPolicy(
        keep_last=draw(st.integers(1, 10)),
        keep_within_days=draw(st.integers(0, 14)),
        keep_daily=draw(st.integers(0, 10)),
        keep_weekly=draw(st.integers(0, 6)),
        keep_monthly=draw(st.integers(0, 8)),
        min_keep=draw(st.integers(1, 12)),
        incomplete_grace_hours=draw(st.sampled_from([1.0, 6.0, 24.0, 72.0])),
        multipart_grace_hours=draw(st.sampled_from([1.0, 24.0])),
    )
    return {
        "objects": objects,
        "complete": complete,
        "uploads": uploads,
        "policy": policy,
        "current": current,
        "current_ok": current_ok,
    }


def plan_for(history: dict[str, object]) -> RetentionPlan:
    return plan_retention(
        STACK,
        history["objects"],  # type: ignore[arg-type]
        complete_ids=history["complete"],  # type: ignore[arg-type]
        uploads=history["uploads"],  # type: ignore[arg-type]
        policy=history["policy"],  # type: ignore[arg-type]
        now=NOW,
        current_backup_id=history["current"],  # type: ignore[arg-type]
    )


@settings(max_examples=400, deadline=None)
@given(histories())
def test_every_invariant_holds_over_random_histories(history: dict[str, object]) -> None:
    assert_invariants(history, plan_for(history))


def assert_invariants(history: dict[str, object], plan: RetentionPlan) -> None:
    """Every invariant of the plain rules (verified retention adds its own on top)."""
    objects: list[ObjectRecord] = history["objects"]  # type: ignore[assignment]
    complete: set[str] = history["complete"]  # type: ignore[assignment]
    policy: RetentionPolicy = history["policy"]  # type: ignore[assignment]
    current: str = history["current"]  # type: ignore[assignment]
    deleted = set(plan.deleted_sets)
    deleted_keys = set(plan.delete_keys)

    # A failed run prunes nothing and aborts nothing.
    if not history["current_ok"]:
        assert not deleted and not deleted_keys and not plan.aborts
    # The newest complete set survives; this run's set survives.
    if complete:
        assert max(complete) not in deleted
    assert current not in deleted
    # At least min_keep complete sets remain (or all there are).
    remaining = complete - deleted
    assert len(remaining) >= min(policy.min_keep, len(complete))
    # Only objects of deleted sets, inside <stack>/<id>/, are ever deleted.
    for key in deleted_keys:
        backup_id = set_id_of_key(STACK, key)
        assert backup_id in deleted
        assert key.startswith(f"{STACK}/{backup_id}/")
    assert not deleted_keys & set(FOREIGN_KEYS)
    # A deleted set goes whole, its manifest first.
    for decision in plan.sets:
        if decision.action == "delete":
            members = [o.key for o in objects if set_id_of_key(STACK, o.key) == decision.backup_id]
            assert sorted(decision.delete_keys) == sorted(members)
            if decision.complete:
                assert decision.delete_keys[0] == manifest_key(STACK, decision.backup_id)
    # Incomplete sets go only after the grace period without activity.
    grace = timedelta(hours=policy.incomplete_grace_hours)
    for decision in plan.sets:
        if decision.action == "delete" and not decision.complete:
            activity = max(
                o.last_modified
                for o in objects
                if set_id_of_key(STACK, o.key) == decision.backup_id and o.last_modified
            )
            assert NOW - activity >= grace
    # Complete sets inside the keep-last and keep-within windows stay.
    newest_first = sorted(complete, reverse=True)
    assert not set(newest_first[: policy.keep_last]) & deleted
    if policy.keep_within_days:
        young = {
            i
            for i in complete
            if backup_id_time(i) >= NOW - timedelta(days=policy.keep_within_days)
        }
        assert not young & deleted
    # Multipart uploads: aborted only inside our sets, never this run's, after the grace.
    for upload in plan.aborts:
        backup_id = set_id_of_key(STACK, upload.key)
        assert backup_id is not None and backup_id != current
        assert upload.initiated is not None
        assert NOW - upload.initiated >= timedelta(hours=policy.multipart_grace_hours)
    assert not {u.key for u in plan.uploads} & set(FOREIGN_KEYS)


def daily_history(days: int, failed_days: set[int] = frozenset()) -> dict[str, object]:  # type: ignore[assignment]
    objects: list[ObjectRecord] = []
    complete: set[str] = set()
    for day in range(days, 0, -1):
        started = NOW.replace(hour=3, minute=0) - timedelta(days=day)
        backup_id = new_backup_id(started)
        ok = day not in failed_days
        objects += set_objects(backup_id, ok, started + timedelta(minutes=5))
        if ok:
            complete.add(backup_id)
    current = new_backup_id(NOW.replace(hour=3, minute=0))
    objects += set_objects(current, True, NOW)
    complete.add(current)
    return {
        "objects": objects,
        "complete": complete,
        "uploads": [],
        "policy": RetentionPolicy(),
        "current": current,
    }


def test_defaults_keep_at_least_the_last_seven_days_and_gfs_beyond() -> None:
    plan = plan_for(daily_history(120))
    kept = {backup_id_time(i).date() for i in plan.kept_complete}
    for day in range(0, 8):
        assert (NOW - timedelta(days=day)).date() in kept
    # Weekly and monthly ones reach further back than the daily window.
    assert min(kept) < (NOW - timedelta(days=60)).date()
    assert len(plan.kept_complete) < 25
    reasons = {d.backup_id: d.reasons for d in plan.sets}
    newest = max(plan.kept_complete)
    assert "newest complete set" in reasons[newest]


def test_after_weeks_of_failures_the_last_good_sets_survive() -> None:
    # The original daemon deleted everything older than N days: after N days of
    # failing backups nothing was left. Here failed sets never count as kept ones:
    # the two newest good sets from before the failures stay next to this run's.
    history = daily_history(60, failed_days=set(range(1, 45)))
    history["policy"] = RetentionPolicy(keep_last=1, keep_within_days=0, keep_daily=1,
                                        keep_weekly=0, keep_monthly=0, min_keep=3)  # fmt: skip
    plan = plan_for(history)
    older_good = sorted(history["complete"] - {history["current"]}, reverse=True)  # type: ignore[operator]
    assert sorted(plan.kept_complete, reverse=True) == [history["current"], *older_good[:2]]
    assert any(d.complete and d.action == "delete" for d in plan.sets)
    failed = [d for d in plan.sets if not d.complete]
    assert failed and all(d.action == "delete" for d in failed)  # all idle > 24 h


def test_failed_run_prunes_nothing_even_when_everything_is_old() -> None:
    history = daily_history(100)
    current = history["current"]
    history["objects"] = [
        o
        for o in history["objects"]  # type: ignore[attr-defined]
        if o.key != manifest_key(STACK, current)  # type: ignore[arg-type]
    ]
    history["complete"] = history["complete"] - {current}  # type: ignore[operator]
    plan = plan_for(history)
    assert not plan.pruning
    assert plan.deleted_sets == []
    assert all("not complete" in " ".join(d.reasons) for d in plan.sets)


def test_a_tampered_plan_is_refused() -> None:
    history = daily_history(30)
    plan = plan_for(history)
    newest = max(plan.kept_complete)
    tampered = plan.model_copy(deep=True)
    for decision in tampered.sets:
        if decision.backup_id == newest:
            decision.action = "delete"
            decision.delete_keys = [manifest_key(STACK, newest)]
    with pytest.raises(RetentionError, match="newest complete set"):
        check_plan(tampered, history["objects"], history["complete"])  # type: ignore[arg-type]
    foreign = plan.model_copy(deep=True)
    victim = next(d for d in foreign.sets if d.action == "delete")
    victim.delete_keys = [*victim.delete_keys, "prod/README.txt"]
    with pytest.raises(RetentionError, match="not an object of a backup set"):
        check_plan(foreign, history["objects"], history["complete"])  # type: ignore[arg-type]


def test_plan_rows_say_why() -> None:
    plan = plan_for(daily_history(40))
    rows = plan.rows()
    assert rows[0]["backup_id"] == plan.current_backup_id
    assert {row["action"] for row in rows} == {"keep", "DELETE"}
    assert all(row["why"] for row in rows)


def test_loose_objects_are_listed_as_left_alone() -> None:
    history = daily_history(3)
    loose = [ObjectRecord(key=f"{STACK}/notes-{i:02d}.txt", size=1) for i in range(25)]
    history["objects"] = [*history["objects"], *loose]  # type: ignore[misc]
    plan = plan_for(history)
    assert plan.ignored_objects == 25 and plan.ignored_keys[0] == f"{STACK}/notes-00.txt"
    rows = [row for row in plan.rows() if row["state"] == "not in a set"]
    assert [row["backup_id"] for row in rows[:2]] == [
        f"object {STACK}/notes-00.txt",
        f"object {STACK}/notes-01.txt",
    ]
    assert len(rows) == 21 and rows[-1]["backup_id"] == "... and 5 more objects"
    assert {row["action"] for row in rows} == {"left alone"}


def test_a_set_whose_run_ended_is_not_called_in_flight() -> None:
    history = daily_history(3)
    started = NOW - timedelta(hours=2)
    failed_id, live_id = new_backup_id(started), new_backup_id(started)
    history["objects"] = [
        *history["objects"],  # type: ignore[misc]
        *set_objects(failed_id, False, NOW - timedelta(hours=1)),
        *set_objects(live_id, False, NOW - timedelta(hours=1)),
    ]
    plan = plan_retention(
        STACK,
        history["objects"],  # type: ignore[arg-type]
        complete_ids=history["complete"],  # type: ignore[arg-type]
        uploads=[],
        policy=RetentionPolicy(),
        now=NOW,
        current_backup_id=history["current"],  # type: ignore[arg-type]
        failed_runs={failed_id: "Failed"},
    )
    reasons = {d.backup_id: " ".join(d.reasons) for d in plan.sets}
    assert "its run ended Failed" in reasons[failed_id]
    assert "in flight" not in reasons[failed_id]
    assert "may be in flight" in reasons[live_id]
    assert {d.backup_id: d.action for d in plan.sets}[failed_id] == "keep"  # within grace
