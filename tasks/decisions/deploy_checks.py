"""Deploy-verify decisions: the checks, their order, skipping, the verdict and the report.

Pure: no Prefect, no I/O. The tasks that talk to the stack return a
:class:`~tasks.decisions.checks.CheckResult` (passed / failed / skipped, what was seen,
how to fix it); the pieces here decide what those results mean:

- :data:`CHECKS` lists every check in dependency order, with what it needs: other
  checks (the canary needs the model list, the trace needs the canary) and services
  (the schema check needs Postgres). A check whose prerequisite failed is skipped with
  that reason instead of failing a second time, so one broken thing is one red line.
- :class:`Ledger` runs checks in that order, skips the blocked ones and times the rest.
- :func:`verdict` fails the run when a required check failed; :func:`render_report`
  writes the table a person reads to fix it.
- The judge functions (``judge_*``, in ``deploy_judges``) turn what a task observed into a
  result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from tasks.decisions.checks import CheckResult, failed, skipped
from tasks.decisions.redaction import error_line

__all__ = [
    "CHECKS",
    "CHECK_NAMES",
    "MARKS",
    "CheckSpec",
    "Ledger",
    "ReportRow",
    "Verdict",
    "blocked_reason",
    "plan_checks",
    "render_report",
    "table_rows",
    "validate_order",
    "verdict",
]

MARKS: dict[str, str] = {"passed": "✅ passed", "failed": "❌ failed", "skipped": "⏭️ skipped"}


class CheckSpec(BaseModel):
    """One check: its name, what it proves, and what it needs to be meaningful."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=r"^[a-z0-9-]+$")
    title: str
    depends_on: tuple[str, ...] = Field(default=(), description="Checks that must pass first.")
    services: tuple[str, ...] = Field(
        default=(), description="Services (health-check names) that must not be unhealthy."
    )
    required: bool = True


class ReportRow(CheckResult):
    """One row of the report: a check's result with its title, whether it is required, and
    how long it took."""

    title: str
    required: bool
    seconds: float = Field(ge=0)


CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec(name="master-key", title="LITELLM_MASTER_KEY starts with sk-"),
    CheckSpec(name="salt-key", title="LITELLM_SALT_KEY unchanged since the first verification"),
    CheckSpec(name="services-healthy", title="Every service healthy (health-sweep checks)"),
    CheckSpec(
        name="litellm-auth",
        title="LiteLLM rejects a request without a key",
        services=("litellm",),
    ),
    CheckSpec(
        name="litellm-models",
        title="LiteLLM accepts the master key and lists the canary model",
        depends_on=("master-key",),
        services=("litellm",),
    ),
    CheckSpec(
        name="litellm-canary",
        title="Canary chat completion succeeds",
        depends_on=("litellm-models",),
        services=("litellm",),
    ),
    CheckSpec(
        name="langfuse-trace",
        title="The canary's trace reaches Langfuse",
        depends_on=("litellm-canary",),
        services=("langfuse-web", "langfuse-worker"),
    ),
    CheckSpec(
        name="postgres-schema",
        title="Postgres holds LiteLLM's and Langfuse's schema",
        services=("postgres",),
    ),
    CheckSpec(
        name="clickhouse-schema",
        title="ClickHouse holds Langfuse's tables",
        services=("clickhouse",),
    ),
    CheckSpec(
        name="redis-persistence",
        title="Redis has AOF on and the configured maxmemory policy",
        services=("redis",),
    ),
    CheckSpec(
        name="s3-buckets",
        title="S3 buckets exist; a canary object is written, read and deleted",
        services=("object-storage",),
    ),
    CheckSpec(
        name="backup-fresh",
        title="Newest complete backup set is fresh",
        depends_on=("s3-buckets",),
    ),
    CheckSpec(
        name="offsite-copy",
        title="Newest off-site copy is fresh; the off-site bucket's versioning and object lock",
        required=False,
    ),
    CheckSpec(
        name="railway-deployments",
        title="Railway reports every service's latest deployment successful",
        required=False,
    ),
)
CHECK_NAMES: tuple[str, ...] = tuple(spec.name for spec in CHECKS)


def plan_checks(specs: Sequence[CheckSpec], required: dict[str, bool]) -> list[CheckSpec]:
    """The specs with ``required`` overridden by configuration (e.g. require_railway)."""
    return [
        spec.model_copy(update={"required": required[spec.name]}) if spec.name in required else spec
        for spec in specs
    ]


def validate_order(specs: Sequence[CheckSpec]) -> None:
    """Every dependency names an earlier check; raises ValueError otherwise."""
    seen: set[str] = set()
    for spec in specs:
        for dep in spec.depends_on:
            if dep not in seen:
                raise ValueError(
                    f"check {spec.name!r} depends on {dep!r}, which does not run first"
                )
        if spec.name in seen:
            raise ValueError(f"check {spec.name!r} is listed twice")
        seen.add(spec.name)


def blocked_reason(
    spec: CheckSpec, outcomes: dict[str, ReportRow], unhealthy: Iterable[str]
) -> str | None:
    """Why ``spec`` cannot run meaningfully now, or None when it can."""
    for dep in spec.depends_on:
        outcome = outcomes.get(dep)
        if outcome is None:
            return f"{dep} did not run"
        if outcome.status != "passed":
            return f"depends on {dep}, which {outcome.status}"
    down = [service for service in spec.services if service in set(unhealthy)]
    if down:
        return f"{', '.join(down)} unhealthy (see services-healthy)"
    return None


class Ledger:
    """Runs checks in dependency order and records one :class:`ReportRow` per check.

    ``ledger.run("redis-persistence", check_redis_persistence, stack)`` calls the
    check unless a prerequisite failed (then records it skipped, with
    the reason), and times it. A check that raises is recorded failed with the exception's text (the
    caller's tasks scrub secrets before raising), so one broken check never hides the
    others. A row takes its name and title from the spec the ledger ran.
    """

    def __init__(
        self,
        specs: Sequence[CheckSpec],
        clock: Callable[[], float] = time.monotonic,
        scrub: Callable[[str], str] = str,
        on_outcome: Callable[[ReportRow], None] | None = None,
    ) -> None:
        validate_order(specs)
        self.specs = {spec.name: spec for spec in specs}
        self.order = [spec.name for spec in specs]
        self.outcomes: dict[str, ReportRow] = {}
        self.unhealthy: set[str] = set()
        self._clock = clock
        self._scrub = scrub
        self._on_outcome = on_outcome

    def blocked(self, name: str) -> str | None:
        return blocked_reason(self.specs[name], self.outcomes, self.unhealthy)

    def record(self, name: str, result: CheckResult, seconds: float = 0.0) -> ReportRow:
        spec = self.specs[name]
        if name in self.outcomes:
            raise ValueError(f"check {name!r} already recorded")
        self.unhealthy.update(result.unhealthy_services)
        outcome = ReportRow(
            name=name,
            title=spec.title,
            status=result.status,
            required=spec.required,
            message=self._scrub(result.message),
            fix=self._scrub(result.fix) if result.fix else None,
            seconds=max(0.0, seconds),
        )
        self.outcomes[name] = outcome
        if self._on_outcome is not None:
            self._on_outcome(outcome)
        return outcome

    def run(self, name: str, check: Callable[..., CheckResult], *args: object) -> ReportRow:
        reason = self.blocked(name)
        if reason is not None:
            return self.record(name, skipped(name, f"skipped: {reason}"))
        started = self._clock()
        try:
            result = check(*args)
        except Exception as exc:  # a check that crashed is a failed check, not a lost report
            result = failed(
                name,
                f"the check itself failed: {error_line(exc, self._scrub)}",
                fix="read the flow run's logs for the traceback; fix the cause and run again",
            )
        return self.record(name, result, self._clock() - started)

    def results(self) -> list[ReportRow]:
        """Outcomes in check order; checks that never ran are reported as skipped."""
        rows = []
        for name in self.order:
            outcome = self.outcomes.get(name)
            if outcome is None:
                spec = self.specs[name]
                outcome = ReportRow(
                    name=name,
                    title=spec.title,
                    status="skipped",
                    required=spec.required,
                    message="skipped: not run",
                    seconds=0.0,
                )
            rows.append(outcome)
        return rows


class Verdict(BaseModel):
    passed: bool
    failed_required: list[str]
    failed_optional: list[str]
    summary: str


def verdict(stack: str, outcomes: Sequence[ReportRow]) -> Verdict:
    """The run passes unless a required check failed; the summary names each failure."""
    failed_required = [o for o in outcomes if o.status == "failed" and o.required]
    failed_optional = [o for o in outcomes if o.status == "failed" and not o.required]
    counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("passed", "failed", "skipped")}
    tally = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    if failed_required:
        lines = [
            f"deploy-verify on {stack}: {len(failed_required)} required check(s) failed ({tally})."
        ]
        lines += [
            f"- {o.name}: {o.message} Fix: {o.fix or 'see the report'}" for o in failed_required
        ]
        summary = "\n".join(lines)
    else:
        summary = f"deploy-verify on {stack}: passed ({tally})."
        if failed_optional:
            summary += " Optional check(s) failed: " + ", ".join(o.name for o in failed_optional)
    return Verdict(
        passed=not failed_required,
        failed_required=[o.name for o in failed_required],
        failed_optional=[o.name for o in failed_optional],
        summary=summary,
    )


def _cell(text: str | None) -> str:
    if not text:
        return ""
    escaped = text.replace("\\", "\\\\").replace("|", "\\|")
    return "<br>".join(escaped.splitlines())  # every line break, \x85 and \u2028 included


def render_report(
    stack: str,
    outcomes: Sequence[ReportRow],
    *,
    run_name: str,
    started_at: datetime,
    seconds: float,
    trace_id: str | None,
) -> str:
    """The markdown report: verdict, then one table row per check with timing and fix."""
    result = verdict(stack, outcomes)
    headline = "PASSED" if result.passed else "FAILED"
    lines = [
        f"# deploy-verify on `{stack}`: {headline}",
        "",
        f"Run `{run_name}` started {started_at:%Y-%m-%d %H:%M:%S %Z}, took {seconds:.1f} s. "
        + (f"Canary trace id: `{trace_id}`." if trace_id else "No canary trace was sent."),
        "",
        "| # | check | result | required | time | details | how to fix |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, o in enumerate(outcomes, start=1):
        lines.append(
            f"| {number} | **{o.name}**<br>{_cell(o.title)} | {MARKS[o.status]} | "
            f"{'yes' if o.required else 'no'} | {o.seconds:.2f} s | {_cell(o.message)} | "
            f"{_cell(o.fix)} |"
        )
    lines += ["", _cell(result.summary).replace("<br>", "\n\n")]
    return "\n".join(lines)


def table_rows(outcomes: Sequence[ReportRow]) -> list[dict[str, str]]:
    """The report as rows for a Prefect table artifact (strings only, UI-sortable)."""
    return [
        {
            "check": o.name,
            "result": o.status,
            "required": "yes" if o.required else "no",
            "seconds": f"{o.seconds:.2f}",
            "details": o.message,
            "fix": o.fix or "",
        }
        for o in outcomes
    ]
