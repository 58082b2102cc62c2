"""The typed description of one stack: every endpoint and secret the flows need.

One Prefect server can operate several stacks; each is a block document named after
the stack (``production``, ``staging``). Flows take the stack's name as their only
connection parameter and load the rest here, so no secret ever travels as a flow-run
parameter::

    from blocks.stack import Stack
    stack = Stack.load("production")
    with stack.pg_connect() as conn: ...

On Railway the document is built from the service's environment by the bootstrap
(``Stack.from_env(os.environ)``), with the variable names of the original template.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit, urlunsplit

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, ValidationError, field_validator

from tasks.decisions.alerts import NotificationRoute, Severity
from tasks.decisions.redaction import error_line, redact_url, scrub_values, secret_forms
from tasks.errors import StackConfigError

__all__ = [
    "ENV_FIELDS",
    "FIELD_ENV",
    "FIX_HINTS",
    "Stack",
    "secret_values_of",
]

# Environment variable -> field, in the original template's names.
ENV_FIELDS: dict[str, str] = {
    "DATABASE_URL": "postgres_dsn",
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
}
FIELD_ENV: dict[str, str] = {field: env for env, field in ENV_FIELDS.items()}

FIX_HINTS: dict[str, str] = {
    "postgres_dsn": "set DATABASE_URL to postgresql://USER:PASSWORD@HOST:5432/DATABASE",
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
    "langfuse_bucket": "set LANGFUSE_S3_BUCKET to the bucket Langfuse uploads events to",
    "litellm_url": "set LITELLM_URL to http://HOST:4000",
    "litellm_master_key": "set LITELLM_MASTER_KEY to a key that starts with 'sk-'",
    "litellm_requires_db": "set LITELLM_REQUIRES_DB to true or false (or leave it unset: true)",
    "langfuse_url": "set LANGFUSE_URL to http://HOST:3000",
    "langfuse_worker_url": "set LANGFUSE_WORKER_URL to http://HOST:3030",
    "langfuse_public_key": "set LANGFUSE_PUBLIC_KEY to the project's public key (pk-lf-...)",
    "langfuse_secret_key": "set LANGFUSE_SECRET_KEY to the project's secret key (sk-lf-...)",
    "railway_api_url": "set RAILWAY_API_URL to the GraphQL endpoint, or leave it unset",
}

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _check_base_url(value: str, schemes: tuple[str, ...], allow_path: bool = False) -> str:
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:  # a non-numeric or out-of-range port
        raise ValueError(f"port is not a number between 1 and 65535 ({exc})") from None
    if parts.scheme not in schemes:
        raise ValueError(f"scheme must be one of {', '.join(schemes)}")
    if not parts.hostname:
        raise ValueError("has no host")
    if port == 0:
        raise ValueError("port 0 is not a port")
    if not allow_path and parts.path not in ("", "/"):
        raise ValueError(f"must not have a path (found {parts.path!r})")
    return value.rstrip("/")


class Stack(Block):
    """One LiteLLM + Langfuse stack: endpoints, credentials and alert routing.

    Load it with ``Stack.load("production")``. Secrets are ``SecretStr``: they are
    never in ``repr``/``str``, and :meth:`scrub` removes their values from any text
    (subprocess stderr, driver errors) before it is logged or raised.
    """

    _block_type_name = "LLM Stack"
    _block_type_slug = "llm-stack"
    _description = "Endpoints, credentials and alert routing of one LiteLLM + Langfuse stack."
    model_config = ConfigDict(hide_input_in_errors=True)

    SECRET_FIELDS: ClassVar[tuple[str, ...]] = (
        "postgres_dsn",
        "clickhouse_password",
        "redis_password",
        "s3_secret_key",
        "litellm_master_key",
        "litellm_salt_key",
        "langfuse_secret_key",
        "railway_api_token",
    )

    stack_name: str = Field(
        default="production",
        description="Name of the stack; prefix of its backup sets (<bucket>/<stack>/...).",
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
    )
    postgres_dsn: SecretStr = Field(
        description="PostgreSQL DSN (DATABASE_URL): postgresql://user:password@host:5432/db."
    )
    clickhouse_url: str = Field(
        description="ClickHouse HTTP interface, e.g. http://clickhouse:8123."
    )
    clickhouse_user: str = Field(default="clickhouse", description="ClickHouse user.")
    clickhouse_password: SecretStr = Field(description="ClickHouse password.")
    clickhouse_database: str = Field(
        default="default", description="Langfuse's ClickHouse database, backed up whole."
    )
    clickhouse_s3_endpoint: str | None = Field(
        default=None,
        description="S3 endpoint as ClickHouse reaches it, if it differs from s3_endpoint.",
    )
    redis_host: str = Field(description="Redis host.")
    redis_port: int = Field(default=6379, ge=1, le=65535, description="Redis port.")
    redis_password: SecretStr | None = Field(default=None, description="Redis password.")
    s3_endpoint: str = Field(description="S3 endpoint (MinIO), e.g. http://minio:9000.")
    s3_access_key: str = Field(description="S3 access key id.")
    s3_secret_key: SecretStr = Field(description="S3 secret key.")
    s3_region: str = Field(default="us-east-1", description="S3 region.")
    backup_bucket: str = Field(default="backups", description="Bucket holding the backup sets.")
    langfuse_bucket: str = Field(default="langfuse", description="Langfuse's event bucket.")
    litellm_url: str = Field(description="LiteLLM proxy base URL, e.g. http://litellm:4000.")
    litellm_master_key: SecretStr = Field(description="LiteLLM master key (starts with sk-).")
    litellm_salt_key: SecretStr | None = Field(
        default=None, description="LiteLLM salt key; must never change after the first deploy."
    )
    litellm_requires_db: bool = Field(
        default=True,
        description="LiteLLM runs with its database (virtual keys, spend): readiness "
        "without one is degraded. False only for a gateway deliberately run without one.",
    )
    langfuse_url: str = Field(description="Langfuse web base URL, e.g. http://langfuse-web:3000.")
    langfuse_worker_url: str = Field(description="Langfuse worker base URL (port 3030).")
    langfuse_public_key: str = Field(description="Langfuse project public key (pk-lf-...).")
    langfuse_secret_key: SecretStr = Field(description="Langfuse project secret key.")
    railway_api_token: SecretStr | None = Field(
        default=None, description="Railway API token, for deployment status checks."
    )
    railway_api_url: str = Field(
        default="https://backboard.railway.com/graphql/v2", description="Railway GraphQL API."
    )
    railway_project_id: str | None = Field(default=None, description="Railway project id.")
    railway_environment_id: str | None = Field(default=None, description="Railway environment.")
    ui_url: str | None = Field(
        default=None, description="Public URL of the Prefect UI, for links in alerts."
    )
    notifications: list[NotificationRoute] = Field(
        default_factory=list, description="Where alerts go, and from which severity."
    )

    # ---- validation -----------------------------------------------------------------

    @field_validator("postgres_dsn")
    @classmethod
    def _check_dsn(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError:
            raise ValueError("port is not a number between 1 and 65535") from None
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError("scheme must be postgresql://")
        if not parts.hostname:
            raise ValueError("DSN has no host")
        if port == 0:
            raise ValueError("port 0 is not a port")
        if not parts.path.strip("/"):
            raise ValueError("DSN names no database")
        return value

    @field_validator("clickhouse_url", "litellm_url", "langfuse_url", "langfuse_worker_url")
    @classmethod
    def _check_http(cls, value: str) -> str:
        return _check_base_url(value, ("http", "https"))

    @field_validator("railway_api_url")
    @classmethod
    def _check_railway(cls, value: str) -> str:
        return _check_base_url(value, ("http", "https"), allow_path=True)

    @field_validator("s3_endpoint", "clickhouse_s3_endpoint")
    @classmethod
    def _check_s3(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_base_url(value, ("http", "https"))

    @field_validator("backup_bucket", "langfuse_bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        if not _BUCKET_RE.fullmatch(value):
            raise ValueError("is not a valid S3 bucket name")
        return value

    @field_validator("litellm_master_key")
    @classmethod
    def _check_master_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("sk-"):
            raise ValueError("must start with 'sk-' (LiteLLM rejects other master keys)")
        return value

    @field_validator("redis_host", "s3_access_key", "clickhouse_user", "langfuse_public_key")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty")
        return value

    # ---- construction ---------------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str], stack_name: str = "production") -> Stack:
        """Build the block from Railway-style environment variables.

        Raises :class:`StackConfigError` once, listing every missing or malformed
        variable with the fix, and never echoing a value.
        """
        values: dict[str, Any] = {"stack_name": stack_name}
        for env_name, field in ENV_FIELDS.items():
            raw = env.get(env_name)
            if raw is not None and raw.strip() != "":
                values[field] = raw.strip()
        routes = env.get("NOTIFICATION_ROUTES")
        problems: list[str] = []
        if routes:
            values["notifications"] = _parse_routes(routes, problems)
        try:
            stack = cls(**values)
        except ValidationError as exc:
            problems.extend(_describe(exc, from_env=True))
        if problems:
            raise StackConfigError(
                f"stack {stack_name!r}: {len(problems)} problem(s) in the environment:\n  - "
                + "\n  - ".join(problems)
            )
        return stack

    @classmethod
    def validated(cls, **values: Any) -> Stack:
        """Construct from keyword arguments, raising StackConfigError naming each field."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = _describe(exc, from_env=False)
            raise StackConfigError(
                f"{len(problems)} problem(s) in the stack block:\n  - " + "\n  - ".join(problems)
            ) from None

    @classmethod
    def load_stack(cls, name: str) -> Stack:
        """Load the named document, with an error that says how to create it."""
        try:
            return cls.load(name)  # type: ignore[return-value]
        except ValueError as exc:
            raise _missing_stack(name, exc) from None

    @classmethod
    async def aload_stack(cls, name: str) -> Stack:
        """:meth:`load_stack` for async code."""
        try:
            return await cls.aload(name)
        except ValueError as exc:
            raise _missing_stack(name, exc) from None

    # ---- secrets --------------------------------------------------------------------

    def secret_values(self) -> list[str]:
        """Every secret value (and the Postgres password alone), for scrubbing and scans.

        Each value comes with the forms it takes inside other texts: quoted in a SQL
        string (``'`` and ``\\`` escaped, as ClickHouse statements carry the S3 key),
        URL-encoded, JSON-escaped.
        """
        found: list[str] = []
        for field in self.SECRET_FIELDS:
            value = getattr(self, field)
            if isinstance(value, SecretStr) and value.get_secret_value():
                found.append(value.get_secret_value())
        password = urlsplit(self.postgres_dsn.get_secret_value()).password
        if password:
            found.extend({password, unquote(password)})
        return secret_forms(found)

    def scrub(self, text: str) -> str:
        """``text`` with every secret value (in any of its escaped forms) replaced by ``***``."""
        return scrub_values(text, self.secret_values())

    def error_line(self, exc: BaseException | str, *, limit: int = 600) -> str:
        """``exc`` as one scrubbed, bounded piece of a message."""
        return error_line(exc, self.scrub, limit=limit)

    def salt_fingerprint(self, salt: str) -> str | None:
        """A salted hash of the LiteLLM salt key: proves it unchanged without storing it."""
        if self.litellm_salt_key is None:
            return None
        digest = hashlib.sha256(salt.encode() + self.litellm_salt_key.get_secret_value().encode())
        return digest.hexdigest()

    # ---- connection details ---------------------------------------------------------

    @property
    def postgres_dsn_redacted(self) -> str:
        return redact_url(self.postgres_dsn.get_secret_value())

    @property
    def postgres_database(self) -> str:
        return urlsplit(self.postgres_dsn.get_secret_value()).path.lstrip("/")

    def postgres_dsn_for(self, database: str) -> str:
        """The DSN pointing at another database on the same server (scratch, restore)."""
        parts = urlsplit(self.postgres_dsn.get_secret_value())
        return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))

    @property
    def s3_host(self) -> str:
        """``host:port`` of the S3 endpoint, as the minio client wants it."""
        return urlsplit(self.s3_endpoint).netloc

    @property
    def s3_secure(self) -> bool:
        return urlsplit(self.s3_endpoint).scheme == "https"

    @property
    def clickhouse_s3(self) -> str:
        return self.clickhouse_s3_endpoint or self.s3_endpoint

    def routes_for(self, severity: Severity) -> list[NotificationRoute]:
        return [route for route in self.notifications if route.accepts(severity)]

    def describe(self) -> str:
        """A one-screen summary with secrets redacted."""
        lines = [
            f"stack {self.stack_name}",
            f"  postgres    {self.postgres_dsn_redacted}",
            f"  clickhouse  {self.clickhouse_url} (user {self.clickhouse_user}, "
            f"db {self.clickhouse_database})",
            f"  redis       {self.redis_host}:{self.redis_port}",
            f"  s3          {self.s3_endpoint} (bucket {self.backup_bucket})",
            f"  litellm     {self.litellm_url}",
            f"  langfuse    {self.langfuse_url} / worker {self.langfuse_worker_url}",
            f"  alerts      {', '.join(r.block for r in self.notifications) or 'none'}",
        ]
        return "\n".join(lines)


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
        field = str(error["loc"][0]) if error["loc"] else "?"
        label = f"{FIELD_ENV[field]} ({field})" if from_env and field in FIELD_ENV else field
        reason = (
            "is missing"
            if error["type"] == "missing"
            else error["msg"].removeprefix("Value error, ")
        )
        hint = FIX_HINTS.get(field)
        problems.append(f"{label}: {reason}" + (f"; {hint}" if hint else ""))
    return problems


def secret_values_of(stacks: Iterable[Stack]) -> list[str]:
    return [value for stack in stacks for value in stack.secret_values()]
