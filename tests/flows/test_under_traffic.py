"""Backups, drills and a real restore while the stack serves traffic through LiteLLM.

A live stack never stops: LiteLLM serves requests and writes spend logs, Langfuse
ingests traces and upserts them into ReplacingMergeTree tables whose merges fold older
versions away. Sets taken under that traffic must pass their drills every time, a real
restore of one must pass, damage must still be found, and the traffic must not notice:
its only failures are the ones it injects on purpose.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from blocks.stack import Stack
from devstack.core import Devstack
from devstack.traffic import flowing
from flows.backup import backup
from tasks.decisions.manifest import BackupManifest, manifest_key
from tasks.storage import read_object
from tests.flows.test_restore import run_restore
from tests.flows.test_restore import targets as targets
from tests.flows.test_restore_drill import (
    STACK,
    assert_nothing_left,
    copy_set,
    drill,
    failed_drill,
    remove_a_traces_data_file,
    rewrite_object,
)

# Requests per second through LiteLLM (the figure).
RATE = 20.0
SETS = 10


@pytest.fixture(scope="module")
def busy(devstack: Devstack) -> Iterator[Any]:
    with flowing(devstack, RATE, warm_up_s=3.0) as running:
        yield running


@pytest.fixture(scope="module")
def sets_under_traffic(devstack: Devstack, stack: Stack, busy: Any) -> list[BackupManifest]:
    """Ten backup sets, one after another, while the traffic flows."""
    manifests = []
    for _ in range(SETS):
        state = backup(stack=STACK, return_state=True)
        assert state.is_completed(), state.message
        raw = read_object(stack, manifest_key(STACK, state.result().backup_id))
        manifests.append(BackupManifest.from_json(raw))
    return manifests


def ch_rows(manifest: BackupManifest) -> int:
    return sum(manifest.clickhouse[0].table_rows.values())


def test_ten_sets_taken_under_traffic_all_pass_their_drills(
    devstack: Devstack, busy: Any, sets_under_traffic: list[BackupManifest]
) -> None:
    start = busy.report()
    # The traffic really moved both databases between the sets.
    spend = [m.postgres.table_rows["public.LiteLLM_SpendLogs"] for m in sets_under_traffic]
    assert spend == sorted(spend) and spend[-1] > spend[0]
    assert len({ch_rows(m) for m in sets_under_traffic}) > 1
    for manifest in sets_under_traffic:
        report = drill(manifest.backup_id)
        assert report.passed, report.failure_message()
    assert_nothing_left(devstack)
    end = busy.report()
    assert end.completed > start.completed  # the traffic kept flowing through the drills
    assert end.unexpected == 0, end.summary()
    assert end.sent_to_failing > 0


def test_a_real_restore_of_a_set_taken_under_traffic_passes(
    devstack: Devstack,
    busy: Any,
    sets_under_traffic: list[BackupManifest],
    targets: tuple[str, str],
) -> None:
    pg, ch = targets
    newest = sets_under_traffic[-1]
    summary = run_restore(backup_id=newest.backup_id, postgres_target=pg, clickhouse_target=ch)
    assert summary.restored and all(r.passed for r in summary.restored)
    assert busy.report().unexpected == 0


def test_a_set_taken_under_traffic_with_a_clickhouse_file_deleted_fails_naming_it(
    devstack: Devstack, sets_under_traffic: list[BackupManifest]
) -> None:
    backup_id, copied = copy_set(devstack, sets_under_traffic[-1])
    victim = remove_a_traces_data_file(devstack, copied)
    message = failed_drill(backup_id)
    database = copied.clickhouse[0].database
    assert f"clickhouse-files[{database}] failed" in message and victim in message
    assert_nothing_left(devstack)


def test_a_set_taken_under_traffic_with_a_flipped_dump_byte_fails_naming_it(
    devstack: Devstack, sets_under_traffic: list[BackupManifest]
) -> None:
    backup_id, copied = copy_set(devstack, sets_under_traffic[-1])

    def flip(data: bytes) -> bytes:
        middle = len(data) // 2 + secrets.randbelow(len(data) // 4)
        return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]

    rewrite_object(devstack, copied.bucket, copied.postgres.dump_key, flip)
    message = failed_drill(backup_id, postgres_mode="stream")
    assert "postgres-dump-checksum failed: sha256 mismatch" in message
    assert copied.postgres.dump_key in message
    assert_nothing_left(devstack)


def test_the_traffic_saw_only_the_failures_it_injected(busy: Any) -> None:
    report = busy.report()
    assert report.unexpected == 0, report.summary()
    assert report.streamed > 0 and report.spend_log_rows > 0 and report.langfuse_events > 0
