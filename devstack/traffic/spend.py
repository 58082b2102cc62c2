"""LiteLLM's spend-log writes in Postgres, which the devstack's LiteLLM cannot make itself.

The devstack's LiteLLM runs without a database, so each answered (or failed) request is
written here as LiteLLM would: one INSERT into ``"LiteLLM_SpendLogs"`` and an upsert into
``"LiteLLM_DailyUserSpend"`` when that table exists.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from devstack.traffic.report import reason

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DAILY_COUNTERS",
    "DAILY_SPEND",
    "SPEND_LOGS",
    "SpendLogRow",
    "SpendWriter",
    "write_spend",
]

SPEND_LOGS = "LiteLLM_SpendLogs"
DAILY_SPEND = "LiteLLM_DailyUserSpend"
# Daily-spend counters that add up on conflict; every other column keeps its value.
DAILY_COUNTERS = (
    "prompt_tokens",
    "completion_tokens",
    "spend",
    "api_requests",
    "successful_requests",
    "failed_requests",
    "total_response_time_ms",
    "timed_requests",
)


@dataclass(frozen=True)
class SpendLogRow:
    """One request as LiteLLM logs it."""

    request_id: str
    model_group: str
    model: str
    provider: str
    user: str
    api_key: str
    start: datetime
    end: datetime
    ok: bool
    spend: float
    prompt_tokens: int
    completion_tokens: int

    def spend_log_values(self) -> dict[str, Any]:
        """Every column LiteLLM fills; the writer keeps those the table has."""
        return {
            "request_id": self.request_id,
            "litellm_call_id": self.request_id,
            "call_type": "acompletion",
            "api_key": self.api_key,
            "spend": self.spend,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "startTime": self.start,
            "endTime": self.end,
            "completionStartTime": self.end,
            "request_duration_ms": int((self.end - self.start).total_seconds() * 1000),
            "model": self.model,
            "model_group": self.model_group,
            "custom_llm_provider": self.provider,
            "user": self.user,
            "end_user": self.user,
            "metadata": {"source": "devstack-traffic", "status": self.status},
            "cache_hit": "False",
            "request_tags": ["devstack-traffic"],
            "status": self.status,
        }

    def daily_values(self) -> dict[str, Any]:
        return {
            "user_id": self.user,
            "date": self.start.date().isoformat(),
            "api_key": self.api_key,
            "model": self.model,
            "model_group": self.model_group,
            "custom_llm_provider": self.provider,
            "mcp_namespaced_tool_name": "",
            "endpoint": "/v1/chat/completions",
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "spend": self.spend,
            "api_requests": 1,
            "successful_requests": int(self.ok),
            "failed_requests": int(not self.ok),
            "total_response_time_ms": int((self.end - self.start).total_seconds() * 1000),
            "timed_requests": 1,
        }

    @property
    def status(self) -> str:
        return "success" if self.ok else "failure"


class SpendWriter:
    """Writes spend rows as LiteLLM does: one INSERT per request, plus the daily upsert.

    The columns are read from the table at start: the devstack's schema becomes
    LiteLLM's own (litellm-proxy-extras migrations), and columns come and go with it.
    """

    def __init__(
        self, dsn: str, on_written: Callable[[str], None], on_error: Callable[[str], None]
    ) -> None:
        self.dsn = dsn
        self._on_written = on_written
        self._on_error = on_error
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._spend_sql: Any = None
        self._spend_columns: dict[str, str] = {}
        self._spend_fill: dict[str, Any] = {}
        self._daily_sql: Any = None
        self._daily_columns: dict[str, str] = {}
        self._daily_fill: dict[str, Any] = {}

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=5
            )
            await self._prepare(self._conn)
        return self._conn

    async def _columns(self, conn: psycopg.AsyncConnection[Any], table: str) -> dict[str, Any]:
        cursor = await conn.execute(
            "SELECT column_name, data_type, is_nullable = 'NO' AND column_default IS NULL "
            "FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s",
            (table,),
        )
        return {name: (kind, required) for name, kind, required in await cursor.fetchall()}

    @staticmethod
    def _filler(kind: str) -> Any:
        """A value for a required column this writer knows nothing about."""
        if kind in ("jsonb", "json"):
            return {}
        if "timestamp" in kind or kind == "date":
            return datetime.now(UTC).replace(tzinfo=None)
        if kind in ("integer", "bigint", "smallint", "double precision", "real", "numeric"):
            return 0
        if kind == "boolean":
            return False
        return ""

    async def _prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        from psycopg import sql

        spend = await self._columns(conn, SPEND_LOGS)
        sample = SpendLogRow("", "", "", "", "", "", datetime.now(), datetime.now(), True, 0, 0, 0)
        known = sample.spend_log_values()
        self._spend_columns = {c: spend[c][0] for c in known if c in spend}
        self._spend_fill = {
            c: self._filler(kind)
            for c, (kind, required) in spend.items()
            if required and c not in known
        }
        names = [*self._spend_columns, *self._spend_fill]
        self._spend_sql = sql.SQL("INSERT INTO public.{} ({}) VALUES ({})").format(
            sql.Identifier(SPEND_LOGS),
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder(n) for n in names),
        )
        daily = await self._columns(conn, DAILY_SPEND)
        conflict = await self._unique_columns(conn, DAILY_SPEND) if daily else []
        if not daily or not conflict:
            self._daily_sql = None
            return
        known = sample.daily_values()
        self._daily_columns = {c: daily[c][0] for c in known if c in daily}
        # Prisma fills these client-side (@default(uuid()), @updatedAt): no DB default.
        extra = {"id": sql.SQL("gen_random_uuid()::text"), "updated_at": sql.SQL("now()")}
        extra = {c: v for c, v in extra.items() if c in daily}
        self._daily_fill = {
            c: self._filler(kind)
            for c, (kind, required) in daily.items()
            if required and c not in known and c not in extra
        }
        # NULLs never conflict: every column of the unique key gets a value.
        for column in conflict:
            if column not in self._daily_columns and column not in extra:
                self._daily_fill.setdefault(column, self._filler(daily[column][0]))
        names = [*self._daily_columns, *self._daily_fill]
        updates: list[sql.Composable] = [
            sql.SQL("{0} = t.{0} + EXCLUDED.{0}").format(sql.Identifier(c))
            for c in DAILY_COUNTERS
            if c in daily
        ]
        if "updated_at" in daily:
            updates.append(sql.SQL("updated_at = now()"))
        self._daily_sql = sql.SQL(
            "INSERT INTO public.{} AS t ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}"
        ).format(
            sql.Identifier(DAILY_SPEND),
            sql.SQL(", ").join(map(sql.Identifier, [*names, *extra])),
            sql.SQL(", ").join([*(sql.Placeholder(n) for n in names), *extra.values()]),
            sql.SQL(", ").join(map(sql.Identifier, conflict)),
            sql.SQL(", ").join(updates),
        )

    @staticmethod
    async def _unique_columns(conn: psycopg.AsyncConnection[Any], table: str) -> list[str]:
        cursor = await conn.execute(
            "SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = format('public.%%I', %s::text)::regclass "
            "AND i.indisunique AND NOT i.indisprimary "
            "GROUP BY i.indexrelid ORDER BY i.indexrelid LIMIT 1",
            (table,),
        )
        row = await cursor.fetchone()
        return list(row[0]) if row and row[0] else []

    def _params(
        self, values: dict[str, Any], columns: dict[str, str], fill: dict[str, Any]
    ) -> dict[str, Any]:
        from psycopg.types.json import Jsonb

        params: dict[str, Any] = {}
        for column, kind in columns.items():
            value = values[column]
            params[column] = Jsonb(value) if kind in ("jsonb", "json") else value
        for column, value in fill.items():
            params[column] = Jsonb(value) if isinstance(value, dict) else value
        return params

    async def write(self, row: SpendLogRow) -> None:
        try:
            conn = await self._connect()
            await conn.execute(
                self._spend_sql,
                self._params(row.spend_log_values(), self._spend_columns, self._spend_fill),
            )
            self._on_written("spend_log")
            if self._daily_sql is not None:
                await conn.execute(
                    self._daily_sql,
                    self._params(row.daily_values(), self._daily_columns, self._daily_fill),
                )
                self._on_written("daily")
        except Exception as exc:  # the run goes on; the report counts what failed and why
            self._on_error(reason(exc))
            await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


async def write_spend(writer: SpendWriter, rows: asyncio.Queue[SpendLogRow | None]) -> None:
    """Write queued rows one after another until ``None`` ends the queue."""
    while (row := await rows.get()) is not None:
        await writer.write(row)
