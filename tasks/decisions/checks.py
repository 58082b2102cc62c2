"""The one vocabulary of checks that pass or fail: check -> result -> verdict.

- A **check** is one thing a flow proves about the stack, named in kebab-case
  (``postgres-row-counts``, ``litellm-canary``). The task that runs it does the I/O.
- Its **result** is a :class:`CheckResult`: ``passed``, ``failed`` or ``skipped``
  (:data:`CheckStatus`), a one-line message a person can act on, the fix when one is
  known, and the component it concerns when a flow has several. Build one with
  :func:`passed`, :func:`failed` or :func:`skipped`.
- A **verdict** is what a flow concludes from all its results: the restore drill's
  ``DrillReport.passed``, deploy-verify's ``tasks.decisions.deploy_checks.verdict``.

The drill, the restore and deploy-verify all speak it. The health sweep measures
services on another scale (healthy, degraded, unhealthy): that is a
``tasks.decisions.health.ServiceHealth``, not a check result.

Pure: no Prefect, no I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CheckResult", "CheckStatus", "failed", "passed", "skipped"]

CheckStatus = Literal["passed", "failed", "skipped"]


class CheckResult(BaseModel):
    """What one check found: its status, a one-line message, and the fix when it failed."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="The check's kebab-case name, e.g. 'postgres-row-counts'.")
    status: CheckStatus
    message: str = Field(description="What was found; for a failure, what differs and where.")
    fix: str | None = Field(default=None, description="What a person does to make it pass.")
    component: str | None = Field(
        default=None, description="Which part it concerns, e.g. 'postgres' (the drill sets it)."
    )
    unhealthy_services: tuple[str, ...] = Field(
        default=(),
        description="Services found unhealthy, so the checks that need them are skipped "
        "(deploy-verify's services-healthy sets these).",
    )

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def passed(name: str, message: str, *, component: str | None = None) -> CheckResult:
    return CheckResult(name=name, status="passed", message=message, component=component)


def failed(
    name: str, message: str, *, fix: str | None = None, component: str | None = None
) -> CheckResult:
    return CheckResult(name=name, status="failed", message=message, fix=fix, component=component)


def skipped(
    name: str, message: str, *, fix: str | None = None, component: str | None = None
) -> CheckResult:
    return CheckResult(name=name, status="skipped", message=message, fix=fix, component=component)
