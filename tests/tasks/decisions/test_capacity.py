"""The capacity judge: a week's trend, days until full, drawn, alerting once."""

from __future__ import annotations

from datetime import date, timedelta

from tasks.decisions.capacity import (
    MAX_POINTS,
    StoreHistory,
    StoreSize,
    add_point,
    forecast,
    growth_per_day,
    render_report,
    sparkline,
)

DAY = date(2026, 12, 1)
MIB = 2**20


def history(sizes: list[int]) -> StoreHistory:
    h = StoreHistory()
    for i, size in enumerate(sizes):
        h = add_point(h, DAY - timedelta(days=len(sizes) - 1 - i), size)
    return h


def test_a_point_a_day_replaced_within_the_day_and_capped() -> None:
    h = add_point(add_point(StoreHistory(), DAY, 1), DAY, 2)
    assert h.points == [(DAY.isoformat(), 2)]
    assert len(history(list(range(MAX_POINTS + 10))).points) == MAX_POINTS


def test_growth_is_the_last_weeks_trend_and_a_burst_is_not_one() -> None:
    steady = history([i * 10 * MIB for i in range(10)])
    assert growth_per_day(steady.points) == 10 * MIB
    assert growth_per_day(history([5]).points) is None
    burst = history([100 * MIB] * 6 + [100 * MIB + 70 * MIB])  # one day's jump of 70 MiB
    assert growth_per_day(burst.points) < 70 * MIB / 2


def test_days_until_full_and_the_alert_comes_once() -> None:
    h = history([i * 10 * MIB for i in range(7)])
    size = StoreSize(store="postgres.railway", bytes=60 * MIB, limit=160 * MIB)
    row, h = forecast(size, h, alert_under_days=14)
    assert row.days_until_full == 10 and row.alert and h.alerted
    again, h = forecast(size, h, alert_under_days=14)
    assert again.days_until_full == 10 and not again.alert  # once
    roomy = size.model_copy(update={"limit": 10_000 * MIB})
    cleared, h = forecast(roomy, h, alert_under_days=14)
    assert not cleared.alert and not h.alerted  # risen above: may alert again later


def test_no_limit_or_no_growth_has_no_forecast() -> None:
    h = history([MIB] * 7)
    row, _ = forecast(StoreSize(store="s3.backups", bytes=MIB), h, alert_under_days=14)
    assert row.days_until_full is None and not row.alert
    shrinking = history([10 * MIB - i * MIB for i in range(7)])
    row, _ = forecast(
        StoreSize(store="x", bytes=4 * MIB, limit=5 * MIB), shrinking, alert_under_days=14
    )
    assert row.days_until_full is None


def test_the_report_draws_each_trend_and_puts_the_soonest_full_first() -> None:
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([3, 3]) == "▁▁"
    full_soon, _ = forecast(
        StoreSize(store="postgres.railway", bytes=60 * MIB, limit=160 * MIB),
        history([i * 10 * MIB for i in range(7)]),
        alert_under_days=14,
    )
    idle, _ = forecast(
        StoreSize(store="redis.memory", bytes=MIB), history([MIB] * 3), alert_under_days=14
    )
    report = render_report("prod", [idle, full_soon], 14)
    rows = [line for line in report.splitlines() if line.startswith("| ") and "store" not in line]
    assert rows[0].startswith("| postgres.railway | 60.0 MiB | 160.0 MiB | 10.0 MiB | **10** ⚠️ |")
    assert "`▁▂▃▄▅▆█`" in rows[0]
    assert rows[1].startswith("| redis.memory | 1.0 MiB | unknown |")
