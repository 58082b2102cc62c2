"""Which failures are retried: real refusals from the devstack's servers fail at once."""

from __future__ import annotations

from typing import Any

import clickhouse_connect
import psycopg
import pytest
import redis
from clickhouse_connect.driver.exceptions import ClickHouseError
from minio import Minio
from minio.error import S3Error

from devstack.core import Devstack
from tasks.errors import StorageError
from tasks.retry import access_fix, is_transient


def _raised(fn: Any) -> BaseException:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("no error raised")


def _wrapped(exc: BaseException) -> BaseException:
    """The way our tasks raise: our error, the driver's as hidden context."""
    try:
        try:
            raise exc
        except Exception:
            raise StorageError("S3 write failed") from None
    except StorageError as ours:
        return ours


def test_a_wrong_s3_secret_fails_at_once_with_the_fix(devstack: Devstack) -> None:
    s3 = Minio(
        f"127.0.0.1:{devstack.ports['s3']}",
        access_key=devstack.creds.s3_access_key,
        secret_key="not-the-secret",
        secure=False,
    )
    exc = _raised(lambda: s3.bucket_exists("backups"))
    assert isinstance(exc, S3Error) and exc.code == "SignatureDoesNotMatch"
    assert "MINIO_ROOT_PASSWORD" in (access_fix(exc) or "")
    assert not is_transient(_wrapped(exc))


def test_a_missing_bucket_fails_at_once(devstack: Devstack) -> None:
    s3 = devstack.minio_client()
    exc = _raised(lambda: s3.get_object("no-such-bucket-here", "x"))
    assert "BACKUP_BUCKET" in (access_fix(exc) or "")
    assert not is_transient(exc)


def test_a_wrong_postgres_password_or_database_fails_at_once(devstack: Devstack) -> None:
    dsn = devstack.admin_dsn("railway")
    wrong = dsn.replace(devstack.creds.postgres_password, "not-the-password")
    exc = _raised(lambda: psycopg.connect(wrong, connect_timeout=5))
    assert "DATABASE_URL" in (access_fix(exc) or "")
    assert not is_transient(_wrapped(exc))
    missing = _raised(lambda: psycopg.connect(devstack.admin_dsn("nope"), connect_timeout=5))
    assert "does not exist" in (access_fix(missing) or "")


def test_a_wrong_clickhouse_password_fails_at_once(devstack: Devstack) -> None:
    def connect() -> None:
        clickhouse_connect.get_client(
            host="127.0.0.1",
            port=devstack.ports["clickhouse"],
            username="clickhouse",
            password="not-the-password",
        )

    exc = _raised(connect)
    assert isinstance(exc, ClickHouseError)
    assert "CLICKHOUSE_PASSWORD" in (access_fix(exc) or "")


def test_a_wrong_redis_password_fails_at_once(devstack: Devstack) -> None:
    client = redis.Redis(host="127.0.0.1", port=devstack.ports["redis"], password="nope")
    exc = _raised(client.ping)
    client.close()
    assert "REDIS_PASSWORD" in (access_fix(exc) or "")


@pytest.mark.parametrize(
    "make",
    [
        lambda d: psycopg.connect("postgresql://u:p@127.0.0.1:1/x", connect_timeout=2),
        lambda d: redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=2).ping(),
    ],
    ids=["postgres-down", "redis-down"],
)
def test_a_service_that_is_down_is_retried(devstack: Devstack, make: Any) -> None:
    exc = _raised(lambda: make(devstack))
    assert access_fix(exc) is None
    assert is_transient(_wrapped(exc))
