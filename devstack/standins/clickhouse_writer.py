"""The Langfuse worker's half of ingestion: every event becomes a ClickHouse row.

Langfuse v3 stores traces, observations and scores in ReplacingMergeTree tables
versioned by ``event_ts``: an update of a trace is not an UPDATE but a new full row
with the same sort key and a newer ``event_ts``, and duplicates live side by side
until a merge (or ``FINAL``) folds them. The Langfuse stand-in hands this writer the
merged record after every event, so the tables fill the way the real worker fills
them, with the same duplicate versions a backup or a retention job meets.

Rows are queued and written in batches from one background thread (every
``flush_s`` seconds, or at once when ``batch_rows`` are waiting). If ClickHouse is
down the stand-in keeps serving: rows stay queued (at most ``max_pending``; the
oldest are dropped and counted) and the writer retries.

Configured the way Langfuse takes it, by environment: ``CLICKHOUSE_URL``,
``CLICKHOUSE_USER``, ``CLICKHOUSE_PASSWORD`` (and ``CLICKHOUSE_DB``, default
``default``). Without ``CLICKHOUSE_URL`` nothing is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

TRACE_COLUMNS = (
    "id", "timestamp", "name", "user_id", "metadata", "release", "tags", "input", "output",
    "session_id", "project_id", "created_at", "updated_at", "is_deleted", "event_ts",
)  # fmt: skip
OBSERVATION_COLUMNS = (
    "id", "trace_id", "project_id", "type", "parent_observation_id", "start_time", "end_time",
    "name", "level", "provided_model_name", "usage_details", "cost_details", "total_cost",
    "input", "output", "created_at", "updated_at", "is_deleted", "event_ts",
)  # fmt: skip
SCORE_COLUMNS = (
    "id", "timestamp", "project_id", "trace_id", "name", "value", "source", "comment",
    "data_type", "string_value", "created_at", "updated_at", "is_deleted", "event_ts",
)  # fmt: skip
COLUMNS = {"traces": TRACE_COLUMNS, "observations": OBSERVATION_COLUMNS, "scores": SCORE_COLUMNS}


def parse_time(value: object, default: datetime | None = None) -> datetime:
    """An ISO 8601 string (SDKs send ``Z``, offsets, or none) as an aware UTC datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return default or datetime.now(UTC)


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _string_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {
        str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in value.items()
    }


def _uint_map(value: object) -> dict[str, int]:
    out = {}
    if isinstance(value, dict):
        for key, raw in value.items():
            if isinstance(raw, int | float) and not isinstance(raw, bool) and raw >= 0:
                out[str(key)] = int(raw)
    return out


def _decimal(value: object) -> Decimal | None:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        with contextlib.suppress(InvalidOperation, ValueError):
            return Decimal(str(value)).quantize(Decimal("1e-12"))
    return None


def trace_row(trace: dict) -> dict:
    """The merged in-memory trace as a ``traces`` row (without ``event_ts``)."""
    return {
        "id": trace["id"],
        "timestamp": parse_time(trace.get("timestamp")),
        "name": trace.get("name") or "",
        "user_id": trace.get("userId"),
        "metadata": _string_map(trace.get("metadata")),
        "release": trace.get("release"),
        "tags": [str(tag) for tag in trace.get("tags") or []],
        "input": _text(trace.get("input")),
        "output": _text(trace.get("output")),
        "session_id": trace.get("sessionId"),
        "project_id": trace.get("projectId") or "",
        "created_at": parse_time(trace.get("createdAt")),
        "updated_at": parse_time(trace.get("updatedAt")),
        "is_deleted": 0,
    }


def observation_row(obs: dict, project_id: str, created_at: datetime) -> dict:
    """The merged in-memory observation as an ``observations`` row."""
    usage = obs.get("usageDetails") or obs.get("usage")
    costs = {
        key: amount
        for key, raw in (obs.get("costDetails") or {}).items()
        if (amount := _decimal(raw)) is not None
    }
    total = _decimal(obs.get("totalCost"))
    if total is None and "total" in costs:
        total = costs["total"]
    return {
        "id": str(obs["id"]),
        "trace_id": str(obs.get("traceId") or ""),
        "project_id": project_id,
        "type": str(obs.get("type") or "SPAN"),
        "parent_observation_id": obs.get("parentObservationId"),
        "start_time": parse_time(obs.get("startTime"), created_at),
        "end_time": parse_time(obs["endTime"]) if obs.get("endTime") else None,
        "name": obs.get("name") or "",
        "level": str(obs.get("level") or "DEFAULT"),
        "provided_model_name": obs.get("model"),
        "usage_details": _uint_map(usage),
        "cost_details": costs,
        "total_cost": total,
        "input": _text(obs.get("input")),
        "output": _text(obs.get("output")),
        "created_at": created_at,
        "updated_at": datetime.now(UTC),
        "is_deleted": 0,
    }


def score_row(score: dict, project_id: str, timestamp: str | None) -> dict:
    """A score event's body as a ``scores`` row."""
    value = score.get("value")
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    now = datetime.now(UTC)
    return {
        "id": str(score.get("id") or ""),
        "timestamp": parse_time(score.get("timestamp") or timestamp, now),
        "project_id": project_id,
        "trace_id": str(score.get("traceId") or ""),
        "name": str(score.get("name") or ""),
        "value": float(value)
        if numeric
        else float(bool(value))
        if isinstance(value, bool)
        else 0.0,
        "source": str(score.get("source") or "API"),
        "comment": score.get("comment"),
        "data_type": str(score.get("dataType") or ("NUMERIC" if numeric else "CATEGORICAL")),
        "string_value": None if numeric else _text(value),
        "created_at": now,
        "updated_at": now,
        "is_deleted": 0,
    }


class ClickHouseWriter:
    """Batches rows into ClickHouse from a background thread; never blocks ingestion."""

    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        database: str = "default",
        *,
        max_pending: int = 100_000,
        batch_rows: int = 500,
        flush_s: float = 0.5,
        max_batch: int = 5_000,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 8123
        self.user, self.password, self.database = user, password, database
        self.max_pending, self.batch_rows, self.flush_s = max_pending, batch_rows, flush_s
        self.max_batch = max_batch
        self._pending: deque[tuple[str, dict]] = deque()
        self._in_flight = 0  # rows taken from the queue and not yet written or requeued
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clickhouse-writer", daemon=True)
        self._client = None
        self._last_event_ts = datetime.fromtimestamp(0, UTC)
        self.rows_written = 0
        self.rows_dropped = 0
        self.write_errors = 0
        self.last_error: str | None = None

    @classmethod
    def from_env(cls) -> ClickHouseWriter | None:
        url = os.environ.get("CLICKHOUSE_URL")
        if not url:
            return None
        return cls(
            url,
            os.environ.get("CLICKHOUSE_USER", "default"),
            os.environ.get("CLICKHOUSE_PASSWORD", ""),
            os.environ.get("CLICKHOUSE_DB", "default"),
        )

    def start(self) -> None:
        self._thread.start()

    def add(self, table: str, row: dict) -> None:
        """Queue one row; ``event_ts`` is stamped now, strictly after the previous one,
        so a later update of an id is always the newer version."""
        with self._cond:
            now = datetime.now(UTC)
            now = now.replace(microsecond=now.microsecond // 1000 * 1000)
            stamp = max(now, self._last_event_ts + timedelta(milliseconds=1))
            self._last_event_ts = stamp
            if len(self._pending) >= self.max_pending:
                self._pending.popleft()
                self.rows_dropped += 1
            self._pending.append((table, {**row, "event_ts": stamp}))
            if len(self._pending) >= self.batch_rows:
                self._cond.notify()

    def stats(self) -> dict:
        with self._cond:
            return {
                "enabled": True,
                "rows_written": self.rows_written,
                # Queued or being inserted: 0 means every accepted row is in ClickHouse.
                "rows_pending": len(self._pending) + self._in_flight,
                "rows_dropped": self.rows_dropped,
                "write_errors": self.write_errors,
                "last_error": self.last_error,
            }

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread after one last attempt to write what is queued."""
        self._stopping.set()
        with self._cond:
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                deadline = time.monotonic() + self.flush_s
                while len(self._pending) < self.batch_rows and not self._stopping.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                stopping = self._stopping.is_set()
                take = min(len(self._pending), self.max_batch)
                batch = [self._pending.popleft() for _ in range(take)]
                self._in_flight = take
            if batch and not self._write(batch):
                self._requeue(batch)
                if stopping:
                    return
                # Back off while ClickHouse is away; the queue keeps filling meanwhile.
                self._stopping.wait(1.0)
            elif stopping:
                return

    def _requeue(self, batch: list[tuple[str, dict]]) -> None:
        with self._cond:
            self._pending.extendleft(reversed(batch))
            self._in_flight = 0
            while len(self._pending) > self.max_pending:
                self._pending.popleft()
                self.rows_dropped += 1

    def _write(self, batch: list[tuple[str, dict]]) -> bool:
        by_table: dict[str, list[dict]] = {}
        for table, row in batch:
            by_table.setdefault(table, []).append(row)
        try:
            client = self._connect()
            for table, rows in by_table.items():
                columns = COLUMNS[table]
                client.insert(
                    table,
                    [[row[c] for c in columns] for row in rows],
                    column_names=list(columns),
                    database=self.database,
                )
                # A table written is not written again if a later one fails.
                batch[:] = [item for item in batch if item[0] != table]
                with self._cond:
                    self.rows_written += len(rows)
                    self._in_flight -= len(rows)
        except Exception as exc:  # driver and network errors alike: keep the rows, retry
            with self._cond:
                self.write_errors += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            self._disconnect()
            return False
        return True

    def _connect(self):  # type: ignore[no-untyped-def]
        if self._client is None:
            import clickhouse_connect

            self._client = clickhouse_connect.get_client(
                host=self.host,
                port=self.port,
                username=self.user,
                password=self.password,
                connect_timeout=2,
                send_receive_timeout=30,
            )
        return self._client

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
