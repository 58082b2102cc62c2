"""What the bootstrap did, step by step: the report it prints (never a secret value)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["BootstrapReport", "Outcome", "StepResult"]

Outcome = Literal["created", "updated", "unchanged"]


class StepResult(BaseModel):
    """What one step did to one object on the server."""

    kind: str
    name: str
    outcome: Outcome | Literal["deployed", "skipped"]
    note: str = ""


class BootstrapReport(BaseModel):
    stack: str
    work_pool: str
    steps: list[StepResult] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def changed(self) -> list[StepResult]:
        """Steps that created or updated something (deploys excluded)."""
        return [step for step in self.steps if step.outcome in ("created", "updated")]

    def render(self) -> str:
        lines = [f"bootstrap of stack {self.stack!r} (work pool {self.work_pool!r}):"]
        for step in self.steps:
            note = f"  ({step.note})" if step.note else ""
            lines.append(f"  {step.kind:<18} {step.name:<40} {step.outcome}{note}")
        lines.extend(f"  warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)
