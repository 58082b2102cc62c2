"""Langfuse's job queues: every BullMQ queue found in the stack's Redis, read with ``bullmq``.

Queues are discovered, not listed: Langfuse adds and shards queues from release to
release. A BullMQ queue keeps a ``<prefix>:<name>:meta`` hash holding
``opts.maxLenEvents``; each one found is read through ``bullmq.Queue`` (its counts and its
oldest waiting job), and its event stream (``<prefix>:<name>:events``, whose entry ids are
Redis' clock in milliseconds) tells when a job last completed. The judge is
``tasks.decisions.queues``.
"""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import AuthenticationError, RedisError

from blocks.stack import Stack
from tasks.decisions.queues import QueueLimits, QueueStats, judge_queues
from tasks.health.base import HealthThresholds, Reading, reason_of

__all__ = ["MAX_QUEUES", "check_langfuse_queues", "discover_queues", "read_queue"]

MAX_QUEUES = 200  # a Redis holding more BullMQ queues than this is read in part
_EVENTS_SCANNED = 500  # recent events searched for the newest completion


async def discover_queues(conn: Any) -> list[tuple[str, str]]:
    """(prefix, name) of every BullMQ queue in Redis, sorted."""
    found: list[tuple[str, str]] = []
    async for key in conn.scan_iter(match="*:meta", count=1000, _type="HASH"):
        if not await conn.hexists(key, "opts.maxLenEvents"):
            continue
        prefix, _, name = key[: -len(":meta")].partition(":")
        if name:
            found.append((prefix, name))
        if len(found) >= MAX_QUEUES:
            break
    return sorted(found)


async def read_queue(
    conn: Any, prefix: str, name: str, *, now_ms: float, redis_now_ms: float
) -> QueueStats:
    """One queue's counts, its oldest waiting job's age (jobs carry their producer's clock:
    ``now_ms``) and the newest completion's age (event ids carry Redis' clock)."""
    from bullmq import Queue

    queue = Queue(name, {"connection": conn, "prefix": prefix})
    counts = await queue.getJobCounts("wait", "prioritized", "active", "delayed", "failed")
    oldest = await queue.getJobs(["wait"], 0, 0, asc=True)
    oldest_s = max(0.0, (now_ms - float(oldest[0].timestamp)) / 1000) if oldest else None
    last_completed_s = None
    for entry_id, fields in await conn.xrevrange(f"{prefix}:{name}:events", count=_EVENTS_SCANNED):
        if fields.get("event") == "completed":
            last_completed_s = max(0.0, (redis_now_ms - int(entry_id.split("-")[0])) / 1000)
            break
    return QueueStats(
        name=name if prefix == "bull" else f"{prefix}:{name}",
        waiting=counts["wait"] + counts["prioritized"],
        active=counts["active"],
        delayed=counts["delayed"],
        failed=counts["failed"],
        oldest_waiting_s=oldest_s,
        last_completed_s=last_completed_s,
    )


async def check_langfuse_queues(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    conn = stack.redis_async(timeout_s=timeout_s, decode_responses=True)
    try:
        seconds, micros = await conn.time()
        clocks = {"now_ms": time.time() * 1000, "redis_now_ms": seconds * 1000 + micros / 1000}
        queues = [
            await read_queue(conn, prefix, name, **clocks)
            for prefix, name in await discover_queues(conn)
        ]
    except AuthenticationError:
        return Reading("unhealthy", "authentication refused: check REDIS_PASSWORD")
    except (RedisError, OSError) as exc:
        return Reading("unhealthy", "cannot read the queues: " + reason_of(stack, exc))
    finally:
        await conn.aclose()
    limits = QueueLimits(
        wait_degraded_s=th.queue_wait_degraded_s,
        wait_unhealthy_s=th.queue_wait_unhealthy_s,
        failed_degraded=th.queue_failed_degraded,
    )
    status, reason = judge_queues(queues, limits)
    waits = [q.oldest_waiting_s for q in queues if q.oldest_waiting_s is not None]
    measures = {
        "queue_waiting_jobs": float(sum(q.waiting for q in queues)),
        "queue_active_jobs": float(sum(q.active for q in queues)),
        "queue_failed_jobs": float(sum(q.failed for q in queues)),
        "queue_oldest_wait_seconds": round(max(waits, default=0.0), 1),
    }
    return Reading(status, reason, measures)
