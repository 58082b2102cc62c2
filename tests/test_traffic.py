"""Traffic through the real devstack: what an operator checks after a busy hour.

Requests go through the real LiteLLM proxy; its Langfuse callback and the direct
ingestion land in the Langfuse stand-in, which writes ClickHouse rows the way
langfuse-worker does; spend rows land in Postgres. Every wait has a deadline and
nothing is timed: the machine is shared, speed is measured in the report, not asserted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg

from devstack.core import Devstack
from devstack.traffic import Traffic

PROJECT_ID = "standin-project"  # the Langfuse stand-in's one project


def until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f}s (last: {result!r})")
        time.sleep(0.2)


def spend_log_rows(devstack: Devstack) -> int:
    with psycopg.connect(devstack.admin_dsn("railway")) as conn:
        row = conn.execute('SELECT count(*) FROM public."LiteLLM_SpendLogs"').fetchone()
    assert row is not None
    return int(row[0])


def trace_versions(devstack: Devstack) -> tuple[int, int]:
    """Rows in ``default.traces`` for the stand-in's project: all versions, and FINAL."""
    client = devstack.clickhouse_client()
    try:
        rows = client.query(
            "SELECT (SELECT count() FROM default.traces WHERE project_id = {p:String}),"
            " (SELECT count() FROM default.traces FINAL WHERE project_id = {p:String})",
            parameters={"p": PROJECT_ID},
        ).result_rows
    finally:
        client.close()
    return int(rows[0][0]), int(rows[0][1])


def standin_stats(devstack: Devstack) -> dict[str, Any]:
    response = httpx.get(f"{devstack.url('langfuse')}/__standin/stats", timeout=5)
    response.raise_for_status()
    return dict(response.json()["clickhouse"])


def test_traffic_lands_in_litellm_postgres_langfuse_and_clickhouse(devstack: Devstack) -> None:
    spend_before = spend_log_rows(devstack)
    traces_before, _ = trace_versions(devstack)
    requests, fail_share = 240, 0.1

    with Traffic(devstack, rate=25, stream_share=0.2, fail_share=fail_share) as traffic:
        # An update is a new row with the same sort key: until a merge folds them,
        # ClickHouse holds more versions than FINAL shows. Looked for while rows arrive.
        until(
            lambda: (lambda all_, final: all_ > final)(*trace_versions(devstack)),
            120,
            "duplicate trace versions in default.traces",
        )
        traffic.wait_for(requests=requests, timeout_s=180)
    report = traffic.report()

    assert report.completed >= requests
    assert report.completed == report.sent  # drained: nothing left in flight
    assert report.failed_unexpectedly == {}, report.summary()
    assert report.failed_on_purpose == report.sent_to_failing
    assert abs(report.sent_to_failing / report.sent - fail_share) < 0.03, report.summary()
    assert report.streaming > 0 and report.streamed == report.streaming
    assert report.ok == report.sent - report.sent_to_failing
    assert report.postgres_errors == {} and report.langfuse_errors == {}
    assert report.langfuse_events > 0

    assert report.spend_log_rows == report.completed
    assert spend_log_rows(devstack) - spend_before == report.spend_log_rows
    until(
        lambda: trace_versions(devstack)[0] > traces_before,
        60,
        "new rows in default.traces",
    )


def test_langfuse_keeps_ingesting_while_clickhouse_is_down(devstack: Devstack) -> None:
    c = devstack.creds
    auth = (c.langfuse_public_key, c.langfuse_secret_key)
    trace_id = f"outage-{uuid.uuid4().hex[:8]}"
    batch = [
        {
            "id": str(uuid.uuid4()),
            "type": "trace-create",
            "body": {"id": trace_id, "name": "during-outage"},
        },
        {
            "id": str(uuid.uuid4()),
            "type": "score-create",
            "body": {"id": f"score-{trace_id}", "traceId": trace_id, "name": "q", "value": 1},
        },
    ]
    until(lambda: standin_stats(devstack)["rows_pending"] == 0, 30, "an empty queue first")

    with devstack.stopped("clickhouse"):
        errors_before = standin_stats(devstack)["write_errors"]
        response = httpx.post(
            f"{devstack.url('langfuse')}/api/public/ingestion",
            json={"batch": batch},
            auth=auth,
            timeout=10,
        )
        assert response.status_code == 207 and len(response.json()["successes"]) == 2
        stats = until(
            lambda: (s := standin_stats(devstack))["write_errors"] > errors_before and s,
            30,
            "a failed write while ClickHouse is down",
        )
        assert stats["rows_pending"] >= 2 and stats["rows_dropped"] == 0
        # Still serving: health and the trace itself answer from memory.
        health = httpx.get(f"{devstack.url('langfuse')}/api/public/health", timeout=5)
        assert health.status_code == 200
        trace = httpx.get(
            f"{devstack.url('langfuse')}/api/public/traces/{trace_id}", auth=auth, timeout=5
        )
        assert trace.status_code == 200 and trace.json()["name"] == "during-outage"

    until(lambda: standin_stats(devstack)["rows_pending"] == 0, 60, "the queue written out")
    client = devstack.clickhouse_client()
    try:
        names = client.query(
            "SELECT name FROM default.traces WHERE id = {id:String}", parameters={"id": trace_id}
        ).result_rows
        scores = client.query(
            "SELECT value FROM default.scores WHERE trace_id = {id:String}",
            parameters={"id": trace_id},
        ).result_rows
    finally:
        client.close()
    assert names == [("during-outage",)]
    assert scores == [(1.0,)]
