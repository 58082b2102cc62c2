"""Health-sweep benchmark: wall time, latency through the worker, CPU, 50 stacks, DB growth.

    uv run python bench/sweep_bench.py [--dir .devstack-health] [--rounds 3] [--runs 10]

Against a running (or started here) devstack, side by side in one process:

1. sweep wall time of every check, all healthy and with three endpoints hanging
   (Langfuse web and worker in ``hang`` mode, LiteLLM replaced by a socket that accepts
   and never answers), for the concurrent sweep (5 s per-check timeout) and for the
   original monitor's design (the same checks one after another, 10 s timeouts);
   and (``probes``) wall and CPU seconds without and with the silent-failure probes;
2. schedule-to-completed latency and CPU seconds per sweep through the real process
   worker (flow runs of a ``health-sweep`` deployment, scheduled now); CPU is the
   worker's own plus its reaped flow-run processes';
3. one process sweeping 50 simulated stacks of 9 services at once (every stack a copy
   of the devstack's), against the 60 s cadence;
4. Prefect database growth: rows and bytes added per sweep (SQLite ``dbstat``),
   scaled to a day of 1,440 sweeps, and the steady state under the vacuum retention.

Prints seconds and ratios. Goal: hanging sweep <= per-check timeout + 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sqlite3
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack.core import PROJECT, Devstack  # noqa: E402
from devstack.services import WORKER_QUERY_SECONDS  # noqa: E402

TABLES = (
    "flow_run",
    "flow_run_state",
    "task_run",
    "task_run_state",
    "log",
    "events",
    "event_resources",
    "artifact",
    "variable",
)


def _sweep_deployment(client: Any, name: str, params: dict[str, Any]) -> Any:
    """A health-sweep deployment on the devstack's pool, run from this checkout."""
    return client.create_deployment(
        flow_id=client.create_flow_from_name("health-sweep"),
        name=name,
        work_pool_name="devstack",
        entrypoint="flows/health_sweep.py:health_sweep",
        path=str(PROJECT),
        pull_steps=[
            {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT)}}
        ],
        parameters=params,
    )


def black_hole() -> tuple[socket.socket, int]:
    """A listener that accepts connections and never answers (a hung service)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return listener, int(listener.getsockname()[1])


def set_fault(dev: Devstack, mode: str) -> None:
    import httpx

    for name in ("langfuse", "langfuse_worker"):
        httpx.post(f"{dev.url(name)}/__standin/fault", json={"mode": mode}, timeout=5)


async def sequential(stack, timeout_s: float):  # type: ignore[no-untyped-def]
    """The original monitor's shape: one check after another."""
    from tasks.health import PROBES, HealthThresholds, run_check

    th = HealthThresholds(litellm_requires_db=False)
    return [await run_check(name, fn, stack, timeout_s, th) for name, fn in PROBES.items()]


def timed(coro_factory) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    asyncio.run(coro_factory())
    return time.monotonic() - started


def bench_wall_time(dev: Devstack, rounds: int) -> None:
    from blocks.stack import Stack
    from tasks.health import HealthThresholds, run_checks

    th = HealthThresholds(litellm_requires_db=False)
    stack = Stack.from_env(dev.env(), stack_name="devstack")
    listener, port = black_hole()
    hung = stack.model_copy(update={"litellm_url": f"http://127.0.0.1:{port}"})
    rows = []
    try:
        healthy = [timed(lambda: run_checks(stack, 5.0, None, th)) for _ in range(rounds)]
        set_fault(dev, "hang")
        hanging = [timed(lambda: run_checks(hung, 5.0, None, th)) for _ in range(rounds)]
        original = timed(lambda: sequential(hung, 10.0))
    finally:
        set_fault(dev, "ok")
        listener.close()
    rows.append(("all healthy, concurrent", statistics.median(healthy)))
    rows.append(("3 endpoints hanging, concurrent (5 s timeout)", statistics.median(hanging)))
    rows.append(("3 endpoints hanging, sequential (original, 10 s)", original))
    print(f"\n## 1. sweep wall time (every check; medians of {rounds})")
    for label, seconds in rows:
        print(f"  {label:50} {seconds:7.2f} s")
    print(
        f"  hanging sweep / (timeout + 1 s)                    {rows[1][1] / 6.0:7.2f}  (goal <= 1)"
    )
    print(f"  original / concurrent, hanging                     {original / rows[1][1]:7.1f}x")


# The services a sweep checked before the silent-failure probes were added.
BEFORE_PROBES = (
    "litellm",
    "litellm-readiness",
    "langfuse-web",
    "langfuse-worker",
    "postgres",
    "clickhouse",
    "redis",
    "object-storage",
    "backup-freshness",
    "offsite-freshness",
)


def side_by_side(title: str, rows: dict[str, list[tuple[float, float]]], label: str) -> None:
    """Medians of (wall, CPU) for the earlier checks and for every probe, and their ratio."""
    from tasks.decisions.health import SERVICES

    med = {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
        for k, v in rows.items()
    }
    print(f"\n## {title}")
    for kind, count in (("before", len(BEFORE_PROBES)), ("all", len(SERVICES))):
        print(f"  {count} checks   {label} {med[kind][0]:6.3f} s   CPU {med[kind][1]:6.3f} s")
    print(
        f"  ratio all / before   wall {med['all'][0] / med['before'][0]:6.2f}x   "
        f"CPU {med['all'][1] / med['before'][1]:6.2f}x  (goal <= 1.2x)"
    )


RUN_DEADLINE_S = 300.0  # one sweep through the worker takes seconds


def run_to_end(client: Any, deployment_id: Any) -> Any:
    """A run of the deployment scheduled now, read until it is final; it must complete."""
    from prefect.states import Scheduled

    run = client.create_flow_run_from_deployment(
        deployment_id, state=Scheduled(scheduled_time=datetime.now(UTC))
    )
    deadline = time.monotonic() + RUN_DEADLINE_S
    while not (run.state and run.state.is_final()):
        if time.monotonic() > deadline:
            raise SystemExit(
                f"run {run.name} not over after {RUN_DEADLINE_S:g} s: is the worker up?"
            )
        time.sleep(0.2)
        run = client.read_flow_run(run.id)
    assert run.state_name == "Completed", run.state
    return run


def bench_probes(dev: Devstack, rounds: int) -> None:
    """Wall and CPU seconds of one sweep's checks, without and with every probe, side by
    side, the Langfuse queue holding the traffic a live stack would put in it."""
    from blocks.stack import Stack
    from devstack.traffic import flowing
    from tasks.decisions.health import SERVICES
    from tasks.health import HealthThresholds, run_checks

    th = HealthThresholds(litellm_requires_db=False)
    stack = Stack.from_env(dev.env(), stack_name="devstack")

    latency: dict[str, list[float]] = {}

    def measure(services: list[str]) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.monotonic()
        found = asyncio.run(run_checks(stack, 5.0, services, th))
        took = time.monotonic() - wall, time.process_time() - cpu
        if len(services) == len(SERVICES):
            for r in found:
                latency.setdefault(r.service, []).append(r.latency_ms)
        return took

    rows: dict[str, list[tuple[float, float]]] = {"before": [], "all": []}
    with flowing(dev, 5.0):
        measure(list(SERVICES))  # imports and first connections paid once, for both
        for _ in range(rounds):  # interleaved, so drift hits both alike
            rows["before"].append(measure(list(BEFORE_PROBES)))
            rows["all"].append(measure(list(SERVICES)))
    side_by_side(
        f"probes: one sweep's checks in-process (medians of {rounds}, traffic 5/s)",
        rows,
        "wall",
    )
    slowest = sorted(latency.items(), key=lambda kv: -statistics.median(kv[1]))[:5]
    print(
        "  slowest checks (median ms)        "
        + ", ".join(f"{name} {statistics.median(ms):.0f}" for name, ms in slowest)
    )


def proc_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid``, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


def bench_worker(dev: Devstack, runs: int) -> None:
    from prefect.client.orchestration import get_client

    from flows.health_sweep import HealthSweepConfig
    from tasks.health import HealthThresholds

    params = {
        "stack": "devstack",
        "config": HealthSweepConfig(
            thresholds=HealthThresholds(litellm_requires_db=False)
        ).model_dump(mode="json"),
    }
    worker_pid = dev.state.pids["prefect_worker"]
    with get_client(sync_client=True) as client:
        deployment_id = _sweep_deployment(client, "sweep-bench", params)
        latencies, runtimes = [], []
        cpu_before = proc_cpu(worker_pid)
        try:
            for _ in range(runs):
                run = run_to_end(client, deployment_id)
                latencies.append((run.end_time - run.expected_start_time).total_seconds())
                runtimes.append((run.end_time - run.start_time).total_seconds())
        finally:
            client.delete_deployment(deployment_id)
        cpu = (proc_cpu(worker_pid) - cpu_before) / runs
    print(f"\n## 2. through the real process worker ({runs} sweeps, one at a time)")
    print(
        f"  schedule -> completed, median       {statistics.median(latencies):6.2f} s "
        f"(max {max(latencies):.2f}; the worker polls every {WORKER_QUERY_SECONDS} s)"
    )
    print(f"  flow run start -> end, median       {statistics.median(runtimes):6.2f} s")
    print(f"  CPU per sweep (worker + flow run)   {cpu:6.2f} s")
    cores = os.cpu_count() or 1
    print(f"  sweeps per 60 s this CPU allows     {60 * cores / cpu:6.0f} ({cores} cores)")


def bench_worker_probes(dev: Devstack, runs: int) -> None:
    """Through the real process worker, side by side: sweeps of the 10 earlier checks and
    sweeps with every probe on, interleaved one at a time, traffic flowing; wall of the
    flow run and CPU of worker + flow-run process per sweep."""
    from prefect.client.orchestration import get_client

    from devstack.traffic import flowing
    from flows.health_sweep import HealthSweepConfig
    from tasks.decisions.health import SERVICES
    from tasks.health import HealthThresholds

    th = HealthThresholds(litellm_requires_db=False)
    kinds = {"before": list(BEFORE_PROBES), "all": list(SERVICES)}
    worker_pid = dev.state.pids["prefect_worker"]
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    with get_client(sync_client=True) as client, flowing(dev, 5.0):
        ids = {
            kind: _sweep_deployment(
                client,
                f"sweep-bench-{kind}",
                {
                    "stack": "devstack",
                    "config": HealthSweepConfig(services=services, thresholds=th).model_dump(
                        mode="json"
                    ),
                },
            )
            for kind, services in kinds.items()
        }
        try:
            for i in range(runs + 1):
                for kind in ("before", "all") if i % 2 else ("all", "before"):
                    cpu0 = proc_cpu(worker_pid)
                    run = run_to_end(client, ids[kind])
                    if i:  # the first pair warms both up
                        wall = (run.end_time - run.start_time).total_seconds()
                        rows[kind].append((wall, proc_cpu(worker_pid) - cpu0))
        finally:
            for deployment_id in ids.values():
                client.delete_deployment(deployment_id)
    side_by_side(
        f"probes through the real process worker (medians of {runs}, interleaved, traffic 5/s)",
        rows,
        "run wall",
    )


def bench_fifty(dev: Devstack) -> None:
    from blocks.stack import Stack
    from tasks.health import HealthThresholds, run_checks

    th = HealthThresholds(litellm_requires_db=False)
    base = Stack.from_env(dev.env(), stack_name="devstack")
    stacks = [base.model_copy(update={"stack_name": f"sim-{i:02d}"}) for i in range(50)]

    async def all_stacks() -> list[list[object]]:
        return list(await asyncio.gather(*(run_checks(s, 5.0, None, th) for s in stacks)))

    cpu0, started = time.process_time(), time.monotonic()
    results = asyncio.run(all_stacks())
    wall, cpu = time.monotonic() - started, time.process_time() - cpu0
    checks = sum(len(r) for r in results)
    print("\n## 3. one process sweeping 50 stacks x 9 services at once")
    print(
        f"  {checks} checks in {wall:.2f} s wall, {cpu:.2f} s CPU; cadence 60 s -> "
        f"{wall / 60:.2%} of it"
    )


def bench_fifty_worker(dev: Devstack, count: int = 50) -> None:
    """One flow run on the real worker sweeping ``count`` stacks (``more_stacks``)."""
    from prefect.client.orchestration import get_client
    from prefect.variables import Variable

    from blocks.stack import Stack
    from flows.health_sweep import HealthSweepConfig
    from tasks.health import HealthThresholds
    from tasks.health_state import state_variable, status_variable

    base = Stack.load("devstack")
    names = [f"sim-{i:02d}" for i in range(count)]
    for name in names:
        base.model_copy(update={"stack_name": name}).save(name, overwrite=True)
    cfg = HealthSweepConfig(thresholds=HealthThresholds(litellm_requires_db=False))
    params = {"stack": names[0], "more_stacks": names[1:], "config": cfg.model_dump(mode="json")}
    worker_pid = dev.state.pids["prefect_worker"]
    with get_client(sync_client=True) as client:
        deployment_id = _sweep_deployment(client, "sweep-bench-many", params)
        rows = []
        try:
            for _ in range(2):
                cpu_before = proc_cpu(worker_pid)
                run = run_to_end(client, deployment_id)
                rows.append(
                    (
                        (run.end_time - run.expected_start_time).total_seconds(),
                        (run.end_time - run.start_time).total_seconds(),
                        proc_cpu(worker_pid) - cpu_before,
                    )
                )
        finally:
            client.delete_deployment(deployment_id)
            for name in names:
                Variable.unset(state_variable(name))
                Variable.unset(status_variable(name))
                Stack.delete(name)
    print(f"\n## 5. one flow run on the real worker sweeping {count} stacks x 9 services")
    for i, (latency, runtime, cpu) in enumerate(rows, 1):
        print(
            f"  run {i}: schedule -> completed {latency:5.1f} s, run {runtime:5.1f} s, CPU {cpu:5.1f} s "
            f"({runtime / 60:.0%} of the 60 s cadence)"
        )


def db_counts(db: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Rows per table, and bytes per table (its indexes included; SQLite ``dbstat``)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
        sizes = dict(
            con.execute(
                "SELECT m.tbl_name, sum(d.pgsize) FROM dbstat d JOIN sqlite_master m "
                "ON d.name = m.name GROUP BY m.tbl_name"
            ).fetchall()
        )
    finally:
        con.close()
    return rows, {t: int(sizes.get(t, 0)) for t in TABLES}


def bench_db(dev: Devstack, sweeps: int, retention_days: float) -> None:
    from flows.health_sweep import HealthSweepConfig, health_sweep
    from tasks.health import HealthThresholds

    db = dev.root / "prefect-server" / "prefect.db"
    if not db.exists():
        print(f"\n## 4. Prefect database growth: skipped ({db} does not exist: the server runs")
        print("  on a Postgres of its own; this measurement reads SQLite's dbstat)")
        return
    cfg = HealthSweepConfig(thresholds=HealthThresholds(litellm_requires_db=False))
    time.sleep(6)  # let earlier runs' events reach the database before the baseline
    before_rows, before_bytes = db_counts(db)
    for _ in range(sweeps):
        asyncio.run(health_sweep("devstack", cfg))
    time.sleep(6)  # the event persister flushes every few seconds
    after_rows, after_bytes = db_counts(db)
    print(f"\n## 4. Prefect database growth ({sweeps} sweeps, SQLite; bytes include indexes)")
    day_kib: dict[str, float] = {}
    for table in TABLES:
        rows = (after_rows[table] - before_rows[table]) / sweeps
        kib = (after_bytes[table] - before_bytes[table]) / sweeps / 1024
        day_kib[table] = kib * 1440
        print(
            f"  {table:16} {rows:5.1f} rows/sweep {rows * 1440:8.0f} rows/day "
            f"{kib:6.1f} KiB/sweep {kib * 1440 / 1024:7.1f} MiB/day"
        )
    events = (day_kib["events"] + day_kib["event_resources"]) / 1024
    runs = sum(v for k, v in day_kib.items() if k not in ("events", "event_resources")) / 1024
    print(f"  per day: runs/states/logs {runs:.1f} MiB, events {events:.1f} MiB")
    print(
        f"  Prefect defaults (events kept 7 d, flow runs never deleted): "
        f"{7 * events:.0f} MiB of events + {runs:.0f} MiB more every day, without bound"
    )
    print(
        f"  with vacuum flow_runs at {retention_days:g} d and events at {retention_days:g} d: "
        f"steady state ~{retention_days * (runs + events):.0f} MiB"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=str(ROOT / ".devstack-health"), help="devstack folder")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10, help="sweeps through the worker")
    ap.add_argument("--db-sweeps", type=int, default=30)
    ap.add_argument("--retention-days", type=float, default=7)
    ap.add_argument(
        "--parts",
        default="wall,probes,fifty,worker,worker-probes,fifty-worker,db",
        help="which measurements, comma-separated",
    )
    opts = ap.parse_args()
    parts = set(opts.parts.split(","))

    dev = Devstack(opts.dir, log=lambda _m: None)
    if not all(dev.running(n) for n in ("prefect_server", "prefect_worker", "langfuse")):
        dev.up(with_worker=True)
    for key, value in dev.client_env().items():
        if key.startswith("PREFECT_"):
            os.environ[key] = value
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    if "wall" in parts:
        bench_wall_time(dev, opts.rounds)
    if "probes" in parts:
        bench_probes(dev, max(opts.rounds, 10))
    if "fifty" in parts:
        bench_fifty(dev)
    if "worker" in parts:
        bench_worker(dev, opts.runs)
    if "worker-probes" in parts:
        bench_worker_probes(dev, opts.runs)
    if "fifty-worker" in parts:
        bench_fifty_worker(dev)
    if "db" in parts:
        bench_db(dev, opts.db_sweeps, opts.retention_days)
    return 0


if __name__ == "__main__":
    sys.exit(main())
