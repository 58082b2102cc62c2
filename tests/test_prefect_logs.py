"""The session's guard over the Prefect server's and worker's logs (tests/prefect_logs.py)."""

from __future__ import annotations

from tests.prefect_logs import problems

SERVER_LOG = """\
10:00:01.100 | INFO    | prefect.server - Started
10:00:02.200 | ERROR   | prefect.server.services.scheduler - Unexpected error in: scheduler
Traceback (most recent call last):
  File "prefect/server/models/deployments.py", line 1, in _insert_scheduled_flow_runs
sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement
10:00:03.300 | INFO    | prefect.server - still running
"""

WORKER_LOG = """\
10:00:01.100 | INFO    | prefect.flow_runs.worker - Worker submitting flow run 'x'
10:00:02.200 | ERROR   | Flow run 'brave-fox' - Finished in state Failed('pg_dump exited')
10:00:02.300 | ERROR   | Task run 'dump-postgres-0' - Task run failed with exception
Traceback (most recent call last):
tasks.errors.PostgresDumpError: pg_dump exited with code 1
10:00:04.000 | INFO    | prefect.flow_runs.worker - Completed submission of flow run 'x'
"""


def test_a_scheduler_traceback_in_the_server_log_is_a_problem() -> None:
    (found,) = problems(SERVER_LOG, [])
    assert "Can't evaluate bulk DML statement" in found
    assert "still running" not in found


def test_a_pattern_declared_by_a_test_allows_the_error() -> None:
    assert problems(SERVER_LOG, [r"bulk DML"]) == []


def test_flow_run_output_in_the_worker_log_is_the_run_s_own_not_the_worker_s() -> None:
    assert problems(WORKER_LOG, []) == []


def test_uvicorn_errors_and_bare_tracebacks_are_problems() -> None:
    text = "ERROR:    Exception in ASGI application\nTraceback (most recent call last):\n  x\n"
    assert len(problems(text, [])) == 1
    assert len(problems("Traceback (most recent call last):\n  boom\n", [])) == 1
