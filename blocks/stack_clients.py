"""How the stack block hands out its clients: the one way tasks, probes and flows reach
the stack's Postgres, Redis, ClickHouse and S3, each with its timeout.

:class:`StackClients` is a base of :class:`blocks.stack.Stack` (``stack.postgres()``,
``stack.s3()``, ...); it holds no fields of its own and reads the stack's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from tasks.decisions.redaction import redact_url

if TYPE_CHECKING:
    import psycopg
    from clickhouse_connect.driver.client import Client as ClickHouseClient
    from minio import Minio
    from psycopg.rows import TupleRow
    from pydantic import SecretStr
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

__all__ = [
    "CONNECT_TIMEOUT_S",
    "S3_READ_TIMEOUT_S",
    "S3_RETRY_STATUSES",
    "StackClients",
    "minio_client",
]

# Seconds to connect to any of the stack's services, and between bytes on an S3 read: a
# dead endpoint fails fast instead of hanging a task a Prefect timeout cannot interrupt.
CONNECT_TIMEOUT_S = 10.0
S3_READ_TIMEOUT_S = 120.0
S3_RETRY_STATUSES = (500, 502, 503, 504)


def minio_client(
    endpoint: str,
    access_key: str,
    secret_key: str,
    region: str,
    *,
    timeout_s: float = S3_READ_TIMEOUT_S,
    retries: int = 2,
) -> Minio:
    """A minio client for an S3 endpoint (the stack's, or its off-site target).

    ``timeout_s`` bounds the wait between bytes (and the connect, at most
    :data:`CONNECT_TIMEOUT_S`); ``retries`` retries connection errors and 5xx answers
    with a short backoff. Probes that must answer within seconds pass a small timeout
    and ``retries=0``; backups keep the defaults.
    """
    import urllib3
    from minio import Minio

    retry = urllib3.Retry(
        total=retries,
        backoff_factor=0.2,
        status_forcelist=S3_RETRY_STATUSES if retries > 0 else None,
        # The last 5xx answer reaches minio, which turns it into an S3Error with a code.
        raise_on_status=False,
    )
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT_S, timeout_s), read=timeout_s),
        maxsize=10,
        retries=retry,
    )
    parts = urlsplit(endpoint)
    return Minio(
        parts.netloc,
        access_key=access_key,
        secret_key=secret_key,
        secure=parts.scheme == "https",
        region=region,
        http_client=http,
    )


class StackClients:
    """Clients and connection details of the stack's systems, built from its fields."""

    if TYPE_CHECKING:
        # The fields of Stack read here.
        postgres_dsn: SecretStr
        clickhouse_url: str
        clickhouse_user: str
        clickhouse_password: SecretStr
        clickhouse_s3_endpoint: str | None
        redis_host: str
        redis_port: int
        redis_password: SecretStr | None
        s3_endpoint: str
        s3_access_key: str
        s3_secret_key: SecretStr
        s3_region: str

    # Drivers are imported when a client is asked for: the Prefect server imports this
    # module (block registry) and needs none of them.

    def postgres(
        self,
        database: str | None = None,
        *,
        timeout_s: float = CONNECT_TIMEOUT_S,
        statement_timeout_s: float | None = None,
        application_name: str = "litellm-langfuse-ops",
        autocommit: bool = False,
        settings: Mapping[str, str] | None = None,
    ) -> psycopg.Connection[TupleRow]:
        """A connection to the stack's Postgres (``database``, default the DSN's).

        ``timeout_s`` bounds the connect; ``statement_timeout_s`` each statement;
        ``settings`` become session settings (``-c key=value``).
        """
        import psycopg

        return psycopg.connect(
            self._dsn(database),
            connect_timeout=max(1, int(timeout_s)),
            application_name=application_name,
            autocommit=autocommit,
            options=self._pg_options(statement_timeout_s, dict(settings or {})),
        )

    async def postgres_async(
        self,
        database: str | None = None,
        *,
        timeout_s: float = CONNECT_TIMEOUT_S,
        application_name: str = "litellm-langfuse-ops",
        autocommit: bool = True,
    ) -> psycopg.AsyncConnection[TupleRow]:
        """:meth:`postgres` for asyncio code (the health sweep)."""
        import psycopg

        return await psycopg.AsyncConnection.connect(
            self._dsn(database),
            connect_timeout=max(2, int(timeout_s)),
            autocommit=autocommit,
            application_name=application_name,
        )

    def _dsn(self, database: str | None) -> str:
        return self.postgres_dsn_for(database) if database else self.postgres_dsn.get_secret_value()

    @staticmethod
    def _pg_options(statement_timeout_s: float | None, settings: dict[str, str]) -> str:
        if statement_timeout_s is not None:
            settings = {"statement_timeout": str(int(statement_timeout_s * 1000)), **settings}
        return " ".join(f"-c {key}={value}" for key, value in settings.items())

    def redis(self, *, timeout_s: float = 5.0) -> Redis:
        """A client of the stack's Redis; every socket operation bounded by ``timeout_s``."""
        import redis

        return redis.Redis(**self._redis_settings(timeout_s))

    def redis_async(self, *, timeout_s: float = 5.0, decode_responses: bool = False) -> AsyncRedis:
        """:meth:`redis` for asyncio code; a timeout is not retried (a probe reports it).
        ``decode_responses`` gives str instead of bytes (what ``bullmq`` expects)."""
        import redis.asyncio

        return redis.asyncio.Redis(
            **self._redis_settings(timeout_s),
            retry_on_timeout=False,
            decode_responses=decode_responses,
        )

    def _redis_settings(self, timeout_s: float) -> dict[str, Any]:
        return {
            "host": self.redis_host,
            "port": self.redis_port,
            "password": self.redis_password.get_secret_value() if self.redis_password else None,
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
        }

    def clickhouse(
        self, *, timeout_s: float = 300.0, connect_timeout_s: float = CONNECT_TIMEOUT_S
    ) -> ClickHouseClient:
        """A clickhouse-connect client: ``timeout_s`` bounds each query. Raises the
        driver's error when the server refuses or cannot be reached."""
        import clickhouse_connect

        parts = urlsplit(self.clickhouse_url)
        return clickhouse_connect.get_client(
            host=parts.hostname or "localhost",
            port=parts.port or (8443 if parts.scheme == "https" else 8123),
            secure=parts.scheme == "https",
            username=self.clickhouse_user,
            password=self.clickhouse_password.get_secret_value(),
            connect_timeout=connect_timeout_s,
            send_receive_timeout=timeout_s,
            autogenerate_session_id=False,
        )

    def s3(self, *, timeout_s: float = S3_READ_TIMEOUT_S, retries: int = 2) -> Minio:
        """A minio client for the stack's S3 endpoint (see :func:`minio_client`)."""
        return minio_client(
            self.s3_endpoint,
            self.s3_access_key,
            self.s3_secret_key.get_secret_value(),
            self.s3_region,
            timeout_s=timeout_s,
            retries=retries,
        )

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
