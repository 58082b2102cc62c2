"""capacity: how big every store is, how fast it grows, and when it will be full.

Runs daily (deployment ``capacity/<stack>``, 05:15 UTC) and on demand. Measures every
store (``tasks/capacity.py``), adds today's point to its history in the control plane
(one Prefect Variable per store, two months, with its latest forecast, which the worker's
``/metrics`` serves as ``ops_capacity_*`` gauges), and publishes the markdown artifact
``capacity-<stack>``: size, limit, growth per day (the trend of the last week), days
until full, and the history drawn as a sparkline. A store whose forecast falls under
``alert_under_days`` alerts once (warning) through the stack's routes, and again only
after it has risen above it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import BaseModel, Field

from blocks.stack import Stack
from tasks.capacity import load_history, measure_stores, save_history
from tasks.decisions.alerts import Alert
from tasks.decisions.capacity import (
    CapacityRow,
    StoreSize,
    add_point,
    forecast,
    render_report,
)
from tasks.notify import alert_on_failure, deliver

__all__ = ["CapacityConfig", "capacity"]


class CapacityConfig(BaseModel):
    alert_under_days: float = Field(
        default=14, gt=0, le=365, description="Alert once when a store is full sooner."
    )


@task(name="forecast-stores", cache_policy=NO_CACHE, persist_result=False)
def forecast_stores(
    stack: str, sizes: list[StoreSize], alert_under_days: float
) -> list[CapacityRow]:
    """Today's point into each store's history; the forecast row of each."""
    today = datetime.now(UTC).date()
    rows: list[CapacityRow] = []
    for size in sizes:
        history = add_point(load_history(stack, size.store), today, size.bytes)
        row, history = forecast(size, history, alert_under_days=alert_under_days)
        save_history(stack, size.store, history.model_copy(update={"stack": stack}))
        rows.append(row)
    return rows


@flow(name="capacity", on_failure=[alert_on_failure], persist_result=False)
def capacity(stack: str = "production", config: CapacityConfig | None = None) -> list[CapacityRow]:
    """Measure every store, keep its history, forecast, report; alert once per forecast."""
    config = config or CapacityConfig()
    ops = Stack.load_stack(stack)
    sizes = measure_stores(ops)
    rows = forecast_stores(ops.stack_name, sizes, config.alert_under_days)
    report = render_report(ops.stack_name, rows, config.alert_under_days)
    create_markdown_artifact(
        key=f"capacity-{ops.stack_name}", markdown=report, description="Capacity forecast"
    )
    newly = [r for r in rows if r.alert]
    if newly:
        lines = [
            f"{r.store}: full in {r.days_until_full:.0f} days at the last week's growth"
            for r in newly
            if r.days_until_full is not None
        ]
        run_coro_as_sync(
            deliver(
                ops,
                Alert(
                    stack=ops.stack_name,
                    source="capacity",
                    title=f"{ops.stack_name}: {len(newly)} store(s) full within "
                    f"{config.alert_under_days:g} days",
                    body="\n".join(
                        [*lines, "Grow the volume or prune; see the capacity artifact."]
                    ),
                    severity="warning",
                    dedup_key=f"{ops.stack_name}/capacity",
                ),
            )
        )
    return rows
