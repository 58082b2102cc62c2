"""The judges of slow failures inside the databases, where every health check stays green.

- **Postgres**: transaction-ID age (at 2^31 Postgres stops accepting writes to protect
  itself: wraparound), the oldest open transaction and sessions idle in a transaction
  (both hold back vacuum, so the age and the tables grow).
- **ClickHouse**: its own ``system.*_log`` tables against the data (langfuse#13123: 67 GiB
  of ``trace_log`` beside 6.5 MiB of traces filled the disk), the most parts one partition
  holds against the ``parts_to_throw_insert`` limit ("too many parts": inserts refused),
  and mutations that never finish.

Pure: no Prefect, no I/O.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tasks.decisions.health import STATUS_RANK, HealthStatus
from tasks.decisions.units import binary_size

__all__ = [
    "ClickHouseStorage",
    "PostgresMaintenance",
    "judge_clickhouse_storage",
    "judge_postgres_maintenance",
]

WRAPAROUND = 2**31  # transaction IDs Postgres can hand out before it stops writes


def _worst(findings: list[tuple[HealthStatus, str]], summary: str) -> tuple[HealthStatus, str]:
    if not findings:
        return "healthy", summary
    findings.sort(key=lambda f: -STATUS_RANK[f[0]])
    return findings[0][0], "; ".join([*(reason for _, reason in findings), summary])


class PostgresMaintenance(BaseModel):
    model_config = ConfigDict(frozen=True)

    xid_age: int = Field(ge=0, description="max(age(datfrozenxid)) over the databases.")
    oldest_database: str = ""
    oldest_transaction_s: float | None = Field(default=None, ge=0)
    oldest_transaction_app: str = ""
    idle_in_transaction: int = Field(default=0, ge=0)
    oldest_idle_s: float | None = Field(default=None, ge=0)


def judge_postgres_maintenance(
    m: PostgresMaintenance,
    *,
    xid_degraded: int,
    xid_unhealthy: int,
    transaction_degraded_s: float,
    idle_degraded_s: float,
) -> tuple[HealthStatus, str]:
    findings: list[tuple[HealthStatus, str]] = []
    pct = 100 * m.xid_age / WRAPAROUND
    if m.xid_age >= xid_degraded:
        status: HealthStatus = "unhealthy" if m.xid_age >= xid_unhealthy else "degraded"
        findings.append(
            (
                status,
                f"transaction-ID age {m.xid_age:,} in {m.oldest_database or 'a database'} "
                f"({pct:.0f}% of wraparound, where Postgres stops writes): find what holds "
                "back vacuum (long transactions, abandoned replication slots, prepared "
                "transactions), then VACUUM FREEZE",
            )
        )
    if m.oldest_transaction_s is not None and m.oldest_transaction_s >= transaction_degraded_s:
        findings.append(
            (
                "degraded",
                f"a transaction open {m.oldest_transaction_s / 60:.0f} min "
                f"({m.oldest_transaction_app or 'unnamed client'}): it holds back vacuum; "
                "end it (pg_terminate_backend) or fix the client",
            )
        )
    if m.oldest_idle_s is not None and m.oldest_idle_s >= idle_degraded_s:
        findings.append(
            (
                "degraded",
                f"{m.idle_in_transaction} session(s) idle in a transaction, the oldest "
                f"{m.oldest_idle_s / 60:.0f} min: set idle_in_transaction_session_timeout "
                "or fix the client that forgets to commit",
            )
        )
    summary = f"transaction-ID age {m.xid_age:,} ({pct:.1f}% of wraparound)"
    return _worst(findings, summary)


class ClickHouseStorage(BaseModel):
    model_config = ConfigDict(frozen=True)

    system_log_bytes: int = Field(ge=0)
    data_bytes: int = Field(ge=0, description="Active parts outside the system database.")
    largest_log: str = ""
    largest_log_bytes: int = Field(default=0, ge=0)
    max_partition_parts: int = Field(default=0, ge=0)
    partition_table: str = ""
    parts_limit: int = Field(default=3000, ge=1, description="parts_to_throw_insert")
    stuck_mutations: int = Field(default=0, ge=0)
    stuck_example: str = ""


def judge_clickhouse_storage(
    s: ClickHouseStorage,
    *,
    log_ratio: float,
    log_min_bytes: int,
    parts_degraded_pct: float,
) -> tuple[HealthStatus, str]:
    findings: list[tuple[HealthStatus, str]] = []
    if s.system_log_bytes >= log_min_bytes and s.system_log_bytes > log_ratio * s.data_bytes:
        findings.append(
            (
                "degraded",
                f"system log tables hold {binary_size(s.system_log_bytes)} against "
                f"{binary_size(s.data_bytes)} of data ({s.largest_log} "
                f"{binary_size(s.largest_log_bytes)}): "
                "give them a TTL in the server's config, as Langfuse documents "
                "(<query_log><ttl>event_date + INTERVAL 7 DAY DELETE</ttl></query_log>, same "
                f"for trace_log and the others), then TRUNCATE TABLE {s.largest_log}",
            )
        )
    parts_pct = 100 * s.max_partition_parts / s.parts_limit
    if parts_pct >= parts_degraded_pct:
        status: HealthStatus = "unhealthy" if parts_pct >= 90 else "degraded"
        findings.append(
            (
                status,
                f"{s.partition_table} holds {s.max_partition_parts} active parts in one "
                f"partition (inserts are refused at {s.parts_limit}, 'too many parts'): "
                "check that merges run (system.merges) and that inserts are batched",
            )
        )
    if s.stuck_mutations:
        findings.append(
            (
                "degraded",
                f"{s.stuck_mutations} mutation(s) unfinished after an hour ({s.stuck_example}): "
                "read latest_fail_reason in system.mutations; KILL MUTATION if it cannot end",
            )
        )
    summary = (
        f"system logs {binary_size(s.system_log_bytes)}, data {binary_size(s.data_bytes)}, "
        f"at most {s.max_partition_parts} parts in a partition"
    )
    return _worst(findings, summary)
