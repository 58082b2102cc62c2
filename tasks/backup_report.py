"""The backup report: what the set holds, what retention did, and each set's drill verdict.

Published as the markdown artifact ``backup-report-<stack>``, scrubbed of the stack's
secrets. The verdicts are those retention read from each set's ``drill.json``.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from blocks.stack import Stack
from tasks.backup import RetentionResult, first_few
from tasks.decisions.drill_record import verdict_text
from tasks.decisions.manifest import BackupManifest
from tasks.decisions.retention import RetentionPlan

__all__ = ["SETS_SHOWN", "drill_verdict_lines", "publish_report", "render_report"]

# Complete sets listed with their verdicts in the report, newest first; the rest counted.
SETS_SHOWN = 30


def render_report(manifest: BackupManifest, prune: RetentionResult, plan: RetentionPlan) -> str:
    """The backup's report in markdown: sizes, durations, throughput, row counts."""
    pg = manifest.postgres
    total_s = (manifest.finished_at - manifest.started_at).total_seconds()
    lines = [
        f"# Backup {manifest.backup_id} of {manifest.stack}",
        "",
        f"Set `{manifest.bucket}/{manifest.prefix}`, {manifest.total_size / 1e6:.1f} MB, "
        f"{total_s:.1f} s end to end. Manifest written last: the set is complete.",
        "",
        "| part | size | seconds | throughput | rows |",
        "|---|---:|---:|---:|---:|",
        f"| Postgres `{pg.database}` (pg_dump {pg.pg_dump_version}, server {pg.server_version}) "
        f"| {pg.dump_size / 1e6:.1f} MB | {pg.seconds:.1f} | "
        f"{pg.dump_size / 1e6 / max(pg.seconds, 1e-6):.1f} MB/s | {pg.total_rows} |",
    ]
    for ch in manifest.clickhouse:
        lines.append(
            f"| ClickHouse `{ch.database}` ({ch.server_version}) | {ch.size / 1e6:.1f} MB | "
            f"{ch.seconds:.1f} | {ch.size / 1e6 / max(ch.seconds, 1e-6):.1f} MB/s | "
            f"{sum(ch.table_rows.values())}{'' if ch.rows_exact else ' (changed during backup)'} |"
        )
    lines += ["", "## Objects", "", "| key | size | sha256 |", "|---|---:|---|"]
    lines += [f"| `{o.key}` | {o.size} | `{o.sha256}` |" for o in manifest.objects]
    lines += ["", f"## Postgres rows in snapshot `{pg.snapshot_id}`", "", "| table | rows |",
              "|---|---:|"]  # fmt: skip
    lines += [f"| `{name}` | {rows} |" for name, rows in sorted(pg.table_rows.items())]
    for ch in manifest.clickhouse:
        lines += ["", f"## ClickHouse `{ch.database}` rows", "", "| table | rows |", "|---|---:|"]
        lines += [f"| `{name}` | {rows} |" for name, rows in sorted(ch.table_rows.items())]
    verb = "would delete" if prune.dry_run else "deleted"
    deleted = plan.deleted_sets if prune.dry_run else prune.deleted_sets
    lines += [
        "",
        "## Retention",
        "",
        f"{len(plan.kept_complete)} complete sets kept; {verb} {len(deleted)} sets "
        f"({first_few(deleted)}); {len(plan.aborts)} unfinished uploads "
        f"{'to abort' if prune.dry_run else 'aborted'}. "
        f"Plan: artifact `backup-retention-{manifest.stack}`.",
    ]
    return "\n".join(lines + drill_verdict_lines(plan))


def drill_verdict_lines(plan: RetentionPlan) -> list[str]:
    """Each complete set, newest first, with its newest drill verdict (``drill.json``)."""
    newest = plan.newest_verified
    mode = (
        "counts only sets that passed a restore drill (`require_verified`): newest verified "
        f"set {f'`{newest}`' if newest else 'none yet, so the plain rules decide'}"
        if plan.policy.verified_only
        else "counts every complete set (`require_verified` off)"
    )
    lines = ["", "## Drill verdicts", "", f"Retention {mode}.", "",
             "| set | drill | retention |", "|---|---|---|"]  # fmt: skip
    complete = sorted((d for d in plan.sets if d.complete), key=lambda d: d.backup_id, reverse=True)
    shown = complete[:SETS_SHOWN]
    lines += [
        f"| `{d.backup_id}` | {verdict_text(d.drill)} | "
        f"{'DELETE' if d.action == 'delete' else 'keep'} |"
        for d in shown
    ]
    if len(complete) > len(shown):
        lines.append(f"| ... and {len(complete) - len(shown)} more | | |")
    return lines


@task(name="publish-backup-report", cache_policy=NO_CACHE)
def publish_report(
    stack: Stack, manifest: BackupManifest, prune: RetentionResult, plan: RetentionPlan
) -> str:
    key = f"backup-report-{stack.stack_name}"
    create_markdown_artifact(
        key=key,
        markdown=stack.scrub(render_report(manifest, prune, plan)),
        description=f"Backup {manifest.backup_id}: {manifest.total_size / 1e6:.1f} MB",
    )
    return key
