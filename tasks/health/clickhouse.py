"""ClickHouse: /ping, SELECT 1 and free disk."""

from __future__ import annotations

from clickhouse_connect.driver.exceptions import ClickHouseError

from blocks.stack import Stack
from tasks.errors import OpsError
from tasks.health.base import (
    HealthThresholds,
    Reading,
    http_get,
    http_reading,
    in_thread,
    ok,
    percent,
    reason_of,
)
from tasks.health.shared import probe_clickhouse

__all__ = ["check_clickhouse", "disk_reading"]


async def check_clickhouse(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    ping = await http_get(f"{stack.clickhouse_url}/ping", timeout_s)
    if bad := http_reading("/ping", ping):
        return bad

    def query() -> tuple[int, int]:
        with probe_clickhouse(stack, timeout_s) as client:
            client.command("SELECT 1")
            row = client.query("SELECT sum(free_space), sum(total_space) FROM system.disks")
            free, total = row.result_rows[0]
            return int(free), int(total)

    try:
        free, total = await in_thread(query)
    except (ClickHouseError, OpsError) as exc:
        return Reading("unhealthy", "query failed: " + reason_of(stack, str(exc)))
    return disk_reading(free, total, th)


def disk_reading(free: int, total: int, th: HealthThresholds) -> Reading:
    free_pct = percent(free, total)
    reason = f"SELECT 1 ok, {free_pct:.0f}% disk free ({free / 2**30:.1f} GiB)"
    if free_pct < th.clickhouse_free_disk_unhealthy_pct:
        return Reading("unhealthy", f"{reason}: inserts fail when the disk fills")
    if free_pct < th.clickhouse_free_disk_degraded_pct:
        return Reading("degraded", f"{reason}: free space or grow the volume")
    return ok(reason)
