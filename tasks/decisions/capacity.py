"""Capacity: how big each store is, how fast it grows, and when it is full.

The ``capacity`` flow measures every store once a day (Postgres databases and largest
tables, ClickHouse databases and system logs, the buckets, Redis) and keeps one point a
day per store in the control plane. From the points this decides the growth per day
(least squares over the last ``TREND_DAYS`` days, so one burst does not make a trend),
the days until full where a limit is known, a sparkline of the history, and which
forecasts fall under the alert threshold: each alerts once, and again only after it
has risen back above it.

Pure: no Prefect, no I/O.
"""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field

from tasks.decisions.units import binary_size

__all__ = [
    "MAX_POINTS",
    "CapacityRow",
    "StoreHistory",
    "StoreSize",
    "add_point",
    "forecast",
    "growth_per_day",
    "render_report",
    "sparkline",
]

MAX_POINTS = 60  # a day each: two months of history per store
TREND_DAYS = 7
BARS = "▁▂▃▄▅▆▇█"


class StoreSize(BaseModel):
    """One store measured now: its bytes and, when known, the bytes it can hold."""

    model_config = ConfigDict(frozen=True)

    store: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="e.g. 'postgres.railway'.")
    bytes: int = Field(ge=0)
    limit: int | None = Field(default=None, ge=1, description="Capacity, when known.")
    note: str = ""


class StoreHistory(BaseModel):
    """One store's daily points (ISO day, bytes), oldest first, whether its forecast has
    alerted, and the latest forecast (what the worker's ``/metrics`` serves between runs)."""

    points: list[tuple[str, int]] = Field(default_factory=list)
    alerted: bool = False
    stack: str = ""
    store: str = ""
    limit: int | None = None
    growth_per_day: float | None = None
    days_until_full: float | None = None


class CapacityRow(BaseModel):
    store: str
    bytes: int
    limit: int | None
    growth_per_day: float | None
    days_until_full: float | None
    sparkline: str
    note: str = ""
    alert: bool = Field(default=False, description="Forecast newly under the threshold.")


def add_point(history: StoreHistory, day: date, size: int) -> StoreHistory:
    """Today's point (replacing an earlier one of the same day), capped at MAX_POINTS."""
    points = [p for p in history.points if p[0] != day.isoformat()]
    points.append((day.isoformat(), size))
    points.sort()
    return history.model_copy(update={"points": points[-MAX_POINTS:]})


def growth_per_day(points: list[tuple[str, int]]) -> float | None:
    """Least-squares slope in bytes a day over the last TREND_DAYS days; None under 2 days."""
    recent = points[-TREND_DAYS:]
    if len(recent) < 2:
        return None
    xs = [date.fromisoformat(day).toordinal() for day, _ in recent]
    ys = [float(size) for _, size in recent]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


def sparkline(values: list[int]) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return BARS[0] * len(values)
    return "".join(BARS[int((v - low) / (high - low) * (len(BARS) - 1))] for v in values)


def forecast(
    size: StoreSize, history: StoreHistory, *, alert_under_days: float
) -> tuple[CapacityRow, StoreHistory]:
    """The row for the report, and the history with its alerted flag brought up to date."""
    growth = growth_per_day(history.points)
    days: float | None = None
    if size.limit is not None and growth is not None and growth > 0:
        days = max(0.0, (size.limit - size.bytes) / growth)
    under = days is not None and days < alert_under_days
    row = CapacityRow(
        store=size.store,
        bytes=size.bytes,
        limit=size.limit,
        growth_per_day=growth,
        days_until_full=days,
        sparkline=sparkline([b for _, b in history.points]),
        note=size.note,
        alert=under and not history.alerted,
    )
    latest = {
        "alerted": under,
        "store": size.store,
        "limit": size.limit,
        "growth_per_day": growth,
        "days_until_full": days,
    }
    return row, history.model_copy(update=latest)


def _size(n: float | None) -> str:
    return "" if n is None else binary_size(n)


def render_report(stack: str, rows: list[CapacityRow], alert_under_days: float) -> str:
    """The markdown artifact: one row a store, its trend drawn, the soonest full first."""
    ordered = sorted(
        rows, key=lambda r: (r.days_until_full is None, r.days_until_full or 0, r.store)
    )
    lines = [
        f"# Capacity of {stack}",
        "",
        f"Growth is the trend of the last {TREND_DAYS} daily points; a store full within "
        f"{alert_under_days:g} days alerts once.",
        "",
        "| store | size | limit | growth / day | days until full | trend | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ordered:
        days = "" if r.days_until_full is None else f"{r.days_until_full:.0f}"
        if r.days_until_full is not None and r.days_until_full < alert_under_days:
            days = f"**{days}** ⚠️"
        growth = "" if r.growth_per_day is None else _size(r.growth_per_day)
        lines.append(
            f"| {r.store} | {_size(r.bytes)} | {_size(r.limit) or 'unknown'} | {growth} "
            f"| {days} | `{r.sparkline}` | {r.note} |"
        )
    return "\n".join(lines) + "\n"
