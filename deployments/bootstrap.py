"""Turn any Prefect server into the control plane of one stack: ``python -m deployments.bootstrap``.

Run from the stack's environment (the worker service on Railway runs it at every
start; the devstack demo runs it with the devstack's env)::

    python -m deployments.bootstrap --stack production --deploy

In order, each step create-or-update by name, so running it twice changes nothing:

1. waits for the Prefect API (the server may still be starting);
2. the process work pool (``OPS_WORK_POOL``, default ``ops``);
3. our block types (every block class in ``blocks/``);
4. one notification block document per channel variable that is set
   (see :mod:`deployments.channels`);
5. the stack block document named after the stack (``Stack.from_env``), its routes
   from those channels and ``NOTIFICATION_ROUTES``; with neither set, the routes of
   an existing document (added in the UI) are kept; the backup and Langfuse buckets
   (a fresh MinIO has none);
6. the automations: failure -> notify, the watcher of the health sweeps, and
   undeliverable alerts -> notify
   (see :mod:`deployments.automations`);
7. with ``--deploy``: ``prefect deploy --all`` with ``STACK_NAME`` and every ``OPS_*``
   schedule variable filled (defaults in :mod:`deployments.settings`). A schedule an
   operator paused in the UI stays paused: when its ``OPS_<FLOW>_ACTIVE`` is not set,
   an existing deployment's inactive schedule is deployed inactive again. A variable
   that is set always wins.

Nothing secret is printed: the summary names documents, never their values.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import pkgutil
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx
from prefect.blocks.core import Block
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from pydantic import ValidationError

import blocks
from blocks.stack import Stack
from deployments.automations import (
    apply_automation,
    failure_automation,
    undeliverable_automation,
    watcher_automation,
)
from deployments.channels import (
    CHANNELS,
    ChannelDocument,
    channels_from_env,
    is_builtin,
    is_our_pager,
)
from deployments.deploy import paused_schedules, run_deploy
from deployments.report import BootstrapReport, Outcome, StepResult
from deployments.settings import (
    ControlPlaneSettings,
)
from tasks.decisions.alerts import NotificationRoute
from tasks.errors import ControlPlaneError, StackConfigError

__all__ = [
    "apply_automations",
    "block_document_ids",
    "bootstrap",
    "ensure_buckets",
    "ensure_work_pool",
    "main",
    "our_block_classes",
    "register_block_types",
    "save_block",
    "save_channels",
    "save_stack",
    "wait_for_api",
]

# ---- steps ----------------------------------------------------------------------------


async def wait_for_api(client: PrefectClient, wait: timedelta) -> None:
    """Poll the API's health endpoint until it answers, or give up after ``wait``."""
    deadline = time.monotonic() + wait.total_seconds()
    while True:
        error = await client.api_healthcheck()
        if error is None:
            return
        if time.monotonic() >= deadline:
            raise ControlPlaneError(
                f"the Prefect API at {client.api_url} did not answer within "
                f"{wait.total_seconds():.0f}s ({type(error).__name__}: {error}). Check "
                "PREFECT_API_URL (on Railway: http://prefect-server.railway.internal:4200/api), "
                "PREFECT_API_AUTH_STRING, and that the prefect-server service is running."
            )
        await asyncio.sleep(2.0)


async def ensure_work_pool(client: PrefectClient, name: str) -> StepResult:
    from prefect.workers.process import ProcessWorker

    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        await client.create_work_pool(
            WorkPoolCreate(
                name=name,
                type="process",
                description="Process worker of the operations layer (prefect-worker service).",
                base_job_template=ProcessWorker.get_default_base_job_template(),
            )
        )
        return StepResult(kind="work pool", name=name, outcome="created")
    if pool.type != "process":
        raise ControlPlaneError(
            f"work pool {name!r} exists with type {pool.type!r}, not 'process': the worker "
            "of this product is a process worker. Set OPS_WORK_POOL to another name, or "
            f"delete the pool (`prefect work-pool delete {name}`)."
        )
    return StepResult(kind="work pool", name=name, outcome="unchanged")


def our_block_classes() -> list[type[Block]]:
    """Every block class defined in the ``blocks`` package (its modules imported)."""
    found: dict[str, type[Block]] = {}
    for module_info in pkgutil.iter_modules(blocks.__path__, prefix="blocks."):
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(value, Block)
                and value.__module__.startswith("blocks.")
                and not inspect.isabstract(value)
                and "_block_type_slug" in vars(value)
            ):
                found[value.get_block_type_slug()] = value
    return [found[slug] for slug in sorted(found)]


async def register_block_types(client: PrefectClient) -> list[StepResult]:
    results = []
    for block_class in our_block_classes():
        await block_class.aregister_type_and_schema(client=client)
        results.append(
            StepResult(
                kind="block type",
                name=block_class.get_block_type_slug(),
                outcome="unchanged",
                note="registered",
            )
        )
    return results


def _dump(block: Block) -> dict[str, Any]:
    """The document's values, secrets included, without the loaded document's identity."""
    values = block.model_dump(mode="json", context={"include_secrets": True})
    return {key: value for key, value in values.items() if not key.startswith("_")}


async def save_block(block: Block, name: str) -> Outcome:
    """Save ``block`` as document ``name``: created, updated, or unchanged if equal."""
    try:
        current = await type(block).aload(name)
    except ValueError:
        await block.asave(name)
        return "created"
    if _dump(current) == _dump(block):
        return "unchanged"
    await block.asave(name, overwrite=True)
    return "updated"


async def save_channels(channels: Sequence[ChannelDocument]) -> list[StepResult]:
    results = []
    for channel in channels:
        outcome = await save_block(channel.block, channel.name)
        results.append(
            StepResult(
                kind="channel",
                name=channel.route.block,
                outcome=outcome,
                note=f"from {channel.channel.variable}, {channel.route.min_severity} and above",
            )
        )
    return results


async def save_stack(
    env: Mapping[str, str], stack_name: str, channels: Sequence[ChannelDocument]
) -> tuple[Stack, StepResult]:
    """The stack block from the environment, its routes merged with the existing ones.

    Routes from the environment (``NOTIFICATION_ROUTES`` and the channel variables)
    come first. A route added in the UI (to a block document the environment does not
    manage, such as a Slack Block Kit block) is kept across every worker restart; a
    route to a channel document whose variable is no longer set is dropped, unless the
    environment sets no channel at all (then every existing route is kept).
    """
    stack = Stack.from_env(env, stack_name=stack_name)
    routes: list[NotificationRoute] = list(stack.notifications)
    for channel in channels:
        if all(route.block != channel.route.block for route in routes):
            routes.append(channel.route)
    from_env = len(routes)
    existing_routes: list[NotificationRoute] | None = None
    try:
        existing: Block = await Stack.aload(stack_name)
        if isinstance(existing, Stack):
            existing_routes = list(existing.notifications)
    except ValueError:
        pass
    managed = {channel.slug(stack_name) for channel in CHANNELS}
    if existing_routes is None:
        note = f"{from_env} route(s) from the environment"
        if not routes:
            note = "no notification channel: alerts go nowhere"
    elif not routes:
        routes = existing_routes
        note = f"no channel in the environment; kept {len(routes)} existing route(s)"
    else:
        kept = [
            route
            for route in existing_routes
            if route.block not in managed and all(r.block != route.block for r in routes)
        ]
        routes += kept
        note = f"{from_env} route(s) from the environment"
        if kept:
            note += f", kept {len(kept)} added in the UI"
    stack.notifications = routes
    outcome = await save_block(stack, stack_name)
    return stack, StepResult(
        kind="stack block", name=f"llm-stack/{stack_name}", outcome=outcome, note=note
    )


async def block_document_ids(
    client: PrefectClient, routes: Sequence[NotificationRoute]
) -> list[UUID]:
    ids = []
    for route in routes:
        block_type, _, name = route.block.partition("/")
        try:
            document = await client.read_block_document_by_name(name, block_type)
        except ObjectNotFound:
            raise ControlPlaneError(
                f"the stack's route {route.block} names no block document: create it in the "
                "UI (Blocks) or remove the route from the stack block"
            ) from None
        ids.append(document.id)
    return ids


async def apply_automations(
    client: PrefectClient, stack: Stack, window: timedelta, report: BootstrapReport
) -> None:
    server_routes = [route for route in stack.notifications if is_builtin(route)]
    for route in stack.notifications:
        if is_our_pager(route):
            # by design: crashed runs and missing sweeps reach the chat channels; the pager
            # gets what flows send it, each incident resolved on recovery
            continue
        if not is_builtin(route):
            report.warnings.append(
                f"route {route.block} is not a built-in block type: the server cannot load it, "
                "so automations do not notify it (flows still do)"
            )
    if not server_routes:
        report.warnings.append(
            "no built-in notification channel: the failure and watcher automations notify nobody"
        )
    ids = await block_document_ids(client, server_routes)
    for wanted in (
        failure_automation(stack.stack_name, ids),
        watcher_automation(stack.stack_name, ids, window, stack.ui_url),
        undeliverable_automation(stack.stack_name, ids),
    ):
        result = await apply_automation(client, wanted)
        report.steps.append(
            StepResult(
                kind="automation",
                name=result.name,
                outcome=result.outcome,
                note=f"{len(ids)} channel(s)",
            )
        )


def ensure_buckets(stack: Stack, report: BootstrapReport) -> None:
    """The backup bucket and Langfuse's bucket exist (a fresh MinIO has none).

    Storage that does not answer is a warning, not a failed bootstrap: the health
    sweep reports it, and the next start creates what is missing.
    """
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError

    client = stack.s3()
    for bucket in dict.fromkeys((stack.backup_bucket, stack.langfuse_bucket)):
        try:
            if client.bucket_exists(bucket):
                outcome: Outcome = "unchanged"
            else:
                client.make_bucket(bucket)
                outcome = "created"
        except (S3Error, HTTPError, OSError) as exc:
            report.warnings.append(
                stack.error_line(
                    f"bucket {bucket}: not checked, S3 at {stack.s3_endpoint} "
                    f"answered {type(exc).__name__}: {exc}",
                    limit=300,
                )
            )
            continue
        report.steps.append(StepResult(kind="bucket", name=bucket, outcome=outcome))


# ---- the whole bootstrap -----------------------------------------------------------


async def bootstrap(
    env: Mapping[str, str], settings: ControlPlaneSettings, deploy: bool = False
) -> BootstrapReport:
    """Prepare the server ``PREFECT_API_URL`` points at for ``settings.stack``."""
    report = BootstrapReport(stack=settings.stack, work_pool=settings.work_pool)
    overrides: dict[str, str] = {}
    async with get_client() as client:
        await wait_for_api(client, settings.api_wait)
        report.steps.append(await ensure_work_pool(client, settings.work_pool))
        report.steps.extend(await register_block_types(client))
        channels = channels_from_env(env, settings.stack)
        report.steps.extend(await save_channels(channels))
        stack, step = await save_stack(env, settings.stack, channels)
        report.steps.append(step)
        await asyncio.to_thread(ensure_buckets, stack, report)
        await apply_automations(client, stack, settings.watcher_window, report)
        if deploy:
            overrides, steps = await paused_schedules(client, env, settings)
            report.steps.extend(steps)
    if deploy:
        deploy_vars = {**env, **overrides}
        report.steps.append(await asyncio.to_thread(run_deploy, deploy_vars, settings, stack))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.bootstrap",
        description="Prepare a Prefect server as the control plane of one stack.",
    )
    parser.add_argument("--stack", help="stack name (default: $STACK_NAME, else 'production')")
    parser.add_argument("--deploy", action="store_true", help="also run `prefect deploy --all`")
    parser.add_argument("--work-pool", help="process work pool (default: $OPS_WORK_POOL or 'ops')")
    parser.add_argument(
        "--watcher-window",
        type=float,
        metavar="SECONDS",
        help="alert when no health sweep completed for this long (default 300; env "
        "OPS_WATCHER_WINDOW_S)",
    )
    args = parser.parse_args(argv)
    env = dict(os.environ)
    try:
        settings = ControlPlaneSettings.from_env(
            env,
            stack=args.stack,
            work_pool=args.work_pool,
            watcher_window=(
                timedelta(seconds=args.watcher_window) if args.watcher_window is not None else None
            ),
        )
    except ValidationError as exc:
        print(f"bootstrap: invalid settings: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(bootstrap(env, settings, deploy=args.deploy))
    except (StackConfigError, ControlPlaneError, httpx.HTTPError) as exc:
        print(f"bootstrap of stack {settings.stack!r} failed: {exc}", file=sys.stderr)
        return 1
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
