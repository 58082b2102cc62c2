"""The last line of defence: a plan that breaks an invariant is refused, nothing deleted."""

from __future__ import annotations

from tasks.decisions.drill_record import DrillVerdict
from tasks.decisions.manifest import set_id_of_key
from tasks.decisions.retention.plan import RetentionPlan, verified_ids
from tasks.decisions.retention.policy import ObjectRecord
from tasks.errors import RetentionError

__all__ = ["check_plan"]


def check_plan(
    plan: RetentionPlan,
    objects: list[ObjectRecord],
    complete_ids: set[str],
    *,
    verdicts: dict[str, DrillVerdict] | None = None,
) -> None:
    """Refuse (RetentionError) a plan that breaks an invariant; the last line of defence.

    ``verdicts`` are the drill verdicts the plan was made from: with ``require_verified``
    the newest verified set, the undrilled sets newer than it and ``min_keep`` verified
    sets must survive.
    """
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
    if plan.policy.verified_only:
        problems += _verified_problems(plan, complete, verdicts or {}, deleted)
    if problems:
        raise RetentionError(
            "retention plan refused, nothing deleted: "
            + "; ".join(problems[:5])
            + (f"; ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        )


def _verified_problems(
    plan: RetentionPlan,
    complete: list[str],
    verdicts: dict[str, DrillVerdict],
    deleted: set[str],
) -> list[str]:
    verified = verified_ids(complete, verdicts)
    if not verified:
        return []
    problems: list[str] = []
    if verified[0] in deleted:
        problems.append(f"the plan deletes the newest verified set {verified[0]}")
    undrilled = [i for i in complete if i > verified[0] and i not in verdicts and i in deleted]
    if undrilled:
        problems.append(
            f"the plan deletes {undrilled[0]}, newer than the newest verified set and not "
            "drilled yet"
        )
    remaining = [i for i in verified if i not in deleted]
    if len(remaining) < min(plan.policy.min_keep, len(verified)):
        problems.append(
            f"the plan leaves {len(remaining)} verified sets, fewer than min_keep "
            f"{plan.policy.min_keep}"
        )
    return problems
