"""Settings of the control plane, read from the environment, with their defaults.

The one place the defaults of the ``{{ $VAR }}`` placeholders in ``prefect.yaml`` live:
:func:`deploy_env` fills every variable the environment does not set, so
``prefect deploy --all`` run by the bootstrap always sees a complete configuration,
and any of them can be overridden with a Railway variable of the same name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DEPLOY_DEFAULTS",
    "FLOWS",
    "HEALTH_SWEEP_FLOW",
    "PREFECT_FILE",
    "PROJECT_DIR",
    "SCHEDULES",
    "ControlPlaneSettings",
    "ScheduleSpec",
    "deploy_env",
]

PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFECT_FILE = PROJECT_DIR / "prefect.yaml"

# Our flows, by flow name -> entrypoint (the deployments prefect.yaml defines).
FLOWS: dict[str, str] = {
    "health-sweep": "flows/health_sweep.py:health_sweep",
    "backup": "flows/backup.py:backup",
    "restore-drill": "flows/restore_drill.py:restore_drill",
    "deploy-verify": "flows/deploy_verify.py:deploy_verify",
    "restore": "flows/restore.py:restore",
    "ingestion-canary": "flows/ingestion_canary.py:ingestion_canary",
    "capacity": "flows/capacity.py:capacity",
}
HEALTH_SWEEP_FLOW = "health-sweep"


class ScheduleSpec(BaseModel):
    """One deployment's schedule as prefect.yaml defines it."""

    model_config = ConfigDict(frozen=True)

    slug: str = Field(description="The schedule's slug in prefect.yaml.")
    active_variable: str = Field(description="The OPS_*_ACTIVE variable of its `active`.")


# The schedules prefect.yaml defines, by flow name (the restore has none).
SCHEDULES: dict[str, ScheduleSpec] = {
    "health-sweep": ScheduleSpec(slug="health-sweep", active_variable="OPS_HEALTH_SWEEP_ACTIVE"),
    "backup": ScheduleSpec(slug="backup-daily", active_variable="OPS_BACKUP_ACTIVE"),
    "restore-drill": ScheduleSpec(
        slug="restore-drill-weekly", active_variable="OPS_RESTORE_DRILL_ACTIVE"
    ),
    "deploy-verify": ScheduleSpec(
        slug="deploy-verify-daily", active_variable="OPS_DEPLOY_VERIFY_ACTIVE"
    ),
    "ingestion-canary": ScheduleSpec(
        slug="ingestion-canary", active_variable="OPS_INGESTION_CANARY_ACTIVE"
    ),
    "capacity": ScheduleSpec(slug="capacity-daily", active_variable="OPS_CAPACITY_ACTIVE"),
}

_STACK_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def _version() -> str:
    try:
        return metadata.version("litellm-langfuse-ops")
    except metadata.PackageNotFoundError:
        return "0.0.0"


# Defaults of the prefect.yaml placeholders (STACK_NAME and OPS_PROJECT_DIR are
# filled from the bootstrap's own options).
DEPLOY_DEFAULTS: dict[str, str] = {
    "OPS_WORK_POOL": "ops",
    "OPS_VERSION": _version(),
    "OPS_HEALTH_SWEEP_CRON": "* * * * *",
    "OPS_HEALTH_SWEEP_ACTIVE": "true",
    "OPS_BACKUP_CRON": "0 3 * * *",
    "OPS_BACKUP_ACTIVE": "true",
    "OPS_RESTORE_DRILL_CRON": "0 4 * * 0",
    "OPS_RESTORE_DRILL_ACTIVE": "true",
    "OPS_DEPLOY_VERIFY_CRON": "30 6 * * *",
    "OPS_DEPLOY_VERIFY_ACTIVE": "false",
    "OPS_INGESTION_CANARY_CRON": "*/10 * * * *",
    "OPS_INGESTION_CANARY_ACTIVE": "true",
    "OPS_CAPACITY_CRON": "15 5 * * *",
    "OPS_CAPACITY_ACTIVE": "true",
}


class ControlPlaneSettings(BaseModel):
    """What the bootstrap prepares, for one stack on one Prefect server."""

    model_config = ConfigDict(frozen=True)

    stack: str = Field(
        default="production",
        pattern=_STACK_NAME_RE.pattern,
        description="Stack name: the stack block document and every deployment's name.",
    )
    work_pool: str = Field(default="ops", min_length=1, description="Process work pool.")
    project_dir: Path = Field(default=PROJECT_DIR, description="Where the flows are on the worker.")
    watcher_window: timedelta = Field(
        default=timedelta(minutes=5),
        ge=timedelta(seconds=10),
        le=timedelta(hours=24),
        description="Alert when no health sweep completed for this long.",
    )
    api_wait: timedelta = Field(
        default=timedelta(minutes=5),
        ge=timedelta(0),
        le=timedelta(hours=1),
        description="How long to wait for the Prefect API to answer before giving up.",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: object) -> ControlPlaneSettings:
        values: dict[str, object] = {}
        if env.get("STACK_NAME"):
            values["stack"] = env["STACK_NAME"]
        if env.get("OPS_WORK_POOL"):
            values["work_pool"] = env["OPS_WORK_POOL"]
        if env.get("OPS_PROJECT_DIR"):
            values["project_dir"] = Path(env["OPS_PROJECT_DIR"])
        if env.get("OPS_WATCHER_WINDOW_S"):
            values["watcher_window"] = timedelta(seconds=float(env["OPS_WATCHER_WINDOW_S"]))
        if env.get("OPS_API_WAIT_S"):
            values["api_wait"] = timedelta(seconds=float(env["OPS_API_WAIT_S"]))
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls.model_validate(values)


def deploy_env(env: Mapping[str, str], settings: ControlPlaneSettings) -> dict[str, str]:
    """The environment ``prefect deploy --all`` runs in: defaults, then ``env``, then ours."""
    merged = {**DEPLOY_DEFAULTS, **{k: v for k, v in env.items() if v != ""}}
    merged.update(
        {
            "STACK_NAME": settings.stack,
            "OPS_WORK_POOL": settings.work_pool,
            "OPS_PROJECT_DIR": str(settings.project_dir),
        }
    )
    return merged
