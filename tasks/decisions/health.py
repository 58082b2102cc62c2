"""What a health check finds, as data: the statuses, the services, one service's health.

Pure: no Prefect, no driver, no I/O. The checks themselves (``tasks/health.py``) do
the I/O and return these; the alert machine (``tasks/decisions/alerting.py``) decides
from them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MEASURES", "SERVICES", "STATUS_RANK", "HealthStatus", "ServiceHealth"]

HealthStatus = Literal["healthy", "degraded", "unhealthy"]
STATUS_RANK: dict[str, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}

SERVICES: tuple[str, ...] = (
    "litellm",
    "litellm-readiness",
    "langfuse-web",
    "langfuse-worker",
    "postgres",
    "clickhouse",
    "redis",
    "object-storage",
    "backup-freshness",
    "offsite-freshness",
    "langfuse-queues",
    "migrations",
    "postgres-maintenance",
    "clickhouse-storage",
    "ingestion-lag",
    "certificates",
)


# What a probe measures besides its status, each a Prometheus gauge ops_probe_<name>
# on the worker's /metrics (labels stack, service): name -> help text.
MEASURES: dict[str, str] = {
    "queue_waiting_jobs": "Jobs waiting in all BullMQ queues.",
    "queue_active_jobs": "Jobs being processed in all BullMQ queues.",
    "queue_failed_jobs": "Failed jobs kept by all BullMQ queues.",
    "queue_oldest_wait_seconds": "Age of the oldest waiting job of any BullMQ queue.",
    "queue_backlog_growth_jobs_per_minute": "Growth of the waiting jobs while it is a streak.",
    "ingestion_lag_seconds": "Seconds until the latest canary's trace was readable.",
    "postgres_xid_age": "Transaction-ID age of the oldest database (wraparound at 2^31).",
    "postgres_oldest_transaction_seconds": "Age of the oldest open transaction.",
    "postgres_idle_in_transaction_sessions": "Sessions idle in a transaction.",
    "clickhouse_system_log_bytes": "Bytes of ClickHouse's system.*_log tables.",
    "clickhouse_data_bytes": "Bytes of ClickHouse's data outside the system database.",
    "clickhouse_max_partition_parts": "Active parts of the busiest partition.",
    "redis_used_memory_bytes": "Redis used_memory.",
    "redis_maxmemory_bytes": "Redis maxmemory (0: no limit).",
    "redis_evicted_keys": "Keys Redis evicted since it started.",
    "redis_spend_buffer_bytes": "Bytes in LiteLLM's Redis spend buffers.",
    "certificate_days_left": "Days until the soonest public certificate expires.",
}


class ServiceHealth(BaseModel):
    """One service as one health check saw it.

    A different scale from a check result (``tasks.decisions.checks``): a service is
    healthy, degraded or unhealthy, never skipped.
    """

    model_config = ConfigDict(frozen=True)

    service: str = Field(description="Service name, e.g. 'postgres' or 'langfuse-web'.")
    status: HealthStatus
    latency_ms: float = Field(ge=0, description="Wall time of the check.")
    reason: str = Field(description="One line: what was seen, and what is wrong if anything.")
    measures: dict[str, float] = Field(
        default_factory=dict, description="Numbers the probe read (names in MEASURES)."
    )
