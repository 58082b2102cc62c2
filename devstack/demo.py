"""``python -m devstack demo``: the product, end to end, on the local stack.

Brings the devstack up (real services, Prefect server, a process worker on pool
``devstack``), starts traffic through it (``python -m devstack traffic``, 5 requests a
second, as long as the stack runs), runs the same bootstrap the Railway worker runs
(pool, blocks, the stack's channels, automations, ``prefect deploy --all`` for stack
``devstack``), then runs every deployment once through the worker and prints each run's
final state and the Prefect UI's URL. Exits non-zero if any run did not complete.

The devstack keeps running afterwards (the health sweep every minute, as in
production); ``python -m devstack down`` stops it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from devstack.core import PAGERDUTY_ROUTING_KEY, POOL, PROJECT, STACK_NAME, Devstack

__all__ = [
    "DEMO_RUNS",
    "DEMO_TRAFFIC_RATE",
    "RUN_TIMEOUT_S",
    "RunOutcome",
    "bootstrap_env",
    "run_bootstrap",
    "run_demo",
    "run_every_deployment",
    "start_traffic",
    "summary",
]

RUN_TIMEOUT_S = 900
DEMO_TRAFFIC_RATE = 5.0

# In runbook order: watch, back up, prove the backup restores, a restore (dry run: it
# verifies the set and prints the plan without writing), then verify the deploy.
DEMO_RUNS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("health-sweep", {}),
    ("backup", {}),
    ("restore-drill", {}),
    ("restore", {"config": {"postgres_target": "demo_restore", "dry_run": True}}),
    ("deploy-verify", {}),
    ("ingestion-canary", {}),
    ("capacity", {}),
)


@dataclass
class RunOutcome:
    deployment: str
    flow_run_id: str
    name: str
    state: str
    seconds: float

    @property
    def completed(self) -> bool:
        return self.state == "Completed"


def bootstrap_env(devstack: Devstack) -> dict[str, str]:
    """The devstack's env as the Railway worker would see it, alerts to the receiver.

    The webhook and the pager come from channel variables, as on Railway; the devstack's
    Slack Block Kit route (added like an operator adds one in the UI) is kept by the
    bootstrap, so every channel kind the devstack has is exercised.
    """
    env = devstack.client_env()
    env["ALERT_WEBHOOK_URL"] = f"{devstack.receiver_url}/custom"
    env["PAGERDUTY_ROUTING_KEY"] = PAGERDUTY_ROUTING_KEY
    env["PAGERDUTY_EVENTS_URL"] = f"{devstack.receiver_url}/pagerduty"
    env["OPS_WORK_POOL"] = POOL
    env["OPS_PROJECT_DIR"] = str(PROJECT)
    return env


def run_bootstrap(
    devstack: Devstack,
    *extra: str,
    env: dict[str, str] | None = None,
    stack: str = STACK_NAME,
) -> subprocess.CompletedProcess[str]:
    """The bootstrap with ``--deploy`` for ``stack``; ``env`` adds variables."""
    argv = [
        sys.executable, "-m", "deployments.bootstrap",
        "--stack", stack, "--work-pool", POOL, "--deploy", *extra,
    ]  # fmt: skip
    return subprocess.run(
        argv,
        env={**bootstrap_env(devstack), "STACK_NAME": stack, **(env or {})},
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )


def run_every_deployment(devstack: Devstack) -> list[RunOutcome]:
    # Prefect reads its settings when first imported: point it at the devstack first.
    for key, value in devstack.client_env().items():
        if key.startswith("PREFECT_"):
            os.environ[key] = value
    from prefect.deployments import run_deployment

    outcomes = []
    for flow_name, parameters in DEMO_RUNS:
        name = f"{flow_name}/{STACK_NAME}"
        print(f"running {name} ...", flush=True)
        started = time.monotonic()
        flow_run: Any = run_deployment(
            name, parameters=parameters, timeout=RUN_TIMEOUT_S, poll_interval=2
        )
        state = flow_run.state.name if flow_run.state else "unknown"
        outcomes.append(
            RunOutcome(name, str(flow_run.id), flow_run.name, state, time.monotonic() - started)
        )
    return outcomes


def summary(outcomes: list[RunOutcome], ui_url: str) -> str:
    lines = [
        f"{'deployment':<26} {'flow run':<28} {'state':<11} {'seconds':>8}",
        "-" * 76,
    ]
    for o in outcomes:
        lines.append(f"{o.deployment:<26} {o.name:<28} {o.state:<11} {o.seconds:>8.1f}")
    lines.append("")
    lines.append(f"Prefect UI: {ui_url}")
    for o in outcomes:
        if not o.completed:
            lines.append(
                f"  {o.deployment} ended {o.state}: {ui_url}/runs/flow-run/{o.flow_run_id}"
            )
    return "\n".join(lines)


def start_traffic(devstack: Devstack, rate: float = DEMO_TRAFFIC_RATE) -> None:
    """Traffic through the stack for as long as it runs: a live stack, not a quiet one.

    Its own process (``python -m devstack traffic``), counts every minute in
    ``logs/traffic.log``; ``python -m devstack down`` stops it with the rest.
    """
    if devstack.running("traffic"):
        return
    argv = [
        sys.executable,
        "-m",
        "devstack",
        "traffic",
        "--dir",
        str(devstack.root),
        "--rate",
        str(rate),
        "--verbose",
        "--every",
        "60",
    ]
    devstack.spawn("traffic", argv, env={**os.environ, **devstack.client_env()})
    print(f"traffic: {rate:g} requests/s through LiteLLM (logs/traffic.log)", flush=True)


def run_demo(devstack: Devstack) -> int:
    print(f"bringing the devstack up in {devstack.root} ...", flush=True)
    devstack.up(with_worker=True)
    print("bootstrapping the control plane (stack 'devstack', pool 'devstack') ...", flush=True)
    done = run_bootstrap(devstack)
    print(done.stdout, end="")
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr, end="")
        return done.returncode
    start_traffic(devstack)
    outcomes = run_every_deployment(devstack)
    print()
    print(summary(outcomes, devstack.url("prefect")))
    failed = [o for o in outcomes if not o.completed]
    print(
        f"\n{len(outcomes) - len(failed)} of {len(outcomes)} runs completed. "
        "The devstack keeps running; stop it with `uv run python -m devstack down`."
    )
    return 1 if failed else 0
