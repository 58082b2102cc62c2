"""What a health check finds, as data: the statuses, the services, one service's health.

Pure: no Prefect, no driver, no I/O. The checks themselves (``tasks/health.py``) do
the I/O and return these; the alert machine (``tasks/decisions/alerting.py``) decides
from them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SERVICES", "STATUS_RANK", "HealthStatus", "ServiceHealth"]

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
