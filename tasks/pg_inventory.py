"""What a Postgres snapshot holds, counted inside it: rows per table, partitioned
parents, large objects. The backup counts the exported snapshot with these; the drill and
the restore count the restored database the same way, so like is compared with like.
"""

from __future__ import annotations

from typing import NamedTuple, cast

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from tasks.decisions.manifest import LargeObjects
from tasks.errors import PostgresDumpError

__all__ = [
    "LARGE_OBJECT_COUNT",
    "LARGE_OBJECT_DIGEST",
    "PARTITIONED_TABLES",
    "USER_TABLES",
    "SnapshotInventory",
    "count_rows",
    "export_snapshot",
    "large_objects",
    "partitioned_tables",
    "snapshot_inventory",
]

USER_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


def export_snapshot(conn: psycopg.Connection[TupleRow]) -> str:
    """Start the REPEATABLE READ transaction and export its snapshot."""
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    if row is None:
        raise PostgresDumpError("pg_export_snapshot() returned nothing")
    return str(row[0])


PARTITIONED_TABLES = """
SELECT n.nspname || '.' || c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'p' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
"""
LARGE_OBJECT_COUNT = "SELECT count(*) FROM pg_largeobject_metadata"
LARGE_OBJECT_DIGEST = (
    "SELECT coalesce(md5(string_agg(md5(data), '' ORDER BY loid, pageno)), '') FROM pg_largeobject"
)


def partitioned_tables(conn: psycopg.Connection[TupleRow]) -> list[str]:
    """The partitioned parents: ``count(*)`` on them counts their partitions' rows."""
    return [str(row[0]) for row in conn.execute(PARTITIONED_TABLES).fetchall()]


def large_objects(conn: psycopg.Connection[TupleRow]) -> LargeObjects:
    """Count and digest of the large objects, which no table count sees."""
    row = conn.execute(LARGE_OBJECT_COUNT).fetchone()
    count = int(cast(int, row[0])) if row else 0
    if count == 0:
        return LargeObjects(count=0, digest="")
    # pg_largeobject is readable by superusers only; a count is still worth having.
    try:
        with conn.transaction():
            digest_row = conn.execute(LARGE_OBJECT_DIGEST).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return LargeObjects(count=count, digest=None)
    return LargeObjects(count=count, digest=str(digest_row[0]) if digest_row else None)


class SnapshotInventory(NamedTuple):
    table_rows: dict[str, int]
    partitioned: list[str]
    large_objects: LargeObjects


def snapshot_inventory(conn: psycopg.Connection[TupleRow]) -> SnapshotInventory:
    """Everything a restore must bring back, counted in the connection's snapshot."""
    return SnapshotInventory(count_rows(conn), partitioned_tables(conn), large_objects(conn))


def count_rows(conn: psycopg.Connection[TupleRow]) -> dict[str, int]:
    """Exact row count of every user table, inside the exported snapshot."""
    counts: dict[str, int] = {}
    for schema, table in conn.execute(USER_TABLES).fetchall():
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(str(schema), str(table)))
        row = conn.execute(query).fetchone()
        counts[f"{schema}.{table}"] = int(cast(int, row[0])) if row else 0
    return counts
