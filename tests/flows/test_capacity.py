"""capacity against the devstack, with traffic flowing: every store measured for real,
a week of simulated history behind today's point, the forecast drawn in the artifact and
alerted once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.variables import Variable

from blocks.stack import Stack
from flows.capacity import capacity
from tasks.capacity import history_variable
from tasks.decisions.capacity import StoreHistory

pytestmark = pytest.mark.usefixtures("traffic")

NAME = "capcheck"
MIB = 2**20


def latest_markdown(key: str) -> str:
    """The markdown of the newest artifact with ``key``."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return str(artifact.data)


@pytest.fixture
def capcheck() -> Iterator[Stack]:
    """The devstack's block (with its notification routes) as stack 'capcheck', its
    Postgres volume said to be 300 MiB larger than what the database holds now."""
    base = Stack.load_stack("devstack")
    with base.postgres() as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    values = {**base.model_dump(), "stack_name": NAME, "postgres_volume_size": row[0] + 300 * MIB}
    block = Stack(**values)
    block.save(NAME, overwrite=True)
    yield block
    for variable in _variables():
        Variable.unset(variable)


def _variables() -> list[str]:
    with get_client(sync_client=True) as client:
        return [v.name for v in client.read_variables() if v.name.startswith(f"capacity-{NAME}-")]


def test_a_week_of_growth_is_drawn_and_forecast_and_alerted_once(
    capcheck: Stack, receiver: Any
) -> None:
    with capcheck.postgres() as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    store = f"postgres.{database}"
    # Six days behind today, growing 40 MiB a day up to today's real size.
    now_size = 0
    with capcheck.postgres() as conn:
        now_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
    today = datetime.now(UTC).date()
    points = [
        ((today - timedelta(days=d)).isoformat(), now_size - d * 40 * MIB) for d in range(6, 0, -1)
    ]
    Variable.set(
        history_variable(NAME, store), {"points": points, "alerted": False}, overwrite=True
    )

    rows = {r.store: r for r in capacity(stack=NAME)}
    row = rows[store]
    assert row.growth_per_day is not None and 35 * MIB < row.growth_per_day < 45 * MIB
    assert row.days_until_full is not None and row.days_until_full < 14 and row.alert
    # Every kind of store was measured for real.
    assert {s.split(".")[0] for s in rows} >= {"postgres", "clickhouse", "s3", "redis"}
    assert any(s.startswith("postgres.table.") for s in rows)  # the largest tables

    # the forecast stays in the control plane, for the worker's /metrics between runs
    saved = StoreHistory.model_validate(Variable.get(history_variable(NAME, store)))
    assert (saved.stack, saved.store) == (NAME, store)
    assert saved.days_until_full == row.days_until_full and saved.limit == row.limit

    report = latest_markdown(f"capacity-{NAME}")
    line = next(line for line in report.splitlines() if line.startswith(f"| {store} |"))
    assert "⚠️" in line and "`▁" in line and "█`" in line  # the trend, drawn
    assert report.index(f"| {store} |") < report.index("| redis.memory |")  # soonest first

    alerts = [m for m in receiver.received("/slack") if NAME in str(m["json"])]
    assert len(alerts) == 1 and "full within 14 days" in str(alerts[0]["json"])

    capacity(stack=NAME)  # the same day again: the forecast stands, no second alert
    assert len([m for m in receiver.received("/slack") if NAME in str(m["json"])]) == 1
