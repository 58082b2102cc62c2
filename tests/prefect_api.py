"""Reading what flow runs left in the Prefect API, waiting for the thing itself.

Prefect ships a run's logs in batches from a background worker of the process that ran
the flow, so a run that has returned may not have all its logs on the server yet.
Readers here wait until each finished run's last log line (the engine's "Finished in
state ..." for a Completed or Failed run) is stored, with a deadline, instead of reading
once and hoping. Crashed and cancelled runs have no such line and are not waited for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
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
            logged = {log.flow_run_id for log in logs if LAST_LINE in log.message}
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids)))
            )
            ended = {
                run.id
                for run in runs
                if run.state is not None and (run.state.is_completed() or run.state.is_failed())
            }
            missing = [run_id for run_id in flow_run_ids if run_id in ended - logged]
            if not missing:
                return [log.message for log in logs]
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{len(missing)} run(s) have no '{LAST_LINE}' log line after "
                    f"{timeout_s:.0f}s: {missing[:3]}"
                )
            time.sleep(0.5)
