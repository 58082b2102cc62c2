"""Reading a ClickHouse backup's descriptor: its files, and where its row counts are."""

from __future__ import annotations

import re

import pytest

from tasks.decisions.clickhouse_backup import descriptor_files, parse_row_count, part_count_files


def descriptor(*entries: str) -> bytes:
    return (
        "<config><version>1</version><contents>" + "".join(entries) + "</contents></config>"
    ).encode()


def entry(name: str, size: int, data_file: str | None = None, use_base: bool = False) -> str:
    extra = f"<data_file>{data_file}</data_file>" if data_file else ""
    base = "<use_base>true</use_base>" if use_base else ""
    return f"<file><name>{name}</name><size>{size}</size>{extra}{base}</file>"


DESCRIPTOR = descriptor(
    entry("metadata/default/traces.sql", 300),
    entry("data/default/traces/202601_1_1_0/count.txt", 5),
    entry("data/default/traces/202601_1_1_0/id.bin", 900),
    # Same content as the first count.txt: ClickHouse stores it once and points at it.
    entry(
        "data/default/traces/202601_2_2_0/count.txt",
        5,
        "data/default/traces/202601_1_1_0/count.txt",
    ),
    entry("data/default/my%2Dtable/all_1_1_0/count.txt", 2),
    entry("data/other/traces/all_1_1_0/count.txt", 2),
    entry("data/default/traces/202601_1_1_0/empty.bin", 0),
)


def test_count_files_per_table_follow_deduplicated_entries_and_unescape_names() -> None:
    assert part_count_files(DESCRIPTOR, "default") == {
        "traces": [
            "data/default/traces/202601_1_1_0/count.txt",
            "data/default/traces/202601_1_1_0/count.txt",
        ],
        "my-table": ["data/default/my%2Dtable/all_1_1_0/count.txt"],
    }
    assert part_count_files(DESCRIPTOR, "missing") == {}


def test_a_count_file_kept_in_a_base_backup_is_refused() -> None:
    raw = descriptor(entry("data/default/t/all_1_1_0/count.txt", 2, use_base=True))
    with pytest.raises(ValueError, match="base backup"):
        part_count_files(raw, "default")


def test_descriptor_files_skip_empty_and_deduplicated_twins() -> None:
    files = dict(descriptor_files(DESCRIPTOR))
    assert "data/default/traces/202601_1_1_0/empty.bin" not in files
    assert files["data/default/traces/202601_1_1_0/count.txt"] == 5
    assert "data/default/traces/202601_2_2_0/count.txt" not in files


def test_row_counts_parse_and_garbage_names_the_object() -> None:
    assert parse_row_count("k", b"50040") == 50040
    assert parse_row_count("k", b"12\n") == 12
    with pytest.raises(ValueError, match=re.escape("k/count.txt does not hold a row count")):
        parse_row_count("k/count.txt", b"\x00\x01")
