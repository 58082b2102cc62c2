"""Backup benchmark: the streaming backup flow against the physical limit and the original.

Prints ratios measured side by side in one run (medians of ``--runs``):

- Postgres: end-to-end backup ÷ ``pg_dump -Fc > /dev/null`` on the same database
  (goal <= 1.15), for the dump task alone and for the whole flow process (interpreter
  start, Prefect, ClickHouse and retention included); the original approach
  (``pg_dump | gzip`` to a file, then upload) on the same database.
- Peak RSS of the flow process at ``--size-gb`` and at ``--growth`` times that size
  (goal < 200 MB and flat).
- ClickHouse at ``--ch-rows`` rows: native ``BACKUP ... TO S3`` vs exporting the rows
  through the client into TSV in memory, then uploading, as the original did (goal >= 10x).

Runs against a devstack (``python -m devstack up``); seeds its own database ``bench_*``
and ClickHouse database ``bench``, and removes them (and its backup sets) at the end::

    uv run python bench/backup_bench.py --size-gb 1 --runs 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.core import Devstack  # noqa: E402
from devstack.seed import POSTGRES_DATA, create_postgres_schema  # noqa: E402

BYTES_PER_ROW = 800  # LiteLLM_SpendLogs rows as seeded: ~800 bytes on disk each

FLOW_SCRIPT = """
import json, resource, sys, time
started = time.monotonic()
from flows.backup import BackupConfig, backup
summary = backup(stack=sys.argv[1], config=BackupConfig.model_validate_json(sys.argv[2]))
from tasks.storage import newest_complete_manifest
from blocks.stack import Stack
manifest = newest_complete_manifest(Stack.load_stack(sys.argv[1]))
print(json.dumps({
    "in_process_s": time.monotonic() - started,
    "dump_s": manifest.postgres.seconds,
    "dump_bytes": manifest.postgres.dump_size,
    "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def median_time(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        started = time.monotonic()
        fn()
        times.append(time.monotonic() - started)
    return statistics.median(times)


def seed_database(stack: Devstack, name: str, rows: int) -> int:
    import psycopg

    with psycopg.connect(stack.admin_dsn("postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(stack.admin_dsn(name)) as conn:
        create_postgres_schema(conn)
        conn.execute(POSTGRES_DATA.replace("{rows}", str(rows)))  # type: ignore[arg-type]
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(size[0]) if size else 0


def drop_database(stack: Devstack, name: str) -> None:
    import psycopg

    with psycopg.connect(stack.admin_dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pg_env(stack: Devstack) -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": stack.creds.postgres_password, "PGHOST": "127.0.0.1",
            "PGPORT": str(stack.ports["postgres"]), "PGUSER": "postgres"}  # fmt: skip


def pg_dump_bin() -> str:
    from tasks.pg_tools import installed_pg_tools

    return installed_pg_tools("pg_dump")[max(installed_pg_tools("pg_dump"))]


def dump_to_null(stack: Devstack, database: str) -> None:
    with open(os.devnull, "wb") as null:
        subprocess.run([pg_dump_bin(), "-Fc", "-d", database], stdout=null, env=pg_env(stack),
                       check=True)  # fmt: skip


def original_approach(stack: Devstack, database: str) -> None:
    """The original daemon: pg_dump | gzip into a temp file, then upload the file."""
    client = stack.minio_client()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dump.sql.gz"
        with open(path, "wb") as out:
            dump = subprocess.Popen([pg_dump_bin(), "-d", database], stdout=subprocess.PIPE,
                                    env=pg_env(stack))  # fmt: skip
            gzip = subprocess.run(["gzip"], stdin=dump.stdout, stdout=out, check=True)
            assert dump.wait() == 0 and gzip.returncode == 0
        client.fput_object("backups", f"bench-original/{database}.sql.gz", str(path))


def save_stack(stack: Devstack, database: str, name: str) -> None:
    from blocks.stack import Stack

    env = {**stack.env(), "DATABASE_URL": stack.admin_dsn(database)}
    Stack.from_env(env, stack_name=name).save(name, overwrite=True)


def flow_run(stack: Devstack, name: str) -> dict[str, float]:
    """The backup flow in a fresh process, as a worker runs it; wall time and peak RSS."""
    from flows.backup import BackupConfig

    config = BackupConfig(dry_run=True).model_dump_json()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", FLOW_SCRIPT, name, config], cwd=ROOT,
                          env=stack.client_env(), capture_output=True, text=True)  # fmt: skip
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"backup flow failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def remove_prefix(stack: Devstack, prefix: str) -> None:
    from minio.deleteobjects import DeleteObject

    client = stack.minio_client()
    keys = [o.object_name for o in client.list_objects("backups", prefix=prefix, recursive=True)]
    for error in client.remove_objects("backups", [DeleteObject(k) for k in keys if k]):
        print("could not delete", error.name, file=sys.stderr)


def bench_postgres(stack: Devstack, size_gb: float, runs: int, label: str) -> dict[str, float]:
    database, name = f"bench_{label}", f"bench-{label}"
    rows = int(size_gb * 1e9 / BYTES_PER_ROW)
    print(f"seeding {database}: {rows} spend-log rows ...", flush=True)
    size = seed_database(stack, database, rows)
    save_stack(stack, database, name)
    try:
        dump_to_null(stack, database)  # warm the cache for everyone alike
        # Interleaved, so a busy neighbour on the machine slows all three alike.
        baselines, flows, originals = [], [], []
        for _ in range(runs):
            baselines.append(median_time(lambda: dump_to_null(stack, database), 1))
            flows.append(flow_run(stack, name))
            originals.append(median_time(lambda: original_approach(stack, database), 1))
        baseline, original = statistics.median(baselines), statistics.median(originals)
    finally:
        drop_database(stack, database)
        remove_prefix(stack, f"{name}/")
        remove_prefix(stack, "bench-original/")
    return {
        "db_mb": size / 1e6,
        "baseline_s": baseline,
        "dump_s": statistics.median(f["dump_s"] for f in flows),
        "flow_wall_s": statistics.median(f["wall_s"] for f in flows),
        "original_s": original,
        "maxrss_mb": max(f["maxrss_mb"] for f in flows),
        "dump_mb": flows[0]["dump_bytes"] / 1e6,
    }


def bench_clickhouse(stack: Devstack, rows: int, runs: int) -> dict[str, float]:
    import clickhouse_connect

    from devstack.seed import CLICKHOUSE_DATA, CLICKHOUSE_SCHEMA

    client = clickhouse_connect.get_client(host="127.0.0.1", port=stack.ports["clickhouse"],
                                           username="clickhouse",
                                           password=stack.creds.clickhouse_password)  # fmt: skip
    s3 = stack.minio_client()
    client.command("DROP DATABASE IF EXISTS bench SYNC")
    client.command("CREATE DATABASE bench")
    client.command(CLICKHOUSE_SCHEMA[0].format(db="bench"))
    client.command(CLICKHOUSE_DATA[0].replace("{db}", "bench").replace("{rows}", str(rows)))
    url = f"{stack.url('s3')}/backups/bench-ch"
    keys = f"'{stack.creds.s3_access_key}', '{stack.creds.s3_secret_key}'"

    def native() -> None:
        target = f"{url}/{time.monotonic_ns()}/"
        backup_id = client.query(
            f"BACKUP DATABASE bench TO S3('{target}', {keys}) ASYNC"
        ).result_rows[0][0]
        while True:
            status = client.command(f"SELECT status FROM system.backups WHERE id = '{backup_id}'")
            if status != "CREATING_BACKUP":
                assert status == "BACKUP_CREATED", status
                return
            time.sleep(0.05)

    def original() -> None:
        # Row by row into TSV in Python memory, then one upload, as the original did.
        result = client.query("SELECT * FROM bench.traces")
        lines = ["\t".join(str(value) for value in row) for row in result.result_rows]
        data = ("\n".join(lines) + "\n").encode()
        s3.put_object("backups", "bench-ch/original/traces.tsv", io.BytesIO(data), len(data))

    try:
        native_s = median_time(native, runs)
        original_s = median_time(original, runs)
    finally:
        client.command("DROP DATABASE IF EXISTS bench SYNC")
        remove_prefix(stack, "bench-ch/")
    return {"rows": rows, "native_s": native_s, "original_s": original_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devstack-dir", default=os.environ.get("DEVSTACK_DIR"),
                        help="devstack state folder (default: .devstack)")  # fmt: skip
    parser.add_argument("--size-gb", type=float, default=0.25, help="Postgres size to seed")
    parser.add_argument("--growth", type=float, default=4.0,
                        help="also run at this multiple of --size-gb for RSS flatness (0: skip)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--ch-rows", type=int, default=1_000_000, help="ClickHouse rows")
    args = parser.parse_args()

    stack = Devstack(args.devstack_dir, log=lambda _m: None)
    for key, value in stack.client_env().items():
        if key.startswith("PREFECT_"):
            os.environ[key] = value

    sizes = [args.size_gb] + ([args.size_gb * args.growth] if args.growth else [])
    results = [bench_postgres(stack, size, args.runs, f"s{i}") for i, size in enumerate(sizes)]
    print()
    print(f"Postgres (medians of {args.runs}; database size on disk, dump size -Fc)")
    for r in results:
        print(
            f"  {r['db_mb']:7.0f} MB db, {r['dump_mb']:6.1f} MB dump | "
            f"pg_dump -Fc > /dev/null {r['baseline_s']:6.2f} s | "
            f"backup dump task {r['dump_s']:6.2f} s = {r['dump_s'] / r['baseline_s']:.2f}x | "
            f"whole flow process {r['flow_wall_s']:6.2f} s = "
            f"{r['flow_wall_s'] / r['baseline_s']:.2f}x | "
            f"original pg_dump|gzip>file+upload {r['original_s']:6.2f} s = "
            f"{r['original_s'] / r['baseline_s']:.2f}x | peak RSS {r['maxrss_mb']:.0f} MB"
        )
    if len(results) > 1:
        print(f"  peak RSS at {args.growth:g}x the data: "
              f"{results[1]['maxrss_mb'] / results[0]['maxrss_mb']:.2f}x")  # fmt: skip
    ch = bench_clickhouse(stack, args.ch_rows, args.runs)
    print()
    print(f"ClickHouse ({ch['rows']:,} rows, medians of {args.runs})")
    print(
        f"  native BACKUP TO S3 {ch['native_s']:.2f} s | rows through the client to TSV + "
        f"upload {ch['original_s']:.2f} s | native is {ch['original_s'] / ch['native_s']:.1f}x faster"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
