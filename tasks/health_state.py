"""The health sweep's side of the Prefect API: its state, its status, its events.

Everything the sweep remembers lives in Prefect Variables (JSON, at most 5,000
characters each), not in the worker's memory, so a restarted or replaced worker
continues the count where the last sweep left it:

    health-state-<stack>     the alert machine's :class:`~tasks.decisions.alerting.StackState`
    health-status-<stack>    the latest :class:`HealthStatusDoc`, for /health, /metrics
                             and anyone with API access
    health-silences-<stack>  a list of :class:`~tasks.decisions.alerting.Silence`, set by operators

Variables have no compare-and-swap; writing them is safe because one sweep per stack
runs at a time (deployment concurrency limit 1).

Both variables fit Prefect's limit by construction: Prefect refuses a value whose JSON
(``orjson``, UTF-8) passes 5,000 characters, and reasons can be any text (response
bodies, non-ASCII, quotes, control characters). Everything else in the state has a size
set by the number of services, so :func:`fit_variable` keeps reasons as long as Prefect
accepts, shortening them step by step down to none, checked with Prefect's own
validator: a sweep never fails to save, so it never fails to alert.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.events import emit_event
from prefect.logging import get_run_logger
from prefect.types import MAX_VARIABLE_VALUE_LENGTH, check_variable_value
from prefect.variables import Variable
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from blocks.stack import Stack
from tasks.decisions.alerting import (
    MAX_REASON,
    Silence,
    StackState,
    StatusChange,
    with_reasons_cut,
    worst_status,
)
from tasks.decisions.health import HealthStatus, ServiceHealth

__all__ = [
    "MAX_VARIABLE_CHARS",
    "REASON_BUDGETS",
    "HealthStatusDoc",
    "ServiceStatusDoc",
    "SweepInputs",
    "emit_status_events",
    "event_resource_id",
    "fit_variable",
    "load_sweep_inputs",
    "publish_health",
    "read_status",
    "set_silences",
    "silences_variable",
    "state_value",
    "state_variable",
    "status_doc",
    "status_value",
    "status_variable",
    "sweep_lateness_s",
]

MAX_VARIABLE_CHARS = MAX_VARIABLE_VALUE_LENGTH
# Characters of each reason kept, tried in order until the variable fits.
REASON_BUDGETS: tuple[int, ...] = (MAX_REASON, 96, 48, 16, 0)
_SILENCES = TypeAdapter(list[Silence])


def state_variable(stack: str) -> str:
    return f"health-state-{stack}"


def status_variable(stack: str) -> str:
    return f"health-status-{stack}"


def silences_variable(stack: str) -> str:
    return f"health-silences-{stack}"


def event_resource_id(stack: str, service: str) -> str:
    return f"ops.health.{stack}.{service}"


class ServiceStatusDoc(BaseModel):
    service: str
    status: HealthStatus
    latency_ms: float
    reason: str
    since: datetime | None = None
    alerting: bool = Field(default=False, description="An incident is open for it.")
    measures: dict[str, float] = Field(
        default_factory=dict, description="What the probe measured (ops_probe_* metrics)."
    )


class HealthStatusDoc(BaseModel):
    """The latest status of a stack, as published after every sweep."""

    stack: str
    checked_at: datetime
    overall: HealthStatus
    sweeps: int
    notifications_sent: int
    channel_failures: int
    services: list[ServiceStatusDoc]


def sweep_lateness_s() -> float:
    """Seconds between this run's scheduled time and now (0 for a run started by hand)."""
    from prefect.runtime import flow_run

    scheduled: datetime = flow_run.scheduled_start_time
    return max(0.0, (datetime.now(UTC) - scheduled).total_seconds())


class SweepInputs(BaseModel):
    """What a sweep starts from: the stack, the previous state, the active silences."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stack: Stack
    state: StackState
    silences: list[Silence]


# One task for the three reads: every task run is rows and events in the Prefect
# database, 1,440 times a day per stack.
@task(name="load-sweep-inputs", persist_result=False, retries=1, retry_delay_seconds=1)
async def load_sweep_inputs(name: str) -> SweepInputs:
    """The stack block, the alert state the previous sweep left, the active silences."""
    logger = get_run_logger()
    stack = await Stack.aload_stack(name)
    raw_state = await Variable.aget(state_variable(name))
    try:
        state = StackState.model_validate(raw_state) if raw_state else StackState()
    except ValidationError:
        # A state we cannot read (hand-edited, older format) restarts the count; that
        # delays an alert by at most alert_after sweeps, it never loses a silence.
        logger.warning("alert state of %s unreadable: starting a fresh count", name)
        state = StackState()
    raw_silences = await Variable.aget(silences_variable(name))
    silences: list[Silence] = []
    if raw_silences:
        try:
            silences = _SILENCES.validate_python(raw_silences)
        except ValidationError as exc:
            logger.error(
                "variable %s is not a list of {service, until, reason}: %s; no silence applies",
                silences_variable(name),
                exc.errors(include_input=False)[0]["msg"],
            )
    now = datetime.now(UTC)
    active = [s for s in silences if s.until > now]
    for silence in active:
        logger.info(
            "silenced until %s: %s (%s)",
            silence.until.isoformat(),
            silence.service or "the whole stack",
            silence.reason or "no reason given",
        )
    return SweepInputs(stack=stack, state=state, silences=active)


def status_doc(
    stack: str, state: StackState, results: list[ServiceHealth], reason_chars: int = MAX_REASON
) -> HealthStatusDoc:
    return HealthStatusDoc(
        stack=stack,
        checked_at=state.last_sweep or datetime.now(UTC),
        overall=worst_status([r.status for r in results]),
        sweeps=state.sweeps,
        notifications_sent=state.notifications_sent,
        channel_failures=state.channel_failures,
        services=[
            ServiceStatusDoc(
                service=r.service,
                status=r.status,
                latency_ms=r.latency_ms,
                reason=r.reason[:reason_chars],
                since=state.services[r.service].since if r.service in state.services else None,
                alerting=state.services[r.service].open if r.service in state.services else False,
                measures=r.measures,
            )
            for r in results
        ],
    )


def fit_variable(name: str, value_with_reasons: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    """The longest-reason version of a value that Prefect accepts as a variable.

    ``value_with_reasons(chars)`` builds the JSON value with reasons cut to ``chars``.
    Raises only if even reasonless the value is too big, which the property tests show
    cannot happen for the services a stack has.
    """
    for chars in REASON_BUDGETS:
        value = value_with_reasons(chars)
        try:
            check_variable_value(value)
        except ValueError:
            continue
        return value
    raise ValueError(f"variable {name} does not fit Prefect's {MAX_VARIABLE_CHARS:,} characters")


def state_value(state: StackState) -> dict[str, Any]:
    """The alert state as stored: it fits Prefect's limit."""
    return fit_variable("health-state", lambda chars: with_reasons_cut(state, chars).packed())


def status_value(stack: str, state: StackState, results: list[ServiceHealth]) -> dict[str, Any]:
    """The status document as stored: it fits Prefect's limit."""
    return fit_variable(
        "health-status",
        lambda chars: status_doc(stack, state, results, chars).model_dump(mode="json"),
    )


@task(name="publish-health", persist_result=False, retries=1, retry_delay_seconds=1)
async def publish_health(stack: str, state: StackState, results: list[ServiceHealth]) -> None:
    """Persist the alert state, then the latest status for readers of the API."""
    await Variable.aset(state_variable(stack), state_value(state), overwrite=True)
    await Variable.aset(
        status_variable(stack),
        status_value(stack, state, results),
        overwrite=True,
    )


@task(name="emit-status-events", persist_result=False)
def emit_status_events(
    stack: str, changes: list[StatusChange], results: list[ServiceHealth]
) -> int:
    """One event per status change: ``ops.health.<status>`` on ``ops.health.<stack>.<service>``.

    Users' automations match on these (e.g. event ``ops.health.unhealthy`` with
    ``ops.stack = production``).
    """
    from prefect.runtime import flow_run

    latency = {r.service: r.latency_ms for r in results}
    related = [{"prefect.resource.id": f"ops.stack.{stack}", "prefect.resource.role": "stack"}]
    if flow_run.id:
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                "prefect.resource.role": "flow-run",
            }
        )
    for change in changes:
        emit_event(
            event=f"ops.health.{change.status}",
            resource={
                "prefect.resource.id": event_resource_id(stack, change.service),
                "prefect.resource.name": f"{stack}/{change.service}",
                "ops.stack": stack,
                "ops.service": change.service,
            },
            related=related,
            payload={
                "previous": change.previous,
                "status": change.status,
                "reason": change.reason,
                "latency_ms": latency.get(change.service),
            },
        )
    return len(changes)


async def read_status(stack: str) -> HealthStatusDoc | None:
    """The latest published status of ``stack`` (None before its first sweep)."""
    raw = await Variable.aget(status_variable(stack))
    return HealthStatusDoc.model_validate(raw) if raw else None


async def set_silences(stack: str, silences: list[Silence]) -> None:
    """Replace the silences of ``stack`` (operators can also edit the variable in the UI)."""
    await Variable.aset(
        silences_variable(stack),
        _SILENCES.dump_python(silences, mode="json"),
        overwrite=True,
    )
