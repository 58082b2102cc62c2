"""Retention: which backup sets to keep, which to delete, and why.

The plan is a pure function of the bucket listing and the sets' drill verdicts (no
Prefect, no I/O), so every invariant is tested over random histories
(``tests/tasks/decisions/test_retention.py``):

- the newest complete set is never deleted;
- nothing at all is pruned when this run's own set is not complete (the run failed);
- at least ``min_keep`` complete sets remain (or all of them, if there are fewer);
- only objects inside ``<stack>/<backup-id>/`` are ever deleted: other stacks,
  hand-placed files and anything not shaped like a set are never touched;
- an incomplete set (no manifest) is deleted only after ``incomplete_grace_hours``
  without activity, and never the one in flight;
- unfinished multipart uploads inside our sets are aborted after a grace period;
- with ``require_verified``: the newest *verified* set (its newest drill verdict is
  "passed") is never deleted, nor any set newer than it that no drill has judged yet,
  and at least ``min_keep`` verified sets remain (or all of them).

Complete sets are kept by the grandfather-father-son rules (restic/borg style): the
last ``keep_last``; every set younger than ``keep_within_days``; the newest set of each
of the last ``keep_daily`` days, ``keep_weekly`` ISO weeks and ``keep_monthly``
months that have one. A set kept by no rule is deleted. Failed (incomplete) sets
never count as kept backups. ``require_verified`` only ever keeps more than the rules
alone: an undrilled set is still a restore point, it just does not count as proven.

Modules: :mod:`.policy` (the inputs), :mod:`.plan` (the plan and its table),
:mod:`.decide` (the decision), :mod:`.check` (the last line of defence).
"""

from tasks.decisions.retention.check import check_plan
from tasks.decisions.retention.decide import plan_retention
from tasks.decisions.retention.plan import (
    IGNORED_SHOWN,
    Action,
    RetentionPlan,
    SetDecision,
    UploadDecision,
)
from tasks.decisions.retention.policy import ObjectRecord, RetentionPolicy, UploadRecord

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
