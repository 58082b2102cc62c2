"""health-sweep: check every service of a stack at once, tell people once, resolve.

Runs every 60 seconds per stack (deployment ``health-sweep/<stack>``, concurrency
limit 1 with CANCEL_NEW, so a sweep due while one still runs is dropped, never
queued). Every check runs concurrently with its own timeout, so a sweep takes at
most about ``timeout_s`` however many services hang. A run that starts more than
``max_lateness_s`` after its scheduled time (the worker was down, runs piled up)
exits at once, in a Completed-type state named ``Skipped``: only the current sweep
does work, and the watcher (which waits for a ``Completed`` sweep) is not satisfied by
sweeps that checked nothing.

Then the alert state machine (``tasks/decisions/alerting.py``) decides, from the state the
previous sweep left, what to tell: one grouped message per sweep, routed by severity
through the stack's notification blocks (unhealthy to every channel including the
pager, degraded to chat), one Prefect event per status change, and the latest status
as JSON in a Prefect Variable.

Blocks: ``llm-stack/<stack>`` and the notification block documents its routes name.
Variables (per stack, readable through the Prefect API):

    health-state-<stack>     the alert machine's state (a restarted worker continues)
    health-status-<stack>    the latest status of every service, as JSON
    health-silences-<stack>  maintenance silences, written by operators:
                             [{"service": "postgres" | null, "until": "<ISO time>",
                               "reason": "..."}]

No ``on_failure`` alert: a sweep failing every minute would page every minute. The
bootstrap's watcher automation ("no health sweep completed in 5 minutes") covers a
broken or stopped monitor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.logging import get_run_logger
from prefect.states import Completed
from pydantic import BaseModel, Field, field_validator

from tasks.decisions.alerting import (
    AlertPolicy,
    StatusChange,
    closing_switched_off,
    decide,
    worst_status,
)
from tasks.decisions.delivery import (
    group_notices,
    plan_sends,
    record_delivery,
    undelivered_critical,
)
from tasks.decisions.health import SERVICES, HealthStatus, ServiceHealth
from tasks.decisions.queues import GrowthLimits, with_backlog_growth
from tasks.decisions.redaction import error_line
from tasks.errors import HealthSweepError
from tasks.health import HealthThresholds, check_services
from tasks.health_state import (
    SweepInputs,
    emit_status_events,
    load_sweep_inputs,
    publish_health,
    sweep_lateness_s,
)
from tasks.heartbeat import ping
from tasks.notify import (
    DeliveryReport,
    redact_urls,
    report_undeliverable,
    run_link,
    send_alerts,
)

__all__ = [
    "SKIPPED",
    "HealthSweepConfig",
    "SweepSummary",
    "health_sweep",
    "sweep_stack",
]


# The name of a sweep that ran too late and checked nothing (state type COMPLETED).
SKIPPED = "Skipped"


class HealthSweepConfig(BaseModel):
    """How a sweep checks and when it alerts; production values live in prefect.yaml."""

    timeout_s: float = Field(
        default=5.0, ge=0.5, le=20, description="Per-check timeout; the sweep's upper bound."
    )
    services: list[str] | None = Field(
        default=None, description="Services to check (default: every one the sweep knows)."
    )
    skip: list[str] = Field(
        default_factory=list,
        description="Services not to check: switches a probe off (e.g. 'langfuse-queues').",
    )
    max_lateness_s: float = Field(
        default=45,
        ge=5,
        le=3600,
        description="A run starting this long after its scheduled time is stale and exits "
        "at once, so missed sweeps do not run one after another after downtime.",
    )
    policy: AlertPolicy = Field(default_factory=AlertPolicy)
    thresholds: HealthThresholds = Field(default_factory=HealthThresholds)

    @field_validator("services", "skip")
    @classmethod
    def _known(cls, names: list[str] | None) -> list[str] | None:
        unknown = sorted(set(names or ()) - set(SERVICES))
        if unknown:
            raise ValueError(
                f"unknown service(s) {', '.join(unknown)}: use names from {', '.join(SERVICES)}"
            )
        return names

    def checked(self, switched_off: Iterable[str] = ()) -> list[str]:
        """The services a sweep checks: ``services`` (or all) less ``skip`` and the probes
        the stack's config switches off (``OPS_PROBES_OFF``)."""
        off = set(self.skip) | set(switched_off)
        return [s for s in (self.services or SERVICES) if s not in off]


class SweepSummary(BaseModel):
    """What one sweep saw and told."""

    stack: str
    skipped: bool = Field(default=False, description="Stale run that exited at once.")
    error: str | None = Field(
        default=None, description="Why this stack could not be swept (others were)."
    )
    overall: HealthStatus = "healthy"
    checks: list[ServiceHealth] = Field(default_factory=list)
    changes: list[StatusChange] = Field(default_factory=list)
    notices: int = 0
    channels_sent: int = 0
    channels_failed: int = 0
    others: list[SweepSummary] = Field(
        default_factory=list, description="Summaries of more_stacks, if any."
    )


@flow(
    name="health-sweep",
    timeout_seconds=50,
    persist_result=False,  # 1,440 runs a day: no result files
    log_prints=False,
)
async def health_sweep(
    stack: str = "production",
    config: HealthSweepConfig | None = None,
    more_stacks: list[str] | None = None,
) -> SweepSummary | State[SweepSummary]:
    """Check every service of ``stack`` (and ``more_stacks``) concurrently; alert; publish.

    ``more_stacks`` lets one run sweep many stacks in one process: a process worker
    spends seconds of CPU starting each flow run, which 50 one-stack deployments a
    minute would not fit into a small worker (see the README's figures). A stack whose
    block does not load or whose sweep raises fails on its own: the others are swept
    and alerted, then the run ends Failed naming the broken stacks.
    """
    config = config or HealthSweepConfig()
    lateness = sweep_lateness_s()
    if lateness > config.max_lateness_s:
        message = (
            f"skipped: this sweep was due {lateness:.0f} s ago (limit "
            f"{config.max_lateness_s:.0f} s); the current one runs"
        )
        get_run_logger().warning("%s", message)
        # Not "Completed": the watcher waits for a Completed sweep, and this one checked
        # nothing. The state's type is COMPLETED (nothing failed), its name and event say
        # what happened (prefect.flow-run.Skipped).
        return Completed(
            name=SKIPPED, message=message, data=SweepSummary(stack=stack, skipped=True)
        )
    names = [stack, *(more_stacks or [])]
    outcomes = await asyncio.gather(
        *(sweep_stack(name, config) for name in names), return_exceptions=True
    )
    summaries: list[SweepSummary] = []
    broken: list[str] = []
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome  # cancellation and the like end the run as they should
            # One stack's failure is its own: the others were swept and alerted as usual.
            reason = error_line(outcome, redact_urls, limit=300)  # no block: cut URLs
            get_run_logger().error("stack %s could not be swept: %s", name, reason)
            broken.append(f"{name} ({reason})")
            summaries.append(SweepSummary(stack=name, error=reason))
        else:
            summaries.append(outcome)
    first, *others = summaries
    if broken:
        swept = len(names) - len(broken)
        rest = f" The other {swept} were swept and alerted as usual." if swept else ""
        raise HealthSweepError(
            f"{len(broken)} of {len(names)} stack(s) could not be swept: {'; '.join(broken)}.{rest}"
        )
    return first.model_copy(update={"others": others})


async def sweep_stack(stack: str, config: HealthSweepConfig) -> SweepSummary:
    """One stack: check, decide, tell, record; the heartbeat pings around it."""
    inputs = await load_sweep_inputs(stack)
    run_id = _flow_run_id()
    await ping(inputs.stack, "start", run_id=run_id)
    try:
        summary = await _check_and_tell(stack, inputs, config, run_id)
    except Exception as exc:
        reason = inputs.stack.error_line(exc, limit=500)
        await ping(inputs.stack, "fail", run_id=run_id, body=reason)
        raise
    await ping(inputs.stack, "success", run_id=run_id)
    return summary


async def _check_and_tell(
    stack: str, inputs: SweepInputs, config: HealthSweepConfig, run_id: str | None
) -> SweepSummary:
    off = [*config.skip, *inputs.stack.probes_off]
    results = await check_services(
        inputs.stack, config.timeout_s, config.checked(off), config.thresholds
    )
    results += closing_switched_off(inputs.state, off)

    now = datetime.now(UTC)
    th = config.thresholds
    results, backlog = with_backlog_growth(
        results,
        inputs.state.backlog,
        now,
        GrowthLimits(
            growth_sweeps=th.queue_growth_sweeps,
            growth_degraded_jobs=th.queue_growth_degraded_jobs,
            growth_unhealthy_jobs=th.queue_growth_unhealthy_jobs,
            max_gap_s=th.queue_growth_max_gap_s,
        ),
    )
    decision = decide(inputs.state, results, now, config.policy, inputs.silences)
    # One message per channel: this sweep's notices it takes, plus what it refused before.
    routes = inputs.stack.notifications
    plan = plan_sends(decision.state, decision.notices, routes)
    link = run_link(inputs.stack, run_id)
    alerts = {
        block: alert
        for block, notices in plan.items()
        if (alert := group_notices(stack, decision.model_copy(update={"notices": notices}), link))
    }
    report = await send_alerts(inputs.stack, alerts) if alerts else DeliveryReport.nothing()
    accepted = {r.block: r.ok for r in report.results}
    state = record_delivery(decision.state, plan, accepted, routes)
    state = state.model_copy(
        update={
            "notifications_sent": state.notifications_sent + report.sent,
            "channel_failures": state.channel_failures + report.failed,
            "backlog": backlog,
        }
    )
    lost = undelivered_critical(decision.notices, plan, accepted)
    if lost:
        report_undeliverable(
            stack,
            "health-sweep",
            f"{len(lost)} critical notice(s) reached no channel: "
            + ", ".join(f"{n.service} {n.kind}" for n in lost)
            + "; they are sent again on the next sweeps until a channel accepts",
            run_id,
        )
    if decision.changes:
        emit_status_events(stack, decision.changes, results)
    await publish_health(stack, state, results)

    overall = worst_status([r.status for r in results])
    get_run_logger().info(
        "stack %s %s: %d changed, %d notices, %d channel(s) failed",
        stack,
        overall,
        len(decision.changes),
        len(decision.notices),
        report.failed,
    )
    return SweepSummary(
        stack=stack,
        overall=overall,
        checks=results,
        changes=decision.changes,
        notices=len(decision.notices),
        channels_sent=report.sent,
        channels_failed=report.failed,
    )


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None
