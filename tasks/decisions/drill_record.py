"""A set's drill verdict, stored beside it: ``<stack>/<backup-id>/drill.json``.

The restore drill writes it at its end, passed or failed, so that which sets are
proven to restore survives losing the Prefect database (flow runs and artifacts are
vacuumed after 7 days; the bucket is what we restore from). Retention reads it to keep
the newest verified set (:mod:`tasks.decisions.retention`), the backup report shows it,
and it is deleted with its set like every object of the set.

The record is not part of the set's content: the manifest does not list it, object
verification reads only what the manifest lists, so a later drill may overwrite it
without the set looking damaged. The newest verdict is the one that counts; a short
history is kept inside the record for the report's "how long has this been green".

Everything here is pure (no I/O): the model, the key and the judge of a stored record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.decisions.manifest import set_prefix

__all__ = [
    "DRILL_HISTORY_MAX",
    "DRILL_RECORD_NAME",
    "DrillRecord",
    "DrillVerdict",
    "Verdict",
    "drill_record_key",
    "record_verdict",
    "trust_drill_record",
    "verdict_text",
]

DRILL_RECORD_NAME = "drill.json"
# Verdicts kept inside one record, newest first (the newest is the one that counts).
DRILL_HISTORY_MAX = 10

Verdict = Literal["passed", "failed"]


def drill_record_key(stack: str, backup_id: str) -> str:
    return f"{set_prefix(stack, backup_id)}{DRILL_RECORD_NAME}"


class DrillVerdict(BaseModel):
    """One drill's verdict on one set."""

    model_config = ConfigDict(frozen=True)

    verdict: Verdict
    at: datetime = Field(description="When the drill finished (UTC).")
    flow_run_id: str | None = Field(
        default=None,
        description="The Prefect flow run that drilled (a backup run for a quick drill).",
    )
    failed_checks: list[str] = Field(
        default_factory=list, description="Names of the checks that failed or were skipped."
    )
    source: str = Field(
        default="primary", description="Where the set was read from: 'primary' (the bucket)."
    )


class DrillRecord(BaseModel):
    """``drill.json``: the newest verdict on a set, then the earlier ones."""

    schema_version: Literal[1] = 1
    stack: str
    backup_id: str
    verdicts: list[DrillVerdict] = Field(min_length=1, description="Newest first.")

    @property
    def latest(self) -> DrillVerdict:
        return self.verdicts[0]

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


def record_verdict(
    previous: DrillRecord | None, stack: str, backup_id: str, verdict: DrillVerdict
) -> DrillRecord:
    """The record after one more drill: its verdict first, the history cut short."""
    earlier = previous.verdicts if previous is not None else []
    return DrillRecord(
        stack=stack, backup_id=backup_id, verdicts=[verdict, *earlier][:DRILL_HISTORY_MAX]
    )


def trust_drill_record(raw: bytes, stack: str, backup_id: str) -> DrillRecord | None:
    """The stored record, or None when it does not parse or names another set.

    A record that cannot be read counts as "not drilled": retention then protects
    nothing because of it, and the next drill writes a good one.
    """
    try:
        record = DrillRecord.model_validate_json(raw)
    except ValidationError:
        return None
    if record.stack != stack or record.backup_id != backup_id:
        return None
    return record


def verdict_text(verdict: DrillVerdict | None) -> str:
    """``passed 2026-11-22 04:03 UTC``, ``FAILED ... (checks)``, or ``not drilled``."""
    if verdict is None:
        return "not drilled"
    when = verdict.at.strftime("%Y-%m-%d %H:%M UTC")
    if verdict.verdict == "passed":
        return f"passed {when}"
    failed = ", ".join(verdict.failed_checks[:3]) + (
        f" ... and {len(verdict.failed_checks) - 3} more" if len(verdict.failed_checks) > 3 else ""
    )
    return f"FAILED {when}" + (f" ({failed})" if failed else "")
