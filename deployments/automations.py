"""The three automations of a stack, created or updated by name on the Prefect server.

- ``ops-failure/<stack>``: a run of one of our deployments of the stack that ends
  Crashed notifies every channel of the stack, with a link to the run. Crashed is what
  flow code cannot report itself: a killed process, a dead worker, a pod evicted. Failed
  and TimedOut runs are reported by the flow's own ``on_failure`` hook
  (``tasks.notify.alert_on_failure``), which knows the cause; letting the automation
  fire on them too would send every failure twice. ``health-sweep`` is left out: a
  sweep that crashes every minute would page every minute, and the watcher below
  already says, once per window, that no sweep completes.
- ``ops-watcher/<stack>``: who watches the watcher. A proactive trigger expects a
  Completed ``health-sweep`` run of the stack within the window (5 minutes by default);
  when none arrives, the sweeps have stopped (worker down, schedule paused, sweep
  broken) and the stack's channels hear about it once per window.
- ``ops-undeliverable/<stack>``: a failed run whose own alert reached no channel (the
  stack block did not load, every channel refused, no route takes critical alerts)
  emits ``ops.alert.undeliverable`` from its ``on_failure`` hook
  (``tasks.notify.report_undeliverable``); the server notifies the channels it can
  reach, so a failure is never silent.

All run inside ``prefect server start``, so they only use built-in notification blocks
(the server cannot import ours): routes of the stack block whose type is not built in
are left out with a warning. Scope is by related resources: the flow (one of ours) and
the deployment (named after the stack); for undeliverable alerts, the stack resource
``ops.stack.<stack>`` of the event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal
from uuid import UUID

from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification
from prefect.client.orchestration import PrefectClient

from deployments.settings import FLOWS, HEALTH_SWEEP_FLOW

__all__ = [
    "FAILURE_BODY",
    "FAILURE_EVENTS",
    "FAILURE_FLOWS",
    "FAILURE_SUBJECT",
    "UNDELIVERABLE_BODY",
    "UNDELIVERABLE_EVENT",
    "UNDELIVERABLE_SUBJECT",
    "WATCHER_BODY",
    "WATCHER_SUBJECT",
    "AutomationResult",
    "Outcome",
    "apply_automation",
    "automation_names",
    "failure_automation",
    "failure_name",
    "undeliverable_automation",
    "undeliverable_name",
    "watcher_automation",
    "watcher_name",
]

FAILURE_EVENTS = frozenset({"prefect.flow-run.Crashed"})
# Emitted by tasks.notify.report_undeliverable (kept equal to its UNDELIVERABLE_EVENT).
UNDELIVERABLE_EVENT = "ops.alert.undeliverable"
# Flows whose crashes page; health-sweep is covered by the watcher instead.
FAILURE_FLOWS = sorted(set(FLOWS) - {HEALTH_SWEEP_FLOW})

# Jinja, rendered by the server with the run that triggered the automation.
FAILURE_SUBJECT = "{{ flow.name }} run {{ flow_run.name }} ended {{ flow_run.state.name }}"
FAILURE_BODY = (
    "Flow run {{ flow_run.name }} of {{ flow.name }}/{{ deployment.name }} "
    "ended {{ flow_run.state.name }}: {{ flow_run.state.message }}\n"
    "Run: {{ flow_run|ui_url }}\n"
    "Retry it from the run's page (Retry) or with `prefect flow-run retry <run-id>`; "
    "tasks that had completed are not run again."
)
UNDELIVERABLE_SUBJECT = "[{stack}] a failed run could not alert: {{{{ event.payload.source }}}}"
UNDELIVERABLE_BODY = (
    "{{{{ event.payload.reason }}}}\n"
    "The flow's own alert reached no channel of stack {stack}: check the stack block "
    "{stack!r} (Blocks -> LLM Stack), its notification routes and the channels' "
    "block documents, then the run's logs."
)
WATCHER_SUBJECT = "[{stack}] no health sweep completed in {window}"
WATCHER_BODY = (
    "No run of health-sweep/{stack} completed in the last {window}: the stack is not being "
    "watched. Check that the prefect-worker service is running, that the deployment "
    "health-sweep/{stack} and its schedule are not paused, and the latest sweep runs "
    "for errors.{link}"
)


def failure_name(stack: str) -> str:
    return f"ops-failure/{stack}"


def watcher_name(stack: str) -> str:
    return f"ops-watcher/{stack}"


def undeliverable_name(stack: str) -> str:
    return f"ops-undeliverable/{stack}"


def automation_names(stack: str) -> list[str]:
    """Every automation the bootstrap manages for ``stack``."""
    return [failure_name(stack), watcher_name(stack), undeliverable_name(stack)]


def _window_text(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    if seconds % 60 == 0:
        minutes = seconds // 60
        return f"{minutes} minute" + ("" if minutes == 1 else "s")
    return f"{seconds} seconds"


def _notify(block_ids: list[UUID], subject: str, body: str) -> list[SendNotification]:
    return [
        SendNotification(block_document_id=block_id, subject=subject, body=body)
        for block_id in block_ids
    ]


def failure_automation(stack: str, block_ids: list[UUID]) -> AutomationCore:
    """Crashed runs of our deployments of ``stack`` (but health-sweep) notify."""
    return AutomationCore(
        name=failure_name(stack),
        description=(
            f"A run of an ops deployment of stack {stack!r} crashed (its process or "
            "worker died): notify the stack's channels with a link to the run. Failed "
            "runs alert from the flow itself, with the cause. "
            "Managed by `python -m deployments.bootstrap`; edits here are overwritten."
        ),
        tags=["ops", f"stack:{stack}"],
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=[
                {"prefect.resource.role": "flow", "prefect.resource.name": FAILURE_FLOWS},
                {"prefect.resource.role": "deployment", "prefect.resource.name": stack},
            ],
            expect=set(FAILURE_EVENTS),
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=_notify(
            block_ids,
            f"[{stack}] {FAILURE_SUBJECT}",
            FAILURE_BODY,
        ),
    )


def undeliverable_automation(stack: str, block_ids: list[UUID]) -> AutomationCore:
    """A failed run of ``stack`` whose alert reached no channel notifies from the server."""
    return AutomationCore(
        name=undeliverable_name(stack),
        description=(
            f"A failed run of stack {stack!r} could not deliver its own alert (stack block "
            "missing, every channel refused): notify the stack's channels from the server. "
            "Managed by `python -m deployments.bootstrap`; edits here are overwritten."
        ),
        tags=["ops", f"stack:{stack}"],
        trigger=EventTrigger(
            match={"prefect.resource.id": f"ops.stack.{stack}"},
            expect={UNDELIVERABLE_EVENT},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=_notify(
            block_ids,
            UNDELIVERABLE_SUBJECT.format(stack=stack),
            UNDELIVERABLE_BODY.format(stack=stack),
        ),
    )


def watcher_automation(
    stack: str, block_ids: list[UUID], window: timedelta, ui_url: str | None
) -> AutomationCore:
    """No Completed health-sweep run of ``stack`` within ``window`` notifies."""
    text = _window_text(window)
    link = f"\nRuns: {ui_url.rstrip('/')}/runs" if ui_url else ""
    return AutomationCore(
        name=watcher_name(stack),
        description=(
            f"No health-sweep/{stack} run completed within {text}: the monitor itself is "
            "down. Managed by `python -m deployments.bootstrap`; edits here are overwritten."
        ),
        tags=["ops", f"stack:{stack}"],
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=[
                {"prefect.resource.role": "flow", "prefect.resource.name": HEALTH_SWEEP_FLOW},
                {"prefect.resource.role": "deployment", "prefect.resource.name": stack},
            ],
            expect={"prefect.flow-run.Completed"},
            posture=Posture.Proactive,
            threshold=1,
            within=window,
        ),
        actions=_notify(
            block_ids,
            WATCHER_SUBJECT.format(stack=stack, window=text),
            WATCHER_BODY.format(stack=stack, window=text, link=link),
        ),
    )


Outcome = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class AutomationResult:
    name: str
    outcome: Outcome
    id: UUID


def _comparable(automation: AutomationCore) -> dict[str, object]:
    """The automation as JSON, with its event sets in a stable order."""
    data = automation.model_dump(mode="json", exclude={"owner_resource"})
    trigger = data["trigger"]
    for key in ("expect", "after", "for_each"):
        if isinstance(trigger.get(key), list):
            trigger[key] = sorted(trigger[key])
    return data


async def apply_automation(client: PrefectClient, wanted: AutomationCore) -> AutomationResult:
    """Create ``wanted``, or bring the automation of the same name in line with it.

    Duplicates of the name (an automation created twice by hand) are removed, so the
    server ends with exactly one. Whether it is enabled is the operator's choice
    (``prefect automation pause``) and is kept.
    """
    existing = await client.read_automations_by_name(wanted.name)
    if not existing:
        new_id = await client.create_automation(wanted)
        return AutomationResult(wanted.name, "created", new_id)
    keep, *extra = existing
    for duplicate in extra:
        await client.delete_automation(duplicate.id)
    # Paused by an operator (maintenance) stays paused across worker restarts.
    wanted = wanted.model_copy(update={"enabled": keep.enabled})
    current = AutomationCore.model_validate(keep.model_dump(exclude={"id"}))
    if _comparable(current) == _comparable(wanted) and not extra:
        return AutomationResult(wanted.name, "unchanged", keep.id)
    await client.update_automation(keep.id, wanted)
    return AutomationResult(wanted.name, "updated", keep.id)
