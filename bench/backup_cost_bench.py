"""What a backup costs the product it protects: LiteLLM latency and errors, with and without.

    uv run python bench/backup_cost_bench.py [--dir .devstack] [--rate 20] [--seconds 60] [--rounds 2]

Against a running devstack (``python -m devstack up``), side by side in one run: traffic
through the real LiteLLM proxy at ``--rate`` requests per second (the devstack's traffic
generator: several models, 20 % streaming, 5 % sent on purpose to a failing model),
alternating phases of ``--seconds`` without a backup and with backups running back to back
(each a real backup flow run in its own process, as the worker runs it). Prints p50/p95
latency and the error rate of each kind of phase, and the ratios with/without.
Goal: p95 during a backup <= 1.25x without, and no errors beyond the injected ones.

Here every service shares the machine's cores with the backup (pg_dump, the upload,
ClickHouse's BACKUP); on Railway each service has its own, so this is the worst case.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.core import Devstack  # noqa: E402
from devstack.traffic import Traffic, TrafficReport  # noqa: E402

BACKUP_SCRIPT = "from flows.backup import backup; import sys; backup(stack=sys.argv[1])"


class BackupLoop:
    """Backup flow runs back to back, each in its own process, until stopped."""

    def __init__(self, stack_name: str, env: dict[str, str]) -> None:
        self.stack_name, self.env = stack_name, env
        self.runs: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-c", BACKUP_SCRIPT, self.stack_name],
                env=self.env,
                cwd=ROOT,
                capture_output=True,
                check=False,
            )
            self.runs.append(time.monotonic() - started)
            self.failures += done.returncode != 0

    def __enter__(self) -> BackupLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def phase(
    stack: Devstack, rate: float, seconds: float, backups: BackupLoop | None
) -> TrafficReport:
    traffic = Traffic(stack, rate=rate, duration_s=seconds, stream_share=0.2, fail_share=0.05)
    if backups is None:
        traffic.start()
        traffic.wait(seconds + 120)
    else:
        with backups:
            traffic.start()
            traffic.wait(seconds + 120)
    return traffic.stop()


def summarize(reports: list[TrafficReport]) -> dict[str, Any]:
    completed = sum(r.completed for r in reports)
    unexpected = sum(r.unexpected for r in reports)
    return {
        "p50": statistics.median(r.latency_p50_ms or 0.0 for r in reports),
        "p95": statistics.median(r.latency_p95_ms or 0.0 for r in reports),
        "completed": completed,
        "unexpected": unexpected,
        "error_rate": unexpected / completed if completed else 0.0,
        "on_purpose": sum(r.failed_on_purpose for r in reports) / max(completed, 1),
        "rate": statistics.median(r.achieved_rate for r in reports),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=os.environ.get("DEVSTACK_DIR"), help="devstack folder")
    parser.add_argument("--stack", default="devstack", help="stack block name")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=2, help="without/with pairs")
    args = parser.parse_args()

    stack = Devstack(args.dir, log=lambda _m: None)
    env = {**os.environ, **stack.client_env()}
    without: list[TrafficReport] = []
    with_backup: list[TrafficReport] = []
    backup_runs: list[float] = []
    backup_failures = 0
    for round_ in range(args.rounds):
        without.append(phase(stack, args.rate, args.seconds, None))
        loop = BackupLoop(args.stack, env)
        with_backup.append(phase(stack, args.rate, args.seconds, loop))
        backup_runs += loop.runs
        backup_failures += loop.failures
        print(
            f"round {round_ + 1}: without\n{without[-1].summary()}\nwith backups "
            f"({len(loop.runs)} runs)\n{with_backup[-1].summary()}",
            flush=True,
        )
    a, b = summarize(without), summarize(with_backup)
    print()
    print(
        f"LiteLLM at {args.rate:g} req/s, {args.rounds} x {args.seconds:g} s per kind of phase "
        f"(medians over phases); {len(backup_runs)} backups, {backup_failures} failed, "
        f"median {statistics.median(backup_runs or [0]):.1f} s each"
    )
    for name, s in (("without a backup", a), ("during backups", b)):
        print(
            f"  {name:17} p50 {s['p50']:7.1f} ms | p95 {s['p95']:7.1f} ms | "
            f"{s['rate']:.1f} req/s | unexpected errors {s['unexpected']} "
            f"({s['error_rate']:.2%}) | injected failures {s['on_purpose']:.1%}"
        )
    print(
        f"  ratio during/without: p50 {b['p50'] / a['p50']:.2f}x, p95 {b['p95'] / a['p95']:.2f}x "
        f"(goal <= 1.25x), extra unexpected errors {b['unexpected'] - a['unexpected']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
