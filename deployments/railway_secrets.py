"""Generate the stack's secrets in Railway once, and never again.

``railway.toml`` marks a secret as generated (``generate = "secret"``, or a default
holding ``${{secret(LENGTH)}}`` / ``${{secret(LENGTH, "ALPHABET")}}`` after a prefix
such as ``sk-``). Railway's Infrastructure as Code has no generator it documents, so the
project definition (``.railway/railway.py``) declares every such variable
``preserve()``: an apply keeps the value set in Railway. This module sets those values:

    uv run python -m deployments.railway_secrets            # after the first apply
    uv run python -m deployments.railway_secrets --dry-run  # what it would set

For each service it lists the variables already set (``railway variable list --service
S --json``; a sealed one is listed without its value, and counts as set: Railway's CLI 5
or later) and sets only the generated secrets that are missing, each through stdin
(``railway variable set NAME --stdin --service S --skip-deploys``), so no value is on a
command line or in this program's output. Run it again and it sets nothing: a salt key
set once is never replaced.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import string
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from deployments.railway import Template, load_template

__all__ = [
    "DEFAULT_ALPHABET",
    "GeneratedSecret",
    "RailwayCli",
    "generate",
    "generated_secrets",
    "main",
    "seed",
]

# Letters and digits: a generated password sits inside DATABASE_URLs and shell start
# commands, where other characters would need quoting.
DEFAULT_ALPHABET = string.ascii_letters + string.digits
DEFAULT_LENGTH = 32
_SECRET_CALL = re.compile(r'\$\{\{\s*secret\(\s*(\d*)\s*(?:,\s*"([^"]+)"\s*)?\)\s*\}\}')


class GeneratedSecret(BaseModel):
    service: str
    name: str
    spec: str  # the value with its ${{secret(...)}} calls, e.g. "sk-${{secret(48)}}"


def generated_secrets(template: Template) -> list[GeneratedSecret]:
    """Every variable railway.toml generates, in the file's order."""
    found = []
    for service in template.services.values():
        for variable in service.env.values():
            if variable.generate == "secret":
                spec = f"${{{{secret({DEFAULT_LENGTH})}}}}"
            elif variable.default and _SECRET_CALL.search(variable.default):
                spec = variable.default
            else:
                continue
            found.append(GeneratedSecret(service=service.name, name=variable.name, spec=spec))
    return found


def generate(spec: str) -> str:
    """``spec`` with each ``${{secret(n[, "alphabet"])}}`` replaced by random characters."""

    def draw(match: re.Match[str]) -> str:
        length = int(match[1] or DEFAULT_LENGTH)
        alphabet = match[2] or DEFAULT_ALPHABET
        return "".join(secrets.choice(alphabet) for _ in range(length))

    return _SECRET_CALL.sub(draw, spec)


class RailwayCli:
    """The Railway CLI of the linked project (``railway link`` or ``RAILWAY_TOKEN``)."""

    def __init__(self, executable: str = "railway", environment: str | None = None) -> None:
        self.executable = executable
        self.environment = environment

    def _run(self, args: list[str], stdin: str | None = None) -> str:
        argv = [self.executable, *args]
        if self.environment:
            argv += ["--environment", self.environment]
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            shown = " ".join(argv[:4])
            raise RuntimeError(f"`{shown} ...` failed: {done.stderr.strip()[-500:]}")
        return done.stdout

    def variable_names(self, service: str) -> set[str]:
        listed: Any = json.loads(
            self._run(["variable", "list", "--service", service, "--json"]) or "{}"
        )
        if not isinstance(listed, dict):
            raise RuntimeError(f"railway variable list --json for {service}: expected an object")
        # A sealed variable is listed without its value (null): it is set, and kept.
        return set(listed)

    def set_variable(self, service: str, name: str, value: str) -> None:
        self._run(
            ["variable", "set", name, "--stdin", "--service", service, "--skip-deploys"],
            stdin=value,
        )


def seed(template: Template, cli: RailwayCli, dry_run: bool = False) -> list[str]:
    """Set every generated secret missing in Railway; one line per variable, no value."""
    lines = []
    wanted = generated_secrets(template)
    present: dict[str, set[str]] = {}
    for secret in wanted:
        if secret.service not in present:
            present[secret.service] = cli.variable_names(secret.service)
        where = f"{secret.service}.{secret.name}"
        if secret.name in present[secret.service]:
            lines.append(f"kept      {where} (already set: never regenerated)")
            continue
        if not dry_run:
            cli.set_variable(secret.service, secret.name, generate(secret.spec))
        lines.append(f"{'would set' if dry_run else 'generated'} {where}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.railway_secrets",
        description="Generate railway.toml's secrets in the linked Railway project, once.",
    )
    parser.add_argument("--dry-run", action="store_true", help="list, set nothing")
    parser.add_argument("--environment", help="Railway environment (default: the linked one)")
    parser.add_argument("--railway", default="railway", help="the Railway CLI executable")
    args = parser.parse_args(argv)
    cli = RailwayCli(args.railway, args.environment)
    try:
        lines = seed(load_template(), cli, dry_run=args.dry_run)
    except (RuntimeError, OSError, json.JSONDecodeError) as exc:
        print(f"railway_secrets: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
