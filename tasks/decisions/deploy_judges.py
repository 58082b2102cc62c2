"""Deploy-verify's judges: what a probe observed -> a check result (passed, failed, skipped).

Pure: no Prefect, no I/O. The probes (``tasks/deploy_probes.py`` and the LiteLLM,
Langfuse and Railway task modules) observe; these functions decide what it means and
say how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from tasks.decisions.checks import CheckResult, failed, passed, skipped
from tasks.decisions.health import ServiceHealth

__all__ = [
    "RAILWAY_OK",
    "BucketProbe",
    "RailwayService",
    "SaltRecord",
    "judge_backup_age",
    "judge_buckets",
    "judge_canary",
    "judge_clickhouse_tables",
    "judge_health",
    "judge_master_key",
    "judge_models",
    "judge_railway",
    "judge_redis",
    "judge_salt",
    "judge_tables",
    "judge_trace",
    "judge_unauthenticated",
    "quote_table",
]


def judge_master_key(starts_with_sk: bool) -> CheckResult:
    if starts_with_sk:
        return passed("master-key", "the master key starts with sk-")
    return failed(
        "master-key",
        "LITELLM_MASTER_KEY does not start with sk-: LiteLLM rejects such master keys",
        fix="set LITELLM_MASTER_KEY to a value starting with 'sk-' on the litellm and "
        "prefect-worker services, then redeploy",
    )


class SaltRecord(BaseModel):
    """What is stored about the salt key: a random salt and the salted hash. Never the key."""

    salt: str = Field(min_length=16)
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    recorded_at: datetime


def judge_salt(
    stored: SaltRecord | None, current_fingerprint: str | None, variable: str
) -> CheckResult:
    """``current_fingerprint`` is the salt key hashed with ``stored.salt`` (or a new salt)."""
    if current_fingerprint is None:
        if stored is None:
            return skipped(
                "salt-key",
                "LITELLM_SALT_KEY is not set, so there is nothing to compare",
                fix="set LITELLM_SALT_KEY (a long random value) before storing any provider "
                "credential in LiteLLM, and never change it afterwards",
            )
        return failed(
            "salt-key",
            f"LITELLM_SALT_KEY is no longer set, but it was at the first verification "
            f"({stored.recorded_at:%Y-%m-%d}): stored provider credentials can no longer be "
            "decrypted",
            fix="set LITELLM_SALT_KEY back to its previous value on the litellm service and "
            "redeploy",
        )
    if stored is None:
        return passed(
            "salt-key",
            f"first verification: the salt key's salted fingerprint is now recorded in "
            f"variable {variable!r}",
        )
    if stored.fingerprint == current_fingerprint:
        return passed(
            "salt-key", f"unchanged since the first verification on {stored.recorded_at:%Y-%m-%d}"
        )
    return failed(
        "salt-key",
        f"LITELLM_SALT_KEY changed since the first verification on "
        f"{stored.recorded_at:%Y-%m-%d}: provider credentials LiteLLM stored encrypted "
        "with the old salt key can no longer be decrypted",
        fix="put the previous LITELLM_SALT_KEY back on the litellm service and redeploy. If the "
        "change is intended, re-enter every provider credential in LiteLLM, then delete "
        f"the Prefect variable {variable!r} so the next run records the new key",
    )


def judge_health(services: Sequence[ServiceHealth], fail_on_degraded: bool) -> CheckResult:
    if not services:
        return failed(
            "services-healthy",
            "no health check ran",
            fix="check the health-sweep's service list for this stack",
        )
    unhealthy = [s for s in services if s.status == "unhealthy"]
    degraded = [s for s in services if s.status == "degraded"]
    bad = unhealthy + (degraded if fail_on_degraded else [])
    described = "; ".join(f"{s.service} {s.status}: {s.reason}" for s in unhealthy + degraded)
    if bad:
        return CheckResult(
            name="services-healthy",
            status="failed",
            message=described,
            fix="fix the service(s) named here first (their own logs on Railway say why); "
            "the checks that need them are skipped",
            unhealthy_services=tuple(s.service for s in bad),
        )
    if degraded:
        return passed("services-healthy", f"{len(services)} services up; degraded: {described}")
    return passed("services-healthy", f"{len(services)} services healthy")


def judge_unauthenticated(status_code: int, url: str) -> CheckResult:
    """LiteLLM without a database answers 400/500 instead of 401: any >= 400 is a refusal."""
    if status_code >= 400:
        return passed("litellm-auth", f"a request without a key was refused (HTTP {status_code})")
    return failed(
        "litellm-auth",
        f"LiteLLM at {url} answered HTTP {status_code} to a request without a key: anyone who "
        "can reach it can use (and spend on) every model",
        fix="set LITELLM_MASTER_KEY on the litellm service (general_settings.master_key) and "
        "redeploy",
    )


def judge_models(
    status_code: int, models: Sequence[str], canary_model: str, detail: str = ""
) -> CheckResult:
    if 400 <= status_code < 500:
        return failed(
            "litellm-models",
            f"LiteLLM refused the stack's master key (HTTP {status_code}"
            + (f": {detail}" if detail else "")
            + "): the master key in the stack block is not the proxy's",
            fix="make LITELLM_MASTER_KEY on the prefect-worker service (and so the stack block) "
            "the same as on the litellm service, then rebuild the stack block and run again",
        )
    if not 200 <= status_code < 300:
        return failed(
            "litellm-models",
            f"listing models answered HTTP {status_code}" + (f": {detail}" if detail else ""),
            fix="read the litellm service's logs; its model configuration may not load",
        )
    if canary_model not in models:
        shown = ", ".join(list(models)[:10]) or "none"
        return failed(
            "litellm-models",
            f"the canary model {canary_model!r} is not among the {len(models)} models ({shown})",
            fix=f"add a model named {canary_model!r} to LiteLLM's model_list (mock_response: pong "
            "keeps it free), or set canary_model to a model that exists",
        )
    return passed("litellm-models", f"{len(models)} models listed, including {canary_model!r}")


def judge_canary(
    status_code: int, content: str | None, model: str, detail: str = ""
) -> CheckResult:
    if 200 <= status_code < 300 and content:
        return passed("litellm-canary", f"{model!r} answered {content[:40]!r}")
    if 200 <= status_code < 300:
        return failed(
            "litellm-canary",
            f"{model!r} answered HTTP {status_code} without any message content",
            fix="check the model's configuration in LiteLLM (provider, deployment name)",
        )
    return failed(
        "litellm-canary",
        f"the canary completion on {model!r} answered HTTP {status_code}"
        + (f": {detail}" if detail else ""),
        fix="read the litellm service's logs; check the model's provider credentials and "
        "configuration",
    )


def judge_trace(
    found: bool, trace_id: str, waited_s: float, last_status: int | None, timeout_s: float
) -> CheckResult:
    if found:
        return passed(
            "langfuse-trace", f"trace {trace_id} found in Langfuse after {waited_s:.1f} s"
        )
    if last_status in (401, 403):
        return failed(
            "langfuse-trace",
            f"Langfuse refused the stack's API keys (HTTP {last_status}) while looking up trace "
            f"{trace_id}",
            fix="set LANGFUSE_PUBLIC_KEY/LANGFUSE_SECRET_KEY to a key pair of the project LiteLLM "
            "traces into, and rebuild the stack block",
        )
    return failed(
        "langfuse-trace",
        f"the canary's trace {trace_id} did not appear in Langfuse within {timeout_s:.0f} s "
        f"(last answer: {f'HTTP {last_status}' if last_status else 'none'}): Langfuse does not "
        "receive LiteLLM's traces",
        fix="check on the litellm service: success_callback includes langfuse, and LANGFUSE_HOST, "
        "LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY name this Langfuse project; then check that "
        "langfuse-worker is running and its queue (Redis) and ClickHouse are reachable",
    )


def quote_table(qualified: str) -> str:
    schema, _, table = qualified.partition(".")
    return f'{schema}."{table}"' if table != table.lower() else qualified


def judge_tables(
    required: Sequence[str], present: Iterable[str], unfinished_migrations: Sequence[str]
) -> CheckResult:
    """``required``/``present`` are ``schema.table``; migrations ``schema.migration_name``."""
    have = set(present)
    missing = [t for t in required if t not in have]
    if missing:
        shown = ", ".join(quote_table(t) for t in missing)
        owners = sorted({"LiteLLM" if t.startswith("public.") else "Langfuse" for t in missing})
        return failed(
            "postgres-schema",
            f"missing table(s) {shown}: {' and '.join(owners)}'s migrations did not run, or the "
            "table was dropped or renamed",
            fix="read the owning service's start-up logs (it migrates on start); restore the table "
            "from the latest backup set if it was dropped; a renamed table must be renamed back",
        )
    if unfinished_migrations:
        shown = ", ".join(unfinished_migrations[:5])
        more = len(unfinished_migrations) - 5
        return failed(
            "postgres-schema",
            f"migration(s) started but not finished: {shown}"
            + (f" ... and {more} more" if more > 0 else ""),
            fix="read the service's start-up logs for the failing migration; fix it and redeploy "
            "(Prisma refuses to continue past a failed migration)",
        )
    return passed(
        "postgres-schema", f"{len(required)} required tables present, migrations finished"
    )


def judge_clickhouse_tables(
    database: str, required: Sequence[str], present: Iterable[str]
) -> CheckResult:
    have = set(present)
    missing = [t for t in required if t not in have]
    if missing:
        return failed(
            "clickhouse-schema",
            f"ClickHouse database {database!r} lacks Langfuse table(s) {', '.join(missing)}",
            fix="Langfuse creates them on start (CLICKHOUSE_MIGRATION_URL): read langfuse-web's "
            "logs; restore them from the latest backup set if they were dropped",
        )
    return passed("clickhouse-schema", f"{database}: {', '.join(required)} present")


def judge_redis(
    appendonly: str, policy: str, expected_policy: str, require_aof: bool
) -> CheckResult:
    problems = []
    fixes = []
    if require_aof and appendonly != "yes":
        problems.append(
            f"AOF is off (appendonly={appendonly}): a restart loses queued Langfuse "
            "events and rate-limit state"
        )
        fixes.append("start redis-server with --appendonly yes (and CONFIG SET appendonly yes now)")
    if policy != expected_policy:
        problems.append(
            f"maxmemory-policy is {policy}, expected {expected_policy}"
            + (": Redis may evict Langfuse's queue jobs" if expected_policy == "noeviction" else "")
        )
        fixes.append(f"start redis-server with --maxmemory-policy {expected_policy}")
    if problems:
        return failed("redis-persistence", "; ".join(problems), fix="; ".join(fixes))
    return passed("redis-persistence", f"appendonly={appendonly}, maxmemory-policy={policy}")


class BucketProbe(BaseModel):
    """One bucket: does it exist, and did a canary object survive a write/read/delete."""

    bucket: str
    role: str = Field(description="What the bucket is for, e.g. 'Langfuse events'.")
    exists: bool
    canary_ok: bool = False
    error: str | None = None


def judge_buckets(probes: Sequence[BucketProbe]) -> CheckResult:
    missing = [p for p in probes if not p.exists]
    broken = [p for p in probes if p.exists and not p.canary_ok]
    if missing:
        return failed(
            "s3-buckets",
            "missing bucket(s): "
            + ", ".join(f"{p.bucket!r} ({p.role})" for p in missing)
            + (f"; {missing[0].error}" if missing[0].error else ""),
            fix="create the bucket(s) on the S3 server (mc mb, or the console), or fix "
            "LANGFUSE_S3_BUCKET / BACKUP_BUCKET to name existing ones and rebuild the stack block",
        )
    if broken:
        return failed(
            "s3-buckets",
            "canary object failed in "
            + ", ".join(f"{p.bucket!r}: {p.error or 'content differed'}" for p in broken),
            fix="check the S3 credentials' permissions (write, read, delete) on these buckets and "
            "the S3 server's free space",
        )
    return passed(
        "s3-buckets",
        "canary written, read and deleted in " + ", ".join(repr(p.bucket) for p in probes),
    )


def judge_backup_age(
    finished_at: datetime | None,
    backup_id: str | None,
    now: datetime,
    max_age: timedelta,
    started_run: str | None,
    deployment: str,
) -> CheckResult:
    if finished_at is None:
        if started_run:
            return passed(
                "backup-fresh",
                f"no complete backup set yet (first deploy): started a first backup, flow run "
                f"{started_run!r}",
            )
        return skipped(
            "backup-fresh",
            f"no complete backup set yet, and no deployment {deployment!r} to start one",
            fix=f"deploy the backup flow ({deployment}) with `prefect deploy`, then run it once",
        )
    age = now - finished_at
    hours = age.total_seconds() / 3600
    if age > max_age:
        return failed(
            "backup-fresh",
            f"the newest complete backup set {backup_id} finished {hours:.1f} h ago, older than "
            f"the allowed {max_age.total_seconds() / 3600:.0f} h: backups have stopped succeeding",
            fix=f"look at the recent runs of {deployment} (failed, or not scheduled); run it now "
            f"with `prefect deployment run {deployment}`",
        )
    return passed(
        "backup-fresh", f"newest complete backup set {backup_id} finished {hours:.1f} h ago"
    )


class RailwayService(BaseModel):
    service: str
    status: str | None = Field(description="Latest deployment's status, or None when none.")


RAILWAY_OK = frozenset({"SUCCESS", "SLEEPING"})


def judge_railway(services: Sequence[RailwayService]) -> CheckResult:
    if not services:
        return failed(
            "railway-deployments",
            "Railway's API listed no services for this project and environment",
            fix="check RAILWAY_PROJECT_ID and RAILWAY_ENVIRONMENT_ID, and the token's access",
        )
    bad = [s for s in services if s.status not in RAILWAY_OK]
    if bad:
        return failed(
            "railway-deployments",
            "latest deployment not successful: "
            + ", ".join(f"{s.service} {s.status or 'never deployed'}" for s in bad),
            fix="open those services' deployments on Railway and read the build/deploy logs; "
            "redeploy once fixed",
        )
    return passed("railway-deployments", f"{len(services)} services' latest deployments successful")
