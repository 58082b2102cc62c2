"""Reading what flow runs left in the Prefect API, waiting for the thing itself.

Prefect ships a run's logs in batches from a background worker of the process that ran
the flow, so a run that has returned may not have all its logs on the server yet.
Readers here wait until each finished run's last log line (the engine's "Finished in
state ..." for a Completed or Failed run) is stored, with a deadline, instead of reading
once and hoping. Crashed and cancelled runs have no such line and are not waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import TaskRun
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker

LAST_LINE = "Finished in state"
PAGE = 200


def _all_logs(client: Any, flow_run_ids: Sequence[UUID]) -> list[Any]:
    logs: list[Any] = []
    while True:
        page = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(flow_run_ids))),
            limit=PAGE,
            offset=len(logs),
        )
        logs += page
        if len(page) < PAGE:
            return logs


def run_logs(flow_run_ids: Sequence[UUID], timeout_s: float = 60.0) -> list[str]:
    """Every log message of the runs, once each run's final line is stored."""
    APILogWorker.drain_all(timeout=10)
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            logs = _all_logs(client, flow_run_ids)
            lines: dict[UUID, int] = {}
            for log in logs:
                if log.flow_run_id is not None and LAST_LINE in log.message:
                    lines[log.flow_run_id] = lines.get(log.flow_run_id, 0) + 1
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids)))
            )
            # One final line per attempt: a run retried under the same id has several.
            missing = [
                run.id
                for run in runs
                if run.state is not None
                and (run.state.is_completed() or run.state.is_failed())
                and lines.get(run.id, 0) < max(run.run_count, 1)
            ]
            if not missing:
                return [log.message for log in logs]
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{len(missing)} run(s) have no '{LAST_LINE}' log line after "
                    f"{timeout_s:.0f}s: {missing[:3]}"
                )
            time.sleep(0.5)


def task_runs_when(
    flow_run_id: UUID,
    condition: Callable[[list[TaskRun]], bool],
    what: str,
    timeout_s: float = 60.0,
) -> list[TaskRun]:
    """The run's task runs, in the order they were scheduled, once ``condition`` holds.

    Prefect 3.8 sends task-run states as events, which the server records later, so
    task runs read right after a flow run ends may still show an earlier state.
    """
    EventsWorker.drain_all(timeout=10)
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            task_runs = sorted(
                client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
                ),
                key=lambda run: run.expected_start_time or run.start_time or run.created,
            )
            if condition(task_runs):
                return task_runs
            if time.monotonic() >= deadline:
                states = sorted((r.name, r.state.name if r.state else "?") for r in task_runs)
                raise AssertionError(f"after {timeout_s:.0f}s, not yet {what}: {states[:10]}")
            time.sleep(0.5)


def state_names(task_runs: list[TaskRun], prefix: str) -> list[str]:
    """The state names of the task runs whose name starts with ``prefix``, in run order."""
    return [
        run.state.name if run.state else "?" for run in task_runs if run.name.startswith(prefix)
    ]
