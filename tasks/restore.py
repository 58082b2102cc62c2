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

import psycopg
import urllib3
from clickhouse_connect.driver.client import Client as ClickHouseClient
from clickhouse_connect.driver.exceptions import ClickHouseError
from minio import Minio
from minio.error import MinioException
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from psycopg import sql
from pydantic import BaseModel, Field, ValidationError

from blocks.stack import Stack, redact_url
from tasks.clickhouse import (
    backup_state,
    ch_error,
    clickhouse_client,
    quote_identifier,
    restore_statement,
)
from tasks.drill import (
    Check,
    ComponentTiming,
    DrillReport,
    check_large_objects,
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
from tasks.errors import RestoreError, StackConfigError, ToolVersionError
from tasks.manifest import (
    MANIFEST_SCHEMA_VERSION,
    BackupManifest,
    ClickHouseBackup,
    LargeObjects,
    manifest_key,
)
from tasks.postgres import (
    PgTool,
    count_rows,
    dsn_without_password,
    large_objects,
    parse_tool_version,
    pg_client_tool,
    server_version,
)
from tasks.storage import (
    list_prefix,
    newest_complete_manifest,
    read_optional_object,
    s3_client,
    storage_error,
)

PostgresMode = Literal["stream", "download"]
CHUNK = 1 << 20
CH_POLL_S = 0.5
CH_QUERY_TIMEOUT_S = 600
# One verification query (CHECK TABLE, a full read of one table) may take this long:
# bounded on its own, not by the restore's hours-long limit.
CH_VERIFY_TIMEOUT_S = 3600
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
        dsn, password = dsn_without_password(self.dsn_for(database))
        return dsn, ({"PGPASSWORD": password} if password else {})


def pg_server(stack: Stack, server_block: str | None) -> PgServer:
    """The stack's own server, or the DSN stored in the Prefect Secret block named."""
    if server_block is None:
        return PgServer(dsn=stack.postgres_dsn.get_secret_value(), stack=stack)
    from prefect.runtime import flow_run

    cache_key = (str(flow_run.id), server_block)
    dsn = _server_dsns.get(cache_key)
    if dsn is None:
        dsn = _server_dsns[cache_key] = _load_secret_dsn(server_block)
    if urlsplit(dsn).scheme not in ("postgres", "postgresql"):
        raise StackConfigError(
            f"Secret block {server_block!r} does not hold a postgresql:// DSN"
        ) from None
    return PgServer(dsn=dsn, stack=stack)


# A drill's tasks share one load of the Secret block per flow run (and process).
_server_dsns: dict[tuple[str, str], str] = {}


def _load_secret_dsn(server_block: str) -> str:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(server_block).get()  # type: ignore[union-attr]
    except ValueError as exc:
        raise StackConfigError(
            f"no Secret block named {server_block!r} ({exc}); create one holding "
            "postgresql://USER:PASSWORD@HOST:5432/postgres for the drill server"
        ) from None
    return str(value)


@task(name="describe-drill-target", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def describe_drill_target(stack: Stack, server_block: str | None) -> str:
    """The Postgres server the drill restores onto, password redacted."""
    return pg_server(stack, server_block).redacted


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


def restore_tool(server: PgServer) -> PgTool:
    """The pg_restore for this server's major (equal, else the smallest newer one)."""
    try:
        with server.connect() as conn:
            _, major = server_version(conn)
    except psycopg.Error as exc:
        raise _pg_error(server, "version lookup", exc) from None
    return pg_client_tool("pg_restore", major)


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
    return _parse_manifest(stack, backup_id, key, raw)


def _parse_manifest(stack: Stack, backup_id: str, key: str, raw: bytes) -> ManifestOutcome:
    import json

    try:
        version = json.loads(raw).get("schema_version")
    except (ValueError, AttributeError):
        version = None
    if version != MANIFEST_SCHEMA_VERSION:
        return ManifestOutcome(
            manifest=None,
            check=failed(
                "manifest",
                "set",
                f"{key} has schema_version {version!r}, this version reads "
                f"{MANIFEST_SCHEMA_VERSION}: restore with the release that wrote it",
            ),
        )
    try:
        manifest = BackupManifest.from_json(raw)
    except ValidationError as exc:
        fields = shorten([".".join(str(p) for p in e["loc"]) for e in exc.errors()])
        return ManifestOutcome(
            manifest=None,
            check=failed(
                "manifest", "set", f"{key} does not parse ({exc.error_count()} error(s): {fields})"
            ),
        )
    if manifest.backup_id != backup_id or manifest.stack != stack.stack_name:
        return ManifestOutcome(
            manifest=None,
            check=failed(
                "manifest",
                "set",
                f"{key} describes set {manifest.stack}/{manifest.backup_id}, not "
                f"{stack.stack_name}/{backup_id}",
            ),
        )
    return ManifestOutcome(manifest=manifest, check=_manifest_passed(manifest))


def _manifest_passed(manifest: BackupManifest) -> Check:
    return passed(
        "manifest",
        "set",
        f"schema {manifest.schema_version}, {len(manifest.objects)} objects, written "
        f"{manifest.finished_at.isoformat(timespec='seconds')}",
    )


def object_sizes(stack: Stack, prefix: str) -> dict[str, int]:
    """Every object under ``prefix`` with its size (one listing)."""
    return {entry.key: entry.size for entry in list_prefix(stack, prefix)}


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
    sizes = object_sizes(stack, manifest.prefix)
    dump = manifest.postgres
    pg_check = check_object(
        "postgres-dump-present", "postgres", dump.dump_key, dump.dump_size, None,
        sizes.get(dump.dump_key), None, set_prefix=manifest.prefix,
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
        set_prefix=manifest.prefix,
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
    import os

    keep = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PGSSLMODE", "PGSSLROOTCERT")
    return {k: v for k, v in os.environ.items() if k in keep}


def _write_to(stream: IO[bytes] | None) -> Callable[[bytes], object]:
    if stream is None:
        raise RestoreError("pg_restore has no stdin to write to")
    return stream.write


def restore_postgres_dump(
    server: PgServer,
    tool: str,
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
                skipped("postgres-restore", "postgres", "not run: the dump failed its checksum")
            )
            return checks, time.monotonic() - started
        with _pg_restore(server, tool, database, jobs, str(path), timeout_s) as (_proc, run):
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


def pg_large_objects(server: PgServer, database: str) -> LargeObjects:
    """Count and digest of the restored large objects, as the backup took them."""
    try:
        with server.connect(database) as conn:
            return large_objects(conn)
    except psycopg.Error as exc:
        raise _pg_error(server, f"large objects in {database}", exc) from None


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
    try:
        tool = restore_tool(server)
    except ToolVersionError as exc:
        return ComponentOutcome(checks=[failed("postgres-restore", "postgres", str(exc))])
    dump_major = parse_tool_version(f"pg_dump (PostgreSQL) {dump.pg_dump_version}")[1]
    if dump_major > tool.major:
        return ComponentOutcome(
            checks=[
                failed(
                    "postgres-restore",
                    "postgres",
                    f"pg_restore {tool.version} cannot read an archive written by pg_dump "
                    f"{dump.pg_dump_version}: install postgresql-client-{dump_major}",
                )
            ]
        )
    logger.info(
        "restoring %s (%d bytes) into %s on %s (%s mode)",
        dump.dump_key, dump.dump_size, database, server.redacted, mode,
    )  # fmt: skip
    create_pg_database(server, database)
    checks, seconds = restore_postgres_dump(
        server, tool.path, stack, manifest, database, mode, jobs, timeout_s, work_dir
    )
    verify_started = time.monotonic()
    restored_ok = all(c.passed for c in checks)
    if restored_ok:
        counts = count_pg_rows(server, database)
        checks.append(check_row_counts("postgres-row-counts", "postgres", dump.table_rows, counts))
        if dump.large_objects is not None:
            restored = pg_large_objects(server, database)
            checks.append(
                check_large_objects(
                    "postgres-large-objects", "postgres", dump.large_objects, restored
                )
            )
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
    if not restored_ok:
        # A restore that did not complete has no recovery time to report.
        return ComponentOutcome(checks=checks)
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
    return clickhouse_client(stack, timeout_s, error=RestoreError)


def _ch_error(stack: Stack, action: str, exc: BaseException) -> RestoreError:
    return ch_error(stack, action, exc, RestoreError)


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


def run_ch_restore(
    stack: Stack, client: ClickHouseClient, backup: ClickHouseBackup, target: str, timeout_s: float
) -> Check:
    """RESTORE ... ASYNC and poll system.backups until RESTORED, a failure, or the deadline."""
    name = f"clickhouse-restore[{backup.database}]"
    try:
        result = client.query(restore_statement(stack, backup.database, target, backup.s3_prefix))
        operation_id = str(result.result_rows[0][0])
    except (ClickHouseError, OSError, IndexError) as exc:
        return failed(name, "clickhouse", _ch_error(stack, f"RESTORE into {target}", exc).args[0])
    return wait_ch_restore(stack, client, operation_id, name, target, timeout_s)


def wait_ch_restore(
    stack: Stack,
    client: ClickHouseClient,
    operation_id: str,
    name: str,
    target: str,
    timeout_s: float,
) -> Check:
    """Poll system.backups until RESTORED, a failure, a vanished row, or the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = backup_state(client, operation_id)
        except (ClickHouseError, OSError) as exc:
            return failed(
                name, "clickhouse", _ch_error(stack, "polling system.backups", exc).args[0]
            )
        if state is None:
            return failed(
                name,
                "clickhouse",
                f"RESTORE {operation_id} into {target} vanished from system.backups (ClickHouse "
                "restarted mid-restore?); the partial database is dropped, run it again",
            )
        status, error, _ = state
        if status == "RESTORED":
            return passed(name, "clickhouse", f"RESTORE into {target}: RESTORED")
        if status != "RESTORING":
            return failed(
                name,
                "clickhouse",
                f"RESTORE into {target} ended {status}: "
                f"{stack.scrub(error)[:600] or 'no error text'}",
            )
        if time.monotonic() >= deadline:
            return failed(
                name, "clickhouse", f"RESTORE into {target} still running after {timeout_s:.0f}s"
            )
        time.sleep(CH_POLL_S)


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


# A restored copy needs about the backup's size; keep this much more free on top.
FREE_SPACE_MARGIN = 1.2


def free_space_refusal(free: int, needed: int, margin: float = FREE_SPACE_MARGIN) -> str | None:
    """Why a restore of ``needed`` bytes must not start on a disk with ``free`` bytes, or None."""
    if free >= needed * margin:
        return None
    return (
        f"not enough free disk: {free / 1e9:.2f} GB free, the copy needs about "
        f"{needed / 1e9:.2f} GB (+{(margin - 1) * 100:.0f}% margin); restoring would fill "
        "the live volume. Free space or grow the volume first"
    )


def check_ch_free_space(stack: Stack, client: ClickHouseClient, backup: ClickHouseBackup) -> Check:
    """ClickHouse's disks have room for a full copy of the backup (it lands on live volumes)."""
    name = f"clickhouse-free-space[{backup.database}]"
    try:
        row = client.query("SELECT sum(free_space) FROM system.disks").result_rows
        free = int(row[0][0]) if row else 0
    except (ClickHouseError, OSError) as exc:
        return failed(name, "clickhouse", _ch_error(stack, "free-space lookup", exc).args[0])
    refusal = free_space_refusal(free, backup.size)
    if refusal is not None:
        return failed(name, "clickhouse", refusal)
    return passed(
        name, "clickhouse", f"{free / 1e9:.1f} GB free for a {backup.size / 1e9:.2f} GB copy"
    )


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
    client = ch_client(stack, CH_VERIFY_TIMEOUT_S)
    started = time.monotonic()
    try:
        space = check_ch_free_space(stack, client, backup)
        if not space.passed:
            logger.error("%s %s: %s", space.name, space.outcome, space.reason)
            return ComponentOutcome(checks=[space])
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
    if not checks[0].passed:
        # A RESTORE that did not complete has no recovery time to report.
        return ComponentOutcome(checks=checks)
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

    from tasks.decisions.alerts import Alert
    from tasks.notify import deliver

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
    """Rename ``target`` aside and ``staging`` into its place, both in one transaction.

    The target first refuses new connections (ALLOW_CONNECTIONS false) and its sessions
    are closed, so nothing reconnects between the two renames; a failed swap rolls both
    renames back. Either way the old database accepts connections again afterwards.
    """
    admin = "postgres" if target == server.maintenance_database else server.maintenance_database
    try:
        with server.connect(admin) as conn:
            if previous is not None:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                        sql.Identifier(target)
                    )
                )
            try:
                if previous is not None:
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (target,),
                    )
                with conn.transaction():
                    if previous is not None:
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
            finally:
                if previous is not None:
                    _allow_connections(server, admin, [target, previous])
    except psycopg.Error as exc:
        raise _pg_error(server, f"rename of {staging} to {target}", exc) from None


def _allow_connections(server: PgServer, admin: str, names: list[str]) -> None:
    """ALLOW_CONNECTIONS true on those of ``names`` that refuse them (a fresh session)."""
    with server.connect(admin) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s) AND NOT datallowconn",
            (names,),
        ).fetchall()
        for (name,) in rows:
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                    sql.Identifier(str(name))
                )
            )


class StagedRestore(BaseModel):
    """One engine restored into a staging database and checked, not yet in place."""

    engine: Literal["postgres", "clickhouse"]
    target: str
    staging: str
    checks: list[Check]
    timing: ComponentTiming | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def _staging_name() -> str:
    from tasks.drill import staging_database_name

    return staging_database_name(datetime.now(UTC), secrets.token_hex(3))


def _stage(
    stack: Stack,
    engine: Literal["postgres", "clickhouse"],
    plan: TargetPlan,
    restore: Callable[[str], ComponentOutcome],
) -> StagedRestore:
    """Restore into a new staging database with ``restore``; the target is not touched.

    A failed restore drops its own staging database at once; a failed *check* comes
    back as a failed outcome, so the flow drops the other engine's staging and stops.
    """
    staging = _staging_name()
    try:
        outcome = restore(staging)
    except BaseException as exc:
        drop_staging.fn(
            stack, [StagedRestore(engine=engine, target=plan.target, staging=staging, checks=[])]
        )
        if not isinstance(exc, RestoreError):
            raise
        outcome = ComponentOutcome(checks=[failed(f"{engine}-restore", engine, str(exc))])
    return StagedRestore(
        engine=engine, target=plan.target, staging=staging, checks=outcome.checks,
        timing=outcome.timing,
    )  # fmt: skip


@task(name="stage-postgres-restore", cache_policy=NO_CACHE)
def stage_postgres_restore(
    stack: Stack,
    manifest: BackupManifest,
    plan: TargetPlan,
    mode: PostgresMode,
    jobs: int,
    timeout_s: float,
    work_dir: str | None,
    required_tables: list[str],
) -> StagedRestore:
    """Restore the dump into a new staging database and prove it; the target is not touched."""
    return _stage(
        stack,
        "postgres",
        plan,
        lambda staging: restore_postgres.fn(
            stack, None, manifest, staging, mode, jobs, timeout_s, work_dir, required_tables
        ),
    )


@task(name="stage-clickhouse-restore", cache_policy=NO_CACHE)
def stage_clickhouse_restore(
    stack: Stack,
    backup: ClickHouseBackup,
    plan: TargetPlan,
    timeout_s: float,
    required_tables: list[str],
) -> StagedRestore:
    """RESTORE AS a new staging database and check every table; the target is not touched."""
    return _stage(
        stack,
        "clickhouse",
        plan,
        lambda staging: restore_clickhouse.fn(stack, backup, staging, timeout_s, required_tables),
    )


@task(name="drop-staging", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def drop_staging(stack: Stack, staged: list[StagedRestore]) -> list[str]:
    """Drop the staging databases that still exist (only ``restore_*`` names)."""
    from tasks.drill import is_staging_database

    dropped: list[str] = []
    server = pg_server(stack, None)
    for item in staged:
        if not is_staging_database(item.staging):
            raise RestoreError(f"refusing to drop {item.staging!r}: not a staging database")
        if item.engine == "postgres" and pg_database_exists(server, item.staging):
            drop_pg_database(server, item.staging)
            dropped.append(f"postgres:{item.staging}")
        elif item.engine == "clickhouse" and item.staging in ch_databases(stack):
            drop_ch_database(stack, item.staging)
            dropped.append(f"clickhouse:{item.staging}")
    return dropped


def _swap_ch(stack: Stack, staging: str, target: str, previous: str | None) -> None:
    client = ch_client(stack)
    try:
        if previous is not None:
            old, new = quote_identifier(target), quote_identifier(previous)
            client.command(f"RENAME DATABASE {old} TO {new}")
        client.command(f"RENAME DATABASE {quote_identifier(staging)} TO {quote_identifier(target)}")
    except (ClickHouseError, OSError) as exc:
        moved = previous is not None and previous in ch_databases(stack)
        state = (
            f"{target} was already renamed to {previous}: rename it back, or rename "
            f"{staging} to {target}"
            if moved
            else f"{target} is unchanged"
        )
        raise _ch_error(stack, f"rename of {staging} to {target} ({state})", exc) from None
    finally:
        client.close()


@task(name="swap-into-place", cache_policy=NO_CACHE)
def swap_into_place(stack: Stack, staged: list[StagedRestore]) -> list[RestoredTarget]:
    """Rename every verified staging database to its target; a replaced one is kept.

    Runs only once every engine passed in staging. A failed swap keeps that staging
    database (and any not swapped yet) and says which targets were already swapped.
    """
    from tasks.drill import previous_database_name

    now = datetime.now(UTC)
    server = pg_server(stack, None)
    logger = get_run_logger()
    restored: list[RestoredTarget] = []
    for item in staged:
        exists = (
            pg_database_exists(server, item.target)
            if item.engine == "postgres"
            else item.target in ch_databases(stack)
        )
        previous = previous_database_name(item.target, now) if exists else None
        try:
            if item.engine == "postgres":
                _swap_pg(server, item.staging, item.target, previous)
            else:
                _swap_ch(stack, item.staging, item.target, previous)
        except RestoreError as exc:
            done = ", ".join(f"{r.engine} {r.target}" for r in restored) or "none"
            kept = ", ".join(f"{i.engine} {i.staging}" for i in staged[len(restored) :])
            raise RestoreError(
                f"{exc}. Already swapped into place: {done}. The verified restores not in "
                f"place are kept: {kept}; rename them by hand once the cause is fixed "
                "(ALTER DATABASE / RENAME DATABASE), or drop them."
            ) from None
        logger.info(
            "%s: %s now holds the restored data%s", item.engine, item.target,
            f"; the old one is kept as {previous}" if previous else "",
        )  # fmt: skip
        restored.append(
            RestoredTarget(
                engine=item.engine, target=item.target, checks=item.checks,
                timing=item.timing, previous=previous,
            )
        )  # fmt: skip
    return restored


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
