"""restore-drill: prove that a backup set restores, and measure how long it takes.

Runs weekly (deployment ``restore-drill/<stack>``, Sunday 04:00 UTC) and on demand with a
``backup_id`` (default: the newest complete set). It verifies the set before trusting it
(manifest and schema version, every object present with its size, the dump's sha256
recomputed while it is read, the ClickHouse descriptor and every file it lists),
restores Postgres into a ``drill_<stack>_<time>_<hex>`` scratch database and each
ClickHouse backup as one, compares the exact row count of every table with the
manifest, checks the tables LiteLLM and Langfuse need, and drops every scratch
database again, whatever happened. Scratch databases of a drill that was killed are
dropped by the next one before it starts.

The report (each check with its reason, RTO per component, RPO, sizes, throughput) is
the artifact ``restore-drill-<stack>``; the verdict is written beside the set, as
``<stack>/<backup-id>/drill.json``, where retention and the backup report read it (and
where it outlives the Prefect database). A failed drill ends Failed and alerts through
the stack's notification routes; a passing one sends a one-line info summary when
``notify_success`` is on. Drills of one stack never overlap (slot
``restore-drill-<stack>``): the backup's quick drill of its new set
(``drill_after_backup``) is the same drill (:func:`drill_set`).

Before writing anything, it checks each copy fits where it goes (ClickHouse's disks, the
Postgres server's configured volume, the worker's disk in download mode) and skips what
does not (``space_unknown`` decides when free space cannot be known). Postgres goes to a
server apart whenever one is configured: ``drill_server_block``, else the stack's drill
server (``DRILL_DATABASE_URL``), else the stack's own.

Blocks: the stack's ``llm-stack`` document; optionally a ``secret`` block holding the
DSN of a separate Postgres server to drill on (``drill_server_block``).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from blocks.stack import Stack
from tasks.decisions.checks import CheckResult, skipped
from tasks.decisions.drill import DrillReport, rpo_seconds, scratch_database_name
from tasks.decisions.manifest import BACKUP_ID_PATTERN, BackupManifest
from tasks.decisions.space import SpacePolicy
from tasks.drill_records import record_drill_verdict
from tasks.errors import IntegrityError
from tasks.notify import alert_on_failure, resolve_on_success
from tasks.restore import (
    REQUIRED_CLICKHOUSE_TABLES,
    REQUIRED_POSTGRES_TABLES,
    PostgresMode,
    ScratchNames,
    check_no_scratch_left,
    check_restore_space,
    describe_drill_target,
    drop_orphan_scratch_databases,
    ensure_drill_slot,
    one_drill_at_a_time,
    publish_drill_report,
    restore_clickhouse,
    restore_postgres,
    scratch_databases,
    send_drill_summary,
    verify_set_objects,
)
from tasks.restore.from_offsite import discard_opened_set, load_set

__all__ = [
    "RestoreDrillConfig",
    "drill_set",
    "restore_drill",
]


class RestoreDrillConfig(BaseModel):
    """What to drill and how."""

    backup_id: str | None = Field(
        default=None,
        pattern=BACKUP_ID_PATTERN,
        description="Backup set to drill (YYYYMMDDTHHMMSSZ-xxxxxx); empty = the newest complete.",
    )
    postgres: bool = Field(default=True, description="Restore and check the Postgres dump.")
    clickhouse: bool = Field(default=True, description="Restore and check ClickHouse backups.")
    drill_server_block: str | None = Field(
        default=None,
        description="Name of a Secret block holding postgresql://USER:PASSWORD@HOST:5432/DB "
        "of a separate server to restore onto; empty = the stack's drill server "
        "(DRILL_DATABASE_URL) if it has one, else the stack's own server.",
    )
    space_unknown: SpacePolicy = Field(
        default="auto",
        description="When free space cannot be known: 'refuse', 'proceed', or 'auto' "
        "(proceed on a separate server, or when the copy needs under 1 GB; else refuse).",
    )
    space_margin: float = Field(
        default=0.2, ge=0, le=5, description="Free space required on top of the estimate."
    )
    postgres_mode: PostgresMode = Field(
        default="download",
        description="'download': to a temporary file (sha256 checked first), then pg_restore "
        "--jobs (measured fastest, see README; needs free disk the size of the dump); "
        "'stream': S3 -> sha256 -> single pg_restore, no disk.",
    )
    jobs: int = Field(default=2, ge=1, le=16, description="pg_restore --jobs in download mode.")
    work_dir: str | None = Field(
        default=None, description="Folder for the temporary dump in download mode."
    )
    restore_timeout_s: int = Field(
        default=4 * 3600, ge=60, le=24 * 3600, description="Limit for each component's restore."
    )
    required_postgres_tables: list[str] = Field(
        default_factory=lambda: list(REQUIRED_POSTGRES_TABLES),
        max_length=200,
        description="'<schema>.<table>' that must exist after the restore.",
    )
    required_clickhouse_tables: list[str] = Field(
        default_factory=lambda: list(REQUIRED_CLICKHOUSE_TABLES),
        max_length=200,
        description="Tables every restored ClickHouse database must have.",
    )
    notify_success: bool = Field(
        default=False, description="Send a one-line info summary when the drill passes."
    )
    source: Literal["primary", "offsite"] = Field(
        default="primary",
        description="Where the set is read from: 'primary' (the stack's bucket) or "
        "'offsite' (decrypted from the off-site target into a scratch bucket first).",
    )
    lock_timeout_s: int = Field(
        default=4 * 3600,
        ge=0,
        le=24 * 3600,
        description="How long to wait for another drill of the same stack to finish.",
    )


@flow(name="restore-drill", on_failure=[alert_on_failure], on_completion=[resolve_on_success])
def restore_drill(
    stack: str = "production", config: RestoreDrillConfig | None = None
) -> DrillReport:
    """Restore a backup set into scratch databases, prove it, drop them, report."""
    config = config or RestoreDrillConfig()
    ops = Stack.load_stack(stack)
    report = drill_set(ops, config)
    if not report.passed:
        raise IntegrityError(report.failure_message())
    if config.notify_success:
        send_drill_summary(ops, report)
    return report


def drill_set(ops: Stack, config: RestoreDrillConfig) -> DrillReport:
    """The drill itself, inside a flow run: one at a time, reported, its verdict recorded.

    Returns the report whatever the verdict; the caller decides what a failure ends.
    """
    logger = get_run_logger()
    ensure_drill_slot(ops.stack_name)
    with one_drill_at_a_time(ops.stack_name, config.lock_timeout_s):
        report, manifest = _drill(ops, config)
    publish_drill_report(ops, report)
    logger.info("%s", report.summary_line())
    # A set with no trusted manifest gets no record (one would make a missing set look
    # present), and only a drill of every component may call a set verified.
    # A drill of the off-site copy proves that copy, not the primary's set: not recorded
    # beside the primary set (which may not even exist any more).
    if manifest is not None and config.postgres and config.clickhouse:
        if config.source == "primary":
            record_drill_verdict(ops, report)
    elif manifest is not None:
        logger.info("partial drill (postgres=%s, clickhouse=%s): verdict not recorded",
                    config.postgres, config.clickhouse)  # fmt: skip
    return report


def _drill(ops: Stack, config: RestoreDrillConfig) -> tuple[DrillReport, BackupManifest | None]:
    logger = get_run_logger()
    started = datetime.now(UTC)
    drill_target = describe_drill_target(ops, config.drill_server_block)

    logger.info("== cleaning up after earlier drills")
    drop_orphan_scratch_databases(ops, config.drill_server_block, config.clickhouse)

    logger.info("== verifying the backup set (%s)", config.source)
    # Everything that reads the set reads it through `source`: the stack itself, or the
    # stack reading the scratch bucket an off-site set was opened into.
    source, found = load_set(ops, config.backup_id, config.source)
    checks: list[CheckResult] = [found.check]
    timings = []
    manifest = found.manifest
    ch_backups = manifest.clickhouse if manifest and config.clickhouse else []
    names = ScratchNames(
        stack=ops.stack_name,
        server_block=config.drill_server_block,
        postgres=scratch_database_name(ops.stack_name, started, secrets.token_hex(3)),
        clickhouse=[
            scratch_database_name(ops.stack_name, started, secrets.token_hex(3)) for _ in ch_backups
        ],
    )
    try:
        if manifest is not None:
            verified = verify_set_objects(source, manifest)
            checks += verified.checks
            logger.info("== checking each copy fits before writing anything")
            space = check_restore_space(
                ops,
                manifest,
                purpose="drill",
                server_block=config.drill_server_block,
                postgres=config.postgres and verified.postgres.passed,
                clickhouse=[b for b in ch_backups if verified.clickhouse_ok(b.database)],
                mode=config.postgres_mode,
                work_dir=config.work_dir,
                margin=config.space_margin,
                policy=config.space_unknown,
            )
            checks += space.checks
            with scratch_databases(ops, names):
                if config.postgres and verified.postgres.passed and space.fits("postgres"):
                    logger.info("== restoring Postgres into %s", names.postgres)
                    pg = restore_postgres(
                        source,
                        config.drill_server_block,
                        manifest=manifest,
                        database=names.postgres,
                        mode=config.postgres_mode,
                        jobs=config.jobs,
                        timeout_s=config.restore_timeout_s,
                        work_dir=config.work_dir,
                        required_tables=config.required_postgres_tables,
                    )
                    checks += pg.checks
                    timings += [pg.timing] if pg.timing else []
                elif config.postgres:
                    why = "no room (see postgres-free-space)" if verified.postgres.passed else None
                    checks.append(
                        skipped(
                            "postgres-restore",
                            why or "dump failed verification",
                            component="postgres",
                        )
                    )
                for backup, target in zip(ch_backups, names.clickhouse, strict=True):
                    ok = verified.clickhouse_ok(backup.database)
                    why = None if ok else "backup failed verification"
                    if why is None and not space.fits("clickhouse"):
                        why = "no room (see clickhouse-free-space)"
                    if why is not None:
                        checks.append(
                            skipped(
                                f"clickhouse-restore[{backup.database}]",
                                why,
                                component="clickhouse",
                            )
                        )
                        continue
                    logger.info("== restoring ClickHouse %s into %s", backup.database, target)
                    ch = restore_clickhouse(
                        source,
                        backup,
                        target=target,
                        timeout_s=config.restore_timeout_s,
                        required_tables=config.required_clickhouse_tables,
                    )
                    checks += ch.checks
                    timings += [ch.timing] if ch.timing else []
            checks.append(check_no_scratch_left(ops, names))
    finally:
        if source is not ops and manifest is not None:
            discarded = discard_opened_set(source, manifest.backup_id)
            logger.info("removed the opened off-site set (%d objects)", discarded)

    finished = datetime.now(UTC)
    report = DrillReport(
        stack=ops.stack_name,
        backup_id=manifest.backup_id if manifest else config.backup_id,
        started_at=started,
        finished_at=finished,
        drill_target=drill_target,
        postgres_mode=config.postgres_mode,
        checks=checks,
        timings=timings,
        rpo_seconds=rpo_seconds(manifest.finished_at, started) if manifest else None,
        set_size=manifest.total_size if manifest else None,
        scratch_databases=[names.postgres, *names.clickhouse],
    )
    return report, manifest
