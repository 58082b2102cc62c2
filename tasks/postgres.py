"""PostgreSQL: a consistent dump streamed straight into object storage.

How a dump stays consistent without a temp file:

1. A REPEATABLE READ, READ ONLY transaction exports its snapshot
   (``pg_export_snapshot()``) and counts every user table *in that snapshot*, so the
   recorded counts describe exactly the rows the dump holds.
2. ``pg_dump --snapshot=<id> -Fc`` reads the same snapshot. The exporting transaction
   stays open until pg_dump has finished: a snapshot can only be imported while its
   exporter is alive.
3. pg_dump's stdout is read by :class:`DumpStream`, which hashes (sha256) and counts
   the bytes on their way into an S3 multipart upload. Memory is bounded by the part
   size times the parts in flight; nothing touches the local disk.
4. The stream hands over its last bytes only after pg_dump exited 0, so a dump that
   failed half-way can never complete the upload: the multipart upload is aborted
   and no object appears.

pg_dump refuses servers newer than itself, and a newer client sends settings an older
server rejects: :func:`pg_client_tool` picks the installed client whose major equals the
server's (else the smallest newer one), for dump and restore alike, and says what to
install when none fits. pg_dump gets its own timeout (a Prefect task timeout cannot
interrupt a subprocess), the password travels in ``PGPASSWORD`` (never on the
command line), and its stderr is scrubbed of secrets before it is logged or raised.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, NamedTuple, cast
from urllib.parse import unquote, urlsplit, urlunsplit
from uuid import UUID

import psycopg
import urllib3
from minio.error import MinioException
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger
from psycopg import sql
from psycopg.rows import TupleRow
from pydantic import BaseModel, Field

from blocks.stack import Stack
from tasks.decisions.manifest import LargeObjects, PostgresDump, postgres_dump_key
from tasks.errors import PostgresDumpError, ToolVersionError
from tasks.retry import RETRY_TRANSIENT_QUICK, RUN_CACHE, access_fix
from tasks.storage import s3_client, storage_error

CONNECT_TIMEOUT_S = 10
COUNT_TIMEOUT_MS = 30 * 60 * 1000
PROGRESS_EVERY_S = 5.0
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
PG_LIB = "/usr/lib/postgresql"
PIPE_SIZE = 1 << 20  # a 1 MiB pipe lets pg_dump run ahead while a part is handed over

USER_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


# ---- versions -------------------------------------------------------------------------


class PgVersions(BaseModel):
    """The server's and pg_dump's versions, checked compatible."""

    server: str = Field(description="Server version, e.g. '16.4'.")
    server_major: int
    pg_dump: str = Field(description="pg_dump version, e.g. '16.4'.")
    pg_dump_major: int
    pg_dump_path: str


def parse_tool_version(text: str) -> tuple[str, int]:
    """``'pg_dump (PostgreSQL) 16.4 (Debian 16.4-1)'`` -> ``('16.4', 16)``."""
    match = re.search(r"\)\s*(\d+)(?:\.(\d+))?", text) or re.search(r"(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise ToolVersionError(f"cannot read a version from {text.strip()[:200]!r}")
    major = int(match.group(1))
    return (f"{major}.{match.group(2)}" if match.group(2) else str(major)), major


def require_compatible(
    server: str, server_major: int, tool: str, tool_major: int, name: str = "pg_dump"
) -> None:
    """Refuse a client tool older than the server: pg_dump refuses newer servers."""
    if tool_major < server_major:
        raise ToolVersionError(
            f"{name} {tool} is older than the PostgreSQL {server} server it must work with; "
            f"{name} refuses newer servers. Install the PostgreSQL {server_major} client "
            f"(postgresql-client-{server_major}) in the worker image, or set the backup "
            f"config's pg_dump_path to a pg_dump >= {server_major}."
        )


def choose_client_major(installed: list[int], server_major: int) -> int | None:
    """The client major to run against a server: its own, else the smallest newer one.

    A newer client writes settings an older server rejects (pg_restore 17 sends
    ``SET transaction_timeout``, unknown to 16), so newer is only the fallback; an older
    one refuses the server (None: nothing fits).
    """
    fitting = [major for major in installed if major >= server_major]
    return min(fitting) if fitting else None


def installed_pg_tools(name: str) -> dict[int, str]:
    """Installed copies of a PostgreSQL client tool by major (Debian: one folder per major);
    the one on PATH when there is none of those."""
    found: dict[int, str] = {}
    for path in glob.glob(f"{PG_LIB}/*/bin/{name}"):
        major = path.split("/")[-3]
        if major.isdigit() and os.access(path, os.X_OK):
            found[int(major)] = path
    if not found and (on_path := shutil.which(name)):
        found[tool_version(on_path, name)[1]] = on_path
    return found


def tool_version(path: str, name: str) -> tuple[str, int]:
    """``(version, major)`` from ``<tool> --version``."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolVersionError(
            f"cannot run {name} at {path!r} ({type(exc).__name__}: {exc}). Install the "
            "PostgreSQL client in the worker image or set the backup config's pg_dump_path."
        ) from None
    return parse_tool_version(out)


class PgTool(BaseModel):
    """A PostgreSQL client tool chosen for a server."""

    path: str
    version: str
    major: int


def pg_client_tool(name: str, server_major: int, configured: str | None = None) -> PgTool:
    """The ``name`` (pg_dump, pg_restore) to run against a server of ``server_major``.

    The configured path if given, else the installed major equal to the server's, else
    the smallest newer one; a clear error when none is at least the server's major.
    """
    if configured:
        version, major = tool_version(configured, name)
        return PgTool(path=configured, version=version, major=major)
    installed = installed_pg_tools(name)
    chosen = choose_client_major(list(installed), server_major)
    if chosen is None:
        found = ", ".join(str(m) for m in sorted(installed)) or "none"
        raise ToolVersionError(
            f"no {name} for PostgreSQL {server_major} (installed majors: {found}); "
            f"{name} refuses newer servers. Install postgresql-client-{server_major} in "
            "the worker image (Dockerfile ARG PG_CLIENT_MAJOR)."
        )
    version, _ = tool_version(installed[chosen], name)
    return PgTool(path=installed[chosen], version=version, major=chosen)


def server_version(conn: psycopg.Connection[TupleRow]) -> tuple[str, int]:
    """``(version, major)`` of the server, e.g. ``('16.4', 16)``."""
    row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    number = int(cast(int, row[0])) if row else 0
    return f"{number // 10000}.{number % 10000}", number // 10000


def dsn_without_password(dsn: str) -> tuple[str, str]:
    """(DSN without its password, the password): the password goes in PGPASSWORD."""
    parts = urlsplit(dsn)
    password = unquote(parts.password or "")
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{user}@" if user else "") + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), password


def connect(stack: Stack, **options: str) -> psycopg.Connection[TupleRow]:
    """A connection to the stack's database, with a connect timeout and session options."""
    opts = " ".join(f"-c {key}={value}" for key, value in options.items())
    try:
        return psycopg.connect(
            stack.postgres_dsn.get_secret_value(),
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="ops-backup",
            options=opts,
        )
    except psycopg.Error as exc:
        raise pg_error(stack, "connect", exc) from None


def pg_error(stack: Stack, action: str, exc: BaseException) -> PostgresDumpError:
    reason = stack.scrub(f"{type(exc).__name__}: {exc}".strip())[:600]
    fix = access_fix(exc)
    advice = (
        f"No retry can fix this: {fix}."
        if fix
        else "Check that the database is up and reachable from the worker."
    )
    return PostgresDumpError(
        f"PostgreSQL {action} failed on {stack.postgres_dsn_redacted}: {reason}. {advice}"
    )


@task(
    name="check-pg-dump-version",
    **RETRY_TRANSIENT_QUICK,
    persist_result=True,
    cache_policy=RUN_CACHE,
)
def check_pg_dump_version(stack: Stack, pg_dump_path: str | None = None) -> PgVersions:
    """Choose the pg_dump for the server's major (equal, else the smallest newer)."""
    logger = get_run_logger()
    with connect(stack) as conn:
        server, server_major = server_version(conn)
    tool = pg_client_tool("pg_dump", server_major, pg_dump_path)
    logger.info("PostgreSQL server %s, pg_dump %s (%s)", server, tool.version, tool.path)
    require_compatible(server, server_major, tool.version, tool.major)
    return PgVersions(
        server=server,
        server_major=server_major,
        pg_dump=tool.version,
        pg_dump_major=tool.major,
        pg_dump_path=tool.path,
    )


# ---- the snapshot ---------------------------------------------------------------------


def export_snapshot(conn: psycopg.Connection[TupleRow]) -> str:
    """Start the REPEATABLE READ transaction and export its snapshot."""
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    if row is None:
        raise PostgresDumpError("pg_export_snapshot() returned nothing")
    return str(row[0])


PARTITIONED_TABLES = """
SELECT n.nspname || '.' || c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'p' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
"""
LARGE_OBJECT_COUNT = "SELECT count(*) FROM pg_largeobject_metadata"
LARGE_OBJECT_DIGEST = (
    "SELECT coalesce(md5(string_agg(md5(data), '' ORDER BY loid, pageno)), '') FROM pg_largeobject"
)


def partitioned_tables(conn: psycopg.Connection[TupleRow]) -> list[str]:
    """The partitioned parents: ``count(*)`` on them counts their partitions' rows."""
    return [str(row[0]) for row in conn.execute(PARTITIONED_TABLES).fetchall()]


def large_objects(conn: psycopg.Connection[TupleRow]) -> LargeObjects:
    """Count and digest of the large objects, which no table count sees."""
    row = conn.execute(LARGE_OBJECT_COUNT).fetchone()
    count = int(cast(int, row[0])) if row else 0
    if count == 0:
        return LargeObjects(count=0, digest="")
    # pg_largeobject is readable by superusers only; a count is still worth having.
    try:
        with conn.transaction():
            digest_row = conn.execute(LARGE_OBJECT_DIGEST).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return LargeObjects(count=count, digest=None)
    return LargeObjects(count=count, digest=str(digest_row[0]) if digest_row else None)


class SnapshotInventory(NamedTuple):
    table_rows: dict[str, int]
    partitioned: list[str]
    large_objects: LargeObjects


def snapshot_inventory(conn: psycopg.Connection[TupleRow]) -> SnapshotInventory:
    """Everything a restore must bring back, counted in the connection's snapshot."""
    return SnapshotInventory(count_rows(conn), partitioned_tables(conn), large_objects(conn))


def count_rows(conn: psycopg.Connection[TupleRow]) -> dict[str, int]:
    """Exact row count of every user table, inside the exported snapshot."""
    counts: dict[str, int] = {}
    for schema, table in conn.execute(USER_TABLES).fetchall():
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(str(schema), str(table)))
        row = conn.execute(query).fetchone()
        counts[f"{schema}.{table}"] = int(cast(int, row[0])) if row else 0
    return counts


# ---- hooks (observe a running dump; tests use them to inject faults) --------------------


@dataclass
class DumpHooks:
    """Callbacks into a running dump, for tests and diagnostics.

    ``after_snapshot(snapshot_id)`` runs once the snapshot is exported, before the
    rows are counted and pg_dump starts; ``on_bytes(total)`` runs each time the stream hands bytes
    to the uploader. Both run in the dumping thread.
    """

    after_snapshot: Callable[[str], None] | None = None
    on_bytes: Callable[[int], None] | None = None


_hooks = DumpHooks()


@contextlib.contextmanager
def dump_hooks(
    after_snapshot: Callable[[str], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[None]:
    """Install hooks for dumps started in this process, for the duration of the block."""
    previous = DumpHooks(_hooks.after_snapshot, _hooks.on_bytes)
    _hooks.after_snapshot, _hooks.on_bytes = after_snapshot, on_bytes
    try:
        yield
    finally:
        _hooks.after_snapshot, _hooks.on_bytes = previous.after_snapshot, previous.on_bytes


# ---- the stream -----------------------------------------------------------------------


class DumpStream:
    """pg_dump's stdout as a file-like object that hashes and counts what passes.

    ``read(n)`` fills whole parts (one copy per part, not one per pipe read), and
    returns the final bytes only after pg_dump exited 0; a failed, killed or timed
    out pg_dump raises :class:`PostgresDumpError` instead, so the upload never
    completes with a truncated archive.
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        stderr_tail: Callable[[], str],
        timed_out: threading.Event,
        timeout_s: float,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self._process = process
        self._raw = cast(IO[bytes], process.stdout)
        self._stderr_tail = stderr_tail
        self._timed_out = timed_out
        self._timeout_s = timeout_s
        self._on_bytes = on_bytes
        self._sha = hashlib.sha256()
        self._eof = False
        self.size = 0

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def read(self, size: int = -1) -> bytes:
        if self._eof:
            return b""
        size = size if size > 0 else 1 << 20
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            n = self._raw.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                self._eof = True
                break
            self._sha.update(view[got : got + n])
            got += n
        self.size += got
        if self._eof:
            self._check_exit()
        if self._on_bytes is not None and got:
            self._on_bytes(self.size)
        return bytes(view[:got])

    def _check_exit(self) -> None:
        code = self._process.wait()
        if self._timed_out.is_set():
            raise PostgresDumpError(
                f"pg_dump did not finish within {self._timeout_s:.0f} s and was stopped "
                f"after {self.size} bytes. Raise the backup config's pg_dump_timeout_s if the "
                "database has grown, or check the server's load."
            )
        if code != 0:
            raise PostgresDumpError(
                f"pg_dump exited with code {code} after {self.size} bytes: "
                f"{self._stderr_tail() or 'no error output'}"
            )


class _Progress:
    """Throttled updates of the run's progress artifact."""

    def __init__(self, expected_bytes: int, database: str) -> None:
        self.expected = max(expected_bytes, 1)
        self.database = database
        self.last = 0.0
        self.artifact: UUID | None = None
        with contextlib.suppress(Exception):  # progress is a courtesy, never a failure
            self.artifact = cast(
                UUID,
                create_progress_artifact(
                    progress=0.0, description=f"pg_dump of {database}: starting"
                ),
            )

    def __call__(self, total: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.artifact is None or (not final and now - self.last < PROGRESS_EVERY_S):
            return
        self.last = now
        percent = 100.0 if final else min(99.0, 100.0 * total / self.expected)
        with contextlib.suppress(Exception):
            update_progress_artifact(
                self.artifact,
                progress=percent,
                description=f"pg_dump of {self.database}: {total / 1e6:.1f} MB streamed "
                f"(~{self.expected / 1e6:.0f} MB expected)",
            )


def fitting_part_size(part_size: int, expected_bytes: int) -> int:
    """The part size, raised so a dump 4x the expected size fits S3's 10,000 parts."""
    needed = -(-expected_bytes * 4 // MAX_PARTS)
    mib = 1024 * 1024
    return max(part_size, -(-needed // mib) * mib)


def _drain(stream: IO[bytes], tail: deque[bytes]) -> None:
    for line in iter(stream.readline, b""):
        tail.append(line)


@task(name="dump-postgres", retries=0, persist_result=True, cache_policy=RUN_CACHE)
def dump_postgres(
    stack: Stack,
    backup_id: str,
    versions: PgVersions,
    part_size: int,
    upload_threads: int,
    timeout_s: float,
    expected_bytes: int,
) -> PostgresDump:
    """Dump the stack's database in one snapshot, streaming it into the backup set.

    Not retried in-task: a dump is never resumed half-way. A retried flow run reuses
    this result once it has completed (persisted result).
    """
    logger = get_run_logger()
    database = stack.postgres_database
    key = postgres_dump_key(stack.stack_name, backup_id, database)
    part_size = fitting_part_size(part_size, expected_bytes)
    started = time.monotonic()
    logger.info("Postgres: snapshot of %s on %s", database, stack.postgres_dsn_redacted)
    # The exporting connection stays open for the whole dump: pg_dump imports its
    # snapshot at start, and the counts must describe that very snapshot.
    with connect(
        stack, idle_in_transaction_session_timeout="0", statement_timeout=str(COUNT_TIMEOUT_MS)
    ) as conn:
        try:
            snapshot_id = export_snapshot(conn)
            if _hooks.after_snapshot is not None:
                _hooks.after_snapshot(snapshot_id)
        except psycopg.Error as exc:
            raise pg_error(stack, "snapshot export", exc) from None
        logger.info("Postgres: snapshot %s exported; counting rows while pg_dump runs", snapshot_id)
        # The counts run on the exporting connection while pg_dump streams: the same
        # snapshot, and the server scans for both at once instead of one after the other.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="count-rows") as pool:
            counting = pool.submit(snapshot_inventory, conn)
            try:
                size, sha256 = _stream_dump(
                    stack, versions, snapshot_id, key, part_size, upload_threads, timeout_s,
                    expected_bytes,
                )  # fmt: skip
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.cancel_safe(timeout=5)
                raise
            try:
                inventory = counting.result()
            except psycopg.Error as exc:
                raise pg_error(stack, "row count in the snapshot", exc) from None
        counts = inventory.table_rows
        parents = set(inventory.partitioned)
        logger.info(
            "Postgres: %d tables, %d rows, %d large objects in snapshot %s",
            len(counts),
            sum(rows for table, rows in counts.items() if table not in parents),
            inventory.large_objects.count,
            snapshot_id,
        )
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
    seconds = time.monotonic() - started
    logger.info(
        "Postgres: %s stored, %.1f MB in %.1f s (%.1f MB/s), sha256 %s",
        key,
        size / 1e6,
        seconds,
        size / 1e6 / max(seconds, 1e-6),
        sha256[:16],
    )
    return PostgresDump(
        database=database,
        server_version=versions.server,
        pg_dump_version=versions.pg_dump,
        snapshot_id=snapshot_id,
        dump_key=key,
        dump_size=size,
        dump_sha256=sha256,
        table_rows=counts,
        partitioned_tables=inventory.partitioned,
        large_objects=inventory.large_objects,
        seconds=seconds,
    )


def _stream_dump(
    stack: Stack,
    versions: PgVersions,
    snapshot_id: str,
    key: str,
    part_size: int,
    upload_threads: int,
    timeout_s: float,
    expected_bytes: int,
) -> tuple[int, str]:
    """Run pg_dump on the snapshot and upload its output; (size, sha256) of the object."""
    dsn, password = dsn_without_password(stack.postgres_dsn.get_secret_value())
    env = {
        **os.environ,
        "PGPASSWORD": password,
        "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S),
        "PGAPPNAME": "ops-backup-pg_dump",
    }
    argv = [
        versions.pg_dump_path,
        "--format=custom",
        f"--snapshot={snapshot_id}",
        "--no-password",
        f"--dbname={dsn}",
    ]
    try:
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0
        )
    except OSError as exc:
        raise PostgresDumpError(
            f"cannot start pg_dump at {versions.pg_dump_path!r}: {exc}"
        ) from None
    stdout, stderr = cast(IO[bytes], process.stdout), cast(IO[bytes], process.stderr)
    with contextlib.suppress(OSError):
        fcntl.fcntl(stdout.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    tail: deque[bytes] = deque(maxlen=20)
    drainer = threading.Thread(target=_drain, args=(stderr, tail), daemon=True)
    drainer.start()
    timed_out = threading.Event()

    def _kill_on_timeout() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    watchdog = threading.Timer(timeout_s, _kill_on_timeout)
    watchdog.daemon = True
    watchdog.start()

    def stderr_tail() -> str:
        drainer.join(timeout=5)
        text = b"".join(tail).decode("utf-8", "replace").strip()
        return stack.scrub(text)[-1500:]

    progress = _Progress(expected_bytes, stack.postgres_database)

    def on_bytes(total: int) -> None:
        progress(total)
        if _hooks.on_bytes is not None:
            _hooks.on_bytes(total)

    stream = DumpStream(process, stderr_tail, timed_out, timeout_s, on_bytes)
    try:
        s3_client(stack).put_object(
            stack.backup_bucket,
            key,
            stream,  # type: ignore[arg-type]
            length=-1,
            part_size=part_size,
            num_parallel_uploads=upload_threads,
            content_type="application/octet-stream",
        )
    except PostgresDumpError:
        raise
    except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        raise storage_error(stack, f"upload of {stack.backup_bucket}/{key}", exc) from None
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
        process.wait()
        drainer.join(timeout=5)
    progress(stream.size, final=True)
    return stream.size, stream.sha256
