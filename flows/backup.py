"""Backup: one consistent, checksummed backup set of the stack, then retention.

What: a Postgres dump taken in one exported snapshot (with the exact row count of
every table in that snapshot) streamed straight into S3 with its sha256; a native
ClickHouse ``BACKUP DATABASE ... TO S3`` of the Langfuse database; a ``manifest.json``
written last, which is what makes the set complete; optionally a quick restore drill
of the new set (``drill_after_backup``); when the stack has an off-site target, an
age-encrypted copy of every complete set not there yet (checked object by object,
``offsite.json`` last), the off-site retention and the mirror of Langfuse's buckets (a
failed copy fails the run after the rest is done, and the next run catches up); then
retention pruning by keep-last plus daily/weekly/monthly rules that never touch the
last good backups. When drills are scheduled (``restore-drill/<stack>`` has an active
schedule), "good" means proven: retention keeps the newest set whose drill passed, and
whatever is newer and not yet drilled (``retention.require_verified``). The report
shows each set's drill verdict.

When: daily at 03:00 UTC (deployment ``backup/<stack>`` in ``prefect.yaml``), and any
time with ``prefect deployment run backup/<stack>``.

Blocks: the stack's ``llm-stack`` document (named by ``stack``) and the notification
blocks its routes name. A failure ends the run Failed with what broke, alerts through
those blocks (a crashed run is reported by the stack's failure automation), writes no
manifest and prunes nothing. A retried run (same flow-run id)
skips the parts that completed (persisted results).
"""

from __future__ import annotations

from prefect import flow
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from blocks.stack import Stack
from flows.restore_drill import RestoreDrillConfig, drill_set
from tasks.backup import (
    apply_retention,
    ensure_backup_slot,
    one_backup_at_a_time,
    plan_retention,
    read_expected_dump_size,
    start_backup_set,
    write_manifest,
)
from tasks.backup_report import publish_report
from tasks.clickhouse import backup_clickhouse
from tasks.decisions.retention import RetentionPolicy
from tasks.errors import BackupError, OffsiteError
from tasks.notify import alert_on_failure, resolve_on_success
from tasks.offsite import OffsiteCopyReport, copy_offsite, prune_offsite
from tasks.offsite_mirror import BucketMirror, mirror_langfuse_buckets
from tasks.postgres import check_pg_dump_version, dump_postgres

__all__ = [
    "BackupConfig",
    "BackupSummary",
    "backup",
]


class BackupConfig(BaseModel):
    """How the backup runs and what it keeps; production values live in prefect.yaml."""

    clickhouse_databases: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="ClickHouse databases to back up whole; empty: the stack's Langfuse "
        "database (clickhouse_database in the stack block).",
    )
    part_size_mb: int = Field(
        default=8,
        ge=5,
        le=512,
        description="S3 multipart part size; memory use is a few parts per upload thread. "
        "Raised automatically so a dump 4x the previous one fits S3's 10,000 parts.",
    )
    upload_threads: int = Field(
        default=2, ge=1, le=8, description="Parts uploaded in parallel while pg_dump runs."
    )
    pg_dump_timeout_s: int = Field(
        default=6 * 3600, ge=60, le=48 * 3600, description="pg_dump is stopped after this long."
    )
    clickhouse_timeout_s: int = Field(
        default=3 * 3600,
        ge=10,
        le=48 * 3600,
        description="A ClickHouse BACKUP not finished after this long fails the run.",
    )
    pg_dump_path: str | None = Field(
        default=None,
        max_length=500,
        description="pg_dump to use; default: the installed one of the server's major, else "
        "the smallest newer one.",
    )
    lock_timeout_s: int = Field(
        default=60,
        ge=0,
        le=24 * 3600,
        description="How long to wait for another backup of the same stack to finish.",
    )
    retention: RetentionPolicy = Field(
        default_factory=RetentionPolicy, description="Which backup sets to keep."
    )
    offsite_retention: RetentionPolicy = Field(
        default_factory=lambda: RetentionPolicy(
            keep_last=14, keep_within_days=14, keep_daily=30, keep_weekly=12, keep_monthly=12
        ),
        description="Which sets to keep on the off-site target (longer than the primary's).",
    )
    offsite_mirror_grace_days: float = Field(
        default=7.0,
        ge=0,
        le=365,
        description="An object deleted from a Langfuse bucket is deleted from its off-site "
        "mirror only after this many days.",
    )
    drill_after_backup: bool = Field(
        default=False,
        description="Restore-drill the new set before retention, so it counts as verified "
        "at once. A failed drill fails the run and prunes nothing; the set stays, unverified.",
    )
    dry_run: bool = Field(
        default=False,
        description="Back up, but only show the retention plan (artifact) without deleting. "
        "Pruning is on by default: a daily backup that never prunes fills the bucket.",
    )


class BackupSummary(BaseModel):
    """What the run produced."""

    stack: str
    backup_id: str
    manifest_key: str
    total_bytes: int
    seconds: float
    postgres_rows: int
    clickhouse_rows: int
    deleted_sets: list[str]
    would_delete_sets: list[str]
    kept_complete_sets: int
    newest_verified_set: str | None
    aborted_uploads: int
    report_artifact: str
    offsite_copied_sets: list[str] = Field(default_factory=list)
    offsite_deleted_sets: list[str] = Field(default_factory=list)
    offsite_mirrored_objects: int = Field(
        default=0, description="Langfuse bucket objects copied off-site (new or changed)."
    )


@flow(
    name="backup",
    flow_run_name="backup-{stack}",
    on_failure=[alert_on_failure],
    on_completion=[resolve_on_success],
    persist_result=True,
)
def backup(stack: str = "production", config: BackupConfig | None = None) -> BackupSummary:
    """Back up the stack's Postgres and ClickHouse into one set, then prune old sets."""
    config = config or BackupConfig()
    logger = get_run_logger()
    ops = Stack.load_stack(stack)
    databases = config.clickhouse_databases or [ops.clickhouse_database]
    ensure_backup_slot(ops.stack_name)
    with one_backup_at_a_time(ops.stack_name, config.lock_timeout_s):
        logger.info("== Backup set")
        backup_id = start_backup_set(ops)
        versions = check_pg_dump_version(ops, config.pg_dump_path)

        logger.info("== Postgres")
        dump = dump_postgres(
            ops,
            backup_id,
            versions,
            part_size=config.part_size_mb * 1024 * 1024,
            upload_threads=config.upload_threads,
            timeout_s=config.pg_dump_timeout_s,
            expected_bytes=read_expected_dump_size(ops),
        )

        logger.info("== ClickHouse")
        clickhouse = [
            backup_clickhouse(ops, backup_id, database, timeout_s=config.clickhouse_timeout_s)
            for database in databases
        ]

        logger.info("== Manifest (written last)")
        manifest = write_manifest(ops, backup_id, versions, dump, clickhouse)

        if config.drill_after_backup:
            logger.info("== Quick drill of the new set")
            drill = drill_set(ops, RestoreDrillConfig(backup_id=backup_id))
            if not drill.passed:
                # Before retention: a run whose own set does not restore prunes nothing.
                raise BackupError(
                    f"set {backup_id} is complete but failed its quick drill: it stays, "
                    f"not verified, and nothing was pruned.\n{drill.failure_message()}"
                )

        offsite: OffsiteCopyReport | None = None
        offsite_deleted: list[str] = []
        mirrored: list[BucketMirror] = []
        offsite_error: str | None = None
        if ops.offsite is not None:
            logger.info("== Off-site copy (age-encrypted, to %s)", ops.offsite.describe())
            try:
                offsite = copy_offsite(ops, backup_id)
                offsite_deleted = prune_offsite(
                    ops, backup_id, config.offsite_retention, config.dry_run
                )
                mirrored = mirror_langfuse_buckets(ops, config.offsite_mirror_grace_days)
            except Exception as exc:  # the set is complete: retention and report go on
                offsite_error = ops.error_line(exc, lines="join")
                logger.error("off-site copy failed: %s", offsite_error)

        logger.info("== Retention")
        plan = plan_retention(ops, backup_id, policy=config.retention, dry_run=config.dry_run)
        pruned = apply_retention(ops, plan, config.dry_run)
        report = publish_report(ops, manifest, pruned, plan)

    if offsite_error is not None:
        # One failed run, one alert (the flow's on_failure hook); the next run catches up.
        raise OffsiteError(
            f"backup set {backup_id} is complete on the primary, but its off-site copy "
            f"failed: {offsite_error}. The next backup copies every set missing off-site."
        )
    return BackupSummary(
        stack=stack,
        backup_id=backup_id,
        manifest_key=manifest.key,
        total_bytes=manifest.total_size,
        seconds=(manifest.finished_at - manifest.started_at).total_seconds(),
        postgres_rows=dump.total_rows,
        clickhouse_rows=sum(sum(ch.backup.table_rows.values()) for ch in clickhouse),
        deleted_sets=pruned.deleted_sets,
        would_delete_sets=plan.deleted_sets if config.dry_run else [],
        kept_complete_sets=len(plan.kept_complete),
        newest_verified_set=plan.newest_verified,
        aborted_uploads=pruned.aborted_uploads,
        report_artifact=report,
        offsite_copied_sets=offsite.copied_sets if offsite else [],
        offsite_deleted_sets=offsite_deleted,
        offsite_mirrored_objects=sum(m.copied for m in mirrored),
    )
