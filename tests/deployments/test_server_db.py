"""The prefect-server's database is created once in the stack's Postgres."""

from __future__ import annotations

import secrets

import psycopg
import pytest

from deployments.server_db import database_name, ensure_database, main
from devstack.core import Devstack
from tasks.errors import ControlPlaneError


def test_the_database_is_created_once_then_left_alone(devstack: Devstack) -> None:
    name = f"prefect_ctl_{secrets.token_hex(3)}"
    admin = devstack.admin_dsn("railway")
    try:
        assert ensure_database(admin, name) == "created"
        assert ensure_database(admin, name) == "exists"
        with psycopg.connect(devstack.admin_dsn(name)) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (name,)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_the_name_comes_from_the_connection_url() -> None:
    assert (
        database_name("postgresql+asyncpg://u:p@postgres.railway.internal:5432/prefect")
        == "prefect"
    )
    with pytest.raises(ControlPlaneError, match="/prefect"):
        database_name("postgresql+asyncpg://u:p@host:5432")


def test_an_unreachable_postgres_fails_with_a_redacted_dsn(devstack: Devstack) -> None:
    dsn = f"postgresql://postgres:{devstack.creds.postgres_password}@127.0.0.1:1/railway"
    with pytest.raises(ControlPlaneError) as caught:
        ensure_database(dsn, "prefect", wait_s=0)
    assert devstack.creds.postgres_password not in str(caught.value)
    assert "postgres:***@127.0.0.1:1" in str(caught.value)


def test_main_reports_a_missing_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main({"DATABASE_URL": "postgresql://x@h/db"}) == 2
    assert "PREFECT_API_DATABASE_CONNECTION_URL" in capsys.readouterr().err
