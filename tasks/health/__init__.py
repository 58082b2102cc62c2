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
    langfuse-queues    every BullMQ queue in Redis: backlog age, stalled consumer, failed jobs
    migrations         Prisma migrations (LiteLLM, Langfuse) failed or unfinished; ClickHouse's
                       schema_migrations left dirty
    postgres-maintenance  transaction-ID age (wraparound), transactions holding back vacuum
    clickhouse-storage system log tables against the data, parts per partition, stuck mutations
    ingestion-lag      the ingestion canary's latest lag (LiteLLM -> readable in Langfuse),
                       p50/p95 over the day
    certificates       days until the TLS certificates of PUBLIC_URLS expire

Modules: ``base`` (thresholds, readings, shared helpers), ``web`` (LiteLLM, Langfuse),
``postgres``, ``clickhouse``, ``redis``, ``backups`` (object storage, freshness),
``queues``, ``migrations``, ``maintenance`` (Postgres vacuum, ClickHouse storage),
``ingestion`` (the canary's lag), ``certificates``,
``runner`` (every probe at once; the sweep's task).
"""

from tasks.health.backups import (
    check_backup_freshness,
    check_object_storage,
    check_offsite_freshness,
    freshness_reading,
)
from tasks.health.base import HealthThresholds, Probe, Reading
from tasks.health.certificates import check_certificates
from tasks.health.clickhouse import check_clickhouse, disk_reading
from tasks.health.ingestion import check_ingestion_lag
from tasks.health.maintenance import check_clickhouse_storage, check_postgres_maintenance
from tasks.health.migrations import check_migrations
from tasks.health.postgres import check_postgres
from tasks.health.queues import check_langfuse_queues
from tasks.health.redis import check_redis, redis_reading
from tasks.health.runner import PROBES, check_services, run_check, run_checks
from tasks.health.web import (
    check_langfuse_web,
    check_langfuse_worker,
    check_litellm,
    check_litellm_readiness,
)

__all__ = [
    "PROBES",
    "HealthThresholds",
    "Probe",
    "Reading",
    "check_backup_freshness",
    "check_certificates",
    "check_clickhouse",
    "check_clickhouse_storage",
    "check_ingestion_lag",
    "check_langfuse_queues",
    "check_langfuse_web",
    "check_langfuse_worker",
    "check_litellm",
    "check_litellm_readiness",
    "check_migrations",
    "check_object_storage",
    "check_offsite_freshness",
    "check_postgres",
    "check_postgres_maintenance",
    "check_redis",
    "check_services",
    "disk_reading",
    "freshness_reading",
    "redis_reading",
    "run_check",
    "run_checks",
]
