"""Redis: PING, memory against maxmemory, the eviction policy Langfuse needs, the AOF."""

from __future__ import annotations

from typing import Any

from redis.exceptions import AuthenticationError, RedisError

from blocks.stack import Stack
from tasks.decisions.health import STATUS_RANK
from tasks.health.base import HealthThresholds, Reading, percent, reason_of

__all__ = ["check_redis", "redis_reading"]


async def check_redis(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    client = stack.redis_async(timeout_s=timeout_s)
    try:
        await client.ping()
        memory: dict[str, Any] = await client.info("memory")
        persistence: dict[str, Any] = await client.info("persistence")
        stats: dict[str, Any] = await client.info("stats")
    except AuthenticationError:
        return Reading("unhealthy", "authentication refused: check REDIS_PASSWORD")
    except (RedisError, OSError) as exc:
        return Reading("unhealthy", "PING failed: " + reason_of(stack, exc))
    finally:
        await client.aclose()
    return redis_reading(
        int(memory.get("used_memory", 0)),
        int(memory.get("maxmemory", 0)),
        {k: str(v) for k, v in persistence.items()},
        th,
        policy=str(memory.get("maxmemory_policy", "noeviction")),
        evicted=int(stats.get("evicted_keys", 0)),
    )


def redis_reading(
    used: int,
    limit: int,
    persistence: dict[str, str],
    th: HealthThresholds,
    *,
    policy: str = "noeviction",
    evicted: int = 0,
) -> Reading:
    """Memory against maxmemory (0 = no limit), the eviction policy (Langfuse's queues
    need ``noeviction``: an evicted job is lost) and the AOF status."""
    summary = f"PING ok, {used / 2**20:.0f} MiB used"
    problems: list[Reading] = []
    if policy != "noeviction":
        problems.append(
            Reading(
                "degraded",
                f"maxmemory-policy is {policy}: Langfuse requires noeviction (an evicted queue "
                f"job is lost; {evicted} key(s) evicted since start); set maxmemory-policy "
                "noeviction",
            )
        )
    if limit:
        pct = percent(used, limit)
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
    measures = {
        "redis_used_memory_bytes": float(used),
        "redis_maxmemory_bytes": float(limit),
        "redis_evicted_keys": float(evicted),
    }
    if problems:
        worst = max(problems, key=lambda v: STATUS_RANK[v.status])
        reason = ", ".join([summary, *(p.reason for p in problems)])
        return Reading(worst.status, reason, measures)
    return Reading("healthy", summary, measures)
