"""Game day: every scripted incident against the whole control plane, and its table.

    uv run python bench/gameday.py [--dir .devstack] [--interval 20] [--rate 5] [--only NAME]

Against a running devstack with its worker (``python -m devstack up``): a fast
``health-sweep`` deployment (``--interval`` seconds, alert after 2 bad sweeps, recover
after 2 good ones) sweeps the stack while traffic flows at ``--rate`` requests/s, and
each scenario of ``devstack/gameday/`` is played in turn. Prints, per scenario, what
every channel accepted, pages, duplicates, lost pages, PagerDuty incidents left open,
seconds to the first page against the bound (alert_after + 1) x interval, and a verdict
line. Exits 1 if any scenario failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.core import Devstack  # noqa: E402
from devstack.gameday import HEADER, GameDay, scenarios  # noqa: E402
from devstack.traffic import Traffic  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=os.environ.get("DEVSTACK_DIR"), help="devstack folder")
    parser.add_argument("--interval", type=float, default=20.0, help="seconds between sweeps")
    parser.add_argument("--rate", type=float, default=5.0, help="traffic, requests/s")
    parser.add_argument("--short", action="store_true", help="only the test suite's scenarios")
    parser.add_argument(
        "--only",
        default="",
        help="only the scenarios whose name contains one of these (comma-separated)",
    )
    args = parser.parse_args()
    stack = Devstack(args.dir, log=lambda _m: None)
    for key, value in stack.client_env().items():
        if key.startswith("PREFECT_"):
            os.environ[key] = value
    outcomes = []
    with Traffic(stack, rate=args.rate) as traffic, GameDay(stack, interval_s=args.interval) as day:
        print(HEADER, flush=True)
        for scenario in scenarios(short=args.short):
            if not any(part in scenario.name for part in args.only.split(",")):
                continue
            outcome = day.play(scenario)
            outcomes.append(outcome)
            print(outcome.row(), flush=True)
        report = traffic.report()
    failed = [o.scenario for o in outcomes if not o.passed]
    print(f"\ntraffic: {report.summary()}")
    print(
        f"verdict: {len(outcomes) - len(failed)} of {len(outcomes)} scenarios passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
