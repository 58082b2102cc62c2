"""Room to restore: what a restore needs, what a server has free, and whether it may start.

A drill or a restore writes onto volumes the live stack uses (on Railway, the stack's
Postgres holds LiteLLM and Langfuse; ClickHouse holds the traces). A copy that fills
such a volume takes the stack down, so both flows check every engine *before* writing
anything, and refuse with the numbers and the fix.

- **Needed**, from the manifest (:func:`postgres_need`, :func:`clickhouse_need`,
  :func:`download_need`): Postgres needs the size the source database had when it was
  dumped (``database_size``, recorded by the backup; a restored copy holds no bloat, so
  it is at most that), or, for a set that does not record it, the dump times
  :data:`PG_DUMP_EXPANSION`; plus as much again for the WAL the restore writes, at most
  :data:`PG_WAL_HEADROOM`. ClickHouse needs the backup's size (RESTORE copies the same compressed
  parts). Download mode also needs the dump's size on the worker's disk. A margin
  (``margin``, 0.2 = 20%) goes on top of every estimate.
- **Free**, as a :class:`FreeSpace`: a number and how it was known, or ``None`` and why
  not, with the setting that would make it known. :func:`postgres_free` does the
  Postgres arithmetic: the operator-given volume size minus what the server uses.
- **Verdict**, :func:`judge_space`: a check result in the drill's vocabulary. Known and
  short: failed, always. Unknown: per :data:`SpacePolicy` (see :func:`judge_space`).

Pure: no Prefect, no I/O.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.decisions.checks import CheckResult, failed, passed
from tasks.decisions.drill import format_bytes
from tasks.decisions.manifest import ClickHouseBackup, PostgresDump

__all__ = [
    "PG_DUMP_EXPANSION",
    "PG_WAL_HEADROOM",
    "UNKNOWN_SPACE_ALLOWANCE",
    "FreeSpace",
    "Purpose",
    "SpaceEngine",
    "SpaceNeed",
    "SpacePolicy",
    "clickhouse_need",
    "download_need",
    "gb",
    "judge_space",
    "postgres_free",
    "postgres_need",
    "required_bytes",
]

# A custom-format dump is compressed and holds no index pages; the database restored
# from it is larger: 4.4x in the restore benchmark (270 MB dump, 1.2 GB database, README).
# 5x is the estimate for a set that did not record its database size.
PG_DUMP_EXPANSION = 5.0
# pg_restore writes WAL for everything it loads; checkpoints recycle it, but up to
# max_wal_size (1 GB by default) can sit in pg_wal meanwhile: the data's size, at most this.
PG_WAL_HEADROOM = 1_000_000_000
# With free space unknown, a restore onto the live server proceeds by default only when
# it needs less than this: small next to any production volume, so it cannot fill one
# that was not already about to fill by itself.
UNKNOWN_SPACE_ALLOWANCE = 1_000_000_000

SpaceEngine = Literal["postgres", "clickhouse"]
Purpose = Literal["drill", "restore"]
SpacePolicy = Literal["auto", "refuse", "proceed"]
"""What to do when free space cannot be known:

- ``refuse``: fail the check (nothing is written);
- ``proceed``: pass it, saying that the space was not checked and how to check it;
- ``auto`` (default): proceed on a separate server (a full scratch server endangers
  nothing live), and on the live one only when the restore needs less than
  :data:`UNKNOWN_SPACE_ALLOWANCE`; refuse otherwise.
"""


def gb(size: float) -> str:
    """``1.2 GB``, ``14.6 MB`` (powers of 1000), as the drill report shows sizes."""
    return format_bytes(round(size))


class SpaceNeed(BaseModel):
    """The bytes one check needs before the margin, and how they were estimated."""

    model_config = ConfigDict(frozen=True)

    check: str = Field(description="Check name, e.g. 'postgres-free-space'.")
    engine: SpaceEngine
    bytes: int = Field(ge=0)
    basis: str = Field(description="How the estimate was made, for the message.")


class FreeSpace(BaseModel):
    """Free bytes where a restore writes, or why they are unknown."""

    model_config = ConfigDict(frozen=True)

    where: str = Field(description="The disk or server, e.g. \"ClickHouse disk 'default'\".")
    free: int | None = Field(default=None, ge=0, description="Free bytes; None: unknown.")
    how: str = Field(default="", description="How the number was known.")
    unknown_reason: str | None = Field(default=None, description="Why it is not known.")
    setting: str | None = Field(
        default=None, description="What to set so that it is known, when something can be."
    )
    separate: bool = Field(
        default=False, description="On a server apart from the live stack (a drill server)."
    )


def postgres_need(dump: PostgresDump) -> SpaceNeed:
    """What restoring the dump writes on the Postgres server: database plus WAL headroom."""
    if dump.database_size is not None:
        size, basis = dump.database_size, f"{gb(dump.database_size)} database size at the backup"
    else:
        size = math.ceil(dump.dump_size * PG_DUMP_EXPANSION)
        basis = (
            f"{gb(dump.dump_size)} dump x {PG_DUMP_EXPANSION:g} (the set records no database size)"
        )
    wal = min(size, PG_WAL_HEADROOM)
    return SpaceNeed(
        check="postgres-free-space",
        engine="postgres",
        bytes=size + wal,
        basis=f"{basis} + {gb(wal)} WAL",
    )


def download_need(dump: PostgresDump) -> SpaceNeed:
    """Download mode keeps the whole dump in a file on the worker while pg_restore runs."""
    return SpaceNeed(
        check="postgres-download-space",
        engine="postgres",
        bytes=dump.dump_size,
        basis=f"{gb(dump.dump_size)} dump file",
    )


def clickhouse_need(backups: list[ClickHouseBackup]) -> SpaceNeed:
    """RESTORE copies the backup's compressed parts: its size, every database together."""
    size = sum(backup.size for backup in backups)
    names = ", ".join(backup.database for backup in backups)
    return SpaceNeed(
        check="clickhouse-free-space",
        engine="clickhouse",
        bytes=size,
        basis=f"{gb(size)} backup of {names}",
    )


def required_bytes(need: SpaceNeed, margin: float) -> int:
    """The estimate with the margin on top (``margin`` 0.2 = 20% more)."""
    return math.ceil(need.bytes * (1 + margin))


def postgres_free(
    volume: int | None, used: int | None, *, where: str, setting: str | None, separate: bool
) -> FreeSpace:
    """Free space on a Postgres volume: its configured size minus what the server uses.

    SQL cannot see the disk (only superuser file functions could, and not its free
    space), so the operator gives the volume's size (``setting``) and the server says
    what it uses (every database, and its WAL). ``used`` None: that lookup failed.
    """
    if volume is None:
        reason = f"the volume size of {where} is not configured"
        return FreeSpace(where=where, unknown_reason=reason, setting=setting, separate=separate)
    if used is None:
        reason = f"could not read what {where} uses (pg_database_size, pg_ls_waldir)"
        return FreeSpace(where=where, unknown_reason=reason, setting=None, separate=separate)
    if used > volume:
        reason = (
            f"{setting or 'the configured volume size'} ({gb(volume)}) is less than what "
            f"the server already uses ({gb(used)}): the setting is wrong"
        )
        return FreeSpace(where=where, unknown_reason=reason, setting=setting, separate=separate)
    return FreeSpace(
        where=where,
        free=volume - used,
        how=f"{setting or 'volume size'} {gb(volume)} minus {gb(used)} in use",
        setting=setting,
        separate=separate,
    )


def _fix(need: SpaceNeed, free: FreeSpace, purpose: Purpose) -> str:
    if need.check == "postgres-download-space":
        return "use postgres_mode 'stream' (no file), or a work_dir on a larger disk"
    if need.engine == "clickhouse":
        return "free space on ClickHouse's disk or grow its volume" + (
            "; meanwhile drill Postgres alone (clickhouse: false)" if purpose == "drill" else ""
        )
    grow = "grow the volume" + (f" and raise {free.setting}" if free.setting else "")
    if free.separate:
        return f"free space on the drill server or {grow}"
    if purpose == "drill":
        return (
            "configure a scratch server for drills (DRILL_DATABASE_URL and "
            f"DRILL_POSTGRES_VOLUME_SIZE, see README), free space, or {grow}"
        )
    return f"free space on the server or {grow}"


def judge_space(
    need: SpaceNeed,
    free: FreeSpace,
    *,
    margin: float,
    policy: SpacePolicy,
    purpose: Purpose,
    allowance: int = UNKNOWN_SPACE_ALLOWANCE,
) -> CheckResult:
    """Whether ``need`` fits in ``free``: passed, or failed with the numbers and the fix.

    A known shortfall always fails: no policy writes onto a volume known to be too
    small. Unknown free space follows ``policy`` (:data:`SpacePolicy`); a pass then says
    the space was not checked and what to set to check it.
    """
    required = required_bytes(need, margin)
    wanted = f"needs {gb(required)} ({need.basis}, +{margin * 100:.0f}% margin)"
    engine = need.engine
    if free.free is not None:
        if free.free >= required:
            return passed(
                need.check,
                f"{engine}: {gb(free.free)} free on {free.where} ({free.how}); the restore "
                f"{wanted}",
                component=engine,
            )
        return failed(
            need.check,
            f"{engine}: not enough free space on {free.where}: the restore {wanted}, "
            f"{gb(free.free)} free ({free.how}); nothing was written. Fix: "
            f"{_fix(need, free, purpose)}",
            fix=_fix(need, free, purpose),
            component=engine,
        )
    how_to_know = f"set {free.setting} to check it" if free.setting else "check it by hand"
    unknown = f"{engine}: free space unknown: {free.unknown_reason} — {how_to_know}"
    small = required <= allowance
    if policy == "proceed" or (policy == "auto" and (free.separate or small)):
        why = (
            "space_unknown is 'proceed'"
            if policy == "proceed"
            else "a separate server"
            if free.separate
            else f"the restore needs {gb(required)}, under the {gb(allowance)} allowed unchecked"
        )
        return passed(need.check, f"{unknown}; proceeding ({why})", component=engine)
    why = (
        "space_unknown is 'refuse'"
        if policy == "refuse"
        else f"the restore {wanted}, on the live server"
    )
    return failed(
        need.check,
        f"{unknown}; refused ({why}); nothing was written. Or run with space_unknown "
        "'proceed' if you know it fits",
        fix=how_to_know,
        component=engine,
    )
