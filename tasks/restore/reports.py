"""Reports: a drill's report and summary line, and a restore's report, as Prefect artifacts.

Everything published is scrubbed of the stack's secrets first.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.stack import Stack
from tasks.decisions.drill import DrillReport
from tasks.restore.swap import RestoredTarget

__all__ = ["publish_drill_report", "publish_restore_report", "send_drill_summary"]


@task(name="publish-drill-report", cache_policy=NO_CACHE)
def publish_drill_report(stack: Stack, report: DrillReport) -> str:
    """The report as a markdown artifact under ``restore-drill-<stack>`` (history in the UI)."""
    from prefect.artifacts import create_markdown_artifact

    key = f"restore-drill-{stack.stack_name}"
    create_markdown_artifact(
        key=key,
        markdown=stack.scrub(report.to_markdown()),
        description=stack.scrub(report.summary_line()),
    )
    return key


@task(name="send-drill-summary", cache_policy=NO_CACHE)
def send_drill_summary(stack: Stack, report: DrillReport) -> int:
    """One info-severity line for a passing drill; returns how many channels took it."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    from tasks.decisions.alerts import Alert
    from tasks.notify import deliver

    line = report.summary_line()
    alert = Alert(
        stack=stack.stack_name,
        source="restore-drill",
        title=line,
        body=line,
        severity="info",
        kind="info",
    )
    delivered = run_coro_as_sync(deliver(stack, alert))
    return delivered.sent if delivered is not None else 0


@task(name="publish-restore-report", cache_policy=NO_CACHE)
def publish_restore_report(
    stack: Stack, backup_id: str, restored: list[RestoredTarget], steps: list[str]
) -> str:
    from prefect.artifacts import create_markdown_artifact

    key = f"restore-{stack.stack_name}"
    lines = [f"# Restore of {stack.stack_name} from set `{backup_id}`", ""]
    for item in restored:
        verdict = "restored" if item.passed else "FAILED (target untouched)"
        lines.append(f"## {item.engine} -> `{item.target}`: {verdict}")
        if item.previous:
            lines.append(f"- the replaced database is kept as `{item.previous}`")
        if item.timing:
            lines.append(
                f"- restore {item.timing.restore_seconds:.1f}s, "
                f"{item.timing.throughput_mb_s:.1f} MB/s"
            )
        lines += [f"- {c.name}: {c.status}: {c.message}" for c in item.checks]
        lines.append("")
    lines += ["## Next steps", *[f"{i}. {s}" for i, s in enumerate(steps, 1)]]
    create_markdown_artifact(key=key, markdown=stack.scrub("\n".join(lines)))
    return key
