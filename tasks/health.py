"""Health checks of every service of a stack, run concurrently, each with its own timeout.

A check probes one service and gives its
:class:`~tasks.decisions.health.ServiceHealth`: healthy, degraded or unhealthy, its
latency and a one-line reason a person can act on. :func:`run_checks` runs them all at once, so a
sweep takes as long as its slowest check (at most ``timeout_s``), never their sum.

Every socket gets the check's timeout too: ``asyncio.wait_for`` cannot interrupt a
blocking driver call, so the drivers without an asyncio API (clickhouse-connect,
minio) run in a dedicated thread pool (not the loop's small default one, which 50
stacks would exhaust) and give up on their own when their socket times out.

Services (the names used in alerts, events and ``/metrics``):

    litellm            liveliness (the process answers)
    litellm-readiness  readiness, including LiteLLM's database connection
    langfuse-web       /api/public/health
    langfuse-worker    /api/health
    postgres           connect, SELECT 1, connections used vs max_connections
    clickhouse         /ping, SELECT 1, free disk
    redis              PING, memory vs maxmemory, AOF status
    object-storage     a real S3 call on the backup bucket
    backup-freshness   age of the newest complete backup manifest
    offsite-freshness  age of the newest complete off-site copy, and whether the off-site
                       bucket keeps versions or locks objects (healthy when no target)
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

import certifi
import httpx
import psycopg
from clickhouse_connect.driver.exceptions import ClickHouseError
from minio.error import S3Error
from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import AuthenticationError, RedisError
from urllib3.exceptions import HTTPError

from blocks.stack import Stack
from tasks.clickhouse import clickhouse_client
from tasks.decisions.health import SERVICES, STATUS_RANK, HealthStatus, ServiceHealth
from tasks.errors import OffsiteError, OpsError, StorageError
from tasks.storage import newest_complete_manifest

__all__ = [
    "PROBES",
    "HealthThresholds",
    "Probe",
    "Reading",
    "check_backup_freshness",
    "check_clickhouse",
    "check_langfuse_web",
    "check_langfuse_worker",
    "check_litellm",
    "check_litellm_readiness",
    "check_object_storage",
    "check_postgres",
    "check_redis",
    "check_services",
    "disk_reading",
    "freshness_reading",
    "redis_reading",
    "run_check",
    "run_checks",
]

# Blocking drivers run here. Sized for many stacks swept by one worker: a thread
# stuck on a dead host holds its slot until its socket timeout, never longer.
_BLOCKING = ThreadPoolExecutor(max_workers=128, thread_name_prefix="health-probe")
T = TypeVar("T")
# One TLS context for every probe: building one per client costs tens of milliseconds
# of loop time, which 50 stacks x 6 HTTP checks would turn into seconds.
_TLS = ssl.create_default_context(cafile=certifi.where())


class HealthThresholds(BaseModel):
    """Where degraded begins; defaults match the runbook."""

    model_config = ConfigDict(frozen=True)

    postgres_connections_degraded_pct: float = Field(
        default=80.0, ge=1, le=100, description="Connections used vs max_connections."
    )
    redis_memory_degraded_pct: float = Field(
        default=90.0, ge=1, le=100, description="used_memory vs maxmemory."
    )
    clickhouse_free_disk_degraded_pct: float = Field(
        default=10.0, ge=0, le=100, description="Free disk below this is degraded."
    )
    clickhouse_free_disk_unhealthy_pct: float = Field(
        default=3.0, ge=0, le=100, description="Free disk below this is unhealthy."
    )
    backup_max_age_h: float = Field(
        default=26.0, gt=0, le=24 * 30, description="Newest complete backup older: degraded."
    )
    offsite_max_age_h: float = Field(
        default=50.0,
        gt=0,
        le=24 * 30,
        description="Newest complete off-site copy older: degraded (a day's copy may fail "
        "and be caught up by the next run without paging).",
    )
    litellm_requires_db: bool | None = Field(
        default=None,
        description="LiteLLM without a database (no keys, no spend) is degraded; "
        "None follows the stack block's litellm_requires_db (LITELLM_REQUIRES_DB).",
    )


class Reading(NamedTuple):
    """What one probe of a service read: its status and the one-line reason."""

    status: HealthStatus
    reason: str


# A probe of one service: reads it within timeout_s, judged against the thresholds.
Probe = Callable[[Stack, float, HealthThresholds], Awaitable[Reading]]


def _ok(reason: str) -> Reading:
    return Reading("healthy", reason)


def _reason(stack: Stack, error: BaseException | str) -> str:
    """An error as part of a reason: scrubbed, its first line, at most 200 characters."""
    return stack.error_line(error, limit=200, lines="first")


async def _in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(_BLOCKING, fn)


def _pct(used: float, total: float) -> float:
    return 100.0 * used / total if total > 0 else 0.0


# ---- HTTP services ----------------------------------------------------------------------


async def _get(url: str, timeout_s: float) -> httpx.Response:
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), verify=_TLS) as client:
        return await client.get(url)


def _http_reading(name: str, response: httpx.Response) -> Reading | None:
    """Unhealthy for an HTTP error status, None when the status is fine."""
    if response.status_code >= 400:
        body = response.text.strip().replace("\n", " ")[:120]
        return Reading("unhealthy", f"{name} answered HTTP {response.status_code}: {body}")
    return None


async def check_litellm(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    response = await _get(f"{stack.litellm_url}/health/liveliness", timeout_s)
    return _http_reading("liveliness", response) or _ok("liveliness answered 200")


async def check_litellm_readiness(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    response = await _get(f"{stack.litellm_url}/health/readiness", timeout_s)
    # LiteLLM answers 503 when its configured database is unreachable.
    if bad := _http_reading("readiness", response):
        return bad
    try:
        body = response.json()
    except ValueError:
        return Reading("degraded", "readiness answered 200 but not JSON")
    db = str(body.get("db", "unknown")) if isinstance(body, dict) else "unknown"
    status = str(body.get("status", "unknown")) if isinstance(body, dict) else "unknown"
    if status != "healthy":
        return Reading("unhealthy", f"readiness status {status!r}, db {db!r}")
    if db == "connected":
        return _ok("ready, database connected")
    requires_db = (
        stack.litellm_requires_db if th.litellm_requires_db is None else th.litellm_requires_db
    )
    if db.lower() in ("not connected", "not_connected") and not requires_db:
        return _ok("ready, runs without a database")
    return Reading(
        "degraded",
        f"ready but database {db!r}: virtual keys and spend tracking do not work; "
        "check LiteLLM's DATABASE_URL",
    )


async def check_langfuse_web(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    response = await _get(f"{stack.langfuse_url}/api/public/health", timeout_s)
    return _http_reading("/api/public/health", response) or _ok("/api/public/health OK")


async def check_langfuse_worker(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    response = await _get(f"{stack.langfuse_worker_url}/api/health", timeout_s)
    return _http_reading("/api/health", response) or _ok("/api/health OK")


# ---- Postgres ---------------------------------------------------------------------------


async def check_postgres(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    try:
        conn = await stack.postgres_async(timeout_s=timeout_s, application_name="ops-health-sweep")
    except psycopg.OperationalError as exc:
        text = str(exc)
        if "too many clients" in text or "connection slots are reserved" in text:
            return Reading(
                "unhealthy",
                "connection limit reached: new connections are refused (max_connections); "
                "find the client holding them in pg_stat_activity",
            )
        return Reading("unhealthy", "cannot connect: " + _reason(stack, text))
    async with conn:
        cur = await conn.execute(
            "SELECT 1, (SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
            "'client backend'), current_setting('max_connections')::int"
        )
        row = await cur.fetchone()
    assert row is not None  # a SELECT without FROM always returns one row
    used, limit = int(row[1]), int(row[2])
    pct = _pct(used, limit)
    reason = f"{used}/{limit} connections ({pct:.0f}%)"
    if pct >= th.postgres_connections_degraded_pct:
        return Reading("degraded", f"{reason}, near max_connections: new clients soon refused")
    return _ok(reason)


# ---- ClickHouse -------------------------------------------------------------------------


async def check_clickhouse(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    ping = await _get(f"{stack.clickhouse_url}/ping", timeout_s)
    if bad := _http_reading("/ping", ping):
        return bad

    def query() -> tuple[int, int]:
        client = clickhouse_client(stack, timeout_s, connect_timeout_s=timeout_s)
        try:
            client.command("SELECT 1")
            row = client.query("SELECT sum(free_space), sum(total_space) FROM system.disks")
            free, total = row.result_rows[0]
            return int(free), int(total)
        finally:
            client.close()

    try:
        free, total = await _in_thread(query)
    except (ClickHouseError, OpsError) as exc:
        return Reading("unhealthy", "query failed: " + _reason(stack, str(exc)))
    return disk_reading(free, total, th)


def disk_reading(free: int, total: int, th: HealthThresholds) -> Reading:
    free_pct = _pct(free, total)
    reason = f"SELECT 1 ok, {free_pct:.0f}% disk free ({free / 2**30:.1f} GiB)"
    if free_pct < th.clickhouse_free_disk_unhealthy_pct:
        return Reading("unhealthy", f"{reason}: inserts fail when the disk fills")
    if free_pct < th.clickhouse_free_disk_degraded_pct:
        return Reading("degraded", f"{reason}: free space or grow the volume")
    return _ok(reason)


# ---- Redis ------------------------------------------------------------------------------


async def check_redis(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    client = stack.redis_async(timeout_s=timeout_s)
    try:
        await client.ping()
        memory: dict[str, Any] = await client.info("memory")
        persistence: dict[str, Any] = await client.info("persistence")
    except AuthenticationError:
        return Reading("unhealthy", "authentication refused: check REDIS_PASSWORD")
    except (RedisError, OSError) as exc:
        return Reading("unhealthy", "PING failed: " + _reason(stack, exc))
    finally:
        await client.aclose()
    return redis_reading(
        int(memory.get("used_memory", 0)),
        int(memory.get("maxmemory", 0)),
        {k: str(v) for k, v in persistence.items()},
        th,
    )


def redis_reading(
    used: int, limit: int, persistence: dict[str, str], th: HealthThresholds
) -> Reading:
    """Memory against maxmemory (0 = no limit) and the AOF status from INFO persistence."""
    summary = f"PING ok, {used / 2**20:.0f} MiB used"
    problems: list[Reading] = []
    if limit:
        pct = _pct(used, limit)
        summary += f" of {limit / 2**20:.0f} MiB ({pct:.0f}%)"
        if pct >= th.redis_memory_degraded_pct:
            problems.append(Reading("degraded", "memory near maxmemory: writes soon refused"))
    if persistence.get("aof_enabled", "0") != "1":
        problems.append(Reading("degraded", "AOF is off: a restart loses queued jobs"))
    elif persistence.get("aof_last_write_status", "ok") != "ok":
        problems.append(Reading("unhealthy", "AOF write failing: Redis refuses writes"))
    elif persistence.get("aof_last_bgrewrite_status", "ok") != "ok":
        problems.append(Reading("degraded", "AOF rewrite failed: check disk space"))
    else:
        summary += ", AOF ok"
    if problems:
        worst = max(problems, key=lambda v: STATUS_RANK[v.status])
        return Reading(worst.status, ", ".join([summary, *(p.reason for p in problems)]))
    return _ok(summary)


# ---- object storage and backups ---------------------------------------------------------


async def check_object_storage(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    client = stack.s3(timeout_s=timeout_s, retries=0)
    try:
        exists = await _in_thread(lambda: client.bucket_exists(stack.backup_bucket))
    except S3Error as exc:
        return Reading("unhealthy", f"S3 refused HEAD {stack.backup_bucket}: {exc.code}")
    except HTTPError as exc:
        return Reading("unhealthy", "S3 unreachable: " + _reason(stack, str(exc)))
    if not exists:
        return Reading(
            "unhealthy", f"backup bucket {stack.backup_bucket!r} does not exist: create it"
        )
    return _ok(f"bucket {stack.backup_bucket} reachable")


async def check_backup_freshness(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    try:
        # Sockets give up after timeout_s and never retry: a probe answers in time.
        client = stack.s3(timeout_s=timeout_s, retries=0)
        manifest = await _in_thread(lambda: newest_complete_manifest(stack, client))
    except StorageError as exc:
        return Reading("unhealthy", "cannot list backup sets: " + _reason(stack, str(exc)))
    return freshness_reading(
        None if manifest is None else manifest.finished_at,
        datetime.now(UTC),
        th.backup_max_age_h,
        f"{stack.backup_bucket}/{stack.stack_name}/",
    )


async def check_offsite_freshness(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    if stack.offsite is None:
        return _ok("no off-site target configured (OFFSITE_* variables)")
    # Imported only for a stack that has a target: every sweep's process start pays for
    # what it imports.
    from tasks.offsite import bucket_protection, newest_offsite_set

    target = stack.offsite
    try:
        client = target.client(timeout_s=timeout_s, retries=0)
        newest = await _in_thread(lambda: newest_offsite_set(stack, client))
        protection = await _in_thread(lambda: bucket_protection(client, target.bucket))
    except OffsiteError as exc:
        return Reading("unhealthy", "cannot list the off-site copies: " + _reason(stack, str(exc)))
    reading = freshness_reading(
        None if newest is None else newest.copied_at,
        datetime.now(UTC),
        th.offsite_max_age_h,
        f"{target.bucket}/{target.prefix}{stack.stack_name}/ (off-site)",
    )
    return Reading(reading.status, f"{reading.reason}; {protection}")


def freshness_reading(
    finished_at: datetime | None, now: datetime, max_age_h: float, where: str
) -> Reading:
    """No complete set is unhealthy; a newest set older than ``max_age_h`` is degraded."""
    if finished_at is None:
        return Reading("unhealthy", f"no complete backup set under {where}: run the backup flow")
    if finished_at.tzinfo is None:
        finished_at = finished_at.replace(tzinfo=UTC)
    age_h = (now - finished_at).total_seconds() / 3600
    reason = f"newest complete backup {age_h:.1f} h old"
    if age_h > max_age_h:
        return Reading("degraded", f"{reason} (> {max_age_h:g} h): check the backup flow's runs")
    return _ok(reason)


PROBES: dict[str, Probe] = {
    "litellm": check_litellm,
    "litellm-readiness": check_litellm_readiness,
    "langfuse-web": check_langfuse_web,
    "langfuse-worker": check_langfuse_worker,
    "postgres": check_postgres,
    "clickhouse": check_clickhouse,
    "redis": check_redis,
    "object-storage": check_object_storage,
    "backup-freshness": check_backup_freshness,
    "offsite-freshness": check_offsite_freshness,
}


async def run_check(
    service: str, check: Probe, stack: Stack, timeout_s: float, th: HealthThresholds
) -> ServiceHealth:
    """One check, bounded by ``timeout_s``; any failure becomes an unhealthy result."""
    started = time.monotonic()
    try:
        reading = await asyncio.wait_for(check(stack, timeout_s, th), timeout_s)
    except TimeoutError:
        reading = Reading("unhealthy", f"no answer within {timeout_s:g} s")
    except httpx.TimeoutException:
        reading = Reading("unhealthy", f"no answer within {timeout_s:g} s")
    except httpx.ConnectError as exc:
        reading = Reading(
            "unhealthy", "connection refused or unreachable: " + _reason(stack, str(exc))
        )
    except httpx.HTTPError as exc:
        reading = Reading(
            "unhealthy", f"HTTP error: {type(exc).__name__}: {_reason(stack, str(exc))}"
        )
    except Exception as exc:
        # A check is a probe: whatever breaks inside it is a reading of the service
        # (or the probe), reported as such, never a crash of the sweep.
        reading = Reading(
            "unhealthy", f"check failed: {type(exc).__name__}: {_reason(stack, str(exc))}"
        )
    latency_ms = (time.monotonic() - started) * 1000
    return ServiceHealth(
        service=service,
        status=reading.status,
        latency_ms=round(latency_ms, 1),
        reason=stack.scrub(reading.reason),
    )


async def run_checks(
    stack: Stack,
    timeout_s: float = 5.0,
    services: list[str] | None = None,
    thresholds: HealthThresholds | None = None,
) -> list[ServiceHealth]:
    """Run the checks of ``services`` (default: all) concurrently, in SERVICES order.

    The whole call takes at most about ``timeout_s``: every check has that budget.
    """
    wanted = list(SERVICES) if services is None else services
    unknown = [name for name in wanted if name not in PROBES]
    if unknown:
        raise ValueError(f"unknown services {unknown}; known: {', '.join(SERVICES)}")
    th = thresholds or HealthThresholds()
    return list(
        await asyncio.gather(
            *(run_check(name, PROBES[name], stack, timeout_s, th) for name in wanted)
        )
    )


@task(name="check-services", persist_result=False, timeout_seconds=30)
async def check_services(
    stack: Stack,
    timeout_s: float,
    services: list[str] | None,
    thresholds: HealthThresholds,
) -> list[ServiceHealth]:
    """Every check at once, each bounded by ``timeout_s``; logs the bad ones."""
    results = await run_checks(stack, timeout_s, services, thresholds)
    logger = get_run_logger()
    for result in results:
        if result.status != "healthy":
            logger.warning(
                "%s %s (%.0f ms): %s",
                result.service,
                result.status,
                result.latency_ms,
                result.reason,
            )
    return results
