"""When a failed task is worth retrying: transient trouble, not a wrong setup.

Used as ``retry_condition_fn`` on tasks whose work is idempotent. A connection that
dropped, a timeout or an S3 hiccup may pass; a pg_dump that is too old, a stack block
that is wrong, a retention plan that broke an invariant, or a server that refused our
credentials or permissions (wrong S3 secret, wrong password, a missing bucket) will
fail the same way again, so those fail at once, with the fix in the message
(:func:`access_fix`).

Our errors wrap the driver's (``raise StorageError(...) from None``); the driver's
exception stays reachable as ``__context__``, and the whole chain is classified.
"""

from __future__ import annotations

import re
from typing import Any

from prefect.cache_policies import INPUTS, RUN_ID, TASK_SOURCE

from tasks.errors import (
    IntegrityError,
    RetentionError,
    StackConfigError,
    ToolVersionError,
)

__all__ = [
    "PERMANENT",
    "RETRY_TRANSIENT",
    "RETRY_TRANSIENT_QUICK",
    "RUN_CACHE",
    "access_fix",
    "advice",
    "is_transient",
    "retry_transient",
]

PERMANENT: tuple[type[BaseException], ...] = (
    StackConfigError,
    ToolVersionError,
    RetentionError,
    IntegrityError,
    TypeError,
    ValueError,
)


# S3 error codes that mean the request itself is refused, whenever it is sent again.
_S3_FIXES = {
    "SignatureDoesNotMatch": "the S3 secret key is wrong: set MINIO_ROOT_PASSWORD (the "
    "stack block's s3_secret_key) to the secret of the access key",
    "InvalidAccessKeyId": "the S3 access key does not exist: set MINIO_ROOT_USER (the stack "
    "block's s3_access_key) to an existing access key",
    "AccessDenied": "the S3 access key may not do this: grant it read, write, list and "
    "delete on the bucket, or use a key that has them",
    "NoSuchBucket": "the bucket does not exist: create it (the bootstrap creates the backup "
    "bucket at every worker start) or set BACKUP_BUCKET to an existing one",
    "InvalidBucketName": "the bucket name is not valid: fix BACKUP_BUCKET",
}
# SQLSTATEs of a refused login or a missing database or privilege.
_PG_FIXES = {
    "28P01": "PostgreSQL refused the password: fix DATABASE_URL (the stack block's postgres_dsn)",
    "28000": "PostgreSQL refused the login (pg_hba.conf or role): fix DATABASE_URL's user, "
    "or allow it in pg_hba.conf",
    "3D000": "the database does not exist: fix the database name in DATABASE_URL",
    "42501": "the PostgreSQL role lacks a privilege: use a role that may read every table "
    "(the database owner or a superuser)",
}
_PG_MESSAGES = {
    "password authentication failed": "28P01",
    "no pg_hba.conf entry": "28000",
}
_PG_MISSING_DB = re.compile(r'database "[^"]*" does not exist')
# ClickHouse error codes: AUTHENTICATION_FAILED, ACCESS_DENIED, UNKNOWN_USER, REQUIRED_PASSWORD.
_CH_CODE = re.compile(r"\bCode: (\d+)")
_CH_FIXES = {
    "516": "ClickHouse refused the user or password: fix CLICKHOUSE_USER and CLICKHOUSE_PASSWORD",
    "192": "ClickHouse has no such user: fix CLICKHOUSE_USER",
    "194": "ClickHouse wants a password: set CLICKHOUSE_PASSWORD",
    "497": "the ClickHouse user lacks a grant (BACKUP, SELECT, CREATE): grant it, or use "
    "Langfuse's ClickHouse user",
}
_REDIS_AUTH = ("WRONGPASS", "NOAUTH", "invalid password", "invalid username-password")


def access_fix(exc: BaseException) -> str | None:
    """What to fix when ``exc`` (or an error it wraps) is refused credentials or access.

    None for anything a retry may fix. Duck-typed on the drivers' own attributes, so
    this module imports none of them.
    """
    for error in _chain(exc):
        code = getattr(error, "code", None)
        if isinstance(code, str) and code in _S3_FIXES:
            return _S3_FIXES[code]
        text = str(error)
        sqlstate = getattr(error, "sqlstate", None)
        if sqlstate is None and type(error).__module__.startswith("psycopg"):
            sqlstate = next((s for m, s in _PG_MESSAGES.items() if m in text), None)
            if sqlstate is None and _PG_MISSING_DB.search(text):
                sqlstate = "3D000"
        if isinstance(sqlstate, str) and sqlstate in _PG_FIXES:
            return _PG_FIXES[sqlstate]
        if type(error).__module__.startswith("clickhouse_connect"):
            match = _CH_CODE.search(text)
            if match and match[1] in _CH_FIXES:
                return _CH_FIXES[match[1]]
        if type(error).__module__.startswith("redis") and (
            type(error).__name__ == "AuthenticationError" or text.startswith(_REDIS_AUTH)
        ):
            return "Redis refused the password: fix REDIS_PASSWORD"
    return None


def advice(exc: BaseException | str, otherwise: str = "") -> str:
    """What to tell the reader: the fix when no retry can help, else ``otherwise``."""
    fix = None if isinstance(exc, str) else access_fix(exc)
    return f"No retry can fix this: {fix}." if fix else otherwise


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it wraps (cause or context), without cycles."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in found):
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def is_transient(exc: BaseException) -> bool:
    """True unless the error is one a retry cannot fix."""
    return not isinstance(exc, PERMANENT) and access_fix(exc) is None


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only transient failures."""
    try:
        state.result()
    except BaseException as exc:  # the task's own exception, re-raised by result()
        return is_transient(exc)
    return False


# Named retry policies for ``@task(**POLICY)``: only for idempotent work, and only
# transient failures are retried (:func:`retry_transient`).
RETRY_TRANSIENT: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [5, 30],
    "retry_condition_fn": retry_transient,
}
"""S3 listings and writes, the manifest, pruning: a hiccup of S3 passes in seconds."""
RETRY_TRANSIENT_QUICK: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [5, 20],
    "retry_condition_fn": retry_transient,
}
"""Small checks before the work starts (tool versions, the backup slot)."""


# A retried flow run (UI "Retry", `prefect flow-run retry`, same flow-run id) reuses
# the persisted result of every task that completed before: the key is the run id,
# the task's code and its inputs. The stack block is left out of the key: fixing a
# setting in the block (a wrong endpoint that made the run fail) must not redo a
# finished dump. Progress hints are left out too.
RUN_CACHE = (INPUTS - "stack" - "expected_bytes") + TASK_SOURCE + RUN_ID
