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
server rejects: :func:`tasks.pg_tools.pg_client_tool` picks the client (see there).
pg_dump gets its own timeout (a Prefect task timeout cannot
interrupt a subprocess), the password travels in ``PGPASSWORD`` (never on the
command line), and its stderr is scrubbed of secrets before it is logged or raised.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, cast
from uuid import UUID

import psycopg
import urllib3
from minio.error import MinioException
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger
from psycopg.rows import TupleRow

from blocks.stack import Stack
from tasks.decisions.manifest import PostgresDump, postgres_dump_key
from tasks.errors import PostgresDumpError
from tasks.pg_inventory import export_snapshot, snapshot_inventory
from tasks.pg_tools import (
    PgVersions,
    dsn_without_password,
    pg_client_tool,
    require_compatible,
    server_version,
)
from tasks.retry import RETRY_TRANSIENT_QUICK, RUN_CACHE, advice
from tasks.storage import storage_error

__all__ = [
    "CONNECT_TIMEOUT_S",
    "COUNT_TIMEOUT_MS",
    "MAX_PARTS",
    "PG_LIB",
    "PIPE_SIZE",
    "PROGRESS_EVERY_S",
    "DumpHooks",
    "DumpStream",
    "check_pg_dump_version",
    "connect",
    "dump_hooks",
    "dump_postgres",
    "fitting_part_size",
    "pg_error",
]

CONNECT_TIMEOUT_S = 10
COUNT_TIMEOUT_MS = 30 * 60 * 1000
PROGRESS_EVERY_S = 5.0
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
PG_LIB = "/usr/lib/postgresql"
PIPE_SIZE = 1 << 20  # a 1 MiB pipe lets pg_dump run ahead while a part is handed over


def connect(stack: Stack, **options: str) -> psycopg.Connection[TupleRow]:
    """A connection to the stack's database, with a connect timeout and session options."""
    try:
        return stack.postgres(
            timeout_s=CONNECT_TIMEOUT_S, application_name="ops-backup", settings=options
        )
    except psycopg.Error as exc:
        raise pg_error(stack, "connect", exc) from None


def pg_error(stack: Stack, action: str, exc: BaseException) -> PostgresDumpError:
    reason = stack.error_line(exc)
    hint = advice(exc, "Check that the database is up and reachable from the worker.")
    return PostgresDumpError(
        f"PostgreSQL {action} failed on {stack.postgres_dsn_redacted}: {reason}. {hint}"
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
                    stack,
                    versions,
                    snapshot_id=snapshot_id,
                    key=key,
                    part_size=part_size,
                    upload_threads=upload_threads,
                    timeout_s=timeout_s,
                    expected_bytes=expected_bytes,
                )
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
        # What a restore of this dump needs on disk: the drill and the restore check
        # that much is free before they write (tasks/decisions/space.py).
        database_size: int | None = None
        with contextlib.suppress(psycopg.Error):
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            database_size = int(row[0]) if row else None
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
        database_size=database_size,
        seconds=seconds,
    )


def _stream_dump(
    stack: Stack,
    versions: PgVersions,
    *,
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
        stack.s3().put_object(
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
