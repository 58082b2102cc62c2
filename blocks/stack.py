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
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from prefect.blocks.core import Block
from pydantic import ByteSize, ConfigDict, Field, SecretStr, ValidationError, field_validator

from blocks.offsite import (
    OFFSITE_DEFAULTED,
    OFFSITE_ENV,
    OffsiteTarget,
    check_base_url,
    check_bucket,
)
from blocks.stack_clients import StackClients
from blocks.stack_env import ENV_FIELDS, _describe, _missing_stack, _parse_routes
from tasks.decisions.alerts import NotificationRoute, Severity
from tasks.decisions.health import SERVICES
from tasks.decisions.redaction import Lines, error_line, scrub_values, secret_forms
from tasks.errors import StackConfigError

__all__ = [
    "Stack",
    "secret_values_of",
]


class Stack(StackClients, Block):
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
        "drill_postgres_dsn",
        "clickhouse_password",
        "redis_password",
        "s3_secret_key",
        "litellm_master_key",
        "litellm_salt_key",
        "langfuse_secret_key",
        "railway_api_token",
        "heartbeat_url",
    )

    stack_name: str = Field(
        default="production",
        description="Name of the stack; prefix of its backup sets (<bucket>/<stack>/...).",
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
    )
    postgres_dsn: SecretStr = Field(
        description="PostgreSQL DSN (DATABASE_URL): postgresql://user:password@host:5432/db."
    )
    # Sizes the operator gives: SQL sees what Postgres uses, never the disk's free space.
    postgres_volume_size: ByteSize | None = Field(
        default=None,
        description="Size of the Postgres volume (e.g. 50GB): a restore checks it fits "
        "before writing. Unset: free space unknown.",
    )
    drill_postgres_dsn: SecretStr | None = Field(
        default=None,
        description="DSN of a scratch Postgres server for restore drills (DRILL_DATABASE_URL); "
        "unset: drills restore onto the stack's own server.",
    )
    drill_postgres_volume_size: ByteSize | None = Field(
        default=None, description="Size of the drill server's volume (e.g. 50GB)."
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
    langfuse_media_bucket: str | None = Field(
        default=None, description="Langfuse's media bucket (attachments), when configured."
    )
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
    heartbeat_url: SecretStr | None = Field(
        default=None,
        description="Ping URL of an outside monitor (Healthchecks.io and its clones): every "
        "sweep pings <url>/start, then <url> or <url>/fail. Unset: no heartbeat.",
    )
    public_urls: list[str] = Field(
        default_factory=list,
        description="Public https URLs of the stack (LiteLLM, langfuse-web, prefect-server) "
        "whose TLS certificates the sweep watches; comma-separated in PUBLIC_URLS.",
    )
    tls_ca_file: str | None = Field(
        default=None,
        description="A CA bundle to trust besides the public ones (a private CA), for the "
        "certificate probe.",
    )
    probes_off: list[str] = Field(
        default_factory=list,
        description="Health-sweep probes switched off for this stack (every probe is on by "
        "default), e.g. ['langfuse-queues', 'certificates']; comma-separated in "
        "OPS_PROBES_OFF.",
    )
    notifications: list[NotificationRoute] = Field(
        default_factory=list, description="Where alerts go, and from which severity."
    )
    offsite: OffsiteTarget | None = Field(
        default=None,
        description="Second S3 target for age-encrypted copies of every complete set "
        "(OFFSITE_* variables). Unset: no off-site copy.",
    )

    # ---- validation -----------------------------------------------------------------

    @field_validator("postgres_dsn", "drill_postgres_dsn")
    @classmethod
    def _check_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
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
        return check_base_url(value, ("http", "https"))

    @field_validator("railway_api_url")
    @classmethod
    def _check_railway(cls, value: str) -> str:
        return check_base_url(value, ("http", "https"), allow_path=True)

    @field_validator("s3_endpoint", "clickhouse_s3_endpoint")
    @classmethod
    def _check_s3(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return check_base_url(value, ("http", "https"))

    @field_validator("heartbeat_url")
    @classmethod
    def _check_heartbeat(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        check_base_url(value.get_secret_value(), ("http", "https"), allow_path=True)
        return value

    @field_validator("backup_bucket", "langfuse_bucket", "langfuse_media_bucket")
    @classmethod
    def _check_bucket(cls, value: str | None) -> str | None:
        return None if value is None else check_bucket(value)

    @field_validator("public_urls", "probes_off", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("public_urls")
    @classmethod
    def _check_public_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme != "https" or not parts.hostname:
                raise ValueError(f"{url!r} is not https://HOST[:PORT]")
        return urls

    @field_validator("probes_off")
    @classmethod
    def _known_probes(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(SERVICES))
        if unknown:
            raise ValueError(f"unknown probe(s) {', '.join(unknown)}")
        return names

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
        offsite = {
            field: raw.strip()
            for env_name, field in OFFSITE_ENV.items()
            if (raw := env.get(env_name)) is not None and raw.strip() != ""
        }
        # Region and prefix have defaults (railway.toml sets OFFSITE_S3_REGION): alone
        # they configure no off-site copy.
        if set(offsite) - OFFSITE_DEFAULTED:
            values["offsite"] = offsite
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
        if self.offsite is not None:
            found.extend(self.offsite.secret_values())
        password = urlsplit(self.postgres_dsn.get_secret_value()).password
        if password:
            found.extend({password, unquote(password)})
        return secret_forms(found)

    def scrub(self, text: str) -> str:
        """``text`` with every secret value (in any of its escaped forms) replaced by ``***``."""
        return scrub_values(text, self.secret_values())

    def error_line(
        self, exc: BaseException | str, *, limit: int = 600, lines: Lines = "keep"
    ) -> str:
        """``exc`` as one scrubbed, bounded piece of a message (see ``error_line``)."""
        return error_line(exc, self.scrub, limit=limit, lines=lines)

    def salt_fingerprint(self, salt: str) -> str | None:
        """A salted hash of the LiteLLM salt key: proves it unchanged without storing it."""
        if self.litellm_salt_key is None:
            return None
        digest = hashlib.sha256(salt.encode() + self.litellm_salt_key.get_secret_value().encode())
        return digest.hexdigest()

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
            f"  off-site    {self.offsite.describe() if self.offsite else 'none'}",
            f"  alerts      {', '.join(r.block for r in self.notifications) or 'none'}",
        ]
        return "\n".join(lines)


def secret_values_of(stacks: Iterable[Stack]) -> list[str]:
    return [value for stack in stacks for value in stack.secret_values()]
