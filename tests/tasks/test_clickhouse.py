"""ClickHouse backups against the devstack: an earlier attempt's BACKUP is found and stopped."""

from __future__ import annotations

from blocks.stack import Stack
from tasks.clickhouse import (
    RUNNING,
    backup_state,
    backup_statement,
    clickhouse_client,
    running_backups,
    stop_backup,
)
from tasks.storage import delete_objects, list_prefix


def test_a_backup_is_found_by_its_prefix_and_ends_stopped_or_finished(devstack, stack: Stack):
    prefix = f"{stack.stack_name}/probe-stop/clickhouse/default/"
    client = clickhouse_client(stack)
    try:
        backup_id = str(client.query(backup_statement(stack, "default", prefix)).result_rows[0][0])
        state = backup_state(client, backup_id)
        assert state is not None
        assert set(running_backups(client, stack, prefix)) <= {backup_id}
        final = stop_backup(client, backup_id, wait_s=60, poll_s=0.2)
        assert final != RUNNING  # cancelled, or it had already finished
        assert running_backups(client, stack, prefix) == []
        assert running_backups(client, stack, "no/such/prefix/") == []
    finally:
        client.close()
        delete_objects(stack, [entry.key for entry in list_prefix(stack, prefix)])
