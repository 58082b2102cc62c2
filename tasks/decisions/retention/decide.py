"""The decision: every set of the stack kept or deleted, with the rules that keep it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from tasks.decisions.drill_record import DrillVerdict
from tasks.decisions.manifest import MANIFEST_NAME, backup_id_time, set_id_of_key
from tasks.decisions.retention.check import check_plan
from tasks.decisions.retention.plan import (
    Action,
    RetentionPlan,
    SetDecision,
    UploadDecision,
    verified_ids,
)
from tasks.decisions.retention.policy import ObjectRecord, RetentionPolicy, UploadRecord

__all__ = ["plan_retention"]


def _bucketed(
    complete: list[str], count: int, bucket: Callable[[datetime], str], label: str
) -> dict[str, str]:
    """The newest set of each of the last ``count`` buckets (days, weeks, months)."""
    kept: dict[str, str] = {}
    seen: set[str] = set()
    for backup_id in complete:  # newest first
        if len(seen) >= count:
            break
        key = bucket(backup_id_time(backup_id))
        if key not in seen:
            seen.add(key)
            kept[backup_id] = f"{label} {key}"
    return kept


def _keep_verified(
    keep: dict[str, list[str]],
    complete: list[str],
    verdicts: dict[str, DrillVerdict],
    min_keep: int,
) -> None:
    """Add the verified rules to ``keep`` (complete ids newest first -> reasons).

    The newest verified set is the one a restore can count on; the sets after it that
    no drill has judged yet are probably good and kept until one is (a set whose drill
    failed gets no such grace). Without any verified set the plain rules decide.
    """
    verified = verified_ids(complete, verdicts)
    if not verified:
        return
    newest = verified[0]
    keep[newest].append(f"newest verified set (drill passed {verdicts[newest].at:%Y-%m-%d})")
    for backup_id in complete:
        if backup_id > newest and backup_id not in verdicts:
            keep[backup_id].append("newer than the newest verified set, not drilled yet")
    kept = [backup_id for backup_id in verified if keep[backup_id]]
    for backup_id in verified:
        if len(kept) >= min_keep:
            break
        if not keep[backup_id]:
            keep[backup_id].append(f"min_keep {min_keep} verified sets")
            kept.append(backup_id)


def _last_activity(started: datetime, objects: Iterable[ObjectRecord]) -> datetime:
    times = [o.last_modified for o in objects if o.last_modified is not None]
    return max([started, *times])


def plan_retention(
    stack: str,
    objects: list[ObjectRecord],
    *,
    complete_ids: set[str],
    uploads: list[UploadRecord],
    policy: RetentionPolicy,
    now: datetime,
    current_backup_id: str,
    failed_runs: dict[str, str] | None = None,
    verdicts: dict[str, DrillVerdict] | None = None,
) -> RetentionPlan:
    """Decide, for every backup set of ``stack``, keep or delete, with the reasons.

    ``objects`` is the listing (anything in it outside ``<stack>/<backup-id>/`` is
    ignored, and listed as left alone); ``complete_ids`` are the sets whose manifest
    parsed; ``current_backup_id`` is this run's set, which must be complete for
    anything to be pruned; ``failed_runs`` maps the backup id of a run known to have
    ended (Failed, Crashed, Cancelled) to that state's name: its incomplete set is not
    "in flight", though a retry of that run would continue it; ``verdicts`` maps a
    backup id to the newest verdict of a drill on it (its ``drill.json``), which
    ``policy.require_verified`` turns into rules and the plan shows for every set.
    """
    failed_runs = failed_runs or {}
    verdicts = verdicts or {}
    grouped: dict[str, list[ObjectRecord]] = {}
    ignored: list[str] = []
    for obj in objects:
        backup_id = set_id_of_key(stack, obj.key)
        if backup_id is None:
            ignored.append(obj.key)
        else:
            grouped.setdefault(backup_id, []).append(obj)
    complete_ids = {i for i in complete_ids if i in grouped}
    pruning = current_backup_id in complete_ids
    complete = sorted(complete_ids, reverse=True)  # newest first: ids sort by time

    keep: dict[str, list[str]] = {backup_id: [] for backup_id in complete}
    if complete:
        keep[complete[0]].append("newest complete set")
    for backup_id in complete[: policy.keep_last]:
        keep[backup_id].append(f"one of the last {policy.keep_last}")
    horizon = now - timedelta(days=policy.keep_within_days)
    for backup_id in complete:
        if backup_id_time(backup_id) >= horizon and policy.keep_within_days > 0:
            keep[backup_id].append(f"younger than {policy.keep_within_days} days")
    rules: list[tuple[int, Callable[[datetime], str], str]] = [
        (policy.keep_daily, lambda t: t.strftime("%Y-%m-%d"), "daily"),
        (policy.keep_weekly, lambda t: f"{t.isocalendar()[0]}-W{t.isocalendar()[1]:02d}", "weekly"),
        (policy.keep_monthly, lambda t: t.strftime("%Y-%m"), "monthly"),
    ]
    for count, bucket, label in rules:
        for backup_id, reason in _bucketed(complete, count, bucket, label).items():
            keep[backup_id].append(reason)
    kept = [backup_id for backup_id in complete if keep[backup_id]]
    for backup_id in complete:
        if len(kept) >= policy.min_keep:
            break
        if not keep[backup_id]:
            keep[backup_id].append(f"min_keep {policy.min_keep}")
            kept.append(backup_id)
    if policy.verified_only:  # after the plain rules: it only ever keeps more
        _keep_verified(keep, complete, verdicts, policy.min_keep)

    grace = timedelta(hours=policy.incomplete_grace_hours)
    decisions: list[SetDecision] = []
    for backup_id in sorted(grouped):
        members = grouped[backup_id]
        started = backup_id_time(backup_id)
        action: Action = "keep"
        if not pruning:
            reasons = [f"this run's set {current_backup_id} is not complete: nothing is pruned"]
        elif backup_id in complete_ids:
            reasons = keep[backup_id]
            if not reasons:
                action, reasons = "delete", ["complete, but kept by no retention rule"]
        elif backup_id == current_backup_id:
            reasons = ["in flight (this run)"]
        else:
            idle = now - _last_activity(started, members)
            if idle < grace and backup_id in failed_runs:
                reasons = [
                    f"incomplete: its run ended {failed_runs[backup_id]}; kept "
                    f"{policy.incomplete_grace_hours:g} h from its last write for a retry of "
                    "that run, which continues the same set"
                ]
            elif idle < grace:
                reasons = [
                    f"incomplete, active {idle.total_seconds() / 3600:.1f} h ago "
                    f"(grace {policy.incomplete_grace_hours:g} h): may be in flight"
                ]
            else:
                action = "delete"
                reasons = [
                    f"incomplete (no manifest), idle {idle.total_seconds() / 3600:.1f} h "
                    f"> grace {policy.incomplete_grace_hours:g} h"
                ]
        keys = sorted(
            (o.key for o in members),
            key=lambda key: (not key.endswith(f"/{backup_id}/{MANIFEST_NAME}"), key),
        )
        decisions.append(
            SetDecision(
                backup_id=backup_id,
                started_at=started,
                complete=backup_id in complete_ids,
                objects=len(members),
                size=sum(o.size for o in members),
                action=action,
                reasons=reasons,
                drill=verdicts.get(backup_id),
                delete_keys=keys if action == "delete" else [],
            )
        )

    upload_grace = timedelta(hours=policy.multipart_grace_hours)
    upload_decisions: list[UploadDecision] = []
    for upload in uploads:
        backup_id = set_id_of_key(stack, upload.key)
        if backup_id is None:
            continue  # not ours to touch, not ours to report
        if not pruning:
            verdict, reason = "keep", "nothing is pruned: this run's set is not complete"
        elif backup_id == current_backup_id:
            verdict, reason = "keep", "belongs to this run"
        elif upload.initiated is None:
            verdict, reason = "keep", "start time unknown"
        elif now - upload.initiated < upload_grace:
            verdict, reason = "keep", f"younger than {policy.multipart_grace_hours:g} h"
        else:
            verdict, reason = (
                "abort",
                f"unfinished for more than {policy.multipart_grace_hours:g} h",
            )
        upload_decisions.append(
            UploadDecision(
                key=upload.key,
                upload_id=upload.upload_id,
                initiated=upload.initiated,
                action=verdict,
                reason=reason,
            )
        )

    plan = RetentionPlan(
        stack=stack,
        now=now,
        current_backup_id=current_backup_id,
        policy=policy,
        pruning=pruning,
        sets=decisions,
        uploads=upload_decisions,
        ignored_objects=len(ignored),
        ignored_keys=sorted(ignored),
    )
    check_plan(plan, objects, complete_ids, verdicts=verdicts)
    return plan
