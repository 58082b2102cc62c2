"""``python -m devstack up|down|status|env|demo``: the local stack on 127.0.0.1."""

from __future__ import annotations

import argparse
import sys

from devstack.core import Devstack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env", "demo"])
    parser.add_argument("--dir", help="state folder (default: .devstack or $DEVSTACK_DIR)")
    parser.add_argument("--no-worker", action="store_true", help="do not start a Prefect worker")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
