"""restore: put a backup set back, for the day it is needed.

Run on demand only (deployment ``restore/<stack>``, no schedule). Restores the chosen set
(default: the newest complete one) into named target databases: Postgres, ClickHouse,
or both. ``dry_run`` is on by default: set it false to write anything. The set is
verified first, exactly as the drill does (same code): manifest, objects, the dump's
sha256 while it is read, row counts against the manifest. Then, dry run or not, each
staging copy must fit where it goes (the same space check as the drill's; staging
databases sit on the live volumes), or the restore is refused before writing. Each
engine is restored into a staging database first; only when every engine passed all its
checks are they renamed into place, so a failed restore leaves every target as it was
(and a failed rename keeps the verified staging database and names what moved).

Safety: a target that exists, or is the live database the applications use, is
replaced only when ``confirm`` repeats its exact name; the replaced database is kept,
renamed ``<target>_before_<time>``. The flow cannot pause Railway services: it logs
the steps a person takes before (pause LiteLLM and Langfuse) and after (point them at
the restored data, start them, run deploy-verify), and puts them in the report
artifact ``restore-<stack>``.

Blocks: the stack's ``llm-stack`` document.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from blocks.stack import Stack
from tasks.decisions.drill import operator_steps
from tasks.decisions.manifest import BACKUP_ID_PATTERN, BackupManifest
from tasks.decisions.space import SpacePolicy
from tasks.errors import IntegrityError, RestoreError
from tasks.notify import alert_on_failure, resolve_on_success
from tasks.offsite_mirror import restore_langfuse_buckets
from tasks.restore import (
    REQUIRED_CLICKHOUSE_TABLES,
    REQUIRED_POSTGRES_TABLES,
    PostgresMode,
    RestoredTarget,
    StagedRestore,
    TargetPlan,
    check_restore_space,
    drop_staging,
    plan_restore_targets,
    publish_restore_report,
    stage_clickhouse_restore,
    stage_postgres_restore,
    swap_into_place,
    verify_set_objects,
)
from tasks.restore.from_offsite import discard_opened_set, load_set

__all__ = [
    "RestoreConfig",
    "RestoreSummary",
    "as_unswapped",
    "restore",
]


class RestoreConfig(BaseModel):
    """What to restore, where, and the confirmation to replace existing data."""

    backup_id: str | None = Field(
        default=None,
        pattern=BACKUP_ID_PATTERN,
        description="Backup set (YYYYMMDDTHHMMSSZ-xxxxxx); empty = the newest complete.",
    )
    postgres_target: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
        description="Postgres database to restore into, on the stack's server; empty = skip.",
    )
    clickhouse_target: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
        description="ClickHouse database to restore the Langfuse backup into; empty = skip.",
    )
    confirm: list[str] = Field(
        default_factory=list,
        max_length=2,
        description="Repeat the name of each target that exists or is live to replace it "
        "(the old one is kept, renamed).",
    )
    dry_run: bool = Field(
        default=True,
        description="Verify the set and show the plan; restore nothing. Set false to restore.",
    )
    postgres_mode: PostgresMode = Field(
        default="download",
        description="'download' then pg_restore --jobs (faster; disk the size of the dump), "
        "or 'stream' (no disk).",
    )
    jobs: int = Field(default=2, ge=1, le=16, description="pg_restore --jobs in download mode.")
    work_dir: str | None = Field(default=None, description="Temp folder for download mode.")
    restore_timeout_s: int = Field(default=4 * 3600, ge=60, le=24 * 3600)
    langfuse_buckets: bool = Field(
        default=False,
        description="With source 'offsite': also put Langfuse's buckets back from their "
        "off-site mirror (objects missing or different; nothing is deleted).",
    )
    source: Literal["primary", "offsite"] = Field(
        default="primary",
        description="Where the set is read from: 'primary' (the stack's bucket) or 'offsite' "
        "(decrypted from the off-site target into a scratch bucket first: the way back "
        "after losing the project, with only the off-site target, its keys and the identity).",
    )
    space_unknown: SpacePolicy = Field(
        default="auto",
        description="When free space cannot be known: 'refuse', 'proceed', or 'auto' "
        "(proceed when the copy needs under 1 GB; else refuse: staging goes on live volumes).",
    )
    space_margin: float = Field(
        default=0.2, ge=0, le=5, description="Free space required on top of the estimate."
    )


def as_unswapped(staged: list[StagedRestore]) -> list[RestoredTarget]:
    return [RestoredTarget(engine=s.engine, target=s.target, checks=s.checks) for s in staged]


class RestoreSummary(BaseModel):
    stack: str
    backup_id: str
    dry_run: bool
    restored: list[RestoredTarget]
    steps_after: list[str]
    source: str = "primary"
    seconds: float | None = Field(default=None, description="Wall time of the run (the RTO).")
    bucket_objects_restored: int = Field(
        default=0, description="Langfuse bucket objects written back from the mirror."
    )
    set_age_s: float | None = Field(
        default=None, description="Age of the set when the run started (the RPO)."
    )


@flow(name="restore", on_failure=[alert_on_failure], on_completion=[resolve_on_success])
def restore(stack: str = "production", config: RestoreConfig | None = None) -> RestoreSummary:
    """Verify a set, then restore it into the named targets; refuse to clobber silently."""
    config = config or RestoreConfig()
    logger = get_run_logger()
    started = datetime.now(UTC)
    ops = Stack.load_stack(stack)
    if config.langfuse_buckets and config.source != "offsite":
        raise RestoreError(
            "langfuse_buckets restores from the off-site mirror: set source to 'offsite'"
        )
    if config.postgres_target is None and config.clickhouse_target is None:
        raise RestoreError("nothing to restore: set postgres_target and/or clickhouse_target")

    logger.info("== checking the targets")
    plans = plan_restore_targets(
        ops, config.postgres_target, config.clickhouse_target, config.confirm
    )
    refusals = [p.refusal for p in plans if p.refusal]
    if refusals:
        raise RestoreError("restore refused: " + " | ".join(refusals))

    logger.info("== verifying the backup set (%s)", config.source)
    # The set is read through `source`: the stack, or the stack reading the scratch bucket
    # an off-site set was opened into (removed again when the run ends).
    source, found = load_set(ops, config.backup_id, config.source)
    if found.manifest is None:
        raise IntegrityError(f"{found.check.name}: {found.check.message}")
    manifest = found.manifest
    try:
        return _restore_set(ops, source, config, plans, manifest, started)
    finally:
        if source is not ops:
            discard_opened_set(source, manifest.backup_id)


def _restore_set(
    ops: Stack,
    source: Stack,
    config: RestoreConfig,
    plans: list[TargetPlan],
    manifest: BackupManifest,
    started: datetime,
) -> RestoreSummary:
    logger = get_run_logger()
    verified = verify_set_objects(source, manifest)
    if not all(c.passed for c in verified.checks):
        raise IntegrityError(
            "set failed verification: "
            + "; ".join(f"{c.name}: {c.message}" for c in verified.checks if not c.passed)
        )

    backup = manifest.clickhouse_for(ops.clickhouse_database) or (
        manifest.clickhouse[0] if manifest.clickhouse else None
    )
    if config.clickhouse_target is not None and backup is None:
        raise IntegrityError(f"set {manifest.backup_id} holds no ClickHouse backup")

    logger.info("== checking each staging copy fits before writing anything")
    space = check_restore_space(
        ops,
        manifest,
        purpose="restore",
        postgres=config.postgres_target is not None,
        clickhouse=[backup] if config.clickhouse_target is not None and backup else [],
        mode=config.postgres_mode,
        work_dir=config.work_dir,
        margin=config.space_margin,
        policy=config.space_unknown,
    )
    if space.problems:
        raise RestoreError(
            "restore refused, nothing was written: " + " | ".join(c.message for c in space.problems)
        )

    targets = (config.postgres_target, config.clickhouse_target)
    for step in operator_steps(
        ops.stack_name, "before", *targets, ops.postgres_database, ops.clickhouse_database
    ):
        logger.warning("BEFORE: %s", step)
    if config.dry_run:
        logger.info("dry run: set %s verified; would restore %s", manifest.backup_id, plans)
        return RestoreSummary(
            stack=ops.stack_name,
            backup_id=manifest.backup_id,
            dry_run=True,
            restored=[],
            steps_after=[],
            source=config.source,
        )

    staged: list[StagedRestore] = []
    for plan in plans:
        logger.info("== restoring %s into a staging database (for %s)", plan.engine, plan.target)
        if plan.engine == "postgres":
            staged.append(
                stage_postgres_restore(
                    source,
                    manifest,
                    plan=plan,
                    mode=config.postgres_mode,
                    jobs=config.jobs,
                    timeout_s=config.restore_timeout_s,
                    work_dir=config.work_dir,
                    required_tables=list(REQUIRED_POSTGRES_TABLES),
                )
            )
        elif backup is not None:
            staged.append(
                stage_clickhouse_restore(
                    source,
                    backup,
                    plan=plan,
                    timeout_s=config.restore_timeout_s,
                    required_tables=list(REQUIRED_CLICKHOUSE_TABLES),
                )
            )

    steps = operator_steps(
        ops.stack_name, "after", *targets, ops.postgres_database, ops.clickhouse_database
    )
    failures = [f"{s.engine} -> {s.target}" for s in staged if not s.passed]
    if failures:
        drop_staging(ops, staged)
        publish_restore_report(ops, manifest.backup_id, as_unswapped(staged), steps)
        raise IntegrityError(
            f"restore failed for {', '.join(failures)}; nothing was swapped (every target "
            f"untouched); see the artifact restore-{ops.stack_name}"
        )

    logger.info("== every engine passed in staging: swapping into place")
    restored = swap_into_place(ops, staged)
    publish_restore_report(ops, manifest.backup_id, restored, steps)
    for step in steps:
        logger.warning("AFTER: %s", step)
    objects = 0
    if config.langfuse_buckets:
        logger.info("== Langfuse's buckets from the off-site mirror")
        objects = sum(b.copied for b in restore_langfuse_buckets(ops))
    seconds = (datetime.now(UTC) - started).total_seconds()
    set_age = (started - manifest.finished_at).total_seconds()
    logger.info(
        "restored set %s (%s) in %.1f s (RTO); the set was %.1f h old (RPO)",
        manifest.backup_id,
        config.source,
        seconds,
        set_age / 3600,
    )
    return RestoreSummary(
        stack=ops.stack_name,
        backup_id=manifest.backup_id,
        dry_run=False,
        restored=restored,
        steps_after=steps,
        source=config.source,
        seconds=seconds,
        set_age_s=set_age,
        bucket_objects_restored=objects,
    )
