"""What a ClickHouse backup holds, read from its own ``.backup`` descriptor.

Pure: parses the descriptor XML that ``BACKUP ... TO S3`` writes, no I/O.

Row counts come from the backup itself, not from the live tables. ClickHouse copies a
table as the set of data parts it had when the BACKUP reached it; each part carries its
row count in ``count.txt``. Summing those per table gives exactly the rows the backup
holds, whatever was inserted while it ran or merged away since (Langfuse's traces,
observations and scores are ReplacingMergeTree tables whose merges drop older versions
of a row). The restore compares like with like: the rows of the restored parts, counted
before any merge runs on them (:mod:`tasks.restore.clickhouse` stops merges on the
restored tables until they are counted).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from urllib.parse import unquote

__all__ = ["descriptor_files", "parse_row_count", "part_count_files"]

# data/<database>/<table>/<part>/count.txt, names escaped the way ClickHouse escapes
# file names (%XX for anything but [A-Za-z0-9_]).
_COUNT_FILE = re.compile(r"^data/(?P<db>[^/]+)/(?P<table>[^/]+)/(?P<part>[^/]+)/count\.txt$")


def _entries(raw: bytes) -> list[ElementTree.Element]:
    return list(ElementTree.fromstring(raw).iter("file"))


def _stored_name(entry: ElementTree.Element) -> str:
    """The object holding an entry's bytes (a deduplicated file points at its twin)."""
    return entry.findtext("data_file") or entry.findtext("name") or ""


def _in_base(entry: ElementTree.Element) -> bool:
    return (entry.findtext("use_base") or "").lower() in ("true", "1")


def descriptor_files(raw: bytes) -> list[tuple[str, int]]:
    """``(object name, size)`` of each file a ClickHouse ``.backup`` descriptor stores.

    Empty files are not stored; a deduplicated entry points at its ``data_file``; files
    kept in a base backup (``use_base``) are not in this folder.
    """
    files: list[tuple[str, int]] = []
    for entry in _entries(raw):
        size = int(entry.findtext("size") or "0")
        if size == 0 or _in_base(entry):
            continue
        files.append((_stored_name(entry), size))
    return sorted(set(files))


def part_count_files(raw: bytes, database: str) -> dict[str, list[str]]:
    """Table name -> the objects holding its parts' ``count.txt``, for one database.

    Raises ``ValueError`` for a count file kept in a base backup (this product never
    makes incremental backups, so such a descriptor is not one of its own).
    """
    tables: dict[str, list[str]] = {}
    for entry in _entries(raw):
        match = _COUNT_FILE.match(entry.findtext("name") or "")
        if match is None or unquote(match["db"]) != database:
            continue
        if _in_base(entry):
            raise ValueError(f"{entry.findtext('name')} is kept in a base backup")
        tables.setdefault(unquote(match["table"]), []).append(_stored_name(entry))
    return tables


def parse_row_count(name: str, data: bytes) -> int:
    """The row count a part's ``count.txt`` holds (decimal text)."""
    text = data.decode("ascii", errors="replace").strip()
    if not text.isdigit():
        raise ValueError(f"{name} does not hold a row count: {text[:40]!r}")
    return int(text)
