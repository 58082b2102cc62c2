"""The stack block from Railway's environment: which variable fills which field, the fix
to print for each, and errors that name every bad variable at once, never its value."""

from __future__ import annotations

from pydantic import ValidationError

from blocks.offsite import OFFSITE_ENV
from tasks.decisions.alerts import NotificationRoute
from tasks.decisions.health import SERVICES
from tasks.errors import StackConfigError

__all__ = ["ENV_FIELDS", "FIELD_ENV", "FIX_HINTS"]

# Environment variable -> field, in the original template's names.
ENV_FIELDS: dict[str, str] = {
    "DATABASE_URL": "postgres_dsn",
    "POSTGRES_VOLUME_SIZE": "postgres_volume_size",
    "DRILL_DATABASE_URL": "drill_postgres_dsn",
    "DRILL_POSTGRES_VOLUME_SIZE": "drill_postgres_volume_size",
    "CLICKHOUSE_URL": "clickhouse_url",
    "CLICKHOUSE_USER": "clickhouse_user",
    "CLICKHOUSE_PASSWORD": "clickhouse_password",
    "CLICKHOUSE_DB": "clickhouse_database",
    "CLICKHOUSE_S3_ENDPOINT": "clickhouse_s3_endpoint",
    "REDIS_HOST": "redis_host",
    "REDIS_PORT": "redis_port",
    "REDIS_PASSWORD": "redis_password",
    "MINIO_ENDPOINT": "s3_endpoint",
    "MINIO_ROOT_USER": "s3_access_key",
    "MINIO_ROOT_PASSWORD": "s3_secret_key",
    "S3_REGION": "s3_region",
    "BACKUP_BUCKET": "backup_bucket",
    "LANGFUSE_S3_BUCKET": "langfuse_bucket",
    "LANGFUSE_S3_MEDIA_UPLOAD_BUCKET": "langfuse_media_bucket",
    "LITELLM_URL": "litellm_url",
    "LITELLM_MASTER_KEY": "litellm_master_key",
    "LITELLM_SALT_KEY": "litellm_salt_key",
    "LITELLM_REQUIRES_DB": "litellm_requires_db",
    "LANGFUSE_URL": "langfuse_url",
    "LANGFUSE_WORKER_URL": "langfuse_worker_url",
    "LANGFUSE_PUBLIC_KEY": "langfuse_public_key",
    "LANGFUSE_SECRET_KEY": "langfuse_secret_key",
    "RAILWAY_API_TOKEN": "railway_api_token",
    "RAILWAY_API_URL": "railway_api_url",
    "RAILWAY_PROJECT_ID": "railway_project_id",
    "RAILWAY_ENVIRONMENT_ID": "railway_environment_id",
    "PREFECT_UI_URL": "ui_url",
    "HEARTBEAT_URL": "heartbeat_url",
    "PUBLIC_URLS": "public_urls",
    "TLS_CA_FILE": "tls_ca_file",
    "OPS_PROBES_OFF": "probes_off",
}
FIELD_ENV: dict[str, str] = {field: env for env, field in ENV_FIELDS.items()}
FIELD_ENV.update({f"offsite.{field}": env for env, field in OFFSITE_ENV.items()})

FIX_HINTS: dict[str, str] = {
    "postgres_dsn": "set DATABASE_URL to postgresql://USER:PASSWORD@HOST:5432/DATABASE",
    "postgres_volume_size": "set POSTGRES_VOLUME_SIZE to the Postgres volume's size, e.g. "
    "50GB (or leave it unset: free space unknown)",
    "drill_postgres_dsn": "set DRILL_DATABASE_URL to postgresql://USER:PASSWORD@HOST:5432/DB "
    "of the drill server (or leave it unset)",
    "drill_postgres_volume_size": "set DRILL_POSTGRES_VOLUME_SIZE to the drill server's "
    "volume size, e.g. 20GB (or leave it unset)",
    "clickhouse_url": "set CLICKHOUSE_URL to http://HOST:8123 (scheme, host and port, no path)",
    "clickhouse_s3_endpoint": "set CLICKHOUSE_S3_ENDPOINT to http://HOST:9000 (no path), "
    "or leave it unset to use MINIO_ENDPOINT",
    "clickhouse_user": "set CLICKHOUSE_USER (Langfuse's default is 'clickhouse')",
    "clickhouse_password": "set CLICKHOUSE_PASSWORD to the ClickHouse user's password",
    "redis_host": "set REDIS_HOST to the Redis host name (e.g. redis.railway.internal)",
    "redis_port": "set REDIS_PORT to a port between 1 and 65535 (Redis uses 6379)",
    "s3_endpoint": "set MINIO_ENDPOINT to http://HOST:9000 (scheme, host and port, no path)",
    "s3_access_key": "set MINIO_ROOT_USER to the S3 access key",
    "s3_secret_key": "set MINIO_ROOT_PASSWORD to the S3 secret key",
    "backup_bucket": "set BACKUP_BUCKET to an S3 bucket name (3-63 lowercase letters, "
    "digits, dots or dashes)",
    "heartbeat_url": "set HEARTBEAT_URL to the ping URL of an outside monitor, e.g. "
    "https://hc-ping.com/<uuid> (or leave it unset: no heartbeat)",
    "public_urls": "set PUBLIC_URLS to the stack's public https URLs, comma-separated, e.g. "
    "https://litellm.example.com,https://langfuse.example.com (or leave it unset)",
    "langfuse_bucket": "set LANGFUSE_S3_BUCKET to the bucket Langfuse uploads events to",
    "litellm_url": "set LITELLM_URL to http://HOST:4000",
    "litellm_master_key": "set LITELLM_MASTER_KEY to a key that starts with 'sk-'",
    "litellm_requires_db": "set LITELLM_REQUIRES_DB to true or false (or leave it unset: true)",
    "probes_off": "set OPS_PROBES_OFF to probe names, comma-separated, from: "
    + ", ".join(SERVICES),
    "langfuse_url": "set LANGFUSE_URL to http://HOST:3000",
    "langfuse_worker_url": "set LANGFUSE_WORKER_URL to http://HOST:3030",
    "langfuse_public_key": "set LANGFUSE_PUBLIC_KEY to the project's public key (pk-lf-...)",
    "langfuse_secret_key": "set LANGFUSE_SECRET_KEY to the project's secret key (sk-lf-...)",
    "railway_api_url": "set RAILWAY_API_URL to the GraphQL endpoint, or leave it unset",
    "offsite": "set OFFSITE_S3_ENDPOINT, OFFSITE_S3_BUCKET, OFFSITE_S3_ACCESS_KEY, "
    "OFFSITE_S3_SECRET_KEY and OFFSITE_AGE_RECIPIENT together (or none: no off-site copy)",
    "offsite.endpoint": "set OFFSITE_S3_ENDPOINT to https://HOST[:PORT] (no path)",
    "offsite.bucket": "set OFFSITE_S3_BUCKET to the off-site bucket's name",
    "offsite.access_key": "set OFFSITE_S3_ACCESS_KEY to the off-site target's access key id",
    "offsite.secret_key": "set OFFSITE_S3_SECRET_KEY to the off-site target's secret key",
    "offsite.age_recipient": "set OFFSITE_AGE_RECIPIENT to the public key `age-keygen -y "
    "key.txt` prints (age1...)",
    "offsite.age_identity": "set OFFSITE_AGE_IDENTITY to the AGE-SECRET-KEY-1... line of "
    "the key file (only where drills and restores run)",
}


def _missing_stack(name: str, exc: ValueError) -> StackConfigError:
    return StackConfigError(
        f"no stack block named {name!r} ({exc}). Create it with "
        f"`python -m deployments.bootstrap --stack {name}` from the stack's "
        "environment, or in the UI under Blocks -> LLM Stack."
    )


def _parse_routes(raw: str, problems: list[str]) -> list[NotificationRoute]:
    """``NOTIFICATION_ROUTES=slack-webhook/ops:warning,pager-duty-webhook/pager:critical``."""
    routes: list[NotificationRoute] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        block, _, severity = item.partition(":")
        try:
            routes.append(NotificationRoute(block=block, min_severity=severity or "warning"))
        except ValidationError:
            problems.append(
                f"NOTIFICATION_ROUTES: {item!r} is not '<block-type-slug>/<name>[:info|warning|"
                "critical]', e.g. 'slack-webhook/ops-chat:warning'"
            )
    return routes


def _describe(exc: ValidationError, from_env: bool) -> list[str]:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(part) for part in error["loc"]]
        # The off-site target is a nested model: name its field (offsite.bucket).
        field = ".".join(loc[:2]) if loc[:1] == ["offsite"] else (loc[0] if loc else "?")
        label = f"{FIELD_ENV[field]} ({field})" if from_env and field in FIELD_ENV else field
        reason = (
            "is missing"
            if error["type"] == "missing"
            else error["msg"].removeprefix("Value error, ")
        )
        hint = FIX_HINTS.get(field)
        problems.append(f"{label}: {reason}" + (f"; {hint}" if hint else ""))
    return problems
