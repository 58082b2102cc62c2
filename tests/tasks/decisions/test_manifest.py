"""Backup set layout and manifest model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tasks.decisions.manifest import (
    BackupManifest,
    PostgresDump,
    StoredObject,
    backup_id_time,
    clickhouse_prefix,
    manifest_key,
    new_backup_id,
    postgres_dump_key,
    set_id_of_key,
    split_table_name,
)

SHA = "0" * 64


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1)),
       st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=3000)))  # fmt: skip
def test_backup_ids_sort_by_time(moment: datetime, later: timedelta) -> None:
    first = new_backup_id(moment.replace(tzinfo=UTC))
    second = new_backup_id(moment.replace(tzinfo=UTC) + later)
    assert first < second
    assert backup_id_time(first) == moment.replace(tzinfo=UTC, microsecond=0)


def test_keys_of_a_set_are_inside_its_prefix_and_nothing_else_is() -> None:
    backup_id = "20261122T030000Z-3fa9c2"
    for key in (
        manifest_key("prod", backup_id),
        postgres_dump_key("prod", backup_id, "railway"),
        clickhouse_prefix("prod", backup_id, "default") + "data/x.bin",
    ):
        assert set_id_of_key("prod", key) == backup_id
    for foreign in (
        f"prod-old/{backup_id}/manifest.json",
        f"other/{backup_id}/manifest.json",
        f"prod/{backup_id}",
        f"prod/{backup_id}/",
        "prod/README.txt",
        "prod/20261122T030000Z-3FA9C2/manifest.json",
        f"prod/manual/{backup_id}/manifest.json",
    ):
        assert set_id_of_key("prod", foreign) is None, foreign


def test_table_names_split_at_the_schema() -> None:
    assert split_table_name("public.LiteLLM_SpendLogs") == ("public", "LiteLLM_SpendLogs")
    assert split_table_name("langfuse.odd.name") == ("langfuse", "odd.name")


def manifest(**changes: object) -> BackupManifest:
    values: dict[str, object] = {
        "backup_id": "20261122T030000Z-3fa9c2",
        "stack": "prod",
        "bucket": "backups",
        "started_at": datetime(2026, 11, 22, 3, tzinfo=UTC),
        "finished_at": datetime(2026, 11, 22, 3, 5, tzinfo=UTC),
        "objects": [StoredObject(key="k", size=1, sha256=SHA, kind="postgres-dump")],
        "postgres": PostgresDump(
            database="railway",
            server_version="16.4",
            pg_dump_version="16.4",
            snapshot_id="00000003-1",
            dump_key="k",
            dump_size=1,
            dump_sha256=SHA,
            table_rows={"public.t": 3},
            seconds=1.0,
        ),
    }
    values.update(changes)
    return BackupManifest.model_validate(values)


def test_manifest_round_trips_through_json() -> None:
    original = manifest()
    again = BackupManifest.from_json(original.to_json())
    assert again == original
    assert again.schema_version == 1 and again.key == "prod/20261122T030000Z-3fa9c2/manifest.json"


def test_a_manifest_of_another_schema_version_or_id_does_not_parse() -> None:
    data = manifest().model_dump(mode="json")
    with pytest.raises(ValidationError):
        BackupManifest.model_validate({**data, "schema_version": 2})
    with pytest.raises(ValidationError):
        BackupManifest.model_validate({**data, "backup_id": "latest"})


def test_a_stored_manifest_is_trusted_only_when_it_is_this_schema_and_names_its_set() -> None:
    from tasks.decisions.manifest import trust_manifest

    key = "prod/20261122T030000Z-3fa9c2/manifest.json"
    assert trust_manifest(b"not json", "prod", "20261122T030000Z-3fa9c2", key) == (
        None,
        f"{key} does not parse (not JSON)",
    )
    _, problem = trust_manifest(b'{"schema_version": 2}', "prod", "20261122T030000Z-3fa9c2", key)
    assert problem is not None and "has schema_version 2, this version reads 1" in problem
    _, problem = trust_manifest(b'{"stack": "prod"}', "prod", "20261122T030000Z-3fa9c2", key)
    assert problem is not None and "does not parse" in problem
