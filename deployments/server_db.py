"""Create the Prefect server's own database in the stack's Postgres, once.

Run as ``python -m deployments.server_db`` before ``prefect server start``.

The prefect-server service keeps its state in the stack's own PostgreSQL, in a
database of its own (``prefect``), which Prefect does not create. The service's start
command runs this first: it waits for Postgres (it may still be starting), creates
the database when missing, and does nothing when it exists.

Environment: ``DATABASE_URL`` (an admin connection to the stack's Postgres) and
``PREFECT_API_DATABASE_CONNECTION_URL`` (whose path names the database).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from functools import partial
from typing import Literal
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from tasks.decisions.redaction import error_line, redact_url, scrub_values
from tasks.errors import ControlPlaneError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "database_name",
    "ensure_database",
    "main",
]

CONNECT_TIMEOUT_S = 5


def database_name(connection_url: str) -> str:
    """The database a SQLAlchemy URL (``postgresql+asyncpg://.../prefect``) points at."""
    name = urlsplit(connection_url).path.lstrip("/")
    if not name:
        raise ControlPlaneError(
            "PREFECT_API_DATABASE_CONNECTION_URL names no database: end it with /prefect"
        )
    return name


def ensure_database(
    admin_dsn: str, name: str, wait_s: float = 300.0
) -> Literal["created", "exists"]:
    """Create database ``name`` unless it exists, waiting up to ``wait_s`` for the server."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with psycopg.connect(
                admin_dsn, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True
            ) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
                ).fetchone()
                if exists:
                    return "exists"
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                except psycopg.errors.DuplicateDatabase:
                    return "exists"  # created by a concurrent start
                return "created"
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline:
                password = urlsplit(admin_dsn).password or ""
                reason = error_line(str(exc), partial(scrub_values, values=[password]))
                raise ControlPlaneError(
                    f"cannot reach Postgres at {redact_url(admin_dsn)} to create the "
                    f"{name!r} database after {wait_s:.0f}s: {reason}. Check "
                    "DATABASE_URL on the prefect-server service and that postgres runs."
                ) from None
            time.sleep(2.0)


def main(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        admin = env["DATABASE_URL"]
        name = database_name(env["PREFECT_API_DATABASE_CONNECTION_URL"])
        outcome = ensure_database(admin, name, float(env.get("OPS_DB_WAIT_S", "300")))
    except KeyError as exc:
        print(f"server_db: {exc.args[0]} is not set", file=sys.stderr)
        return 2
    except ControlPlaneError as exc:
        print(f"server_db: {exc}", file=sys.stderr)
        return 1
    print(f"server_db: database {name!r} {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
