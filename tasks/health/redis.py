"""Redis: PING, memory against maxmemory, the eviction policy Langfuse needs, the AOF, and
LiteLLM's spend buffers (with ``use_redis_transaction_buffer: true`` in its
general_settings, LiteLLM queues spend updates in these keys and one instance drains them
into Postgres; a writer that stopped lets them grow until Redis is full: litellm#29017).
Without that setting the keys never exist and the check reads nothing."""

from __future__ import annotations

from typing import Any

from redis.exceptions import AuthenticationError, RedisError, ResponseError

from blocks.stack import Stack
from tasks.decisions.health import STATUS_RANK
from tasks.health.base import HealthThresholds, Reading, percent, reason_of

__all__ = ["SPEND_BUFFER_KEYS", "check_redis", "redis_reading", "spend_buffers"]

# LiteLLM's Redis spend buffers (litellm/constants.py, REDIS_*_BUFFER_KEY): read by name,
# one pipelined MEMORY USAGE each, never a SCAN of the keyspace.
SPEND_BUFFER_KEYS = (
    "litellm_spend_update_buffer",
    "litellm_spend_logs_buffer",
    "litellm_gateway_requests_buffer",
    "litellm_daily_spend_update_buffer",
    "litellm_daily_team_spend_update_buffer",
    "litellm_daily_org_spend_update_buffer",
    "litellm_daily_end_user_spend_update_buffer",
    "litellm_daily_agent_spend_update_buffer",
    "litellm_daily_tag_spend_update_buffer",
    "litellm_window_spend_update_buffer",
)


async def spend_buffers(client: Any) -> dict[str, int]:
    """Bytes held by each of LiteLLM's spend buffers that exists."""
    pipe = client.pipeline(transaction=False)
    for key in SPEND_BUFFER_KEYS:
        pipe.memory_usage(key)
    sizes = await pipe.execute()
    return {key: int(size) for key, size in zip(SPEND_BUFFER_KEYS, sizes, strict=True) if size}


async def check_redis(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    client = stack.redis_async(timeout_s=timeout_s)
    try:
        await client.ping()
        memory: dict[str, Any] = await client.info("memory")
        persistence: dict[str, Any] = await client.info("persistence")
        stats: dict[str, Any] = await client.info("stats")
        try:
            buffers: dict[str, int] | None = await spend_buffers(client)
        except ResponseError:  # MEMORY USAGE refused (an ACL, a managed Redis)
            buffers = None
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
        buffers=buffers,
        buffers_read=buffers is not None,
    )


def redis_reading(
    used: int,
    limit: int,
    persistence: dict[str, str],
    th: HealthThresholds,
    *,
    policy: str = "noeviction",
    evicted: int = 0,
    buffers: dict[str, int] | None = None,
    buffers_read: bool = True,
) -> Reading:
    """Memory against maxmemory (0 = no limit), the eviction policy (Langfuse's queues
    need ``noeviction``: an evicted job is lost), the AOF status, and LiteLLM's spend
    buffers (bytes per key) against ``th.redis_spend_buffer_degraded_bytes``; not read when
    Redis refused ``MEMORY USAGE``, which the summary says."""
    buffers = buffers or {}
    summary = f"PING ok, {used / 2**20:.0f} MiB used"
    if not buffers_read:
        summary += ", LiteLLM's spend buffers unread (MEMORY USAGE refused)"
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
    if buffers:
        key, size = max(buffers.items(), key=lambda item: item[1])
        if size >= th.redis_spend_buffer_degraded_bytes:
            problems.append(
                Reading(
                    "degraded",
                    f"LiteLLM's spend buffer {key} holds {size / 2**20:.0f} MiB: its spend "
                    "writer is not draining it into Postgres (litellm#29017); check "
                    "LiteLLM's logs for database errors, then restart litellm",
                )
            )
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
    if buffers_read:
        measures["redis_spend_buffer_bytes"] = float(sum(buffers.values()))
    if problems:
        worst = max(problems, key=lambda v: STATUS_RANK[v.status])
        reason = ", ".join([summary, *(p.reason for p in problems)])
        return Reading(worst.status, reason, measures)
    return Reading("healthy", summary, measures)
