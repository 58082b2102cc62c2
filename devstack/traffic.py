"""Continuous traffic through the devstack, the way applications drive the real stack.

A stack that only holds seed data hides what production meets: rows arriving while a
backup runs, ReplacingMergeTree duplicates not yet merged, a spend table that grows
under a restore. ``Traffic`` keeps the devstack busy in the three ways a deployment is:

- **chat completions through the real LiteLLM proxy**, open-loop at ``rate`` per second
  (the schedule does not wait for answers; at most ``concurrency`` in flight), spread
  over the mock models, a share streamed (read to ``[DONE]``) and a share sent on purpose
  to ``flaky``, which always fails. LiteLLM's ``langfuse`` callback turns each success
  into traces in the Langfuse stand-in, which writes them on to ClickHouse;
- **direct Langfuse ingestion** at a lower rate: new traces, updates of earlier ones and
  scores (some re-sent under the same id), so upserts of existing ids keep landing;
- **LiteLLM's spend-log writes in Postgres**: one INSERT per request into
  ``"LiteLLM_SpendLogs"`` (only the columns the table has: the schema follows LiteLLM's
  migrations) and an upsert into ``"LiteLLM_DailyUserSpend"`` when that table exists.
  The devstack's LiteLLM runs without a database, so these are written here.

    with Traffic(devstack, rate=25, stream_share=0.2, fail_share=0.05) as traffic:
        traffic.wait_for(requests=200, timeout_s=60)
        print(traffic.report().summary())

``python -m devstack traffic --rate R --duration S`` runs it from the shell.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
import signal
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import psycopg

    from devstack.core import Devstack

__all__ = ["FAILING_MODEL", "OK_MODELS", "SpendLogRow", "Traffic", "TrafficReport", "run_traffic"]

OK_MODELS = ("gpt-4o-mini", "claude-3-haiku", "canary")
FAILING_MODEL = "flaky"
# Percentiles are taken over the most recent answers, so a long run stays bounded.
LATENCY_WINDOW = 10_000
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


class TrafficReport(BaseModel):
    """What the traffic did so far: counts, rate, latency, rows written."""

    model_config = ConfigDict(frozen=True)

    elapsed_s: float
    sent: int = Field(description="requests started")
    completed: int = Field(description="requests answered or failed")
    ok: int
    sent_to_failing: int = Field(description=f"requests sent on purpose to {FAILING_MODEL!r}")
    failed_on_purpose: int
    failed_unexpectedly: dict[str, int] = Field(description="reason -> count")
    streaming: int = Field(description="streaming requests started")
    streamed: int = Field(description="streaming requests read to [DONE]")
    skipped: int = Field(description="schedule slots dropped: every connection was busy")
    achieved_rate: float = Field(description="completed requests per second")
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    spend_log_rows: int
    daily_spend_upserts: int
    postgres_errors: dict[str, int]
    langfuse_events: int = Field(description="ingestion events the stand-in accepted")
    langfuse_errors: dict[str, int]

    @property
    def unexpected(self) -> int:
        return sum(self.failed_unexpectedly.values())

    def summary(self) -> str:
        def reasons(counts: dict[str, int]) -> str:
            return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"

        p50 = f"{self.latency_p50_ms:.0f}" if self.latency_p50_ms is not None else "-"
        p95 = f"{self.latency_p95_ms:.0f}" if self.latency_p95_ms is not None else "-"
        return "\n".join(
            [
                f"{self.elapsed_s:.1f}s: {self.sent} sent, {self.completed} completed "
                f"({self.achieved_rate:.1f}/s), {self.skipped} slots skipped",
                f"  ok {self.ok}; failed on purpose {self.failed_on_purpose}/"
                f"{self.sent_to_failing}; failed unexpectedly {self.unexpected} "
                f"({reasons(self.failed_unexpectedly)})",
                f"  streaming {self.streamed}/{self.streaming} read to the end; "
                f"latency p50 {p50} ms, p95 {p95} ms",
                f"  Postgres: {self.spend_log_rows} spend-log rows, "
                f"{self.daily_spend_upserts} daily-spend upserts, errors: "
                f"{reasons(self.postgres_errors)}",
                f"  Langfuse: {self.langfuse_events} events accepted, errors: "
                f"{reasons(self.langfuse_errors)}",
            ]
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


def _share_hit(index: int, share: float) -> bool:
    """Whether request ``index`` belongs to a ``share`` of requests: spread evenly, so
    after n requests exactly floor(n * share) were picked (no sampling noise)."""
    return math.floor((index + 1) * share) > math.floor(index * share)


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _reason(exc: BaseException) -> str:
    return type(exc).__name__


class _SpendWriter:
    """Writes spend rows as LiteLLM does: one INSERT per request, plus the daily upsert.

    The columns are read from the table at start: the devstack's schema becomes
    LiteLLM's own (litellm-proxy-extras migrations), and columns come and go with it.
    """

    def __init__(self, dsn: str, on_written: Any, on_error: Any) -> None:
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
            self._on_error(_reason(exc))
            await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


class Traffic:
    """Drives the devstack from a background thread with its own event loop.

    Use it as a context manager (or ``start()``/``stop()``); ``report()`` gives the
    counts so far at any moment, ``wait_for()`` blocks until enough requests completed.
    Stopping lets in-flight requests finish and their rows be written.
    """

    def __init__(
        self,
        stack: Devstack,
        rate: float = 20.0,
        *,
        duration_s: float | None = None,
        max_requests: int | None = None,
        stream_share: float = 0.2,
        fail_share: float = 0.05,
        langfuse_rate: float | None = None,
        concurrency: int = 32,
        request_timeout_s: float = 30.0,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 requests per second")
        if not (0 <= stream_share <= 1 and 0 <= fail_share <= 1):
            raise ValueError("stream_share and fail_share are fractions between 0 and 1")
        self.stack = stack
        self.rate = rate
        self.duration_s = duration_s or None
        self.max_requests = max_requests
        self.stream_share = stream_share
        self.fail_share = fail_share
        self.langfuse_rate = langfuse_rate if langfuse_rate is not None else max(1.0, rate / 10)
        self.concurrency = concurrency
        self.request_timeout_s = request_timeout_s
        self.run_id = uuid.uuid4().hex[:8]
        self._api_key = hashlib.sha256(stack.creds.litellm_master_key.encode()).hexdigest()

        self._lock = threading.Condition()
        self._counts: Counter[str] = Counter()
        self._unexpected: Counter[str] = Counter()
        self._pg_errors: Counter[str] = Counter()
        self._lf_errors: Counter[str] = Counter()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ---- control (any thread) -----------------------------------------------------

    def __enter__(self) -> Traffic:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this Traffic was already started")
        self._thread = threading.Thread(target=self._run, name="devstack-traffic", daemon=True)
        self._thread.start()
        self._ready.wait()

    def stop(self, timeout_s: float = 60.0) -> TrafficReport:
        """Stop sending, let in-flight requests and writes finish, and report."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(f"traffic did not drain within {timeout_s:.0f}s")
        if self._error is not None:
            raise RuntimeError(f"traffic failed: {self._error!r}") from self._error
        return self.report()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_for(self, *, requests: int, timeout_s: float) -> TrafficReport:
        """Block until ``requests`` requests completed; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._counts["completed"] < requests:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{self._counts['completed']} of {requests} requests completed "
                        f"within {timeout_s:.0f}s"
                    )
                if not self.running and self._stopped_at is not None:
                    raise RuntimeError(
                        f"traffic ended after {self._counts['completed']} of {requests} requests"
                    )
                self._lock.wait(min(remaining, 0.5))
        return self.report()

    def wait(self, timeout_s: float) -> bool:
        """Wait until the traffic ends by itself (duration or request count reached)."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def report(self) -> TrafficReport:
        with self._lock:
            counts = dict(self._counts)
            latencies = list(self._latencies)
            started = self._started_at or time.monotonic()
            elapsed = (self._stopped_at or time.monotonic()) - started
            unexpected = dict(self._unexpected)
            pg_errors, lf_errors = dict(self._pg_errors), dict(self._lf_errors)
        completed = counts.get("completed", 0)
        p50, p95 = _percentile(latencies, 0.50), _percentile(latencies, 0.95)
        return TrafficReport(
            elapsed_s=round(elapsed, 3),
            sent=counts.get("sent", 0),
            completed=completed,
            ok=counts.get("ok", 0),
            sent_to_failing=counts.get("sent_to_failing", 0),
            failed_on_purpose=counts.get("failed_on_purpose", 0),
            failed_unexpectedly=unexpected,
            streaming=counts.get("streaming", 0),
            streamed=counts.get("streamed", 0),
            skipped=counts.get("skipped", 0),
            achieved_rate=round(completed / elapsed, 2) if elapsed > 0 else 0.0,
            latency_p50_ms=round(p50 * 1000, 1) if p50 is not None else None,
            latency_p95_ms=round(p95 * 1000, 1) if p95 is not None else None,
            spend_log_rows=counts.get("spend_log", 0),
            daily_spend_upserts=counts.get("daily", 0),
            postgres_errors=pg_errors,
            langfuse_events=counts.get("langfuse_events", 0),
            langfuse_errors=lf_errors,
        )

    # ---- bookkeeping ----------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n
            if key == "completed":
                self._lock.notify_all()

    def _count_error(self, counter: Counter[str], reason: str) -> None:
        with self._lock:
            counter[reason] += 1

    # ---- the loop (traffic thread) ----------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by stop(); the thread must not die silently
            self._error = exc
        finally:
            with self._lock:
                self._stopped_at = time.monotonic()
                self._lock.notify_all()
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        with self._lock:
            self._started_at = time.monotonic()
        self._ready.set()
        spend = _SpendWriter(
            self.stack.admin_dsn("railway"),
            on_written=self._count,
            on_error=lambda reason: self._count_error(self._pg_errors, reason),
        )
        spend_rows: asyncio.Queue[SpendLogRow | None] = asyncio.Queue()
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        async with httpx.AsyncClient(limits=limits, timeout=self.request_timeout_s) as client:
            writer = asyncio.create_task(self._write_spend(spend, spend_rows))
            sending_done = asyncio.Event()
            langfuse = asyncio.create_task(self._langfuse_loop(client, sending_done))
            try:
                await self._send_requests(client, spend_rows)
            finally:
                sending_done.set()
                await spend_rows.put(None)
                await asyncio.gather(writer, langfuse, return_exceptions=True)
                await spend.close()

    async def _sleep_until(self, due: float) -> bool:
        """Sleep until loop time ``due``; False if asked to stop meanwhile."""
        assert self._stop is not None
        delay = due - asyncio.get_running_loop().time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
        return not self._stop.is_set()

    async def _send_requests(
        self, client: httpx.AsyncClient, spend_rows: asyncio.Queue[SpendLogRow | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        slots = asyncio.Semaphore(self.concurrency)
        in_flight: set[asyncio.Task[None]] = set()
        index = failing = 0
        while self.max_requests is None or index < self.max_requests:
            due = start + index / self.rate
            if self.duration_s is not None and due - start >= self.duration_s:
                break
            if not await self._sleep_until(due):
                break
            # Open loop: the schedule never waits for answers. When every connection is
            # busy and a backlog has formed, the slot is dropped (and counted) rather than
            # queued without bound.
            if len(in_flight) >= self.concurrency * 2:
                self._count("skipped")
                index += 1
                continue
            to_failing = _share_hit(index, self.fail_share)
            ok_index = index - failing
            failing += to_failing
            stream = not to_failing and _share_hit(ok_index, self.stream_share)
            model = FAILING_MODEL if to_failing else OK_MODELS[ok_index % len(OK_MODELS)]
            task = asyncio.create_task(
                self._one_request(client, slots, spend_rows, index, model, stream)
            )
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            index += 1
        # Drain: what was sent is answered and written before the run ends.
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _one_request(
        self,
        client: httpx.AsyncClient,
        slots: asyncio.Semaphore,
        spend_rows: asyncio.Queue[SpendLogRow | None],
        index: int,
        model: str,
        stream: bool,
    ) -> None:
        async with slots:
            to_failing = model == FAILING_MODEL
            self._count("sent")
            self._count("sent_to_failing" if to_failing else "sent_to_ok")
            if stream:
                self._count("streaming")
            user = f"traffic-user-{index % 25}"
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": f"traffic {self.run_id} #{index}"}],
                "user": user,
                # A session of ten turns: LiteLLM's callback files them under one trace,
                # so each turn is an update of that trace (a new version in ClickHouse).
                "metadata": {
                    "tags": ["devstack-traffic"],
                    "session_id": f"traffic-{self.run_id}-{index // 10}",
                },
            }
            if stream:
                body["stream"] = True
                body["stream_options"] = {"include_usage": True}
            headers = {"Authorization": f"Bearer {self.stack.creds.litellm_master_key}"}
            url = f"{self.stack.url('litellm')}/v1/chat/completions"
            started_wall = datetime.now(UTC).replace(tzinfo=None)
            started = time.monotonic()
            failure: str | None = None
            usage: dict[str, Any] = {}
            cost = 0.0
            call_id = ""
            try:
                if stream:
                    async with client.stream("POST", url, json=body, headers=headers) as response:
                        call_id, cost = self._call_facts(response)
                        if response.status_code != 200:
                            await response.aread()
                            failure = f"HTTP {response.status_code}"
                        else:
                            done, usage = await self._read_stream(response)
                            if not done:
                                failure = "stream ended before [DONE]"
                else:
                    response = await client.post(url, json=body, headers=headers)
                    call_id, cost = self._call_facts(response)
                    if response.status_code != 200:
                        failure = f"HTTP {response.status_code}"
                    else:
                        usage = response.json().get("usage") or {}
            except httpx.HTTPError as exc:
                failure = _reason(exc)
            latency = time.monotonic() - started
            self._record(to_failing, stream, failure, latency)
            if failure is not None and not failure.startswith("HTTP") and not call_id:
                # The proxy never answered: LiteLLM logs nothing for such a request.
                return
            await spend_rows.put(
                SpendLogRow(
                    request_id=call_id or f"traffic-{uuid.uuid4()}",
                    model_group=model,
                    model=model,
                    provider="anthropic" if model.startswith("claude") else "openai",
                    user=user,
                    api_key=self._api_key,
                    start=started_wall,
                    end=datetime.now(UTC).replace(tzinfo=None),
                    ok=failure is None,
                    spend=cost,
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0),
                )
            )

    @staticmethod
    def _call_facts(response: httpx.Response) -> tuple[str, float]:
        call_id = response.headers.get("x-litellm-call-id", "")
        try:
            cost = float(response.headers.get("x-litellm-response-cost") or 0)
        except ValueError:
            cost = 0.0
        return call_id, cost

    @staticmethod
    async def _read_stream(response: httpx.Response) -> tuple[bool, dict[str, Any]]:
        import json

        usage: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return True, usage
            with contextlib.suppress(ValueError):
                usage = json.loads(data).get("usage") or usage
        return False, usage

    def _record(self, to_failing: bool, stream: bool, failure: str | None, latency: float) -> None:
        with self._lock:
            if failure is None and to_failing:
                self._unexpected[f"{FAILING_MODEL} answered"] += 1
            elif failure is None:
                self._counts["ok"] += 1
                self._counts["streamed"] += stream
                self._latencies.append(latency)
            elif to_failing and failure.startswith("HTTP 5"):
                self._counts["failed_on_purpose"] += 1
            else:
                self._unexpected[failure] += 1
            self._counts["completed"] += 1
            self._lock.notify_all()

    async def _write_spend(
        self, spend: _SpendWriter, rows: asyncio.Queue[SpendLogRow | None]
    ) -> None:
        while (row := await rows.get()) is not None:
            await spend.write(row)

    # ---- Langfuse ingestion -------------------------------------------------------------

    def _langfuse_batch(self, tick: int) -> list[dict[str, Any]]:
        """A new trace, an update of the previous one, and a score; every fifth tick
        re-sends an earlier score id with a new value (Langfuse upserts scores by id)."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

        def event(kind: str, body: dict[str, Any]) -> dict[str, Any]:
            return {"id": str(uuid.uuid4()), "type": kind, "timestamp": now, "body": body}

        trace_id = f"traffic-{self.run_id}-{tick}"
        batch = [
            event(
                "trace-create",
                {
                    "id": trace_id,
                    "timestamp": now,
                    "name": "traffic",
                    "userId": f"traffic-user-{tick % 25}",
                    "sessionId": f"traffic-{self.run_id}",
                    "input": {"tick": tick},
                    "tags": ["devstack-traffic"],
                },
            )
        ]
        if tick > 0:
            previous = f"traffic-{self.run_id}-{tick - 1}"
            batch.append(
                event(
                    "trace-create",
                    {"id": previous, "output": {"done": True}, "metadata": {"updated": str(tick)}},
                )
            )
            batch.append(
                event(
                    "score-create",
                    {
                        "id": f"score-{self.run_id}-{tick - 1}",
                        "traceId": previous,
                        "name": "quality",
                        "value": (tick % 10) / 10,
                        "dataType": "NUMERIC",
                    },
                )
            )
        if tick >= 5 and tick % 5 == 0:
            batch.append(
                event(
                    "score-create",
                    {
                        "id": f"score-{self.run_id}-{tick - 5}",
                        "traceId": f"traffic-{self.run_id}-{tick - 5}",
                        "name": "quality",
                        "value": 1.0,
                        "dataType": "NUMERIC",
                        "comment": "re-scored",
                    },
                )
            )
        return batch

    async def _langfuse_loop(self, client: httpx.AsyncClient, sending_done: asyncio.Event) -> None:
        c = self.stack.creds
        token = base64.b64encode(f"{c.langfuse_public_key}:{c.langfuse_secret_key}".encode())
        headers = {"Authorization": f"Basic {token.decode()}"}
        url = f"{self.stack.url('langfuse')}/api/public/ingestion"
        start = asyncio.get_running_loop().time()
        tick = 0
        while not sending_done.is_set():
            due = start + tick / self.langfuse_rate
            delay = due - asyncio.get_running_loop().time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sending_done.wait(), delay)
                if sending_done.is_set():
                    break
            try:
                response = await client.post(
                    url, json={"batch": self._langfuse_batch(tick)}, headers=headers
                )
                if response.status_code == 207:
                    self._count("langfuse_events", len(response.json().get("successes", [])))
                    for error in response.json().get("errors", []):
                        self._count_error(self._lf_errors, f"event {error.get('status')}")
                else:
                    self._count_error(self._lf_errors, f"HTTP {response.status_code}")
            except httpx.HTTPError as exc:
                self._count_error(self._lf_errors, _reason(exc))
            tick += 1


def run_traffic(
    stack: Devstack,
    *,
    rate: float,
    duration_s: float = 0.0,
    stream_share: float = 0.2,
    fail_share: float = 0.05,
    concurrency: int = 32,
    every_s: float | None = None,
) -> int:
    """``python -m devstack traffic``: run until the duration ends, Ctrl-C or SIGTERM,
    print the report; exit 1 if anything failed that was not meant to."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    traffic = Traffic(
        stack,
        rate,
        duration_s=duration_s or None,
        stream_share=stream_share,
        fail_share=fail_share,
        concurrency=concurrency,
    )
    print(
        f"traffic: {rate:g} requests/s through {stack.url('litellm')} "
        f"({'until Ctrl-C' if not duration_s else f'{duration_s:g}s'}), "
        f"{stream_share:.0%} streamed, {fail_share:.0%} to {FAILING_MODEL!r}",
        flush=True,
    )
    try:
        traffic.start()
        next_report = time.monotonic() + (every_s or 0)
        while traffic.running and not stop.is_set():
            stop.wait(0.2)
            if every_s and time.monotonic() >= next_report:
                print(traffic.report().summary(), flush=True)
                next_report += every_s
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("traffic: stopping (draining in-flight requests)", flush=True)
    report = traffic.stop()
    print(report.summary(), flush=True)
    return 1 if report.unexpected or report.postgres_errors else 0
