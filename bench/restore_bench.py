"""Restore benchmark: drill time ÷ pg_restore of the same dump from a local file.

    uv run python bench/restore_bench.py --size-mb 1024 --rounds 3 [--dir .devstack-bench]

Grows the devstack's Postgres by ``--size-mb`` of table data (a ``bench_payload`` table,
dropped at the end), takes one backup set with the backup flow, then measures side by
side, in one process, medians of ``--rounds``:

- baseline: ``pg_restore`` from a local file (single process, and ``-j 2``), the dump
  already on disk;
- the drill's Postgres restore in ``stream`` mode (S3 -> sha256 -> pg_restore) and in
  ``download`` mode (S3 -> file with sha256, then ``pg_restore -j 2``), each the whole
  Postgres part of a drill: verify, create, restore, count every table, drop;
- the full drill (Postgres + ClickHouse), for scale.

Prints seconds and the ratios (goal: drill ÷ local pg_restore <= 1.3).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from typing import TYPE_CHECKING  # noqa: E402

from devstack.core import Devstack  # noqa: E402

if TYPE_CHECKING:  # importing Prefect before the devstack's settings are set would pin others
    from tasks.restore import PgServer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="table data to add (MB)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=str(ROOT / ".devstack-bench"), help="devstack folder")
    ap.add_argument("--keep-data", action="store_true", help="leave bench_payload in place")
    opts = ap.parse_args()

    dev = Devstack(opts.dir, log=lambda _m: None)
    dev.up(with_worker=False)
    for key, value in dev.client_env().items():
        if key.startswith("PREFECT_"):
            os.environ[key] = value

    import psycopg

    from blocks.stack import Stack
    from flows.backup import backup
    from flows.restore_drill import RestoreDrillConfig, restore_drill
    from tasks.restore import pg_server
    from tasks.storage import newest_complete_manifest

    stack = Stack.from_env(dev.env(), stack_name="devstack")
    grow(dev, opts.size_mb)
    try:
        with psycopg.connect(dev.admin_dsn("railway")) as conn:
            db_bytes = conn.execute("SELECT pg_database_size('railway')").fetchone()[0]
        started = time.monotonic()
        backup(stack="devstack")
        backup_s = time.monotonic() - started
        manifest = newest_complete_manifest(stack)
        assert manifest is not None
        dump_mb = manifest.postgres.dump_size / 1e6
        print(f"database {db_bytes / 1e6:.0f} MB, dump {dump_mb:.0f} MB (backup {backup_s:.1f}s)")

        server = pg_server(stack, None)
        results: dict[str, list[float]] = {}
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / "dump.pgdump"
            stack.s3().fget_object(stack.backup_bucket, manifest.postgres.dump_key, str(local))
            for _ in range(opts.rounds):
                for jobs in (1, 2):
                    name = f"local-file pg_restore -j{jobs}"
                    results.setdefault(name, []).append(local_restore(server, local, jobs))
                for mode in ("stream", "download"):
                    config = RestoreDrillConfig(
                        backup_id=manifest.backup_id, clickhouse=False, postgres_mode=mode
                    )
                    t0 = time.monotonic()
                    report = restore_drill(stack="devstack", config=config)
                    assert report.passed, report.failure_message()
                    results.setdefault(f"drill postgres ({mode})", []).append(time.monotonic() - t0)
                t0 = time.monotonic()
                restore_drill(
                    stack="devstack",
                    config=RestoreDrillConfig(backup_id=manifest.backup_id, postgres_mode="stream"),
                )
                results.setdefault("full drill (stream, + ClickHouse)", []).append(
                    time.monotonic() - t0
                )
        base = statistics.median(results["local-file pg_restore -j1"])
        print(f"\n{'variant':<40} {'median s':>9} {'÷ local pg_restore':>19}")
        for name, times in results.items():
            median = statistics.median(times)
            print(f"{name:<40} {median:>9.1f} {median / base:>19.2f}")
    finally:
        if not opts.keep_data:
            with psycopg.connect(dev.admin_dsn("railway"), autocommit=True) as conn:
                conn.execute("DROP TABLE IF EXISTS public.bench_payload")
    return 0


def grow(dev: Devstack, size_mb: int) -> None:
    """Add ~size_mb of table data that compresses like real payloads (hex text, jsonb)."""
    import psycopg

    with psycopg.connect(dev.admin_dsn("railway"), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS public.bench_payload "
            "(id bigint PRIMARY KEY, body text, meta jsonb, at timestamptz DEFAULT now())"
        )
        have = conn.execute("SELECT pg_total_relation_size('public.bench_payload')").fetchone()
        rows_per_mb = 2300  # ~450 bytes a row with its index
        missing = size_mb - int(have[0] if have else 0) // 1_000_000
        start = int(conn.execute("SELECT coalesce(max(id), 0) FROM bench_payload").fetchone()[0])
        batch = 200_000
        todo = max(0, missing) * rows_per_mb
        while todo > 0:
            n = min(batch, todo)
            conn.execute(
                "INSERT INTO bench_payload (id, body, meta) SELECT g, "
                "md5(g::text) || md5(random()::text) || md5((g * 7)::text) || "
                "repeat(md5((g %% 977)::text), 6), "
                "jsonb_build_object('model', 'gpt-4o-mini', 'tokens', g %% 4000, "
                "'trace', md5(random()::text)) "
                "FROM generate_series(%s::bigint, %s::bigint) g",
                (start + 1, start + n),
            )
            start += n
            todo -= n
        conn.execute("VACUUM ANALYZE public.bench_payload")


def local_restore(server: PgServer, path: Path, jobs: int) -> float:
    """pg_restore of a local file into a fresh database: the physical limit of a restore."""
    from tasks.restore import create_pg_database, drop_pg_database, restore_tool

    name = "bench_local_restore"
    drop_pg_database(server, name)
    create_pg_database(server, name)
    target, env = server.tool_target(name)
    argv = [restore_tool(server).path, "--dbname", target, "--no-owner", "--no-privileges",
            "--exit-on-error", "--jobs", str(jobs), str(path)]  # fmt: skip
    t0 = time.monotonic()
    subprocess.run(argv, env={**os.environ, **env}, check=True)
    seconds = time.monotonic() - t0
    drop_pg_database(server, name)
    return seconds


if __name__ == "__main__":
    sys.exit(main())
