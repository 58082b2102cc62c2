"""LiteLLM and Langfuse over HTTP: liveliness, readiness with its database, health."""

from __future__ import annotations

from blocks.stack import Stack
from tasks.health.base import HealthThresholds, Reading, http_get, http_reading, ok

__all__ = [
    "check_langfuse_web",
    "check_langfuse_worker",
    "check_litellm",
    "check_litellm_readiness",
]


async def check_litellm(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    response = await http_get(f"{stack.litellm_url}/health/liveliness", timeout_s)
    return http_reading("liveliness", response) or ok("liveliness answered 200")


async def check_litellm_readiness(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    response = await http_get(f"{stack.litellm_url}/health/readiness", timeout_s)
    # LiteLLM answers 503 when its configured database is unreachable.
    if bad := http_reading("readiness", response):
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
        return ok("ready, database connected")
    requires_db = (
        stack.litellm_requires_db if th.litellm_requires_db is None else th.litellm_requires_db
    )
    if db.lower() in ("not connected", "not_connected") and not requires_db:
        return ok("ready, runs without a database")
    return Reading(
        "degraded",
        f"ready but database {db!r}: virtual keys and spend tracking do not work; "
        "check LiteLLM's DATABASE_URL",
    )


async def check_langfuse_web(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    response = await http_get(f"{stack.langfuse_url}/api/public/health", timeout_s)
    return http_reading("/api/public/health", response) or ok("/api/public/health OK")


async def check_langfuse_worker(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    response = await http_get(f"{stack.langfuse_worker_url}/api/health", timeout_s)
    return http_reading("/api/health", response) or ok("/api/health OK")
