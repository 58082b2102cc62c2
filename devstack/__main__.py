"""``python -m devstack up|down|status|env|demo|traffic``: the local stack on 127.0.0.1."""

from __future__ import annotations

import argparse
import sys

from devstack.core import Devstack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env", "demo", "traffic"])
    parser.add_argument("--dir", help="state folder (default: .devstack or $DEVSTACK_DIR)")
    parser.add_argument("--no-worker", action="store_true", help="do not start a Prefect worker")
    traffic = parser.add_argument_group("traffic (through the running stack)")
    traffic.add_argument("--rate", type=float, default=10.0, help="chat completions per second")
    traffic.add_argument(
        "--duration", type=float, default=0.0, help="seconds; 0 runs until Ctrl-C or SIGTERM"
    )
    traffic.add_argument("--stream-share", type=float, default=0.2, help="share streamed")
    traffic.add_argument(
        "--fail-share", type=float, default=0.05, help="share sent to the always-failing model"
    )
    traffic.add_argument("--concurrency", type=int, default=32, help="requests in flight, at most")
    traffic.add_argument("--verbose", action="store_true", help="print the counts as it runs")
    traffic.add_argument(
        "--every", type=float, default=5.0, help="seconds between --verbose reports"
    )
    args = parser.parse_args(argv)
    stack = Devstack(args.dir)
    if args.command == "up":
        stack.up(with_worker=not args.no_worker)
        print(f"devstack up in {stack.root}; env file: {stack.root / 'stack.env'}")
        print(f"Prefect UI: {stack.url('prefect')}")
    elif args.command == "down":
        stack.down()
        bound = stack.bound_ports()
        print("devstack down" + (f"; ports still bound: {bound}" if bound else ""))
        return 1 if bound else 0
    elif args.command == "status":
        for name, state in stack.status().items():
            print(f"{name:16} {state}")
    elif args.command == "env":
        print(stack.write_env_file().read_text(), end="")
    elif args.command == "demo":
        from devstack.demo import run_demo

        return run_demo(stack)
    elif args.command == "traffic":
        from devstack.traffic import run_traffic

        return run_traffic(
            stack,
            rate=args.rate,
            duration_s=args.duration,
            stream_share=args.stream_share,
            fail_share=args.fail_share,
            concurrency=args.concurrency,
            every_s=args.every if args.verbose else None,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
