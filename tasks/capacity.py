"""What the capacity flow measures, and where it keeps the history (the control plane).

Sizes: every Postgres database (limit: the volume, ``POSTGRES_VOLUME_SIZE``, shared by
all) and its largest tables (LiteLLM's spend logs grow without bound: litellm#29466);
every ClickHouse database, its system log tables apart (limit: ClickHouse's disks); the
backup bucket and Langfuse's buckets (listing them is why this is not in the sweep);
Redis (limit: ``maxmemory``). One Variable per store (``capacity-<stack>-<store>``), a
point a day; the judge is ``tasks.decisions.capacity``.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.variables import Variable

from blocks.stack import Stack
from tasks.clickhouse import clickhouse_client
from tasks.decisions.capacity import StoreHistory, StoreSize

__all__ = [
    "history_variable",
    "load_history",
    "measure_stores",
    "save_history",
]

TOP_TABLES = 3


def history_variable(stack: str, store: str) -> str:
    return f"capacity-{stack}-{re.sub(r'[^a-z0-9_-]', '-', store)}"


def load_history(stack: str, store: str) -> StoreHistory:
    raw: Any = Variable.get(history_variable(stack, store), default=None)
    try:
        return StoreHistory.model_validate(raw) if raw else StoreHistory()
    except ValueError:
        return StoreHistory()  # unreadable history starts again rather than failing


def save_history(stack: str, store: str, history: StoreHistory) -> None:
    Variable.set(history_variable(stack, store), history.model_dump(mode="json"), overwrite=True)


def _postgres(stack: Stack) -> list[StoreSize]:
    limit = int(stack.postgres_volume_size) if stack.postgres_volume_size else None
    sizes: list[StoreSize] = []
    with stack.postgres(timeout_s=30, statement_timeout_s=60) as conn:
        for name, size in conn.execute(
            "SELECT datname, pg_database_size(datname) FROM pg_database "
            "WHERE NOT datistemplate ORDER BY 1"
        ).fetchall():
            sizes.append(StoreSize(store=f"postgres.{name}".lower(), bytes=int(size), limit=limit))
        for schema, table, size in conn.execute(
            "SELECT n.nspname, c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY 3 DESC LIMIT %s",
            (TOP_TABLES,),
        ).fetchall():
            sizes.append(
                StoreSize(
                    store=f"postgres.table.{schema}.{table}".lower(),
                    bytes=int(size),
                    limit=limit,
                    note=f"one of the {TOP_TABLES} largest tables",
                )
            )
    return sizes


def _clickhouse(stack: Stack) -> list[StoreSize]:
    client = clickhouse_client(stack, 60, connect_timeout_s=10)
    try:
        disks = client.query("SELECT sum(total_space) FROM system.disks").result_rows
        rows = client.query(
            "SELECT if(database = 'system' AND match(table, '_log(_[0-9]+)?$'), "
            "'system-logs', database) AS store, sum(bytes_on_disk) FROM system.parts "
            "WHERE active GROUP BY store ORDER BY store"
        ).result_rows
    finally:
        client.close()
    limit = int(disks[0][0]) if disks and disks[0][0] else None
    return [
        StoreSize(store=f"clickhouse.{name}".lower(), bytes=int(size), limit=limit)
        for name, size in rows
    ]


def _buckets(stack: Stack) -> list[StoreSize]:
    client = stack.s3(timeout_s=60)
    sizes: list[StoreSize] = []
    buckets = [stack.backup_bucket, stack.langfuse_bucket, stack.langfuse_media_bucket]
    for bucket in dict.fromkeys(b for b in buckets if b):
        if not client.bucket_exists(bucket):
            continue
        total = sum(obj.size or 0 for obj in client.list_objects(bucket, recursive=True))
        sizes.append(StoreSize(store=f"s3.{bucket}", bytes=total))
    return sizes


def _redis(stack: Stack) -> list[StoreSize]:
    client = stack.redis(timeout_s=10)
    try:
        memory: dict[str, Any] = client.info("memory")
    finally:
        client.close()
    limit = int(memory.get("maxmemory", 0)) or None
    return [StoreSize(store="redis.memory", bytes=int(memory.get("used_memory", 0)), limit=limit)]


@task(name="measure-stores", cache_policy=NO_CACHE, persist_result=False)
def measure_stores(stack: Stack) -> list[StoreSize]:
    """Every store's size now; a store that cannot be read is left out and logged."""
    from prefect.logging import get_run_logger

    sizes: list[StoreSize] = []
    for name, measure in (
        ("postgres", _postgres),
        ("clickhouse", _clickhouse),
        ("buckets", _buckets),
        ("redis", _redis),
    ):
        try:
            sizes += measure(stack)
        except Exception as exc:  # one store down must not hide the others
            get_run_logger().warning(
                "capacity: %s not measured: %s", name, stack.error_line(exc, limit=300)
            )
    return sizes
