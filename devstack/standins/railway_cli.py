#!/usr/bin/env python3
"""Test stand-in for Railway's CLI: the two `railway variable` commands
``deployments.railway_secrets`` runs, on variables kept in a JSON file.

    railway_cli.py variable list --service S --json [--environment E]
    railway_cli.py variable set NAME --stdin --service S --skip-deploys [--environment E]

State: ``$RAILWAY_STANDIN_STATE`` (``{"<service>": {"NAME": "value"}}``; a sealed
variable is ``null``, listed without its value as the CLI lists it); a service
missing from it does not exist (exit 1, like the CLI's "Service not found"). Every call
is appended to ``$RAILWAY_STANDIN_STATE.calls`` (arguments only, never stdin) so tests
can check that no value ever went on a command line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    state_file = Path(os.environ["RAILWAY_STANDIN_STATE"])
    with Path(f"{state_file}.calls").open("a") as calls:
        calls.write(json.dumps(argv) + "\n")
    state = json.loads(state_file.read_text())
    args = list(argv)

    def option(flag: str) -> str | None:
        if flag in args:
            index = args.index(flag)
            value = args[index + 1]
            del args[index : index + 2]
            return value
        return None

    service = option("--service")
    option("--environment")
    flags = {a for a in args if a.startswith("--")}
    words = [a for a in args if not a.startswith("--")]
    if service not in state:
        print(f"Service '{service}' not found", file=sys.stderr)
        return 1
    if words[:2] == ["variable", "list"] and "--json" in flags:
        print(json.dumps(state[service]))
        return 0
    if words[:2] == ["variable", "set"] and len(words) == 3 and "--stdin" in flags:
        state[service][words[2]] = sys.stdin.read().rstrip("\n")
        state_file.write_text(json.dumps(state))
        return 0
    print(f"unsupported: {' '.join(argv)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
