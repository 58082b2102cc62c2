"""Room to restore, read from the real servers: ClickHouse's system.disks, Postgres's use."""

from __future__ import annotations

import shutil

from pydantic import SecretStr

from blocks.stack import Stack
from devstack.core import Devstack
from tasks.restore import (
    clickhouse_free_space,
    drill_server,
    pg_server,
    pg_used_bytes,
    postgres_free_space,
    worker_free_space,
)


def test_clickhouse_free_space_is_the_default_disks_unreserved_space(devstack: Devstack, stack):
    # The devstack's ClickHouse is the real engine (chdb), whose system.disks reports the
    # disk its data folder is on, as a server does.
    free = clickhouse_free_space(stack)
    assert free.free is not None and free.unknown_reason is None, free.unknown_reason
    assert free.where == "ClickHouse disk 'default'" and free.how == "system.disks unreserved_space"
    client = devstack.clickhouse_client()
    try:
        (path,) = client.query("SELECT path FROM system.disks WHERE name = 'default'").result_rows[
            0
        ]
    finally:
        client.close()
    on_disk = shutil.disk_usage(str(path)).free
    assert abs(free.free - on_disk) < 0.02 * on_disk  # the same disk, give or take writes


def test_clickhouse_free_space_is_unknown_with_the_reason_when_unreachable(stack):
    down = stack.model_copy(update={"clickhouse_url": "http://127.0.0.1:1"})
    free = clickhouse_free_space(down)
    assert free.free is None and "system.disks could not be read" in (free.unknown_reason or "")


def test_postgres_free_space_is_the_volume_size_minus_databases_and_wal(devstack, stack):
    used = pg_used_bytes(pg_server(stack, None))
    assert used > 0
    sized = stack.model_copy(update={"postgres_volume_size": used + 5 * 10**9})
    free = postgres_free_space(pg_server(sized, None))
    # what the server uses moves with the traffic between the two reads
    assert free.free is not None and abs(free.free - 5 * 10**9) < 10**8
    assert free.how.startswith("POSTGRES_VOLUME_SIZE") and not free.separate
    unknown = postgres_free_space(pg_server(stack, None))
    assert unknown.free is None and unknown.setting == "POSTGRES_VOLUME_SIZE"


def test_a_drill_prefers_the_stacks_drill_server_and_knows_when_it_is_apart(stack: Stack):
    assert drill_server(stack, None).dsn == stack.postgres_dsn.get_secret_value()
    apart = stack.model_copy(
        update={
            "drill_postgres_dsn": SecretStr("postgresql://u:pw@drill-db:5432/x"),
            "drill_postgres_volume_size": 2 * 10**9,
        }
    )
    server = drill_server(apart, None)
    assert server.dsn.endswith("@drill-db:5432/x") and server.separate
    assert server.volume_size == 2 * 10**9 and server.volume_setting == "DRILL_POSTGRES_VOLUME_SIZE"
    assert not pg_server(apart, None).separate  # the real restore stays on the stack's own


def test_the_worker_disk_is_read_with_statvfs(tmp_path):
    free = worker_free_space(str(tmp_path))
    assert free.free is not None and free.how == "statvfs" and free.separate
    missing = worker_free_space(str(tmp_path / "absent"))
    assert missing.free is None and "statvfs failed" in (missing.unknown_reason or "")
