"""The restore drill's decisions: scratch names, checks, the verdict and its report.

Everything here is pure (no Prefect, no I/O), so every rule is tested exhaustively:

- *Scratch names.* A drill restores into ``drill_<stack>_<UTC time>_<6 hex>``: unique
  per run, recognisable as ours, and tied to one stack, so the sweep that removes the
  leftovers of a crashed drill (:func:`orphan_scratch_databases`) can never touch a
  database of another stack, or one a person named.
- *Checks.* Each thing the drill proves is one check; its result is a
  :class:`~tasks.decisions.checks.CheckResult`, passed or failed with a message a person
  can act on (which object, which table, what differs).
- *Verdict.* A drill passes when every check passed; skipped checks count as not
  passed, since a drill that proved nothing must not look green.
- *Restore safety.* :func:`restore_refusal` decides whether ``restore`` may write into
  a target database.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from tasks.decisions.checks import CheckResult, failed, passed
from tasks.decisions.manifest import LargeObjects

__all__ = [
    "MAX_IDENTIFIER",
    "SCRATCH_PREFIX",
    "SHOWN_MAX",
    "TARGET_NAME_RE",
    "Component",
    "ComponentTiming",
    "DrillReport",
    "check_large_objects",
    "check_object",
    "check_required_tables",
    "check_row_counts",
    "format_age",
    "format_bytes",
    "is_scratch_database",
    "is_staging_database",
    "operator_steps",
    "orphan_scratch_databases",
    "previous_database_name",
    "restore_refusal",
    "rpo_seconds",
    "scratch_database_name",
    "shorten",
    "staging_database_name",
    "throughput_mb_s",
]

SCRATCH_PREFIX = "drill_"
# Postgres truncates identifiers at 63 bytes: keep the whole name below that.
MAX_IDENTIFIER = 63
_STAMP_FORMAT = "%Y%m%d%H%M%S"
_TOKEN_RE = re.compile(r"^[0-9a-f]{6}$")
# What a restore target may be called: a plain identifier, no quoting games.
TARGET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
SHOWN_MAX = 8

Component = Literal["set", "postgres", "clickhouse"]


# ---- scratch database names ---------------------------------------------------------------


def _stack_part(stack: str) -> str:
    # Stack names are [a-z0-9-]; identifiers want underscores. 63 - len("drill_") - 1 -
    # 14 - 1 - 6 leaves 35 characters for the stack. A longer name keeps 28 and a digest
    # of the whole name: two stacks sharing their first 35 characters never share
    # scratch databases (a drill of one would drop the other's as orphans).
    part = stack.replace("-", "_")
    if len(part) <= 35:
        return part
    return f"{part[:28]}_{hashlib.sha256(stack.encode()).hexdigest()[:6]}"


def scratch_database_name(stack: str, now: datetime, token: str) -> str:
    """``drill_<stack>_<YYYYMMDDHHMMSS>_<token>``: a valid identifier in both engines."""
    if not _TOKEN_RE.fullmatch(token):
        raise ValueError(f"token must be 6 lowercase hex digits, got {token!r}")
    return f"{SCRATCH_PREFIX}{_stack_part(stack)}_{now.strftime(_STAMP_FORMAT)}_{token}"


def is_scratch_database(name: str, stack: str) -> bool:
    """True when ``name`` is a drill scratch database of exactly this stack."""
    pattern = rf"{re.escape(SCRATCH_PREFIX + _stack_part(stack))}_\d{{14}}_[0-9a-f]{{6}}"
    return re.fullmatch(pattern, name) is not None


def orphan_scratch_databases(
    names: Iterable[str], stack: str, keep: Iterable[str] = ()
) -> list[str]:
    """The scratch databases of ``stack`` left behind by earlier drills, sorted.

    Only one drill per stack runs at a time (the slot ``restore-drill-<stack>``), so every scratch
    database of this stack that the current run did not create (``keep``) belongs to a
    drill that died before its cleanup. Anything else is never returned.
    """
    kept = set(keep)
    return sorted({n for n in names if is_scratch_database(n, stack) and n not in kept})


# ---- checks ---------------------------------------------------------------------------------


def shorten(items: list[str], limit: int = SHOWN_MAX) -> str:
    """``a, b, c ... and 5 more``: long lists stay readable in reports and alerts."""
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


def check_object(
    name: str,
    component: Component,
    *,
    key: str,
    expected_size: int,
    expected_sha256: str | None,
    actual_size: int | None,
    actual_sha256: str | None,
    set_prefix: str | None = None,
) -> CheckResult:
    """An object read back against the manifest: in its set, present, same size and sha256.

    ``actual_size is None`` means the object does not exist; ``expected_sha256`` or
    ``actual_sha256`` None means the digest is not part of this check (size only).
    ``set_prefix``: the set's own prefix; a key outside it is another set's object.
    """
    if set_prefix is not None and not key.startswith(set_prefix):
        return failed(
            name,
            f"object {key} is outside the set ({set_prefix}): the manifest names another "
            "set's object (copied or edited by hand); this set cannot be trusted",
            component=component,
        )
    if actual_size is None:
        return failed(name, f"object {key} is missing from the bucket", component=component)
    if actual_size != expected_size:
        hint = " (truncated)" if actual_size < expected_size else ""
        return failed(
            name,
            f"object {key} is {actual_size} bytes, the manifest says {expected_size}{hint}",
            component=component,
        )
    if expected_sha256 is not None and actual_sha256 is not None:
        if actual_sha256 != expected_sha256:
            return failed(
                name,
                f"sha256 mismatch for {key}: read {actual_sha256[:16]}..., the manifest says "
                f"{expected_sha256[:16]}... (the object changed after the backup)",
                component=component,
            )
        return passed(name, f"{key}: {actual_size} bytes, sha256 matches", component=component)
    return passed(name, f"{key}: {actual_size} bytes, size matches", component=component)


def check_row_counts(
    name: str, component: Component, expected: Mapping[str, int], actual: Mapping[str, int]
) -> CheckResult:
    """Exact row count of every table, restored vs manifest; any difference fails."""
    problems: list[str] = []
    for table in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(table), actual.get(table)
        if want is None:
            problems.append(f"{table} restored ({got} rows) but not in the manifest")
        elif got is None:
            problems.append(f"{table} missing after restore (manifest: {want} rows)")
        elif want != got:
            problems.append(f"{table} has {got} rows, the manifest says {want}")
    if problems:
        return failed(
            name,
            f"row counts differ in {len(problems)} table(s): {shorten(problems)}",
            component=component,
        )
    total = sum(actual.values())
    return passed(
        name, f"{len(actual)} tables, {total} rows, all match the manifest", component=component
    )


def check_large_objects(
    name: str, component: Component, expected: LargeObjects, actual: LargeObjects
) -> CheckResult:
    """Large objects restored vs manifest: the count, and the digest when both have one."""
    if actual.count != expected.count:
        return failed(
            name,
            f"{actual.count} large objects restored, the manifest says {expected.count}",
            component=component,
        )
    if expected.digest is not None and actual.digest is not None:
        if actual.digest != expected.digest:
            return failed(
                name,
                f"the {actual.count} large objects differ in content (md5)",
                component=component,
            )
        return passed(name, f"{actual.count} large objects, content matches", component=component)
    return passed(
        name,
        f"{actual.count} large objects (content not readable by this role)",
        component=component,
    )


def check_required_tables(
    name: str, component: Component, required: Iterable[str], present: Iterable[str]
) -> CheckResult:
    """The tables the applications cannot start without are there."""
    have = set(present)
    missing = [table for table in required if table not in have]
    if missing:
        return failed(name, f"required tables missing: {shorten(missing)}", component=component)
    wanted = list(required)
    return passed(name, f"all {len(wanted)} required tables present", component=component)


# ---- the report -----------------------------------------------------------------------------


class ComponentTiming(BaseModel):
    """How long one component took to restore (its RTO) and at what rate."""

    component: Literal["postgres", "clickhouse"]
    target: str = Field(description="Database restored into.")
    restore_seconds: float = Field(ge=0, description="Wall time of the restore itself (RTO).")
    verify_seconds: float = Field(ge=0, description="Wall time of the checks after it.")
    bytes: int = Field(ge=0, description="Size of the backup read.")

    @property
    def throughput_mb_s(self) -> float:
        return throughput_mb_s(self.bytes, self.restore_seconds)


def throughput_mb_s(size: int, seconds: float) -> float:
    """MB/s (10^6 bytes), 0 when nothing was timed."""
    return size / 1e6 / seconds if seconds > 0 else 0.0


def rpo_seconds(set_finished_at: datetime, now: datetime) -> float:
    """Age of the set: the data a restore from it would lose, were it needed now."""
    return max(0.0, (now - set_finished_at).total_seconds())


class DrillReport(BaseModel):
    """Everything one drill proved, what it took, and the verdict."""

    stack: str
    backup_id: str | None
    started_at: datetime
    finished_at: datetime
    drill_target: str = Field(description="Postgres server restored onto (password redacted).")
    postgres_mode: str = Field(description="'stream' or 'download' (then pg_restore -j).")
    checks: list[CheckResult]
    timings: list[ComponentTiming] = Field(default_factory=list)
    rpo_seconds: float | None = Field(default=None, description="Age of the set at the drill.")
    set_size: int | None = Field(default=None, description="Bytes in the set (dump + ClickHouse).")
    scratch_databases: list[str] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def problems(self) -> list[CheckResult]:
        return [check for check in self.checks if not check.passed]

    @property
    def rto_seconds(self) -> float:
        return sum(t.restore_seconds for t in self.timings)

    def failure_message(self) -> str:
        """One paragraph naming every failed or skipped check: the alert's body."""
        lines = [f"restore drill of {self.stack} set {self.backup_id or '(none)'} FAILED:"]
        lines += [f"- {c.name} {c.status}: {c.message}" for c in self.problems]
        return "\n".join(lines)

    def summary_line(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        parts = [f"restore drill {verdict}: {self.stack} set {self.backup_id or '(none)'}"]
        parts += [f"{t.component} {t.restore_seconds:.1f}s" for t in self.timings]
        if self.rpo_seconds is not None:
            parts.append(f"set age {format_age(self.rpo_seconds)}")
        ok = sum(1 for c in self.checks if c.passed)
        parts.append(f"{ok}/{len(self.checks)} checks")
        return ", ".join(parts)

    def to_markdown(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"# Restore drill {verdict}: {self.stack}",
            "",
            f"- backup set: `{self.backup_id or '(none)'}`",
            f"- drill target: `{self.drill_target}` (postgres mode: {self.postgres_mode})",
            f"- started {self.started_at.isoformat(timespec='seconds')}, "
            f"took {(self.finished_at - self.started_at).total_seconds():.1f}s",
        ]
        if self.rpo_seconds is not None:
            lines.append(f"- RPO (age of the set): {format_age(self.rpo_seconds)}")
        if self.set_size is not None:
            lines.append(f"- set size: {format_bytes(self.set_size)}")
        if self.timings:
            lines += [
                "",
                "| component | restored into | RTO (restore s) | verify s | size | MB/s |",
                "|---|---|---:|---:|---:|---:|",
            ]
            lines += [
                f"| {t.component} | `{t.target}` | {t.restore_seconds:.1f} | "
                f"{t.verify_seconds:.1f} | {format_bytes(t.bytes)} | {t.throughput_mb_s:.1f} |"
                for t in self.timings
            ]
        lines += ["", "| check | component | result | detail |", "|---|---|---|---|"]
        lines += [
            f"| {c.name} | {c.component} | {c.status} | {_cell(c.message)} |" for c in self.checks
        ]
        return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover - the loop always returns


def format_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# ---- restore safety -------------------------------------------------------------------------


def restore_refusal(
    target: str, *, exists: bool, live: bool, confirmed: Iterable[str], engine: str
) -> str | None:
    """Why ``restore`` must not write into ``target``, or None when it may.

    A new database is always fine. One that exists, or the one the applications use,
    is replaced only when ``confirmed`` repeats its exact name: the operator has to type
    what will be replaced, so a wrong default or a copy-pasted run cannot do it.
    """
    if not TARGET_NAME_RE.fullmatch(target):
        return (
            f"{engine} target {target!r} is not a plain identifier (letters, digits, "
            "underscores, at most 63, not starting with a digit)"
        )
    if target.startswith(SCRATCH_PREFIX):
        return (
            f"{engine} target {target!r} uses the drill prefix {SCRATCH_PREFIX!r}: the next "
            "drill would drop it; pick another name"
        )
    if not (exists or live) or target in set(confirmed):
        return None
    what = "is the live database the applications use" if live else "already exists"
    return (
        f"{engine} target {target!r} {what}; nothing was changed. To replace it (the old "
        f"one is kept, renamed), pause LiteLLM and Langfuse and run again with "
        f"confirm=[{target!r}]"
    )


def staging_database_name(now: datetime, token: str) -> str:
    """Where ``restore`` restores first, so a failed restore never leaves a half target."""
    if not _TOKEN_RE.fullmatch(token):
        raise ValueError(f"token must be 6 lowercase hex digits, got {token!r}")
    return f"restore_{now.strftime(_STAMP_FORMAT)}_{token}"


def is_staging_database(name: str) -> bool:
    """True when ``name`` is a staging database of ``restore`` (``restore_<time>_<hex>``)."""
    return re.fullmatch(r"restore_\d{14}_[0-9a-f]{6}", name) is not None


def previous_database_name(target: str, now: datetime) -> str:
    """What a replaced database is renamed to: kept, never dropped by the restore."""
    return f"{target[: MAX_IDENTIFIER - 22]}_before_{now.strftime(_STAMP_FORMAT)}"


def operator_steps(
    stack: str,
    phase: Literal["before", "after"],
    postgres_target: str | None,
    clickhouse_target: str | None,
    live_postgres: str,
    live_clickhouse: str,
) -> list[str]:
    """The steps a person takes around a restore: the flow cannot pause Railway services."""
    if phase == "before":
        return [
            f"Pause LiteLLM and Langfuse (web and worker) of {stack} so nothing writes "
            "while the data is replaced (Railway: set replicas to 0, or remove the deploy).",
            "Tell users the gateway and tracing UI are down for the restore.",
        ]
    steps: list[str] = []
    if postgres_target is not None and postgres_target != live_postgres:
        steps.append(
            f"Point DATABASE_URL of LiteLLM and Langfuse at database {postgres_target!r} "
            f"(it now holds the restored data), or restore again into {live_postgres!r}."
        )
    if clickhouse_target is not None and clickhouse_target != live_clickhouse:
        steps.append(f"Set CLICKHOUSE_DB of Langfuse web and worker to {clickhouse_target!r}.")
    steps += [
        f"Start LiteLLM and Langfuse of {stack} again.",
        f"Run `prefect deployment run deploy-verify/{stack}` and check that it passes.",
        "Keys, models and traces are as of the backup set's time: anything written "
        "after it is gone.",
    ]
    return steps
