"""restore against the devstack: a fresh target gets the seeded data back; existing or live
targets are refused without ``confirm`` and left exactly as they were."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from blocks.stack import Stack
from devstack.core import Devstack
from devstack.seed import CH_TRACE_ROWS, clickhouse_client
from flows.restore import RestoreConfig, restore
from tasks.decisions.manifest import BackupManifest
from tasks.errors import IntegrityError, RestoreError
from tasks.restore import _swap_pg, ch_client, pg_server, wait_ch_restore
from tests.flows.test_restore_drill import (
    STACK,
    flow_runs_of,
    make_backup_set,
    run_texts,
    scan_for_secrets,
)

# Every test here runs while traffic flows through the stack (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("traffic")
# Tables the traffic writes: their live rows move on after the backup.
MOVING_TABLES = {"public.LiteLLM_SpendLogs", "public.LiteLLM_DailyUserSpend"}


def still_counts(devstack: Devstack, database: str) -> dict[str, int]:
    """Row counts of the tables the traffic does not write."""
    counts = pg_counts(devstack, database)
    return {table: rows for table, rows in counts.items() if table not in MOVING_TABLES}


def pg_counts(devstack: Devstack, database: str) -> dict[str, int]:
    from tasks.pg_inventory import count_rows

    with psycopg.connect(devstack.admin_dsn(database)) as conn:
        return count_rows(conn)


def pg_databases(devstack: Devstack) -> set[str]:
    with psycopg.connect(devstack.admin_dsn("postgres")) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def ch_databases(devstack: Devstack) -> set[str]:
    client = clickhouse_client(devstack)
    try:
        return {r[0] for r in client.query("SELECT name FROM system.databases").result_rows}
    finally:
        client.close()


@pytest.fixture(scope="module")
def good_set(devstack: Devstack, stack: Stack) -> BackupManifest:
    return make_backup_set(stack)


@pytest.fixture
def targets(devstack: Devstack) -> Iterator[tuple[str, str]]:
    token = secrets.token_hex(3)
    pg, ch = f"restored_{token}", f"restored_lf_{token}"
    yield pg, ch
    with psycopg.connect(devstack.admin_dsn("postgres"), autocommit=True) as conn:
        for name in pg_databases(devstack):
            if name == pg or name.startswith(("restore_", f"{pg}_before_")):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    client = clickhouse_client(devstack)
    try:
        for name in ch_databases(devstack):
            if name == ch or name.startswith(("restore_", f"{ch}_before_")):
                client.command(f"DROP DATABASE IF EXISTS `{name}` SYNC")
    finally:
        client.close()


def run_restore(**config: Any) -> Any:
    """A real restore (``dry_run`` false) unless the test says otherwise."""
    return restore(stack=STACK, config=RestoreConfig(**{"dry_run": False, **config}))


def test_restore_is_a_dry_run_unless_told_otherwise(devstack, good_set, targets):
    pg, ch = targets
    before = pg_databases(devstack)
    summary = restore(
        stack=STACK,
        config=RestoreConfig(
            backup_id=good_set.backup_id, postgres_target=pg, clickhouse_target=ch
        ),
    )
    assert summary.dry_run and summary.restored == []
    assert pg_databases(devstack) == before
    assert ch not in ch_databases(devstack)


def test_a_restore_that_does_not_fit_is_refused_before_any_staging_database(
    devstack, stack, good_set, targets
):
    from tests.flows.test_restore_drill import tight_stack

    pg, _ = targets
    name = tight_stack(stack, "devstack-tight", free=10_000_000)
    before = pg_databases(devstack)
    with pytest.raises(RestoreError) as caught:
        restore(
            stack=name,
            config=RestoreConfig(backup_id=good_set.backup_id, postgres_target=pg, dry_run=False),
        )
    message = str(caught.value)
    assert message.startswith("restore refused, nothing was written: postgres: not enough free")
    assert "grow the volume and raise POSTGRES_VOLUME_SIZE" in message
    assert pg_databases(devstack) == before  # no staging database, no target


def test_restore_into_fresh_databases_gives_the_seeded_data_back(
    devstack, stack, good_set, targets
):
    pg, ch = targets
    summary = run_restore(backup_id=good_set.backup_id, postgres_target=pg, clickhouse_target=ch)
    assert all(r.passed for r in summary.restored)
    restored = pg_counts(devstack, pg)
    assert restored == good_set.postgres.table_rows
    live = pg_counts(devstack, "railway")
    for table in restored.keys() - MOVING_TABLES:
        assert restored[table] == live[table], table  # nothing else written since the backup
    with (
        psycopg.connect(devstack.admin_dsn(pg)) as new,
        psycopg.connect(devstack.admin_dsn("railway")) as live,
    ):
        query = "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM langfuse.users t"
        assert new.execute(query).fetchone() == live.execute(query).fetchone()  # bytea intact
    client = clickhouse_client(devstack)
    try:
        # The restore compared every table's rows with the manifest before merges ran
        # (it passed); merges run again on the restored copy, so what is read now is each
        # row's newest version: every seeded row, and no row the backup did not hold.
        seeded = {
            "traces": CH_TRACE_ROWS,
            "observations": CH_TRACE_ROWS * 3,
            "scores": CH_TRACE_ROWS // 2,
        }
        for table, rows in good_set.clickhouse[0].table_rows.items():
            final = int(
                client.query(f"SELECT count() FROM `{ch}`.`{table}` FINAL").result_rows[0][0]
            )
            assert seeded.get(table, 0) <= final <= rows, table
    finally:
        client.close()
    assert not any(n.startswith("restore_") for n in pg_databases(devstack))  # staging gone
    assert any("DATABASE_URL" in step and pg in step for step in summary.steps_after)


def test_restore_onto_the_live_database_without_confirm_refuses_and_changes_nothing(
    devstack, good_set
):
    before_dbs, before_rows = pg_databases(devstack), still_counts(devstack, "railway")
    with pytest.raises(RestoreError) as refused:
        run_restore(backup_id=good_set.backup_id, postgres_target="railway")
    assert "is the live database" in str(refused.value)
    assert "confirm=['railway']" in str(refused.value)
    assert pg_databases(devstack) == before_dbs
    assert still_counts(devstack, "railway") == before_rows


def test_restore_onto_an_existing_database_without_confirm_refuses(devstack, good_set, targets):
    pg, _ = targets
    with psycopg.connect(devstack.admin_dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{pg}"')
    with psycopg.connect(devstack.admin_dsn(pg), autocommit=True) as conn:
        conn.execute("CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (1)")
    with pytest.raises(RestoreError) as refused:
        run_restore(backup_id=good_set.backup_id, postgres_target=pg, confirm=["railway"])
    assert "already exists" in str(refused.value)
    assert pg_counts(devstack, pg) == {"public.keep_me": 1}


def test_restore_with_confirm_replaces_and_keeps_the_old_database(devstack, good_set, targets):
    pg, _ = targets
    with psycopg.connect(devstack.admin_dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{pg}"')
    with psycopg.connect(devstack.admin_dsn(pg), autocommit=True) as conn:
        conn.execute("CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (1)")
    summary = run_restore(backup_id=good_set.backup_id, postgres_target=pg, confirm=[pg])
    (done,) = summary.restored
    assert done.passed and done.previous is not None
    assert pg_counts(devstack, pg) == good_set.postgres.table_rows
    assert pg_counts(devstack, done.previous) == {"public.keep_me": 1}


def test_no_secret_in_restore_logs_or_artifacts(devstack, stack, good_set, targets):
    pg, _ = targets
    run_restore(backup_id=good_set.backup_id, postgres_target=pg)
    with pytest.raises(RestoreError):
        run_restore(backup_id=good_set.backup_id, postgres_target="railway")
    texts = run_texts(flow_runs_of("restore"), [f"restore-{STACK}"])
    assert any("Next steps" in t for t in texts)
    scan_for_secrets(stack, texts)


def test_a_clickhouse_failure_in_staging_swaps_nothing(devstack, good_set, targets):
    pg, ch = targets
    # ClickHouse reaches S3 through the receiver (501 to every request): its RESTORE
    # fails, while Postgres restores fine in staging.
    name = "devstack-chfault-restore"
    broken = Stack.from_env(
        {**devstack.env(), "CLICKHOUSE_S3_ENDPOINT": devstack.receiver_url}, stack_name=STACK
    )
    broken.save(name, overwrite=True)
    with pytest.raises(IntegrityError) as caught:
        restore(
            stack=name,
            config=RestoreConfig(
                backup_id=good_set.backup_id, postgres_target=pg, clickhouse_target=ch,
                dry_run=False,
            ),
        )  # fmt: skip
    message = str(caught.value)
    assert "clickhouse -> " + ch in message and "nothing was swapped" in message
    assert "postgres -> " not in message
    assert pg not in pg_databases(devstack)  # Postgres passed, yet was not put in place
    assert ch not in ch_databases(devstack)
    assert not any(n.startswith("restore_") for n in pg_databases(devstack))
    assert not any(n.startswith("restore_") for n in ch_databases(devstack))


def test_a_failed_swap_rolls_back_keeps_staging_and_the_target_accepts_connections(
    devstack, stack, targets
):
    pg, _ = targets
    staging, previous = "restore_20260101000000_abcdef", f"{pg}_before_20260101000000"
    with psycopg.connect(devstack.admin_dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{pg}"')
        conn.execute(f'CREATE DATABASE "{staging}"')
    with psycopg.connect(devstack.admin_dsn(pg), autocommit=True) as conn:
        conn.execute("CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (1)")
    # a session on the staging database: renaming it fails after the target was renamed
    with psycopg.connect(devstack.admin_dsn(staging)), pytest.raises(RestoreError) as caught:
        _swap_pg(pg_server(stack, None), staging, pg, previous)
    assert "is being accessed by other users" in str(caught.value)
    databases = pg_databases(devstack)
    assert pg in databases and staging in databases and previous not in databases
    assert pg_counts(devstack, pg) == {"public.keep_me": 1}  # connecting works again


def test_a_restore_missing_from_system_backups_fails_instead_of_waiting(stack):
    client = ch_client(stack)
    try:
        check = wait_ch_restore(
            stack, client, str(uuid.uuid4()), "clickhouse-restore[default]", "x", timeout_s=60
        )
    finally:
        client.close()
    assert not check.passed
    assert "vanished from system.backups" in check.message
