"""deploy-verify: after a deploy, prove the stack works end to end and its invariants hold.

What it does, in dependency order (a check whose prerequisite failed is skipped with
that reason, so one broken thing shows as one red line):

1. configuration: ``LITELLM_MASTER_KEY`` starts with ``sk-``; ``LITELLM_SALT_KEY`` is
   the one seen at the first verification (only a salted fingerprint is stored, in the
   Prefect variable ``deploy-verify-<stack>-salt-fingerprint``);
2. every service healthy (the health-sweep's checks);
3. LiteLLM refuses a request without a key, accepts the master key and lists the canary
   model, and answers a canary completion (``mock_response``: no tokens spent, unless
   ``canary_real``);
4. the trace of exactly that request, tagged with an id unique to this run, appears in
   Langfuse within ``trace_timeout_s``;
5. Postgres holds LiteLLM's and Langfuse's tables and finished migrations; ClickHouse
   holds Langfuse's tables; Redis has AOF on and the expected maxmemory policy; both S3
   buckets exist and take a canary object;
6. the newest complete backup set is fresh (on a first deploy, a first backup starts);
7. optionally, Railway reports every service's latest deployment successful.

The report is the artifact ``deploy-verify-<stack>`` (with a table twin,
``deploy-verify-<stack>-checks``). A failed required check fails the run with a
:class:`~tasks.errors.VerificationError` naming each failure and its fix, and the
failure alerts through the stack's notification blocks.

When: ``deploy-verify/<stack>`` runs once after the worker service starts (a new
deploy), on demand (``prefect deployment run deploy-verify/<stack>``), and optionally
on a schedule.

Blocks: the ``llm-stack`` document named by ``stack`` and its notification blocks.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Literal
from uuid import uuid4

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field, field_validator

from blocks.stack import Stack
from tasks.control_plane import (
    check_backup_freshness,
    check_master_key,
    check_offsite_copy,
    check_salt_key,
    publish_verify_report,
)
from tasks.decisions.deploy_checks import (
    CHECKS,
    Ledger,
    ReportRow,
    plan_checks,
    render_report,
    verdict,
)
from tasks.deploy_probes import (
    check_clickhouse_schema,
    check_postgres_schema,
    check_redis_persistence,
    check_s3_buckets,
    check_services_healthy,
)
from tasks.errors import VerificationError
from tasks.langfuse import wait_for_trace
from tasks.litellm import check_litellm_auth, check_litellm_models, send_canary_completion
from tasks.notify import alert_on_failure, resolve_on_success
from tasks.railway import check_railway_deployments

__all__ = [
    "DEFAULT_POSTGRES_TABLES",
    "TABLE_PATTERN",
    "DeployVerifyConfig",
    "DeployVerifyResult",
    "MaxMemoryPolicy",
    "deploy_verify",
]

MaxMemoryPolicy = Literal[
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
]

DEFAULT_POSTGRES_TABLES = [
    "public._prisma_migrations",
    "public.LiteLLM_VerificationToken",
    "public.LiteLLM_UserTable",
    "public.LiteLLM_SpendLogs",
    "langfuse._prisma_migrations",
    "langfuse.projects",
    "langfuse.api_keys",
]
TABLE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*$"


class DeployVerifyConfig(BaseModel):
    """What deploy-verify checks, and how long it waits."""

    trace_timeout_s: float = Field(
        default=30.0,
        ge=1,
        le=600,
        description="How long the canary's trace may take to appear in Langfuse.",
    )
    trace_poll_s: float = Field(
        default=1.0, ge=0.1, le=30, description="Pause between Langfuse trace lookups."
    )
    request_timeout_s: float = Field(
        default=15.0, ge=1, le=120, description="Timeout of each request to a service."
    )
    health_timeout_s: float = Field(
        default=5.0, ge=0.5, le=60, description="Timeout of each health-sweep check."
    )
    fail_on_degraded: bool = Field(
        default=False,
        description="Count a degraded service (e.g. Redis AOF off, LiteLLM without DB) as a "
        "failure of services-healthy; by default only unhealthy ones fail it.",
    )
    canary_model: str = Field(
        default="canary",
        min_length=1,
        max_length=200,
        description="LiteLLM model name of the canary completion.",
    )
    canary_real: bool = Field(
        default=False,
        description="Send a real completion to the canary model (spends a few tokens) instead "
        "of LiteLLM's mock_response.",
    )
    postgres_tables: list[str] = Field(
        default_factory=lambda: list(DEFAULT_POSTGRES_TABLES),
        min_length=1,
        max_length=200,
        description="Tables that must exist, as schema.table (case as created, unquoted). "
        "Prisma migration tables (_prisma_migrations) are also checked for unfinished "
        "migrations.",
    )
    clickhouse_tables: list[str] = Field(
        default_factory=lambda: ["traces", "observations", "scores"],
        min_length=1,
        max_length=200,
        description="Tables that must exist in the stack's ClickHouse database.",
    )
    redis_maxmemory_policy: MaxMemoryPolicy = Field(
        default="noeviction",
        description="Expected Redis maxmemory-policy (Langfuse's queues need noeviction).",
    )
    require_redis_aof: bool = Field(
        default=True, description="Redis must have appendonly yes (production)."
    )
    backup_max_age_hours: float = Field(
        default=26.0,
        ge=1,
        le=24 * 31,
        description="Oldest acceptable newest complete backup set (daily schedule + slack).",
    )
    offsite_max_age_hours: float = Field(
        default=50.0,
        ge=1,
        le=24 * 31,
        description="Oldest acceptable newest off-site copy (informational check).",
    )
    start_first_backup: bool = Field(
        default=True,
        description="With no backup set at all (first deploy), start backup/<stack> once.",
    )
    require_railway: bool = Field(
        default=False,
        description="Fail the run when Railway's API check fails (it needs a token).",
    )

    @field_validator("postgres_tables")
    @classmethod
    def _qualified(cls, tables: list[str]) -> list[str]:
        bad = [t for t in tables if not re.fullmatch(TABLE_PATTERN, t)]
        if bad:
            raise ValueError(f"not schema.table: {', '.join(bad)}")
        return tables


class DeployVerifyResult(BaseModel):
    """The run's outcome, as the report shows it."""

    stack: str
    passed: bool
    checks: list[ReportRow]
    trace_id: str | None
    report_key: str
    seconds: float


@flow(
    name="deploy-verify",
    flow_run_name="verify-{stack}",
    on_failure=[alert_on_failure],
    on_completion=[resolve_on_success],
    timeout_seconds=1800,
)
def deploy_verify(
    stack: str = "production",
    config: DeployVerifyConfig = DeployVerifyConfig(),  # noqa: B008 (validated copy per run)
) -> DeployVerifyResult:
    """Verify the stack named ``stack``; fail (and alert) when a required check fails."""
    logger = get_run_logger()
    started, started_at = time.monotonic(), datetime.now(UTC)
    ops = Stack.load_stack(stack)
    t = config.request_timeout_s
    checks = plan_checks(CHECKS, {"railway-deployments": config.require_railway})
    ledger = Ledger(checks, scrub=ops.scrub, on_outcome=_log_outcome)
    run_id = str(flow_run.id or uuid4())
    trace_id = uuid4().hex
    logger.info("verifying stack %s (%s)", stack, ops.stack_name)

    ledger.run("master-key", check_master_key, ops)
    ledger.run("salt-key", check_salt_key, ops)
    ledger.run(
        "services-healthy",
        check_services_healthy,
        ops,
        config.health_timeout_s,
        config.fail_on_degraded,
    )

    ledger.run("litellm-auth", check_litellm_auth, ops, t)
    ledger.run("litellm-models", check_litellm_models, ops, config.canary_model, t)
    canary = ledger.run(
        "litellm-canary",
        send_canary_completion,
        ops,
        config.canary_model,
        trace_id,
        ["deploy-verify", run_id],
        not config.canary_real,
        t,
    )
    ledger.run(
        "langfuse-trace",
        wait_for_trace,
        ops,
        trace_id,
        config.trace_timeout_s,
        config.trace_poll_s,
        t,
    )

    ledger.run("postgres-schema", check_postgres_schema, ops, config.postgres_tables, t)
    ledger.run("clickhouse-schema", check_clickhouse_schema, ops, config.clickhouse_tables, t)
    ledger.run(
        "redis-persistence",
        check_redis_persistence,
        ops,
        config.redis_maxmemory_policy,
        config.require_redis_aof,
        t,
    )
    ledger.run("s3-buckets", check_s3_buckets, ops, run_id, t)
    ledger.run(
        "backup-fresh",
        check_backup_freshness,
        ops,
        config.backup_max_age_hours,
        config.start_first_backup,
    )
    ledger.run("offsite-copy", check_offsite_copy, ops, config.offsite_max_age_hours)
    ledger.run("railway-deployments", check_railway_deployments, ops, t)

    outcomes = ledger.results()
    result = verdict(stack, outcomes)
    seconds = time.monotonic() - started
    sent_trace = trace_id if canary.status == "passed" else None
    report = render_report(
        stack,
        outcomes,
        run_name=str(flow_run.name or run_id),
        started_at=started_at,
        seconds=seconds,
        trace_id=sent_trace,
    )
    key = publish_verify_report(stack, report, outcomes, result.summary)
    if not result.passed:
        raise VerificationError(ops.scrub(result.summary))
    logger.info("%s", result.summary)
    return DeployVerifyResult(
        stack=stack,
        passed=True,
        checks=outcomes,
        trace_id=sent_trace,
        report_key=key,
        seconds=seconds,
    )


def _log_outcome(outcome: ReportRow) -> None:
    logger = get_run_logger()
    log = logger.warning if outcome.status == "failed" else logger.info
    log("%-20s %-7s %5.2f s  %s", outcome.name, outcome.status, outcome.seconds, outcome.message)
