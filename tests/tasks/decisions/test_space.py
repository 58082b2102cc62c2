"""Room to restore: the estimates from the manifest, the Postgres arithmetic, the verdict."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tasks.decisions.manifest import ClickHouseBackup, PostgresDump
from tasks.decisions.space import (
    PG_DUMP_EXPANSION,
    PG_WAL_HEADROOM,
    UNKNOWN_SPACE_ALLOWANCE,
    FreeSpace,
    SpaceNeed,
    clickhouse_need,
    download_need,
    judge_space,
    postgres_free,
    postgres_need,
    required_bytes,
)

GB = 1_000_000_000
sizes = st.integers(min_value=0, max_value=10**15)
margins = st.floats(min_value=0, max_value=5, allow_nan=False)
policies = st.sampled_from(["auto", "refuse", "proceed"])
purposes = st.sampled_from(["drill", "restore"])


def dump(size: int = GB, database_size: int | None = None) -> PostgresDump:
    return PostgresDump(
        database="railway",
        server_version="16.4",
        pg_dump_version="16.4",
        snapshot_id="00000003-1",
        dump_key="prod/x/postgres/railway.dump",
        dump_size=size,
        dump_sha256="a" * 64,
        table_rows={},
        seconds=1.0,
        database_size=database_size,
    )


def ch(database: str, size: int) -> ClickHouseBackup:
    return ClickHouseBackup(
        database=database,
        server_version="24.8",
        backup_id="id",
        status="BACKUP_CREATED",
        size=size,
        files=1,
        s3_prefix=f"prod/x/clickhouse/{database}/",
        table_rows={},
        seconds=1.0,
    )


def need(size: int, engine: str = "postgres") -> SpaceNeed:
    return SpaceNeed(check=f"{engine}-free-space", engine=engine, bytes=size, basis="test")  # type: ignore[arg-type]


# ---- needed ---------------------------------------------------------------------------------


def test_postgres_needs_the_recorded_database_size_plus_wal():
    found = postgres_need(dump(size=GB, database_size=7 * GB))
    assert found.bytes == 7 * GB + PG_WAL_HEADROOM
    assert found.basis == "7.0 GB database size at the backup + 1.0 GB WAL"
    small = postgres_need(dump(size=10**6, database_size=10**8))
    assert small.bytes == 2 * 10**8  # WAL as large as the data, when that is smaller


def test_an_older_set_without_database_size_uses_the_dump_times_the_expansion():
    found = postgres_need(dump(size=2 * GB))
    assert found.bytes == int(2 * GB * PG_DUMP_EXPANSION) + min(PG_WAL_HEADROOM, 10 * GB)
    assert f"x {PG_DUMP_EXPANSION:g}" in found.basis and "records no database size" in found.basis


def test_clickhouse_needs_every_backup_together_and_download_the_dump():
    found = clickhouse_need([ch("default", 3 * GB), ch("other", GB)])
    assert found.bytes == 4 * GB and found.check == "clickhouse-free-space"
    assert download_need(dump(size=2 * GB)).bytes == 2 * GB


@given(sizes, margins)
def test_the_margin_only_adds(size: int, margin: float) -> None:
    assert required_bytes(need(size), margin) >= size
    assert required_bytes(need(size), 0) == size


# ---- Postgres free space: the configured volume minus what the server uses -------------------


@given(sizes, sizes)
def test_postgres_free_is_the_volume_minus_what_is_used_or_unknown_with_why(
    volume: int, used: int
) -> None:
    free = postgres_free(volume, used, where="pg", setting="POSTGRES_VOLUME_SIZE", separate=False)
    if used <= volume:
        assert free.free == volume - used and free.unknown_reason is None
    else:
        assert free.free is None and "the setting is wrong" in (free.unknown_reason or "")


def test_postgres_free_is_unknown_without_a_volume_size_and_says_what_to_set():
    free = postgres_free(None, None, where="pg", setting="POSTGRES_VOLUME_SIZE", separate=False)
    assert free.free is None and free.setting == "POSTGRES_VOLUME_SIZE"
    assert "volume size of pg is not configured" in (free.unknown_reason or "")
    unreadable = postgres_free(10 * GB, None, where="pg", setting="X", separate=False)
    assert unreadable.free is None and "could not read" in (unreadable.unknown_reason or "")


# ---- the verdict ------------------------------------------------------------------------------


@given(sizes, sizes, margins, policies, purposes, st.booleans())
def test_a_known_free_space_decides_alone_whatever_the_policy(
    wanted: int, free: int, margin: float, policy, purpose, separate: bool
) -> None:
    space = FreeSpace(where="disk", free=free, how="statvfs", separate=separate)
    check = judge_space(need(wanted), space, margin=margin, policy=policy, purpose=purpose)
    assert check.passed == (free >= required_bytes(need(wanted), margin))
    if not check.passed:
        assert "not enough free space on disk" in check.message
        assert "nothing was written" in check.message and check.fix


def test_a_shortfall_names_engine_needed_free_and_the_fix():
    space = FreeSpace(where="Postgres db:5432", free=GB, how="POSTGRES_VOLUME_SIZE ...",
                      setting="POSTGRES_VOLUME_SIZE")  # fmt: skip
    check = judge_space(need(2 * GB), space, margin=0.2, policy="auto", purpose="drill")
    assert check.status == "failed" and check.component == "postgres"
    assert check.message.startswith("postgres: not enough free space on Postgres db:5432")
    assert "needs 2.4 GB (test, +20% margin)" in check.message and "1.0 GB free" in check.message
    assert "DRILL_DATABASE_URL" in check.message and "POSTGRES_VOLUME_SIZE" in check.message
    restore = judge_space(need(2 * GB), space, margin=0.2, policy="auto", purpose="restore")
    assert "DRILL_DATABASE_URL" not in restore.message  # a restore has no scratch server
    ch_check = judge_space(need(2 * GB, "clickhouse"), space, margin=0, policy="auto",
                           purpose="drill")  # fmt: skip
    assert "ClickHouse's disk" in ch_check.message and "clickhouse: false" in ch_check.message


@given(sizes, margins, policies, purposes, st.booleans())
def test_unknown_free_space_follows_the_policy(
    wanted: int, margin: float, policy, purpose, separate: bool
) -> None:
    space = FreeSpace(where="pg", unknown_reason="not configured", setting="X", separate=separate)
    check = judge_space(need(wanted), space, margin=margin, policy=policy, purpose=purpose)
    small = required_bytes(need(wanted), margin) <= UNKNOWN_SPACE_ALLOWANCE
    expected = policy == "proceed" or (policy == "auto" and (separate or small))
    assert check.passed == expected
    assert "free space unknown: not configured — set X to check it" in check.message
    assert ("proceeding" if expected else "refused") in check.message


def test_auto_refuses_a_large_unknown_restore_on_the_live_server_only():
    live = FreeSpace(where="pg", unknown_reason="no size", setting="X")
    apart = live.model_copy(update={"separate": True})
    big = need(5 * GB)
    assert not judge_space(big, live, margin=0.2, policy="auto", purpose="drill").passed
    assert judge_space(big, apart, margin=0.2, policy="auto", purpose="drill").passed
    assert judge_space(need(10), live, margin=0.2, policy="auto", purpose="drill").passed
    assert not judge_space(need(10), apart, margin=0, policy="refuse", purpose="drill").passed
