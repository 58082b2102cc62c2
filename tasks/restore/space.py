"""Room to restore, read from the servers: checked before a drill or a restore writes.

How free space is known, per engine (the arithmetic and the verdict are
:mod:`tasks.decisions.space`):

- **ClickHouse**: ``system.disks`` on the server itself, ``unreserved_space`` (free space
  less ``keep_free_space_bytes`` and what running merges and inserts reserved) of the
  disks of the ``default`` storage policy, where RESTORE puts the parts. Real and exact.
- **Postgres**: SQL cannot see the disk. The operator gives the volume's size
  (``POSTGRES_VOLUME_SIZE``, ``DRILL_POSTGRES_VOLUME_SIZE``) and the server says what
  it uses (:func:`~tasks.restore.pg_server.pg_used_bytes`: every database and the WAL);
  free is the difference. Railway's API reports a volume's usage too, but refreshed
  only every few hours and only with an API token: not a basis for a check made
  seconds before writing.
- **The worker's disk** (download mode keeps the dump in a file): ``statvfs`` of the
  folder the file goes to.

Read errors make the space unknown (with the reason), never a crash: the policy then
decides (``space_unknown``).
"""

from __future__ import annotations

import shutil
import tempfile

from clickhouse_connect.driver.exceptions import ClickHouseError
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel

from blocks.stack import Stack
from tasks.decisions.checks import CheckResult
from tasks.decisions.manifest import BackupManifest, ClickHouseBackup
from tasks.decisions.space import (
    FreeSpace,
    Purpose,
    SpaceEngine,
    SpacePolicy,
    clickhouse_need,
    download_need,
    judge_space,
    postgres_free,
    postgres_need,
)
from tasks.errors import RestoreError
from tasks.restore.clickhouse import ch_client
from tasks.restore.pg_restore import PostgresMode
from tasks.restore.pg_server import PgServer, drill_server, pg_server, pg_used_bytes

__all__ = [
    "CH_FREE_SPACE_QUERY",
    "SpaceCheck",
    "check_restore_space",
    "clickhouse_free_space",
    "postgres_free_space",
    "worker_free_space",
]

# RESTORE writes a table's parts to its storage policy: Langfuse's tables use the
# default one. A policy of several disks spreads parts over them, so their room adds up.
CH_FREE_SPACE_QUERY = (
    "SELECT name, unreserved_space FROM system.disks WHERE name IN "
    "(SELECT arrayJoin(disks) FROM system.storage_policies WHERE policy_name = 'default')"
)


class SpaceCheck(BaseModel):
    """The space checks of one drill or restore, made before anything is written."""

    checks: list[CheckResult]

    def fits(self, engine: SpaceEngine) -> bool:
        """Whether every space check of ``engine`` passed (True when none was made)."""
        return all(c.passed for c in self.checks if c.component == engine)

    @property
    def problems(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]


def clickhouse_free_space(stack: Stack) -> FreeSpace:
    """Free bytes on the ClickHouse disks a RESTORE writes to, from ``system.disks``."""
    client = None
    try:
        client = ch_client(stack)
        rows = client.query(CH_FREE_SPACE_QUERY).result_rows
    except (RestoreError, ClickHouseError, OSError) as exc:
        reason = f"system.disks could not be read: {stack.error_line(str(exc), limit=300)}"
        return FreeSpace(where="ClickHouse", unknown_reason=reason)
    finally:
        if client is not None:
            client.close()
    if not rows:
        reason = "system.disks lists no disk of the 'default' storage policy"
        return FreeSpace(where="ClickHouse", unknown_reason=reason)
    disks = ", ".join(f"'{name}'" for name, _ in rows)
    return FreeSpace(
        where=f"ClickHouse disk {disks}",
        free=sum(int(free) for _, free in rows),
        how="system.disks unreserved_space",
    )


def postgres_free_space(server: PgServer) -> FreeSpace:
    """The configured volume size of ``server`` minus what the server uses on it."""
    where = f"Postgres {server.redacted}"
    used: int | None = None
    if server.volume_size is not None:
        try:
            used = pg_used_bytes(server)
        except RestoreError as exc:
            get_run_logger().warning("%s", exc)
    return postgres_free(
        server.volume_size,
        used,
        where=where,
        setting=server.volume_setting,
        separate=server.separate,
    )


def worker_free_space(work_dir: str | None) -> FreeSpace:
    """Free bytes where download mode writes the dump (``work_dir``, or the temp folder)."""
    folder = work_dir or tempfile.gettempdir()
    where = f"the worker's disk ({folder})"
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        return FreeSpace(where=where, unknown_reason=f"statvfs failed: {exc}", separate=True)
    return FreeSpace(where=where, free=free, how="statvfs", separate=True)


@task(name="check-restore-space", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def check_restore_space(
    stack: Stack,
    manifest: BackupManifest,
    *,
    purpose: Purpose,
    server_block: str | None = None,
    postgres: bool,
    clickhouse: list[ClickHouseBackup],
    mode: PostgresMode,
    work_dir: str | None,
    margin: float,
    policy: SpacePolicy,
) -> SpaceCheck:
    """Whether each engine's copy fits where it goes; reads only, writes nothing.

    ``purpose`` says where Postgres goes: a drill restores onto the drill server
    (:func:`~tasks.restore.pg_server.drill_server`), a restore onto the stack's own.
    """
    logger = get_run_logger()
    checks: list[CheckResult] = []
    if postgres:
        server = drill_server(stack, server_block) if purpose == "drill" else pg_server(stack, None)
        need = postgres_need(manifest.postgres)
        free = postgres_free_space(server)
        checks.append(judge_space(need, free, margin=margin, policy=policy, purpose=purpose))
        if mode == "download":
            need, free = download_need(manifest.postgres), worker_free_space(work_dir)
            checks.append(judge_space(need, free, margin=margin, policy=policy, purpose=purpose))
    if clickhouse:
        need = clickhouse_need(clickhouse)
        free = clickhouse_free_space(stack)
        checks.append(judge_space(need, free, margin=margin, policy=policy, purpose=purpose))
    for check in checks:
        log = logger.info if check.passed else logger.error
        if check.passed and "free space unknown" in check.message:
            log = logger.warning
        log("%s %s: %s", check.name, check.status, check.message)
    return SpaceCheck(checks=checks)
