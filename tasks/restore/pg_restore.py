"""Running ``pg_restore`` on a set's dump, with the dump's size and sha256 checked on the way.

DESIGN §5: a ``-Fc`` archive written to a pipe has no data offsets, so ``pg_restore``
can read it from a pipe only in archive order, and ``-j`` needs a regular file. Two
modes, then:

- ``stream``: the S3 object flows through sha256 straight into a single
  ``pg_restore``; no disk needed.
- ``download``: the object is written to a temporary file (sha256 and size checked
  before ``pg_restore`` starts), then ``pg_restore -j N`` from that file.

``bench/restore_bench.py`` measures both against ``pg_restore`` from a local file.
``pg_restore`` gets the password through ``PGPASSWORD``, never argv, and has a deadline
of its own (a Prefect timeout cannot interrupt a subprocess).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import urllib3
from minio.error import MinioException
from pydantic import BaseModel

from blocks.stack import Stack
from tasks.decisions.checks import CheckResult, failed, passed, skipped
from tasks.decisions.drill import check_object
from tasks.decisions.manifest import BackupManifest
from tasks.errors import RestoreError
from tasks.storage import storage_error

if TYPE_CHECKING:
    # tasks.restore.postgres runs the restore from here: a runtime import would be a cycle.
    from tasks.restore.postgres import PgServer

__all__ = ["CHUNK", "STDERR_TAIL", "PostgresMode", "restore_postgres_dump"]

PostgresMode = Literal["stream", "download"]
CHUNK = 1 << 20
STDERR_TAIL = 1500


class _Digest(BaseModel):
    size: int
    sha256: str


def _stream_object(
    stack: Stack, key: str, write: Callable[[bytes], object] | None
) -> tuple[_Digest, BaseException | None]:
    """Read ``key`` through sha256, handing each chunk to ``write``.

    When ``write`` fails (``pg_restore`` exited and closed its pipe), reading goes on
    without it, so the digest still covers the whole object: the report can then say
    whether the dump itself was damaged.
    """
    client = stack.s3()
    digest = hashlib.sha256()
    size = 0
    write_error: BaseException | None = None
    try:
        response = client.get_object(stack.backup_bucket, key)
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise storage_error(stack, f"read of {stack.backup_bucket}/{key}", exc) from None
    try:
        for chunk in response.stream(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if write is not None and write_error is None:
                try:
                    write(chunk)
                except OSError as exc:  # BrokenPipeError: pg_restore is gone
                    write_error = exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise storage_error(stack, f"read of {stack.backup_bucket}/{key}", exc) from None
    finally:
        response.close()
        response.release_conn()
    return _Digest(size=size, sha256=digest.hexdigest()), write_error


def _pg_restore_argv(binary: str, target_dsn: str, jobs: int, path: str | None) -> list[str]:
    argv = [binary, "--dbname", target_dsn, "--no-owner", "--no-privileges", "--exit-on-error"]
    if path is not None:
        argv += ["--jobs", str(jobs), path]
    return argv


@dataclass
class _ToolRun:
    returncode: int
    stderr: str
    timed_out: bool


@contextlib.contextmanager
def _pg_restore(
    server: PgServer, tool: str, database: str, jobs: int, path: str | None, timeout_s: float
) -> Iterator[tuple[subprocess.Popen[bytes], _ToolRun]]:
    """Run pg_restore (stdin when ``path`` is None); killed on timeout or on any exit path.

    A Prefect timeout cannot interrupt a subprocess, so the process has its own deadline.
    """
    target, env = server.tool_target(database)
    argv = _pg_restore_argv(tool, target, jobs, path)
    run = _ToolRun(returncode=-1, stderr="", timed_out=False)
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if path is None else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**_base_env(), **env},
        )

        def expire() -> None:
            run.timed_out = True
            proc.kill()

        timer = threading.Timer(timeout_s, expire)
        timer.daemon = True
        timer.start()
        try:
            yield proc, run
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            run.returncode = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            stderr.seek(0)
            run.stderr = server.scrub(stderr.read().decode(errors="replace"))[-STDERR_TAIL:]


def _base_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PGSSLMODE", "PGSSLROOTCERT")
    return {k: v for k, v in os.environ.items() if k in keep}


def _write_to(stream: IO[bytes] | None) -> Callable[[bytes], object]:
    if stream is None:
        raise RestoreError("pg_restore has no stdin to write to")
    return stream.write


def restore_postgres_dump(
    server: PgServer,
    tool: str,
    *,
    stack: Stack,
    manifest: BackupManifest,
    database: str,
    mode: PostgresMode,
    jobs: int,
    timeout_s: float,
    work_dir: str | None,
) -> tuple[list[CheckResult], float]:
    """Restore the set's dump into an existing empty ``database``; checks + seconds.

    Returns the dump's integrity check (size + sha256 of the bytes read) and the
    restore check, and the wall time of both (download included: it is part of the
    RTO).
    """
    dump = manifest.postgres
    started = time.monotonic()
    checks: list[CheckResult] = []
    if mode == "stream":
        with _pg_restore(server, tool, database, jobs, None, timeout_s) as (proc, run):
            digest, write_error = _stream_object(stack, dump.dump_key, _write_to(proc.stdin))
        checks.append(_dump_check(dump.dump_key, dump.dump_size, dump.dump_sha256, digest))
        checks.append(_restore_check(run, write_error, database, timeout_s))
        return checks, time.monotonic() - started
    with tempfile.TemporaryDirectory(prefix="restore-", dir=work_dir) as folder:
        path = Path(folder) / "dump.pgdump"
        with path.open("wb") as out:
            digest, _ = _stream_object(stack, dump.dump_key, out.write)
        dump_check = _dump_check(dump.dump_key, dump.dump_size, dump.dump_sha256, digest)
        checks.append(dump_check)
        if not dump_check.passed:
            checks.append(
                skipped(
                    "postgres-restore",
                    "not run: the dump failed its checksum",
                    component="postgres",
                )
            )
            return checks, time.monotonic() - started
        with _pg_restore(server, tool, database, jobs, str(path), timeout_s) as (_proc, run):
            pass
        checks.append(_restore_check(run, None, database, timeout_s))
    return checks, time.monotonic() - started


def _dump_check(key: str, size: int, sha256: str, digest: _Digest) -> CheckResult:
    return check_object(
        "postgres-dump-checksum",
        "postgres",
        key=key,
        expected_size=size,
        expected_sha256=sha256,
        actual_size=digest.size,
        actual_sha256=digest.sha256,
    )


def _restore_check(
    run: _ToolRun, write_error: BaseException | None, database: str, timeout_s: float
) -> CheckResult:
    if run.timed_out:
        return failed(
            "postgres-restore",
            f"pg_restore into {database} did not finish within {timeout_s:.0f}s and was stopped",
            component="postgres",
        )
    if run.returncode != 0:
        detail = run.stderr.strip().splitlines()[-3:] if run.stderr.strip() else ["no output"]
        return failed(
            "postgres-restore",
            f"pg_restore into {database} exited {run.returncode}: {' / '.join(detail)}",
            component="postgres",
        )
    if write_error is not None:
        return failed(
            "postgres-restore",
            f"pg_restore into {database} stopped reading its input: {write_error}",
            component="postgres",
        )
    return passed("postgres-restore", f"pg_restore into {database} completed", component="postgres")
