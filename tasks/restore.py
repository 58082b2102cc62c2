"""Restoring a backup set, and proving what was restored: shared by restore-drill and restore.

Verify before trusting. A set is read through its manifest only (schema version
checked); every object is looked up and its size compared before anything is
restored; the Postgres dump's sha256 and size are recomputed from the bytes that
actually go into ``pg_restore``; the ClickHouse backup's ``.backup`` descriptor is
checked against the manifest, and every file it lists must exist with its size.

Postgres, two ways (DESIGN §5: a ``-Fc`` archive written to a pipe has no data
offsets, so ``pg_restore`` can read it from a pipe only in archive order, and ``-j``
needs a regular file):

- ``stream``: the S3 object flows through sha256 straight into a single
  ``pg_restore``; no disk needed.
- ``download``: the object is written to a temporary file (sha256 and size checked
  before ``pg_restore`` starts), then ``pg_restore -j N`` from that file.

``bench/restore_bench.py`` measures both against ``pg_restore`` from a local file.

ClickHouse: ``RESTORE DATABASE src AS target FROM S3(...) ASYNC``, polled in
``system.backups``. RESTORE does not verify checksums (ClickHouse issue 65191), so
every table is then checked (``CHECK TABLE``), read in full (``SELECT * ... FORMAT
Null``) and counted. The statement holds the S3 secret: it is never logged, and
errors are scrubbed.

Scratch databases of a drill are dropped by :func:`scratch_databases` on the way out
in every case (success, failure, cancellation: Prefect turns a cancel into an
exception, so ``finally`` runs); a drill killed outright leaves them to the next
drill, which drops them first (:func:`drop_orphan_scratch_databases`).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import clickhouse_connect
import psycopg
import urllib3
from clickhouse_connect.driver.client import Client as ClickHouseClient
from clickhouse_connect.driver.exceptions import ClickHouseError
from minio import Minio
from minio.error import MinioException, S3Error
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from psycopg import sql
from pydantic import BaseModel, Field, ValidationError

from blocks.stack import Stack, redact_url
from tasks.clickhouse import quote_identifier, quote_string
from tasks.drill import (
    Check,
    ComponentTiming,
    DrillReport,
    check_object,
    check_required_tables,
    check_row_counts,
    failed,
    is_scratch_database,
    orphan_scratch_databases,
    passed,
    shorten,
    skipped,
)
from tasks.errors import RestoreError, StackConfigError
from tasks.manifest import (
    MANIFEST_SCHEMA_VERSION,
    BackupManifest,
    ClickHouseBackup,
    manifest_key,
)
from tasks.postgres import count_rows
from tasks.storage import newest_complete_manifest, s3_client, storage_error

PostgresMode = Literal["stream", "download"]
CHUNK = 1 << 20
CH_POLL_S = 0.5
CH_CONNECT_TIMEOUT_S = 10
CH_QUERY_TIMEOUT_S = 600
PG_CONNECT_TIMEOUT_S = 10
STDERR_TAIL = 1500

# Without these, LiteLLM or Langfuse do not start or lose their keys and settings.
REQUIRED_POSTGRES_TABLES: tuple[str, ...] = (
    "public._prisma_migrations",
    "public.LiteLLM_VerificationToken",
    "public.LiteLLM_UserTable",
    "public.LiteLLM_ProxyModelTable",
    "public.LiteLLM_Config",
    "langfuse._prisma_migrations",
    "langfuse.organizations",
    "langfuse.projects",
    "langfuse.users",
    "langfuse.api_keys",
)
REQUIRED_CLICKHOUSE_TABLES: tuple[str, ...] = ("traces", "observations", "scores")
# Engines CHECK TABLE understands; views and the like hold no data of their own.
CHECKABLE_ENGINE = re.compile(r"MergeTree|^(Log|TinyLog|StripeLog)$")


# ---- where Postgres is restored -------------------------------------------------------------


@dataclass(frozen=True)
class PgServer:
    """A Postgres server to restore onto: the stack's own, or one named by a Secret block.

    ``dsn`` holds the password; only :attr:`redacted` and :meth:`scrub`-ed texts leave
    this object. ``pg_restore`` gets the password through ``PGPASSWORD``, never argv.
    """

    dsn: str
    stack: Stack

    @property
    def redacted(self) -> str:
        return redact_url(self.dsn)

    @property
    def maintenance_database(self) -> str:
        return urlsplit(self.dsn).path.lstrip("/") or "postgres"

    def dsn_for(self, database: str) -> str:
        parts = urlsplit(self.dsn)
        return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))

    def scrub(self, text: str) -> str:
        password = urlsplit(self.dsn).password
        for value in (password, unquote(password or "")):
            if value and len(value) >= 4:
                text = text.replace(value, "***")
        return self.stack.scrub(text)

    def connect(self, database: str | None = None) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.dsn_for(database or self.maintenance_database),
            autocommit=True,
            connect_timeout=PG_CONNECT_TIMEOUT_S,
        )

    def tool_target(self, database: str) -> tuple[str, dict[str, str]]:
        """``(dsn without password, env)`` for a libpq command-line tool."""
        parts = urlsplit(self.dsn_for(database))
        env = {"PGPASSWORD": unquote(parts.password)} if parts.password else {}
        netloc = parts.netloc.rpartition("@")[2]
        user = parts.username
        if user:
            netloc = f"{user}@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), env


def pg_server(stack: Stack, server_block: str | None) -> PgServer:
    """The stack's own server, or the DSN stored in the Prefect Secret block named."""
    if server_block is None:
        return PgServer(dsn=stack.postgres_dsn.get_secret_value(), stack=stack)
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(server_block).get()  # type: ignore[union-attr]
    except ValueError as exc:
        raise StackConfigError(
            f"no Secret block named {server_block!r} ({exc}); create one holding "
            "postgresql://USER:PASSWORD@HOST:5432/postgres for the drill server"
        ) from None
    dsn = str(value)
    if urlsplit(dsn).scheme not in ("postgres", "postgresql"):
        raise StackConfigError(
            f"Secret block {server_block!r} does not hold a postgresql:// DSN"
        ) from None
    return PgServer(dsn=dsn, stack=stack)


def _pg_error(server: PgServer, action: str, exc: BaseException) -> RestoreError:
    return RestoreError(
        f"Postgres {action} failed on {server.redacted}: "
        f"{server.scrub(f'{type(exc).__name__}: {exc}')[:600]}"
    )


def pg_database_exists(server: PgServer, database: str) -> bool:
    try:
        with server.connect() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            return row.fetchone() is not None
    except psycopg.Error as exc:
        raise _pg_error(server, f"lookup of database {database!r}", exc) from None


def pg_databases(server: PgServer) -> list[str]:
    try:
        with server.connect() as conn:
            return [str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")]
    except psycopg.Error as exc:
        raise _pg_error(server, "listing of databases", exc) from None


def create_pg_database(server: PgServer, database: str) -> None:
    try:
        with server.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.Error as exc:
        raise _pg_error(server, f"CREATE DATABASE {database}", exc) from None


def drop_pg_database(server: PgServer, database: str) -> None:
    """Drop it even with sessions attached (a killed drill's pg_restore may still be there)."""
    try:
        with server.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
    except psycopg.Error as exc:
        raise _pg_error(server, f"DROP DATABASE {database}", exc) from None


def pg_tool(name: str) -> str:
    """The newest installed PostgreSQL client tool (Debian keeps one folder per major)."""
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major_of, reverse=True):
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        raise RestoreError(f"{name} not found: install the PostgreSQL client (postgresql-client)")
    return found


def _major_of(folder: Path) -> int:
    try:
        return int(folder.parent.name)
    except ValueError:
        return 0


def tool_major(binary: str) -> int:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    match = re.search(r"(\d+)(?:\.\d+)?", out.stdout)
    return int(match.group(1)) if match else 0


def version_major(version: str) -> int:
    match = re.search(r"(\d+)", version)
    return int(match.group(1)) if match else 0


# ---- the manifest ---------------------------------------------------------------------------


class ManifestOutcome(BaseModel):
    """The set's manifest, when it loaded and is trusted, and the check saying so."""

    manifest: BackupManifest | None
    check: Check


@task(name="load-backup-manifest", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_backup_manifest(stack: Stack, backup_id: str | None) -> ManifestOutcome:
    """The named set's manifest (or the newest complete one), parsed and checked."""
    logger = get_run_logger()
    if backup_id is None:
        newest = newest_complete_manifest(stack)
        if newest is None:
            return ManifestOutcome(
                manifest=None,
                check=failed(
                    "manifest",
                    "set",
                    f"no complete backup set of {stack.stack_name} in bucket "
                    f"{stack.backup_bucket} (no manifest.json that parses): run the backup flow",
                ),
            )
        logger.info("newest complete backup set: %s", newest.backup_id)
        return ManifestOutcome(manifest=newest, check=_manifest_passed(newest))
    key = manifest_key(stack.stack_name, backup_id)
    raw = read_optional_object(stack, key)
    if raw is None:
        return ManifestOutcome(
            manifest=None,
            check=failed(
                "manifest",
                "set",
                f"manifest missing: no {key} in bucket {stack.backup_bucket}; the set is "
                "incomplete (a failed or unfinished backup) and cannot be trusted",
            ),
        )
    return ManifestOutcome(**_parse_manifest(stack, backup_id, key, raw))


def _parse_manifest(stack: Stack, backup_id: str, key: str, raw: bytes) -> dict[str, Any]:
    import json

    try:
        version = json.loads(raw).get("schema_version")
    except (ValueError, AttributeError):
        version = None
    if version != MANIFEST_SCHEMA_VERSION:
        return {
            "manifest": None,
            "check": failed(
                "manifest",
                "set",
                f"{key} has schema_version {version!r}, this version reads "
                f"{MANIFEST_SCHEMA_VERSION}: restore with the release that wrote it",
            ),
        }
    try:
        manifest = BackupManifest.from_json(raw)
    except ValidationError as exc:
        fields = shorten([".".join(str(p) for p in e["loc"]) for e in exc.errors()])
        return {
            "manifest": None,
            "check": failed(
                "manifest", "set", f"{key} does not parse ({exc.error_count()} error(s): {fields})"
            ),
        }
    if manifest.backup_id != backup_id or manifest.stack != stack.stack_name:
        return {
            "manifest": None,
            "check": failed(
                "manifest",
                "set",
                f"{key} describes set {manifest.stack}/{manifest.backup_id}, not "
                f"{stack.stack_name}/{backup_id}",
            ),
        }
    return {"manifest": manifest, "check": _manifest_passed(manifest)}


def _manifest_passed(manifest: BackupManifest) -> Check:
    return passed(
        "manifest",
        "set",
        f"schema {manifest.schema_version}, {len(manifest.objects)} objects, written "
        f"{manifest.finished_at.isoformat(timespec='seconds')}",
    )


def read_optional_object(stack: Stack, key: str, client: Minio | None = None) -> bytes | None:
    """A small object, or None when it does not exist."""
    client = client or s3_client(stack)
    try:
        response = client.get_object(stack.backup_bucket, key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject"):
            return None
        raise storage_error(stack, f"read of {stack.backup_bucket}/{key}", exc) from None
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise storage_error(stack, f"read of {stack.backup_bucket}/{key}", exc) from None
    try:
        return bytes(response.read())
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise storage_error(stack, f"read of {stack.backup_bucket}/{key}", exc) from None
    finally:
        response.close()
        response.release_conn()


def object_sizes(stack: Stack, prefix: str, client: Minio | None = None) -> dict[str, int]:
    """Every object under ``prefix`` with its size (one listing)."""
    client = client or s3_client(stack)
    try:
        return {
            obj.object_name: obj.size or 0
            for obj in client.list_objects(stack.backup_bucket, prefix=prefix, recursive=True)
            if obj.object_name is not None and not obj.is_dir
        }
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise storage_error(stack, f"listing of {stack.backup_bucket}/{prefix}", exc) from None


# ---- verifying the set's objects before restoring -------------------------------------------


class SetVerification(BaseModel):
    """What the up-front look at the set's objects found, per component."""

    postgres: Check
    clickhouse: list[Check] = Field(default_factory=list)

    @property
    def checks(self) -> list[Check]:
        return [self.postgres, *self.clickhouse]

    def clickhouse_ok(self, database: str) -> bool:
        return all(c.passed for c in self.clickhouse if c.name.endswith(f"[{database}]"))


@task(name="verify-set-objects", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def verify_set_objects(stack: Stack, manifest: BackupManifest) -> SetVerification:
    """Every object the manifest names is there with its size; ClickHouse files too.

    The dump's sha256 is checked while it is restored (reading 1 GB twice would double
    the drill); the ClickHouse descriptor is small and read here, and it lists the size
    of every data file of the backup, so a removed or cut file shows before RESTORE.
    """
    logger = get_run_logger()
    client = s3_client(stack)
    sizes = object_sizes(stack, manifest.prefix, client)
    dump = manifest.postgres
    pg_check = check_object(
        "postgres-dump-present", "postgres", dump.dump_key, dump.dump_size, None,
        sizes.get(dump.dump_key), None,
    )  # fmt: skip
    ch_checks: list[Check] = []
    for backup in manifest.clickhouse:
        ch_checks += _verify_clickhouse_backup(stack, manifest, backup, sizes, client)
    for check in [pg_check, *ch_checks]:
        log = logger.info if check.passed else logger.error
        log("%s %s: %s", check.name, check.outcome, check.reason)
    return SetVerification(postgres=pg_check, clickhouse=ch_checks)


def _verify_clickhouse_backup(
    stack: Stack,
    manifest: BackupManifest,
    backup: ClickHouseBackup,
    sizes: dict[str, int],
    client: Minio,
) -> list[Check]:
    tag = f"[{backup.database}]"
    descriptor = next(
        (
            o
            for o in manifest.objects
            if o.kind == "clickhouse-backup" and o.key.startswith(backup.s3_prefix)
        ),
        None,
    )
    if descriptor is None:
        return [
            failed(
                f"clickhouse-descriptor{tag}",
                "clickhouse",
                f"the manifest lists no .backup descriptor under {backup.s3_prefix}",
            )
        ]
    raw = read_optional_object(stack, descriptor.key, client)
    actual_sha = hashlib.sha256(raw).hexdigest() if raw is not None else None
    desc_check = check_object(
        f"clickhouse-descriptor{tag}", "clickhouse", descriptor.key, descriptor.size,
        descriptor.sha256, len(raw) if raw is not None else None, actual_sha,
    )  # fmt: skip
    if not desc_check.passed or raw is None:
        return [desc_check]
    try:
        listed = descriptor_files(raw)
    except ElementTree.ParseError as exc:
        return [
            desc_check,
            failed(f"clickhouse-files{tag}", "clickhouse", f"{descriptor.key} is not XML: {exc}"),
        ]
    problems: list[str] = []
    for name, size in listed:
        key = backup.s3_prefix + name
        found = sizes.get(key)
        if found is None:
            problems.append(f"{key} missing")
        elif found != size:
            problems.append(f"{key} is {found} bytes, the descriptor says {size}")
    if problems:
        files_check = failed(
            f"clickhouse-files{tag}",
            "clickhouse",
            f"ClickHouse backup folder damaged, {len(problems)} file(s) wrong: {shorten(problems)}",
        )
    else:
        files_check = passed(
            f"clickhouse-files{tag}",
            "clickhouse",
            f"all {len(listed)} files listed in the descriptor are present with their sizes",
        )
    return [desc_check, files_check]


def descriptor_files(raw: bytes) -> list[tuple[str, int]]:
    """``(object name, size)`` of each file a ClickHouse ``.backup`` descriptor stores.

    Empty files are not stored; a deduplicated entry points at its ``data_file``; files
    kept in a base backup (``use_base``) are not in this folder.
    """
    root = ElementTree.fromstring(raw)
    files: list[tuple[str, int]] = []
    for entry in root.iter("file"):
        size = int(entry.findtext("size") or "0")
        if size == 0 or (entry.findtext("use_base") or "").lower() in ("true", "1"):
            continue
        name = entry.findtext("data_file") or entry.findtext("name") or ""
        files.append((name, size))
    return sorted(set(files))


# ---- Postgres restore -----------------------------------------------------------------------


class ComponentOutcome(BaseModel):
    """What restoring one component found: its checks and, when it ran, its timing."""

    checks: list[Check]
    timing: ComponentTiming | None = None


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
    client = s3_client(stack)
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
    server: PgServer, database: str, jobs: int, path: str | None, timeout_s: float
) -> Iterator[tuple[subprocess.Popen[bytes], _ToolRun]]:
    """Run pg_restore (stdin when ``path`` is None); killed on timeout or on any exit path.

    A Prefect timeout cannot interrupt a subprocess, so the process has its own deadline.
    """
    target, env = server.tool_target(database)
    argv = _pg_restore_argv(pg_tool("pg_restore"), target, jobs, path)
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
    import os

    keep = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PGSSLMODE", "PGSSLROOTCERT")
    return {k: v for k, v in os.environ.items() if k in keep}


def _write_to(stream: IO[bytes] | None) -> Callable[[bytes], object]:
    if stream is None:
        raise RestoreError("pg_restore has no stdin to write to")
    return stream.write


def restore_postgres_dump(
    server: PgServer,
    stack: Stack,
    manifest: BackupManifest,
    database: str,
    mode: PostgresMode,
    jobs: int,
    timeout_s: float,
    work_dir: str | None,
) -> tuple[list[Check], float]:
    """Restore the set's dump into an existing empty ``database``; checks + seconds.

    Returns the dump's integrity check (size + sha256 of the bytes read) and the
    restore check, and the wall time of both (download included: it is part of the
    RTO).
    """
    dump = manifest.postgres
    started = time.monotonic()
    checks: list[Check] = []
    if mode == "stream":
        with _pg_restore(server, database, jobs, None, timeout_s) as (proc, run):
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
                skipped("postgres-restore", "postgres", "not run: the dump failed its checksum")
            )
            return checks, time.monotonic() - started
        with _pg_restore(server, database, jobs, str(path), timeout_s) as (_proc, run):
            pass
        checks.append(_restore_check(run, None, database, timeout_s))
    return checks, time.monotonic() - started


def _dump_check(key: str, size: int, sha256: str, digest: _Digest) -> Check:
    return check_object(
        "postgres-dump-checksum", "postgres", key, size, sha256, digest.size, digest.sha256
    )


def _restore_check(
    run: _ToolRun, write_error: BaseException | None, database: str, timeout_s: float
) -> Check:
    if run.timed_out:
        return failed(
            "postgres-restore",
            "postgres",
            f"pg_restore into {database} did not finish within {timeout_s:.0f}s and was stopped",
        )
    if run.returncode != 0:
        detail = run.stderr.strip().splitlines()[-3:] if run.stderr.strip() else ["no output"]
        return failed(
            "postgres-restore",
            "postgres",
            f"pg_restore into {database} exited {run.returncode}: {' / '.join(detail)}",
        )
    if write_error is not None:
        return failed(
            "postgres-restore",
            "postgres",
            f"pg_restore into {database} stopped reading its input: {write_error}",
        )
    return passed("postgres-restore", "postgres", f"pg_restore into {database} completed")


def count_pg_rows(server: PgServer, database: str) -> dict[str, int]:
    """Exact row count of every user table, counted the way the backup counted them."""
    try:
        with server.connect(database) as conn:
            return count_rows(conn)
    except psycopg.Error as exc:
        raise _pg_error(server, f"row count in {database}", exc) from None


@task(name="restore-postgres", cache_policy=NO_CACHE)
def restore_postgres(
    stack: Stack,
    server_block: str | None,
    manifest: BackupManifest,
    database: str,
    mode: PostgresMode,
    jobs: int,
    timeout_s: float,
    work_dir: str | None,
    required_tables: list[str],
) -> ComponentOutcome:
    """Create ``database``, restore the dump into it, and prove it against the manifest.

    Checks: the dump's sha256/size, pg_restore's exit, the exact row count of every
    table, the tables the applications need. The caller drops or keeps the database.
    """
    logger = get_run_logger()
    server = pg_server(stack, server_block)
    dump = manifest.postgres
    restore_major = tool_major(pg_tool("pg_restore"))
    if version_major(dump.pg_dump_version) > restore_major:
        return ComponentOutcome(
            checks=[
                failed(
                    "postgres-restore",
                    "postgres",
                    f"pg_restore {restore_major} cannot read an archive written by pg_dump "
                    f"{dump.pg_dump_version}: install a newer PostgreSQL client",
                )
            ]
        )
    logger.info(
        "restoring %s (%d bytes) into %s on %s (%s mode)",
        dump.dump_key, dump.dump_size, database, server.redacted, mode,
    )  # fmt: skip
    create_pg_database(server, database)
    checks, seconds = restore_postgres_dump(
        server, stack, manifest, database, mode, jobs, timeout_s, work_dir
    )
    verify_started = time.monotonic()
    if all(c.passed for c in checks):
        counts = count_pg_rows(server, database)
        checks.append(check_row_counts("postgres-row-counts", "postgres", dump.table_rows, counts))
        checks.append(
            check_required_tables("postgres-required-tables", "postgres", required_tables, counts)
        )
    else:
        checks.append(
            skipped("postgres-row-counts", "postgres", "not counted: the restore did not pass")
        )
    for check in checks:
        log = logger.info if check.passed else logger.error
        log("%s %s: %s", check.name, check.outcome, check.reason)
    timing = ComponentTiming(
        component="postgres",
        target=database,
        restore_seconds=seconds,
        verify_seconds=time.monotonic() - verify_started,
        bytes=dump.dump_size,
    )
    logger.info("postgres restored in %.1fs (%.1f MB/s)", seconds, timing.throughput_mb_s)
    return ComponentOutcome(checks=checks, timing=timing)


# ---- ClickHouse restore ---------------------------------------------------------------------


def ch_client(stack: Stack, timeout_s: float = CH_QUERY_TIMEOUT_S) -> ClickHouseClient:
    parts = urlsplit(stack.clickhouse_url)
    secure = parts.scheme == "https"
    try:
        return clickhouse_connect.get_client(
            host=parts.hostname or "localhost",
            port=parts.port or (8443 if secure else 8123),
            username=stack.clickhouse_user,
            password=stack.clickhouse_password.get_secret_value(),
            secure=secure,
            connect_timeout=CH_CONNECT_TIMEOUT_S,
            send_receive_timeout=int(timeout_s),
        )
    except (ClickHouseError, OSError) as exc:
        raise _ch_error(stack, "connect", exc) from None


def _ch_error(stack: Stack, action: str, exc: BaseException) -> RestoreError:
    # ClickHouse appends a native stack trace to its messages: keep the first part.
    text = f"{type(exc).__name__}: {exc}".split("Stack trace")[0].strip()
    return RestoreError(
        f"ClickHouse {action} failed on {stack.clickhouse_url}: {stack.scrub(text)[:600]}"
    )


def ch_databases(stack: Stack) -> list[str]:
    client = ch_client(stack)
    try:
        return [str(r[0]) for r in client.query("SELECT name FROM system.databases").result_rows]
    except (ClickHouseError, OSError) as exc:
        raise _ch_error(stack, "listing of databases", exc) from None
    finally:
        client.close()


def drop_ch_database(stack: Stack, database: str) -> None:
    client = ch_client(stack)
    try:
        client.command(f"DROP DATABASE IF EXISTS {quote_identifier(database)} SYNC")
    except (ClickHouseError, OSError) as exc:
        raise _ch_error(stack, f"DROP DATABASE {database}", exc) from None
    finally:
        client.close()


def _restore_statement(stack: Stack, backup: ClickHouseBackup, target: str) -> str:
    """Holds the S3 secret: never log it, never put it in an error."""
    url = f"{stack.clickhouse_s3.rstrip('/')}/{stack.backup_bucket}/{backup.s3_prefix}"
    return (
        f"RESTORE DATABASE {quote_identifier(backup.database)} AS {quote_identifier(target)} "
        f"FROM S3({quote_string(url)}, {quote_string(stack.s3_access_key)}, "
        f"{quote_string(stack.s3_secret_key.get_secret_value())}) ASYNC"
    )


def run_ch_restore(
    stack: Stack, client: ClickHouseClient, backup: ClickHouseBackup, target: str, timeout_s: float
) -> Check:
    """RESTORE ... ASYNC and poll system.backups until RESTORED, a failure, or the deadline."""
    name = f"clickhouse-restore[{backup.database}]"
    try:
        result = client.query(_restore_statement(stack, backup, target))
        operation_id = str(result.result_rows[0][0])
    except (ClickHouseError, OSError, IndexError) as exc:
        return failed(name, "clickhouse", _ch_error(stack, f"RESTORE into {target}", exc).args[0])
    deadline = time.monotonic() + timeout_s
    status, error = "RESTORING", ""
    while time.monotonic() < deadline:
        try:
            rows = client.query(
                "SELECT status, error FROM system.backups WHERE id = {id:String}",
                parameters={"id": operation_id},
            ).result_rows
        except (ClickHouseError, OSError) as exc:
            return failed(
                name, "clickhouse", _ch_error(stack, "polling system.backups", exc).args[0]
            )
        if rows:
            status, error = str(rows[0][0]), str(rows[0][1])
        if status != "RESTORING":
            break
        time.sleep(CH_POLL_S)
    if status == "RESTORED":
        return passed(name, "clickhouse", f"RESTORE into {target}: RESTORED")
    if status == "RESTORING":
        return failed(
            name, "clickhouse", f"RESTORE into {target} still running after {timeout_s:.0f}s"
        )
    return failed(
        name,
        "clickhouse",
        f"RESTORE into {target} ended {status}: {stack.scrub(error)[:600] or 'no error text'}",
    )


def read_ch_tables(
    stack: Stack, client: ClickHouseClient, backup: ClickHouseBackup, target: str
) -> tuple[list[Check], dict[str, int]]:
    """CHECK TABLE and a full read of every table (RESTORE verifies nothing), then counts."""
    tag = f"[{backup.database}]"
    counts: dict[str, int] = {}
    problems: list[str] = []
    try:
        tables = client.query(
            "SELECT name, engine FROM system.tables WHERE database = {db:String} ORDER BY name",
            parameters={"db": target},
        ).result_rows
    except (ClickHouseError, OSError) as exc:
        return [
            failed(f"clickhouse-read{tag}", "clickhouse", _ch_error(stack, "listing", exc).args[0])
        ], {}
    for table, engine in tables:
        qualified = f"{quote_identifier(target)}.{quote_identifier(str(table))}"
        if not CHECKABLE_ENGINE.search(str(engine)):
            continue
        try:
            verdict = client.query(
                f"CHECK TABLE {qualified} SETTINGS check_query_single_value_result = 1"
            ).result_rows
            if not verdict or int(verdict[0][0]) != 1:
                problems.append(f"CHECK TABLE {table} reports damaged parts")
            client.command(f"SELECT * FROM {qualified} FORMAT Null")
            rows = client.query(f"SELECT count() FROM {qualified}").result_rows
            counts[str(table)] = int(rows[0][0])
        except (ClickHouseError, OSError, ValueError) as exc:
            problems.append(f"reading {table} failed: {stack.scrub(str(exc))[:300]}")
    if problems:
        read = failed(f"clickhouse-read{tag}", "clickhouse", shorten(problems))
    else:
        read = passed(
            f"clickhouse-read{tag}",
            "clickhouse",
            f"{len(counts)} tables checked (CHECK TABLE) and read in full",
        )
    return [read], counts


@task(name="restore-clickhouse", cache_policy=NO_CACHE)
def restore_clickhouse(
    stack: Stack,
    backup: ClickHouseBackup,
    target: str,
    timeout_s: float,
    required_tables: list[str],
) -> ComponentOutcome:
    """RESTORE one database's backup as ``target``, then check, read and count every table."""
    logger = get_run_logger()
    tag = f"[{backup.database}]"
    logger.info("restoring ClickHouse %s as %s from %s", backup.database, target, backup.s3_prefix)
    client = ch_client(stack, timeout_s)
    started = time.monotonic()
    try:
        checks = [run_ch_restore(stack, client, backup, target, timeout_s)]
        seconds = time.monotonic() - started
        verify_started = time.monotonic()
        if checks[0].passed:
            read_checks, counts = read_ch_tables(stack, client, backup, target)
            checks += read_checks
            checks.append(
                check_row_counts(
                    f"clickhouse-row-counts{tag}", "clickhouse", backup.table_rows, counts
                )
            )
            checks.append(
                check_required_tables(
                    f"clickhouse-required-tables{tag}", "clickhouse", required_tables, counts
                )
            )
        verify_seconds = time.monotonic() - verify_started
    finally:
        client.close()
    for check in checks:
        log = logger.info if check.passed else logger.error
        log("%s %s: %s", check.name, check.outcome, check.reason)
    timing = ComponentTiming(
        component="clickhouse",
        target=target,
        restore_seconds=seconds,
        verify_seconds=verify_seconds,
        bytes=backup.size,
    )
    return ComponentOutcome(checks=checks, timing=timing)


# ---- scratch databases ----------------------------------------------------------------------


class ScratchNames(BaseModel):
    """The scratch databases one drill may create, on Postgres and ClickHouse."""

    stack: str
    server_block: str | None = None
    postgres: str
    clickhouse: list[str] = Field(default_factory=list)


def drop_scratch(stack: Stack, names: ScratchNames) -> list[str]:
    """Drop this drill's scratch databases that exist; plain function, safe in ``finally``.

    Refuses any name that is not a scratch name of this stack, so a bug upstream can
    never turn this into dropping a real database.
    """
    dropped: list[str] = []
    errors: list[str] = []
    server = pg_server(stack, names.server_block)
    for name in [names.postgres]:
        if not is_scratch_database(name, stack.stack_name):
            raise RestoreError(f"refusing to drop {name!r}: not a drill scratch database")
        try:
            if pg_database_exists(server, name):
                drop_pg_database(server, name)
                dropped.append(f"postgres:{name}")
        except RestoreError as exc:
            errors.append(str(exc))
    if names.clickhouse:
        try:
            existing = set(ch_databases(stack))
            for name in names.clickhouse:
                if not is_scratch_database(name, stack.stack_name):
                    raise RestoreError(f"refusing to drop {name!r}: not a drill scratch database")
                if name in existing:
                    drop_ch_database(stack, name)
                    dropped.append(f"clickhouse:{name}")
        except RestoreError as exc:
            errors.append(str(exc))
    if errors:
        raise RestoreError(
            "could not drop scratch databases (the next drill drops them): " + "; ".join(errors)
        )
    return dropped


@contextlib.contextmanager
def scratch_databases(stack: Stack, names: ScratchNames) -> Iterator[ScratchNames]:
    """The drill's scratch databases, dropped on the way out whatever happened.

    Cancellation reaches here as an exception (Prefect's TerminationSignal), so this
    ``finally`` runs then too; only a killed process skips it, and the next drill's
    :func:`drop_orphan_scratch_databases` covers that.
    """
    try:
        yield names
    finally:
        try:
            dropped = drop_scratch(stack, names)
            _log().info("dropped scratch databases: %s", ", ".join(dropped) or "none existed")
        except RestoreError as exc:
            _log().error("%s", exc)


def _log() -> Any:
    try:
        return get_run_logger()
    except Exception:  # outside a run (a cancelled one may have lost its context)
        import logging

        return logging.getLogger("ops.restore")


class CleanupResult(BaseModel):
    postgres: list[str] = Field(default_factory=list)
    clickhouse: list[str] = Field(default_factory=list)


@task(name="drop-orphan-scratch-databases", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def drop_orphan_scratch_databases(
    stack: Stack, server_block: str | None, clickhouse: bool
) -> CleanupResult:
    """Drop scratch databases of this stack left by an earlier drill that was killed."""
    logger = get_run_logger()
    server = pg_server(stack, server_block)
    result = CleanupResult()
    for name in orphan_scratch_databases(pg_databases(server), stack.stack_name):
        drop_pg_database(server, name)
        result.postgres.append(name)
    if clickhouse:
        for name in orphan_scratch_databases(ch_databases(stack), stack.stack_name):
            drop_ch_database(stack, name)
            result.clickhouse.append(name)
    if result.postgres or result.clickhouse:
        logger.warning(
            "dropped scratch databases left by an earlier drill: postgres %s; clickhouse %s",
            shorten(result.postgres) or "none",
            shorten(result.clickhouse) or "none",
        )
    else:
        logger.info("no scratch database left by an earlier drill")
    return result


@task(name="check-no-scratch-left", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def check_no_scratch_left(stack: Stack, names: ScratchNames) -> Check:
    """After the drill, none of its scratch databases exists any more."""
    server = pg_server(stack, names.server_block)
    left = [f"postgres:{n}" for n in [names.postgres] if pg_database_exists(server, n)]
    if names.clickhouse:
        existing = set(ch_databases(stack))
        left += [f"clickhouse:{n}" for n in names.clickhouse if n in existing]
    if left:
        return failed("scratch-dropped", "set", f"still present after the drill: {shorten(left)}")
    return passed("scratch-dropped", "set", "every scratch database was dropped")


# ---- reports --------------------------------------------------------------------------------


@task(name="publish-drill-report", cache_policy=NO_CACHE)
def publish_drill_report(stack: Stack, report: DrillReport) -> str:
    """The report as a markdown artifact under ``restore-drill-<stack>`` (history in the UI)."""
    from prefect.artifacts import create_markdown_artifact

    key = f"restore-drill-{stack.stack_name}"
    create_markdown_artifact(
        key=key,
        markdown=stack.scrub(report.to_markdown()),
        description=stack.scrub(report.summary_line()),
    )
    return key


@task(name="send-drill-summary", cache_policy=NO_CACHE)
def send_drill_summary(stack: Stack, report: DrillReport) -> int:
    """One info-severity line for a passing drill; returns how many channels took it."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    from tasks.notify import Alert, deliver

    line = report.summary_line()
    alert = Alert(
        stack=stack.stack_name,
        source="restore-drill",
        title=line,
        body=line,
        severity="info",
        kind="info",
    )
    delivered = run_coro_as_sync(deliver(stack, alert))
    return delivered.sent if delivered is not None else 0


# ---- restore for real -----------------------------------------------------------------------


class TargetPlan(BaseModel):
    """Where one engine's data goes, and whether that replaces a database."""

    engine: Literal["postgres", "clickhouse"]
    target: str
    exists: bool
    live: bool
    refusal: str | None = None


@task(name="plan-restore-targets", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def plan_restore_targets(
    stack: Stack, postgres_target: str | None, clickhouse_target: str | None, confirm: list[str]
) -> list[TargetPlan]:
    """Look the targets up and apply the safety rule; writes nothing."""
    from tasks.drill import restore_refusal

    plans: list[TargetPlan] = []
    if postgres_target is not None:
        server = pg_server(stack, None)
        exists = pg_database_exists(server, postgres_target)
        live = postgres_target == stack.postgres_database
        plans.append(
            TargetPlan(
                engine="postgres", target=postgres_target, exists=exists, live=live,
                refusal=restore_refusal(
                    postgres_target, exists=exists, live=live, confirmed=confirm,
                    engine="postgres",
                ),
            )
        )  # fmt: skip
    if clickhouse_target is not None:
        exists = clickhouse_target in ch_databases(stack)
        live = clickhouse_target == stack.clickhouse_database
        plans.append(
            TargetPlan(
                engine="clickhouse", target=clickhouse_target, exists=exists, live=live,
                refusal=restore_refusal(
                    clickhouse_target, exists=exists, live=live, confirmed=confirm,
                    engine="clickhouse",
                ),
            )
        )  # fmt: skip
    return plans


class RestoredTarget(BaseModel):
    """One engine restored: its checks, timing, and what was replaced (kept, renamed)."""

    engine: Literal["postgres", "clickhouse"]
    target: str
    checks: list[Check]
    timing: ComponentTiming | None = None
    previous: str | None = Field(default=None, description="Name the replaced database got.")

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def _swap_pg(server: PgServer, staging: str, target: str, previous: str | None) -> None:
    """Rename ``target`` aside (sessions closed) and ``staging`` into its place."""
    admin = "postgres" if target == server.maintenance_database else server.maintenance_database
    try:
        with server.connect(admin) as conn:
            if previous is not None:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (target,),
                )
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(target), sql.Identifier(previous)
                    )
                )
            conn.execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(staging), sql.Identifier(target)
                )
            )
    except psycopg.Error as exc:
        raise _pg_error(server, f"rename of {staging} to {target}", exc) from None


@task(name="restore-postgres-target", cache_policy=NO_CACHE)
def restore_postgres_target(
    stack: Stack,
    manifest: BackupManifest,
    plan: TargetPlan,
    mode: PostgresMode,
    jobs: int,
    timeout_s: float,
    work_dir: str | None,
    required_tables: list[str],
) -> RestoredTarget:
    """Restore into a staging database, prove it, then move it to the target's name.

    A failed restore drops the staging database and leaves the target untouched; a
    replaced target is renamed ``<target>_before_<time>``, never dropped.
    """
    from tasks.drill import previous_database_name, staging_database_name

    now = datetime.now(UTC)
    staging = staging_database_name(now, secrets.token_hex(3))
    server = pg_server(stack, None)
    outcome: ComponentOutcome | None = None
    try:
        outcome = restore_postgres.fn(
            stack, None, manifest, staging, mode, jobs, timeout_s, work_dir, required_tables
        )
        if not all(c.passed for c in outcome.checks):
            return RestoredTarget(engine="postgres", target=plan.target, checks=outcome.checks)
        previous = previous_database_name(plan.target, now) if plan.exists else None
        _swap_pg(server, staging, plan.target, previous)
        get_run_logger().info(
            "postgres: %s now holds set %s%s", plan.target, manifest.backup_id,
            f"; the old one is kept as {previous}" if previous else "",
        )  # fmt: skip
        return RestoredTarget(
            engine="postgres", target=plan.target, checks=outcome.checks,
            timing=outcome.timing, previous=previous,
        )  # fmt: skip
    finally:
        if pg_database_exists(server, staging):
            drop_pg_database(server, staging)


@task(name="restore-clickhouse-target", cache_policy=NO_CACHE)
def restore_clickhouse_target(
    stack: Stack,
    backup: ClickHouseBackup,
    plan: TargetPlan,
    timeout_s: float,
    required_tables: list[str],
) -> RestoredTarget:
    """Same for ClickHouse: RESTORE AS a staging database, check, RENAME into place."""
    from tasks.drill import previous_database_name, staging_database_name

    now = datetime.now(UTC)
    staging = staging_database_name(now, secrets.token_hex(3))
    try:
        outcome = restore_clickhouse.fn(stack, backup, staging, timeout_s, required_tables)
        if not all(c.passed for c in outcome.checks):
            return RestoredTarget(engine="clickhouse", target=plan.target, checks=outcome.checks)
        previous = previous_database_name(plan.target, now) if plan.exists else None
        client = ch_client(stack)
        try:
            if previous is not None:
                old, new = quote_identifier(plan.target), quote_identifier(previous)
                client.command(f"RENAME DATABASE {old} TO {new}")
            client.command(
                f"RENAME DATABASE {quote_identifier(staging)} TO {quote_identifier(plan.target)}"
            )
        except (ClickHouseError, OSError) as exc:
            raise _ch_error(stack, f"rename of {staging} to {plan.target}", exc) from None
        finally:
            client.close()
        return RestoredTarget(
            engine="clickhouse", target=plan.target, checks=outcome.checks,
            timing=outcome.timing, previous=previous,
        )  # fmt: skip
    finally:
        if staging in ch_databases(stack):
            drop_ch_database(stack, staging)


@task(name="publish-restore-report", cache_policy=NO_CACHE)
def publish_restore_report(
    stack: Stack, backup_id: str, restored: list[RestoredTarget], steps: list[str]
) -> str:
    from prefect.artifacts import create_markdown_artifact

    key = f"restore-{stack.stack_name}"
    lines = [f"# Restore of {stack.stack_name} from set `{backup_id}`", ""]
    for item in restored:
        verdict = "restored" if item.passed else "FAILED (target untouched)"
        lines.append(f"## {item.engine} -> `{item.target}`: {verdict}")
        if item.previous:
            lines.append(f"- the replaced database is kept as `{item.previous}`")
        if item.timing:
            lines.append(
                f"- restore {item.timing.restore_seconds:.1f}s, "
                f"{item.timing.throughput_mb_s:.1f} MB/s"
            )
        lines += [f"- {c.name}: {c.outcome}: {c.reason}" for c in item.checks]
        lines.append("")
    lines += ["## Next steps", *[f"{i}. {s}" for i, s in enumerate(steps, 1)]]
    create_markdown_artifact(key=key, markdown=stack.scrub("\n".join(lines)))
    return key
