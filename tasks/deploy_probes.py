"""Read-only checks of the stateful services' invariants, for deploy-verify.

Each task looks at one system (Postgres, ClickHouse, Redis, S3) and returns a
:class:`~tasks.decisions.checks.CheckResult`; the judgement itself lives in
``tasks.decisions.deploy_judges``. They write nothing except the S3 canary object, which
they delete again. Every error text from a driver is scrubbed of secrets before it
reaches a result.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import psycopg
import redis
import urllib3
from clickhouse_connect.driver.exceptions import ClickHouseError
from minio import Minio
from minio.error import S3Error
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.asyncutils import run_coro_as_sync
from psycopg import sql

from blocks.stack import Stack
from tasks.clickhouse import clickhouse_client
from tasks.decisions.checks import CheckResult, failed
from tasks.decisions.deploy_judges import (
    BucketProbe,
    judge_buckets,
    judge_clickhouse_tables,
    judge_health,
    judge_redis,
    judge_tables,
)
from tasks.decisions.health import SERVICES
from tasks.errors import OpsError
from tasks.health import run_checks

__all__ = [
    "CANARY_PREFIX",
    "HEALTH_SERVICES",
    "MIGRATIONS_TABLE",
    "check_clickhouse_schema",
    "check_postgres_schema",
    "check_redis_persistence",
    "check_s3_buckets",
    "check_services_healthy",
]

MIGRATIONS_TABLE = "_prisma_migrations"
CANARY_PREFIX = "_deploy-verify"  # never a stack name, so never mistaken for a backup set


# Backup freshness has its own check here (which can start a first backup), so the
# health sweep's "no backup yet is unhealthy" does not fail a first deploy twice.
HEALTH_SERVICES: tuple[str, ...] = tuple(
    s for s in SERVICES if s not in ("backup-freshness", "offsite-freshness")
)


def _error(stack: Stack, exc: BaseException) -> str:
    """Error text in a check's message: scrubbed, on one line, short enough for a table cell."""
    return stack.error_line(exc, limit=300, lines="join")


@task(name="check-services-healthy", cache_policy=NO_CACHE, persist_result=False)
def check_services_healthy(stack: Stack, timeout_s: float, fail_on_degraded: bool) -> CheckResult:
    """The health sweep's checks, all at once; unhealthy services block their checks."""
    results = run_coro_as_sync(
        run_checks(stack, timeout_s=timeout_s, services=list(HEALTH_SERVICES))
    )
    assert results is not None  # run_checks always returns a list
    return judge_health(results, fail_on_degraded)


@task(name="check-postgres-schema", cache_policy=NO_CACHE, persist_result=False)
def check_postgres_schema(stack: Stack, tables: Sequence[str], timeout_s: float) -> CheckResult:
    """Every required ``schema.table`` exists; every Prisma migration there has finished."""
    schemas = sorted({t.partition(".")[0] for t in tables})
    try:
        with stack.postgres(timeout_s=timeout_s, statement_timeout_s=timeout_s) as conn:
            present = [
                row[0]
                for row in conn.execute(
                    "SELECT n.nspname || '.' || c.relname FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s)",
                    (schemas,),
                )
            ]
            unfinished: list[str] = []
            for table in tables:
                schema, _, name = table.partition(".")
                if name != MIGRATIONS_TABLE or table not in present:
                    continue
                query = sql.SQL(
                    "SELECT migration_name FROM {} WHERE finished_at IS NULL "
                    "AND rolled_back_at IS NULL ORDER BY started_at"
                ).format(sql.Identifier(schema, name))
                unfinished += [f"{schema}.{row[0]}" for row in conn.execute(query)]
    except psycopg.Error as exc:
        return failed(
            "postgres-schema",
            f"could not read the schema from {stack.postgres_dsn_redacted}: {_error(stack, exc)}",
            fix="check DATABASE_URL (host, credentials, database) and that Postgres accepts "
            "connections",
        )
    return judge_tables(tables, present, unfinished)


@task(name="check-clickhouse-schema", cache_policy=NO_CACHE, persist_result=False)
def check_clickhouse_schema(stack: Stack, tables: Sequence[str], timeout_s: float) -> CheckResult:
    """Langfuse's tables exist in its ClickHouse database."""
    try:
        client = clickhouse_client(stack, timeout_s, connect_timeout_s=timeout_s)
        try:
            result = client.query(
                "SELECT name FROM system.tables WHERE database = {db:String}",
                parameters={"db": stack.clickhouse_database},
            )
            present = [str(row[0]) for row in result.result_rows]
        finally:
            client.close()
    except (ClickHouseError, OSError, OpsError) as exc:
        return failed(
            "clickhouse-schema",
            f"could not list tables on {stack.clickhouse_url}: {_error(stack, exc)}",
            fix="check CLICKHOUSE_URL, CLICKHOUSE_USER and CLICKHOUSE_PASSWORD",
        )
    return judge_clickhouse_tables(stack.clickhouse_database, tables, present)


@task(name="check-redis-persistence", cache_policy=NO_CACHE, persist_result=False)
def check_redis_persistence(
    stack: Stack, expected_policy: str, require_aof: bool, timeout_s: float
) -> CheckResult:
    """AOF is on and maxmemory-policy is what Langfuse's queues need."""
    client = stack.redis(timeout_s=timeout_s)
    try:
        appendonly = client.config_get("appendonly").get("appendonly", "unknown")
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "unknown")
    except redis.ResponseError as exc:
        return failed(
            "redis-persistence",
            f"Redis refused CONFIG GET: {_error(stack, exc)}",
            fix="allow CONFIG for this user (or check AOF and maxmemory-policy on the Redis "
            "service by hand) and set require_redis_aof accordingly",
        )
    except redis.RedisError as exc:
        return failed(
            "redis-persistence",
            f"could not reach Redis at {stack.redis_host}:{stack.redis_port}: {_error(stack, exc)}",
            fix="check REDIS_HOST, REDIS_PORT and REDIS_PASSWORD",
        )
    finally:
        client.close()
    return judge_redis(str(appendonly), str(policy), expected_policy, require_aof)


def _probe_bucket(client: Minio, stack: Stack, bucket: str, role: str, key: str) -> BucketProbe:
    try:
        if not client.bucket_exists(bucket):
            return BucketProbe(bucket=bucket, role=role, exists=False)
    except (S3Error, urllib3.exceptions.HTTPError) as exc:
        return BucketProbe(bucket=bucket, role=role, exists=False, error=_error(stack, exc))
    payload = f"deploy-verify canary {key}".encode()
    try:
        client.put_object(bucket, key, io.BytesIO(payload), len(payload))
        response = client.get_object(bucket, key)
        try:
            read_back = response.read()
        finally:
            response.close()
            response.release_conn()
        client.remove_object(bucket, key)
    except (S3Error, urllib3.exceptions.HTTPError) as exc:
        return BucketProbe(bucket=bucket, role=role, exists=True, error=_error(stack, exc))
    if read_back != payload:
        return BucketProbe(bucket=bucket, role=role, exists=True, error="read back other bytes")
    return BucketProbe(bucket=bucket, role=role, exists=True, canary_ok=True)


@task(name="check-s3-buckets", cache_policy=NO_CACHE, persist_result=False)
def check_s3_buckets(stack: Stack, canary_name: str, timeout_s: float) -> CheckResult:
    """Both buckets exist, and a canary object can be written, read and deleted in each."""
    client = stack.s3(timeout_s=timeout_s, retries=1)
    key = f"{CANARY_PREFIX}/{canary_name}.txt"
    probes = [
        _probe_bucket(client, stack, stack.langfuse_bucket, "Langfuse events", key),
        _probe_bucket(client, stack, stack.backup_bucket, "backup sets", key),
    ]
    return judge_buckets(probes)
