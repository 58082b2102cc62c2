"""The retention plan: every set kept or deleted with its reasons, and its table."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from tasks.decisions.drill_record import DrillVerdict, verdict_text
from tasks.decisions.retention.policy import RetentionPolicy

__all__ = [
    "IGNORED_SHOWN",
    "Action",
    "RetentionPlan",
    "SetDecision",
    "UploadDecision",
    "verified_ids",
]

Action = Literal["keep", "delete"]
# Objects outside any set listed one by one in the plan's table, the rest counted.
IGNORED_SHOWN = 20


def verified_ids(complete: list[str], verdicts: dict[str, DrillVerdict]) -> list[str]:
    """The complete sets whose newest drill verdict is "passed", newest first."""
    return sorted(
        (i for i in complete if (v := verdicts.get(i)) is not None and v.verdict == "passed"),
        reverse=True,
    )


class SetDecision(BaseModel):
    backup_id: str
    started_at: datetime
    complete: bool
    objects: int
    size: int
    action: Action
    reasons: list[str]
    drill: DrillVerdict | None = Field(
        default=None, description="The set's newest drill verdict (drill.json), if any."
    )
    delete_keys: list[str] = Field(
        default_factory=list,
        description="Keys to delete, manifest first, so a half-deleted set is incomplete.",
    )

    @property
    def verified(self) -> bool:
        return self.complete and self.drill is not None and self.drill.verdict == "passed"


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
    def newest_verified(self) -> str | None:
        """The newest complete set whose newest drill passed, or None."""
        verified = [d.backup_id for d in self.sets if d.verified]
        return max(verified) if verified else None

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
                    "drill": verdict_text(d.drill),
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
                    "drill": "",
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
                "drill": "",
                "objects": objects,
                "size_mb": "",
                "action": "left alone",
                "why": "not inside <stack>/<backup-id>/: never touched by retention",
            }
            for name, objects in named + counted
        ]
