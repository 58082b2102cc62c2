"""Retention: which backup sets to keep, which to delete, and why.

The plan is a pure function of the bucket listing (no Prefect, no I/O), so every
invariant is tested over random histories (``tests/tasks/test_retention.py``):

- the newest complete set is never deleted;
- nothing at all is pruned when this run's own set is not complete (the run failed);
- at least ``min_keep`` complete sets remain (or all of them, if there are fewer);
- only objects inside ``<stack>/<backup-id>/`` are ever deleted: other stacks,
  hand-placed files and anything not shaped like a set are never touched;
- an incomplete set (no manifest) is deleted only after ``incomplete_grace_hours``
  without activity, and never the one in flight;
- unfinished multipart uploads inside our sets are aborted after a grace period.

Complete sets are kept by the grandfather-father-son rules (restic/borg style): the
last ``keep_last``; every set younger than ``keep_within_days``; the newest set of each
of the last ``keep_daily`` days, ``keep_weekly`` ISO weeks and ``keep_monthly``
months that have one. A set kept by no rule is deleted. Failed (incomplete) sets
never count as kept backups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.decisions.manifest import MANIFEST_NAME, backup_id_time, set_id_of_key
from tasks.errors import RetentionError

__all__ = [
    "IGNORED_SHOWN",
    "Action",
    "ObjectRecord",
    "RetentionPlan",
    "RetentionPolicy",
    "SetDecision",
    "UploadDecision",
    "UploadRecord",
    "check_plan",
    "plan_retention",
]

Action = Literal["keep", "delete"]
# Objects outside any set listed one by one in the plan's table, the rest counted.
IGNORED_SHOWN = 20


class RetentionPolicy(BaseModel):
    """How many backup sets to keep. The defaults keep at least the last 7 days."""

    model_config = ConfigDict(frozen=True)

    keep_last: int = Field(default=7, ge=1, le=1000, description="Always keep the last N sets.")
    keep_within_days: int = Field(
        default=7, ge=0, le=3650, description="Keep every complete set younger than N days."
    )
    keep_daily: int = Field(
        default=7, ge=0, le=3650, description="Keep the newest set of each of the last N days."
    )
    keep_weekly: int = Field(
        default=4, ge=0, le=520, description="Keep the newest set of each of the last N weeks."
    )
    keep_monthly: int = Field(
        default=6, ge=0, le=240, description="Keep the newest set of each of the last N months."
    )
    min_keep: int = Field(
        default=3, ge=1, le=1000, description="Never leave fewer complete sets than this."
    )
    incomplete_grace_hours: float = Field(
        default=24.0,
        ge=1.0,
        le=24.0 * 90,
        description="Delete a set without manifest only after this long without activity.",
    )
    multipart_grace_hours: float = Field(
        default=24.0,
        ge=1.0,
        le=24.0 * 90,
        description="Abort an unfinished multipart upload only after this long.",
    )


class ObjectRecord(BaseModel):
    """One object of the listing under the bucket (any key, ours or not)."""

    model_config = ConfigDict(frozen=True)

    key: str
    size: int = 0
    last_modified: datetime | None = None


class UploadRecord(BaseModel):
    """One unfinished multipart upload."""

    model_config = ConfigDict(frozen=True)

    key: str
    upload_id: str
    initiated: datetime | None = None


class SetDecision(BaseModel):
    backup_id: str
    started_at: datetime
    complete: bool
    objects: int
    size: int
    action: Action
    reasons: list[str]
    delete_keys: list[str] = Field(
        default_factory=list,
        description="Keys to delete, manifest first, so a half-deleted set is incomplete.",
    )


class UploadDecision(BaseModel):
    key: str
    upload_id: str
    initiated: datetime | None
    action: Literal["keep", "abort"]
    reason: str


class RetentionPlan(BaseModel):
    stack: str
    now: datetime
    current_backup_id: str
    policy: RetentionPolicy
    pruning: bool = Field(description="False when this run's set is not complete.")
    sets: list[SetDecision]
    uploads: list[UploadDecision]
    ignored_objects: int = Field(description="Objects under the stack that are in no set.")
    ignored_keys: list[str] = Field(
        default_factory=list,
        description="Those objects (never touched): hand-placed files, other tools' data.",
    )

    @property
    def delete_keys(self) -> list[str]:
        return [key for decision in self.sets for key in decision.delete_keys]

    @property
    def deleted_sets(self) -> list[str]:
        return [d.backup_id for d in self.sets if d.action == "delete"]

    @property
    def kept_complete(self) -> list[str]:
        return [d.backup_id for d in self.sets if d.action == "keep" and d.complete]

    @property
    def aborts(self) -> list[UploadDecision]:
        return [u for u in self.uploads if u.action == "abort"]

    def rows(self) -> list[dict[str, str]]:
        """The plan as table rows (for the artifact), newest set first."""
        return (
            [
                {
                    "backup_id": d.backup_id,
                    "state": "complete" if d.complete else "incomplete",
                    "objects": str(d.objects),
                    "size_mb": f"{d.size / 1e6:.1f}",
                    "action": d.action.upper() if d.action == "delete" else d.action,
                    "why": "; ".join(d.reasons),
                }
                for d in sorted(self.sets, key=lambda d: d.backup_id, reverse=True)
            ]
            + [
                {
                    "backup_id": f"upload {u.key}",
                    "state": "unfinished upload",
                    "objects": "",
                    "size_mb": "",
                    "action": u.action.upper() if u.action == "abort" else u.action,
                    "why": u.reason,
                }
                for u in self.uploads
            ]
            + self._loose_rows()
        )

    def _loose_rows(self) -> list[dict[str, str]]:
        """Objects in no set, left alone: the first few by name, the rest counted."""
        shown = self.ignored_keys[:IGNORED_SHOWN]
        more = len(self.ignored_keys) - len(shown)
        named = [(f"object {key}", "1") for key in shown]
        counted = [(f"... and {more} more objects", str(more))] if more > 0 else []
        return [
            {
                "backup_id": name,
                "state": "not in a set",
                "objects": objects,
                "size_mb": "",
                "action": "left alone",
                "why": "not inside <stack>/<backup-id>/: never touched by retention",
            }
            for name, objects in named + counted
        ]


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
) -> RetentionPlan:
    """Decide, for every backup set of ``stack``, keep or delete, with the reasons.

    ``objects`` is the listing (anything in it outside ``<stack>/<backup-id>/`` is
    ignored, and listed as left alone); ``complete_ids`` are the sets whose manifest
    parsed; ``current_backup_id`` is this run's set, which must be complete for
    anything to be pruned; ``failed_runs`` maps the backup id of a run known to have
    ended (Failed, Crashed, Cancelled) to that state's name: its incomplete set is not
    "in flight", though a retry of that run would continue it.
    """
    failed_runs = failed_runs or {}
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
    check_plan(plan, objects, complete_ids)
    return plan


def check_plan(plan: RetentionPlan, objects: list[ObjectRecord], complete_ids: set[str]) -> None:
    """Refuse (RetentionError) a plan that breaks an invariant; the last line of defence."""
    problems: list[str] = []
    by_id = {d.backup_id: d for d in plan.sets}
    listed = {o.key for o in objects}
    for key in plan.delete_keys:
        backup_id = set_id_of_key(plan.stack, key)
        if backup_id is None or by_id.get(backup_id) is None or key not in listed:
            problems.append(f"{key} is not an object of a backup set of {plan.stack}")
        elif by_id[backup_id].action != "delete":
            problems.append(f"{key} belongs to kept set {backup_id}")
    deleted = set(plan.deleted_sets)
    if deleted and not plan.pruning:
        problems.append("this run's set is not complete, yet the plan deletes")
    if plan.current_backup_id in deleted:
        problems.append(f"the plan deletes this run's set {plan.current_backup_id}")
    complete = sorted(complete_ids, reverse=True)
    if complete and complete[0] in deleted:
        problems.append(f"the plan deletes the newest complete set {complete[0]}")
    remaining = [i for i in complete if i not in deleted]
    if len(remaining) < min(plan.policy.min_keep, len(complete)):
        problems.append(
            f"the plan leaves {len(remaining)} complete sets, fewer than min_keep "
            f"{plan.policy.min_keep}"
        )
    if problems:
        raise RetentionError(
            "retention plan refused, nothing deleted: "
            + "; ".join(problems[:5])
            + (f"; ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        )
