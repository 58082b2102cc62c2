"""The bootstrap's last step: ``prefect deploy --all`` with every placeholder filled, and a
schedule an operator paused in the UI kept paused."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound

from blocks.stack import Stack
from deployments.report import StepResult
from deployments.settings import PREFECT_FILE, SCHEDULES, ControlPlaneSettings, deploy_env
from tasks.errors import ControlPlaneError

__all__ = ["DEPLOY_TIMEOUT_S", "paused_schedules", "run_deploy"]

DEPLOY_TIMEOUT_S = 600


async def paused_schedules(
    client: PrefectClient, env: Mapping[str, str], settings: ControlPlaneSettings
) -> tuple[dict[str, str], list[StepResult]]:
    """``OPS_<FLOW>_ACTIVE=false`` for every schedule paused on the server and not set in ``env``.

    ``prefect deploy`` sets each schedule's ``active`` from its variable; without this,
    a schedule paused in the UI would be re-activated by every worker start.
    """
    overrides: dict[str, str] = {}
    steps: list[StepResult] = []
    for flow, spec in SCHEDULES.items():
        if env.get(spec.active_variable, "") != "":
            continue  # the operator's variable wins
        try:
            deployment = await client.read_deployment_by_name(f"{flow}/{settings.stack}")
        except ObjectNotFound:
            continue
        paused = [s for s in deployment.schedules if s.slug == spec.slug and not s.active]
        if not paused:
            continue
        overrides[spec.active_variable] = "false"
        steps.append(
            StepResult(
                kind="schedule",
                name=f"{flow}/{settings.stack} {spec.slug}",
                outcome="unchanged",
                note=(
                    "stays paused as set in the UI; resume it with the UI toggle, "
                    f"or set {spec.active_variable}=true"
                ),
            )
        )
    return overrides, steps


def run_deploy(
    env: Mapping[str, str], settings: ControlPlaneSettings, stack: Stack | None
) -> StepResult:
    """``prefect deploy --all`` from the project folder, with every placeholder filled."""
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    argv = [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE)]
    try:
        done = subprocess.run(
            argv,
            cwd=settings.project_dir,
            env=deploy_env(env, settings),
            capture_output=True,
            text=True,
            timeout=DEPLOY_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ControlPlaneError(
            f"`prefect deploy --all` did not finish within {DEPLOY_TIMEOUT_S}s; "
            "check that the Prefect API answers"
        ) from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-3000:]
        if stack is not None:
            output = stack.scrub(output)
        raise ControlPlaneError(
            f"`prefect deploy --all` failed (exit {done.returncode}) for stack "
            f"{settings.stack!r}:\n{output}"
        )
    return StepResult(
        kind="deployments",
        name=f"*/{settings.stack}",
        outcome="deployed",
        note=str(PREFECT_FILE.name),
    )
