"""The game day itself: its health-sweep deployment, the waits on sweeps, and the count of
what every channel accepted."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from devstack.core import PROJECT, Devstack

__all__ = [
    "CUSTOM",
    "DEPLOYMENT",
    "FLAP_THRESHOLD",
    "HEADER",
    "PAGER",
    "SERVICES",
    "SLACK",
    "GameDay",
    "Outcome",
    "Scenario",
]

DEPLOYMENT = "gameday"
FLAP_THRESHOLD = 6
PAGER, SLACK, CUSTOM = "/pagerduty", "/slack", "/custom"
SERVICES = ["postgres", "redis", "clickhouse", "object-storage", "litellm", "langfuse-web"]


@dataclass(frozen=True)
class Scenario:
    """One incident: what breaks, for how long, and which services must page."""

    name: str
    fault: Callable[[GameDay], contextlib.AbstractContextManager[None]]
    sweeps: int = 4  # completed sweeps the fault lasts
    hold_s: float = 0.0  # or this long, when sweeps cannot complete meanwhile (the worker)
    pages: tuple[str, ...] = ()  # services whose outage must page (PagerDuty incidents)
    refuse_first: str | None = None  # a channel refusing for the incident's first sweeps
    refuse_at_recovery: str | None = None  # a channel refusing when the recovery comes
    # Sweeps until the first page may come: alert_after + 1 when None (the first bad
    # sweep can start up to one interval after the fault); a flapping service pages only
    # on a bad sweep once flap_threshold changes were seen.
    bound_sweeps: int | None = None
    # Run once the stack recovered (e.g. the next backup, which must resolve its page).
    after: Callable[[GameDay], None] | None = None


@dataclass
class Outcome:
    scenario: str
    accepted: dict[str, int] = field(default_factory=dict)
    pages: int = 0
    duplicates: int = 0
    lost: list[str] = field(default_factory=list)
    left_open: list[str] = field(default_factory=list)
    first_page_s: float | None = None
    bound_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    false_pages: int = 0  # pages in a scenario where nothing in the stack is wrong
    expected_pages: int = 0  # one PagerDuty incident per page; each channel gets 2 notices

    @property
    def passed(self) -> bool:
        in_time = self.first_page_s is None or self.first_page_s <= self.bound_s
        clean = not self.lost and not self.duplicates and not self.left_open
        return clean and not self.false_pages and in_time

    def row(self) -> str:
        first = f"{self.first_page_s:.0f} s" if self.first_page_s is not None else "-"
        # Expected: per page, the alert and the recovery on every channel (PagerDuty: the
        # trigger and the resolve).
        want = 2 * self.expected_pages
        accepted = ", ".join(
            f"{k.strip('/')} {v} of {want}" for k, v in sorted(self.accepted.items())
        )
        return (
            f"| {self.scenario} | {accepted} | {self.pages} of {self.expected_pages} | "
            f"{self.duplicates} | "
            f"{len(self.lost)} | {len(self.left_open)} | {first} (≤ {self.bound_s:.0f} s) | "
            f"{'pass' if self.passed else 'FAIL'} |"
            + (f" {'; '.join(self.notes)} |" if self.notes else "")
        )


HEADER = (
    "| scenario | accepted per channel (of expected) | pages (of expected) | duplicates | "
    "lost | PD left open | "
    "first page | verdict |\n|---|---|---|---|---|---|---|---|"
)


class GameDay:
    """A fast ``health-sweep`` deployment on the devstack, and the scenarios' bookkeeping."""

    def __init__(
        self,
        devstack: Devstack,
        *,
        interval_s: float = 20.0,
        alert_after: int = 2,
        recover_after: int = 2,
        stack: str = "devstack",
    ) -> None:
        self.devstack = devstack
        self.interval_s = interval_s
        self.alert_after = alert_after
        self.recover_after = recover_after
        self.stack = stack
        self.receiver = devstack.receiver_url
        self.deployment_id: Any = None
        self.notes: list[str] = []
        # When the fault really began, where a scenario first waits for the right moment.
        self.fault_at: datetime | None = None

    # ---- the deployment ------------------------------------------------------------

    def parameters(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "config": {
                "timeout_s": 3.0,
                "services": SERVICES,
                "max_lateness_s": max(45.0, self.interval_s * 2),
                "thresholds": {"litellm_requires_db": False},
                "policy": {
                    "alert_after": self.alert_after,
                    "recover_after": self.recover_after,
                    "flap_window": 12,
                    "flap_threshold": FLAP_THRESHOLD,
                },
            },
        }

    def __enter__(self) -> GameDay:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import DeploymentScheduleCreate
        from prefect.client.schemas.objects import ConcurrencyLimitConfig
        from prefect.client.schemas.schedules import IntervalSchedule

        self._reset_state()
        with get_client(sync_client=True) as client:
            flow_id = client.create_flow_from_name("health-sweep")
            self.deployment_id = client.create_deployment(
                flow_id=flow_id,
                name=DEPLOYMENT,
                work_pool_name="devstack",
                entrypoint="flows/health_sweep.py:health_sweep",
                path=str(PROJECT),
                pull_steps=[
                    {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT)}}
                ],
                parameters=self.parameters(),
                schedules=[
                    DeploymentScheduleCreate(
                        schedule=IntervalSchedule(interval=timedelta(seconds=self.interval_s)),
                        active=True,
                    )
                ],
                concurrency_limit=1,
                concurrency_options=ConcurrencyLimitConfig(
                    limit=1, collision_strategy="CANCEL_NEW"
                ).model_dump(exclude={"limit"}),  # type: ignore[arg-type]
            )
        return self

    def __exit__(self, *exc: object) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        # Pause, drop what is scheduled, and let a sweep in flight finish before the
        # deployment goes: deleted under a running sweep, the server cannot release the
        # sweep's concurrency lease and logs an error.
        of_this = DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id]))
        unfinished = FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(
                    any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
                )
            )
        )
        with get_client(sync_client=True) as client:
            client.pause_deployment(self.deployment_id)
            deadline = time.monotonic() + 120
            while runs := client.read_flow_runs(
                deployment_filter=of_this, flow_run_filter=unfinished
            ):
                for run in runs:
                    if run.state_type == StateType.SCHEDULED:
                        client.delete_flow_run(run.id)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(runs)} game-day sweep(s) still running after 120 s")
                time.sleep(0.5)
            client.delete_deployment(self.deployment_id)
        self._reset_state()

    def _reset_state(self) -> None:
        from prefect.variables import Variable

        for prefix in ("health-state-", "health-status-", "health-silences-"):
            Variable.unset(prefix + self.stack)

    # ---- reading what happened --------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.receiver}/__received", timeout=10)
        response.raise_for_status()
        return list(response.json())

    def clear(self) -> None:
        httpx.delete(f"{self.receiver}/__received", timeout=10).raise_for_status()
        httpx.delete(f"{self.receiver}/__fail", timeout=10).raise_for_status()

    @contextlib.contextmanager
    def refusing(self, prefix: str, status: int = 500) -> Iterator[None]:
        httpx.post(
            f"{self.receiver}/__fail", json={"path_prefix": prefix, "status": status}, timeout=10
        ).raise_for_status()
        try:
            yield
        finally:
            httpx.post(
                f"{self.receiver}/__fail", json={"path_prefix": prefix, "status": 0}, timeout=10
            ).raise_for_status()

    def completed_sweeps_since(self, since: datetime) -> int:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterStartTime,
            FlowRunFilterState,
            FlowRunFilterStateName,
        )

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[self.deployment_id])
                ),
                flow_run_filter=FlowRunFilter(
                    start_time=FlowRunFilterStartTime(after_=since),
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Completed"])),
                ),
            )
        return len(runs)

    def wait_sweeps(self, count: int, since: datetime, deadline_s: float) -> None:
        """Until ``count`` sweeps completed after ``since``; TimeoutError at the deadline."""
        deadline = time.monotonic() + deadline_s
        while self.completed_sweeps_since(since) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} sweeps completed in {deadline_s:.0f} s")
            time.sleep(1.0)

    def wait_sweep_end(self, since: datetime, deadline_s: float) -> None:
        """Until a sweep of the game-day deployment ends Completed after ``since``."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterEndTime,
            FlowRunFilterState,
            FlowRunFilterStateName,
        )

        ended = FlowRunFilter(
            end_time=FlowRunFilterEndTime(after_=since),
            state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Completed"])),
        )
        of_this = DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id]))
        deadline = time.monotonic() + deadline_s
        with get_client(sync_client=True) as client:
            while not client.read_flow_runs(deployment_filter=of_this, flow_run_filter=ended):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no sweep ended within {deadline_s:.0f} s")
                time.sleep(0.2)

    def wait_running_sweep(self, deadline_s: float) -> None:
        """Until a sweep of the game-day deployment is Running; TimeoutError at the deadline."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        running = FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
        )
        of_this = DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id]))
        deadline = time.monotonic() + deadline_s
        with get_client(sync_client=True) as client:
            while not client.read_flow_runs(deployment_filter=of_this, flow_run_filter=running):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no sweep was running within {deadline_s:.0f} s")
                time.sleep(0.2)

    def wait_quiet(self, deadline_s: float) -> None:
        """Until no PagerDuty incident is left open and no channel owes anything."""
        from prefect.variables import Variable

        from tasks.decisions.alerting import StackState

        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            raw = Variable.get(f"health-state-{self.stack}")
            state = StackState.model_validate(raw) if raw else StackState()
            if not state.owed and not any(s.open for s in state.services.values()):
                return
            time.sleep(2.0)
        raise TimeoutError(f"incidents still open or notices owed after {deadline_s:.0f} s")

    # ---- playing ------------------------------------------------------------------------

    def play(self, scenario: Scenario) -> Outcome:
        self.notes = []
        self.fault_at = None
        self.clear()
        # Start from a clean bill of health: two sweeps with nothing to tell.
        self.wait_sweeps(2, datetime.now(UTC), deadline_s=self.interval_s * 8 + 60)
        self.wait_quiet(deadline_s=self.interval_s * 20 + 120)
        self.clear()
        started = datetime.now(UTC)
        with scenario.fault(self):
            if scenario.refuse_first:
                with self.refusing(scenario.refuse_first):
                    self.wait_sweeps(self.alert_after + 1, started, self.interval_s * 12 + 120)
            if scenario.hold_s:
                # The fault's length is the scenario (a worker dead for minutes), not a wait
                # for something to happen.
                time.sleep(scenario.hold_s)
            else:
                self.wait_sweeps(scenario.sweeps, started, self.interval_s * 12 + 120)
        recovered = datetime.now(UTC)
        if scenario.refuse_at_recovery:
            with self.refusing(scenario.refuse_at_recovery):
                self.wait_sweeps(self.recover_after + 2, recovered, self.interval_s * 12 + 120)
        else:
            self.wait_sweeps(self.recover_after + 1, recovered, self.interval_s * 12 + 120)
        if scenario.after is not None:
            scenario.after(self)
        # Owed notices go out on the next sweeps, once every channel accepts again.
        self.wait_quiet(deadline_s=self.interval_s * 20 + 120)
        outcome = self.judge(scenario, self.fault_at or started)
        outcome.notes = list(self.notes)
        return outcome

    def judge(self, scenario: Scenario, started: datetime) -> Outcome:
        records = self.records()
        bound = (scenario.bound_sweeps or self.alert_after + 1) * self.interval_s
        outcome = Outcome(scenario=scenario.name, bound_s=bound, expected_pages=len(scenario.pages))
        for prefix in (PAGER, SLACK, CUSTOM):
            outcome.accepted[prefix] = sum(
                1 for r in records if r["path"].startswith(prefix) and r.get("status", 200) < 300
            )
        incidents: dict[str, list[str]] = {}
        first: datetime | None = None
        for record in records:
            if not record["path"].startswith(PAGER) or record.get("status", 202) >= 300:
                continue
            body = record.get("json") or {}
            key = str(body.get("dedup_key", "?"))
            action = body.get("event_action")
            kind = ((body.get("payload") or {}).get("custom_details") or {}).get("kind", "alert")
            story = incidents.setdefault(key, [])
            if action == "resolve":
                story.append("v")
            elif kind in ("alert", "escalation"):
                if story and story[-1] == "a":
                    outcome.duplicates += 1
                else:
                    story.append("a")
                    outcome.pages += 1
                    at = datetime.fromisoformat(record["received_at"])
                    first = at if first is None or at < first else first
        for service in scenario.pages:
            if not incidents.get(f"{self.stack}/{service}"):
                outcome.lost.append(service)
        outcome.left_open = [key for key, story in incidents.items() if story[-1] == "a"]
        if not scenario.pages:
            outcome.false_pages = outcome.pages
            if outcome.pages:
                self.notes.append(f"{outcome.pages} page(s) with nothing wrong in the stack")
        if first is not None:
            outcome.first_page_s = (first - started).total_seconds()
        return outcome
