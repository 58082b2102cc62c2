"""deploy-verify's decisions, without Prefect or I/O: order, skipping, verdict, report, judges."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.decisions.checks import CheckResult, failed, passed
from tasks.decisions.deploy_checks import (
    CHECK_NAMES,
    CHECKS,
    CheckSpec,
    Ledger,
    blocked_reason,
    plan_checks,
    render_report,
    table_rows,
    validate_order,
    verdict,
)
from tasks.decisions.deploy_judges import (
    BucketProbe,
    RailwayService,
    SaltRecord,
    judge_backup_age,
    judge_buckets,
    judge_canary,
    judge_health,
    judge_master_key,
    judge_models,
    judge_railway,
    judge_redis,
    judge_salt,
    judge_tables,
    judge_trace,
    judge_unauthenticated,
)
from tasks.decisions.health import ServiceHealth

statuses = st.sampled_from(["passed", "failed", "skipped"])
findings = st.builds(
    CheckResult,
    name=st.sampled_from(CHECK_NAMES),
    status=statuses,
    message=st.text(max_size=60),
    fix=st.one_of(st.none(), st.text(min_size=1, max_size=60)),
)
HEALTH_NAMES = sorted({service for spec in CHECKS for service in spec.services})


def test_the_catalogue_is_in_dependency_order() -> None:
    validate_order(CHECKS)
    assert CHECK_NAMES.index("litellm-canary") < CHECK_NAMES.index("langfuse-trace")
    assert CHECK_NAMES.index("s3-buckets") < CHECK_NAMES.index("backup-fresh")


def test_an_order_that_needs_a_later_check_is_refused() -> None:
    specs = [CheckSpec(name="b", title="b", depends_on=("a",)), CheckSpec(name="a", title="a")]
    with pytest.raises(ValueError, match="depends on 'a'"):
        validate_order(specs)


@given(
    planned=st.fixed_dictionaries({name: findings for name in CHECK_NAMES}),
    unhealthy=st.sets(st.sampled_from(HEALTH_NAMES)),
    railway_required=st.booleans(),
)
def test_ledger_runs_only_unblocked_checks_and_reports_each_once(
    planned: dict[str, CheckResult], unhealthy: set[str], railway_required: bool
) -> None:
    planned["services-healthy"] = planned["services-healthy"].model_copy(
        update={"unhealthy_services": tuple(sorted(unhealthy))}
    )
    specs = plan_checks(CHECKS, {"railway-deployments": railway_required})
    ledger = Ledger(specs, clock=iter(range(1000)).__next__)
    called: list[str] = []

    def check(name: str) -> CheckResult:
        called.append(name)
        return planned[name]

    for name in CHECK_NAMES:
        ledger.run(name, check, name)
    rows = ledger.results()

    assert [row.name for row in rows] == list(CHECK_NAMES)
    by_name = {row.name: row for row in rows}
    for spec in specs:
        row = by_name[spec.name]
        deps_ok = all(by_name[dep].status == "passed" for dep in spec.depends_on)
        services_ok = not (set(spec.services) & set(unhealthy))
        if spec.name in called:
            # a check runs only when what it needs is there, and keeps its finding
            assert deps_ok and services_ok
            assert row.status == planned[spec.name].status
            assert row.seconds == 1
        else:
            assert row.status == "skipped" and row.message.startswith("skipped: ")
            assert not (deps_ok and services_ok)
        if spec.name == "railway-deployments":
            assert row.required == railway_required
        else:
            assert row.required == (spec.name != "offsite-copy")  # informational
    result = verdict("prod", rows)
    required_failed = [r.name for r in rows if r.status == "failed" and r.required]
    assert result.passed == (not required_failed)
    assert result.failed_required == required_failed
    for name in required_failed:
        assert name in result.summary


def test_a_failed_dependency_skips_with_the_reason() -> None:
    ledger = Ledger(CHECKS)
    ledger.run("master-key", lambda: passed("master-key", "ok"))
    ledger.run(
        "litellm-models", lambda: failed("litellm-models", "LiteLLM refused the key", fix="fix it")
    )
    canary = ledger.run("litellm-canary", lambda: pytest.fail("must not run"))
    trace = ledger.run("langfuse-trace", lambda: pytest.fail("must not run"))
    assert canary.status == "skipped"
    assert canary.message == "skipped: depends on litellm-models, which failed"
    assert trace.message == "skipped: depends on litellm-canary, which skipped"


def test_an_unhealthy_service_skips_the_checks_that_need_it() -> None:
    ledger = Ledger(CHECKS)
    ledger.run(
        "services-healthy",
        lambda: CheckResult(
            name="services-healthy",
            status="failed",
            message="redis down",
            unhealthy_services=("redis",),
        ),
    )
    redis = ledger.run("redis-persistence", lambda: pytest.fail("must not run"))
    assert redis.status == "skipped"
    assert "redis unhealthy" in redis.message
    postgres = next(spec for spec in CHECKS if spec.name == "postgres-schema")
    assert blocked_reason(postgres, ledger.outcomes, ledger.unhealthy) is None


def test_a_check_that_raises_is_failed_and_scrubbed() -> None:
    def boom() -> CheckResult:
        raise RuntimeError("password sk-secret-1234 leaked")

    ledger = Ledger(CHECKS, scrub=lambda text: text.replace("sk-secret-1234", "***"))
    outcome = ledger.run("master-key", boom)
    assert outcome.status == "failed"
    assert "RuntimeError" in outcome.message and "sk-secret-1234" not in outcome.message


def test_an_optional_failure_does_not_fail_the_run() -> None:
    ledger = Ledger(CHECKS)
    for name in CHECK_NAMES:
        result = failed(name, "boom", fix="fix") if name == "railway-deployments" else None
        ledger.run(name, lambda n=name, r=result: r or passed(n, "ok"))
    result = verdict("prod", ledger.results())
    assert result.passed
    assert result.failed_optional == ["railway-deployments"]


@given(
    messages=st.lists(st.text(max_size=40), min_size=len(CHECK_NAMES), max_size=len(CHECK_NAMES))
)
def test_the_report_has_one_well_formed_row_per_check(messages: list[str]) -> None:
    ledger = Ledger(CHECKS)
    for name, message in zip(CHECK_NAMES, messages, strict=True):
        ledger.run(name, lambda n=name, m=message: failed(n, m, fix="fix | it\nnow"))
    rows = ledger.results()
    report = render_report(
        "prod",
        rows,
        run_name="verify-prod",
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        seconds=3.0,
        trace_id="ab" * 16,
    )
    table = [line for line in report.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert len(table) == len(CHECK_NAMES)
    for line, name in zip(table, CHECK_NAMES, strict=True):
        # 7 columns: escaped pipes in free text never add one
        assert len(re.findall(r"(?<!\\)\|", line)) == 8
        assert f"**{name}**" in line
    assert "FAILED" in report
    assert [r["check"] for r in table_rows(rows)] == list(CHECK_NAMES)


# ---- judges ------------------------------------------------------------------------------


def test_master_key_judge() -> None:
    assert judge_master_key(True).status == "passed"
    failed = judge_master_key(False)
    assert failed.status == "failed" and "sk-" in failed.message


@given(st.integers(min_value=100, max_value=599))
def test_an_unauthenticated_request_must_be_refused(status: int) -> None:
    finding = judge_unauthenticated(status, "http://litellm:4000")
    assert (finding.status == "passed") == (status >= 400)
    if status < 400:
        assert "without a key" in finding.message


@given(status=st.integers(min_value=100, max_value=599), listed=st.booleans())
def test_models_pass_only_with_a_2xx_listing_the_canary(status: int, listed: bool) -> None:
    models = ["gpt-4o-mini", "canary"] if listed else ["gpt-4o-mini"]
    finding = judge_models(status, models, "canary")
    assert (finding.status == "passed") == (200 <= status < 300 and listed)
    if 400 <= status < 500:
        assert "master key" in finding.message


def test_canary_judge() -> None:
    assert judge_canary(200, "pong", "canary").status == "passed"
    assert judge_canary(200, None, "canary").status == "failed"
    assert "HTTP 429" in judge_canary(429, None, "canary", "rate limited").message


def test_trace_judge_names_the_cause() -> None:
    assert judge_trace(True, "a" * 32, 1.5, 200, 30).status == "passed"
    lost = judge_trace(False, "a" * 32, 30, 404, 30)
    assert lost.status == "failed" and "did not appear in Langfuse" in lost.message
    refused = judge_trace(False, "a" * 32, 0.1, 401, 30)
    assert "refused the stack's API keys" in refused.message


NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
RECORD = SaltRecord(salt="s" * 32, fingerprint="f" * 64, recorded_at=NOW)


def test_salt_judge_covers_every_case() -> None:
    assert judge_salt(None, "a" * 64, "v").status == "passed"  # first verification records
    assert judge_salt(RECORD, "f" * 64, "v").status == "passed"
    changed = judge_salt(RECORD, "0" * 64, "v")
    assert changed.status == "failed"
    assert "can no longer be decrypted" in changed.message
    removed = judge_salt(RECORD, None, "v")
    assert removed.status == "failed" and "no longer set" in removed.message
    assert judge_salt(None, None, "v").status == "skipped"


@given(
    st.lists(st.sampled_from(["healthy", "degraded", "unhealthy"]), min_size=1, max_size=9),
    st.booleans(),
)
def test_health_fails_on_unhealthy_and_optionally_degraded(states: list[str], strict: bool) -> None:
    services = [
        ServiceHealth(service=f"s{i}", status=s, latency_ms=0.0, reason="r")  # type: ignore[arg-type]
        for i, s in enumerate(states)
    ]
    finding = judge_health(services, fail_on_degraded=strict)
    bad = {
        f"s{i}" for i, s in enumerate(states) if s == "unhealthy" or (strict and s == "degraded")
    }
    assert (finding.status == "failed") == bool(bad)
    assert set(finding.unhealthy_services) == bad


@given(
    required=st.lists(
        st.sampled_from(["public.a", "public.B", "langfuse.c", "langfuse.d"]),
        min_size=1,
        unique=True,
    ),
    present=st.sets(st.sampled_from(["public.a", "public.B", "langfuse.c", "langfuse.d"])),
)
def test_tables_fail_naming_each_missing_one(required: list[str], present: set[str]) -> None:
    finding = judge_tables(required, present, [])
    missing = [t for t in required if t not in present]
    assert (finding.status == "failed") == bool(missing)
    for table in missing:
        name = table.partition(".")[2]
        assert name in finding.message


def test_unfinished_migrations_fail() -> None:
    finding = judge_tables(
        ["public._prisma_migrations"], ["public._prisma_migrations"], ["public.m1"]
    )
    assert finding.status == "failed" and "public.m1" in finding.message


@given(
    aof=st.sampled_from(["yes", "no"]),
    policy=st.sampled_from(["noeviction", "allkeys-lru"]),
    require=st.booleans(),
)
def test_redis_judge(aof: str, policy: str, require: bool) -> None:
    finding = judge_redis(aof, policy, "noeviction", require)
    ok = (aof == "yes" or not require) and policy == "noeviction"
    assert (finding.status == "passed") == ok
    if require and aof == "no":
        assert "AOF is off" in finding.message


def test_bucket_judge() -> None:
    good = BucketProbe(bucket="langfuse", role="Langfuse events", exists=True, canary_ok=True)
    assert judge_buckets([good]).status == "passed"
    missing = judge_buckets([good, BucketProbe(bucket="gone", role="backup sets", exists=False)])
    assert missing.status == "failed" and "'gone'" in missing.message
    broken = BucketProbe(bucket="ro", role="r", exists=True, error="AccessDenied")
    assert "AccessDenied" in judge_buckets([broken]).message


@given(
    age_h=st.floats(min_value=0, max_value=24 * 60), max_h=st.floats(min_value=1, max_value=24 * 31)
)
def test_backup_age_boundary(age_h: float, max_h: float) -> None:
    finding = judge_backup_age(
        NOW - timedelta(hours=age_h), "id", NOW, timedelta(hours=max_h), None, "backup/prod"
    )
    assert (finding.status == "passed") == (timedelta(hours=age_h) <= timedelta(hours=max_h))


def test_no_backup_starts_one_or_says_how() -> None:
    started = judge_backup_age(None, None, NOW, timedelta(hours=26), "first-run", "backup/prod")
    assert started.status == "passed" and "first-run" in started.message
    none = judge_backup_age(None, None, NOW, timedelta(hours=26), None, "backup/prod")
    assert none.status == "skipped" and "backup/prod" in (none.fix or "")


def test_railway_judge() -> None:
    ok = [RailwayService(service="litellm", status="SUCCESS")]
    assert judge_railway(ok).status == "passed"
    bad = judge_railway([*ok, RailwayService(service="postgres", status="CRASHED")])
    assert bad.status == "failed" and "postgres CRASHED" in bad.message
    assert judge_railway([]).status == "failed"
