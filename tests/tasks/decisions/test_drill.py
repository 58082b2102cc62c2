"""The drill's decisions: scratch names, the orphan rule, checks, verdict, restore safety."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from tasks.decisions.checks import CheckResult, failed, passed, skipped
from tasks.decisions.drill import (
    MAX_IDENTIFIER,
    ComponentTiming,
    DrillReport,
    check_object,
    check_required_tables,
    check_row_counts,
    is_scratch_database,
    operator_steps,
    orphan_scratch_databases,
    previous_database_name,
    restore_refusal,
    rpo_seconds,
    scratch_database_name,
    staging_database_name,
)

stacks = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)
tokens = st.from_regex(r"[0-9a-f]{6}", fullmatch=True)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
)
NOW = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
SHA_A = "a" * 64
SHA_B = "b" * 64


# ---- scratch names and orphans ---------------------------------------------------------------


@given(stacks, moments, tokens)
def test_scratch_name_is_a_short_identifier_recognised_as_this_stacks(stack, now, token):
    name = scratch_database_name(stack, now, token)
    assert name.startswith("drill_")
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", name)
    assert len(name) <= MAX_IDENTIFIER
    assert is_scratch_database(name, stack)


@given(stacks, stacks, moments, tokens)
def test_scratch_name_of_one_stack_is_never_another_stacks(stack, other, now, token):
    name = scratch_database_name(stack, now, token)
    if other.replace("-", "_")[:35] != stack.replace("-", "_")[:35]:
        assert not is_scratch_database(name, other)


def test_names_of_two_runs_differ_by_time_or_token():
    a = scratch_database_name("prod", NOW, "000001")
    b = scratch_database_name("prod", NOW, "000002")
    c = scratch_database_name("prod", NOW + timedelta(seconds=1), "000001")
    assert len({a, b, c}) == 3


@given(
    stacks,
    st.lists(st.tuples(moments, tokens), max_size=5),
    st.lists(st.from_regex(r"[a-z_][a-z0-9_]{0,40}", fullmatch=True), max_size=8),
)
def test_orphans_are_exactly_this_stacks_scratch_databases_not_kept(stack, runs, foreign):
    ours = [scratch_database_name(stack, now, token) for now, token in runs]
    current = ours[:1]
    others = [scratch_database_name(stack + "-x", NOW, "abcdef"), "railway", "postgres", *foreign]
    found = orphan_scratch_databases([*ours, *others], stack, keep=current)
    assert set(found) == set(ours) - set(current) | {
        n for n in foreign if is_scratch_database(n, stack)
    }
    for name in found:
        assert name.startswith("drill_") and name not in current


def test_stacks_sharing_a_long_prefix_never_share_scratch_databases():
    long = "a" * 35
    mine = scratch_database_name(long, NOW, "abcdef")
    theirs = scratch_database_name(long + "-x", NOW, "abcdef")
    assert mine != theirs and len(theirs) <= 63
    assert orphan_scratch_databases([mine, theirs], long) == [mine]
    assert orphan_scratch_databases([mine, theirs], long + "-x") == [theirs]


def test_orphans_leave_lookalikes_and_other_stacks_alone():
    names = [
        "drill_prod_20261122040000_abcdef",  # ours
        "drill_prod_staging_20261122040000_abcdef",  # stack prod-staging
        "drill_prod_2026112204000_abcdef",  # 13 digits: not a drill name
        "drill_prod_20261122040000_ABCDEF",  # upper case: not ours
        "drill_prod_20261122040000_abcdef_copy",  # someone's copy
        "drills_prod_20261122040000_abcdef",
        "railway",
    ]
    assert orphan_scratch_databases(names, "prod") == ["drill_prod_20261122040000_abcdef"]


def test_scratch_token_must_be_hex():
    try:
        scratch_database_name("prod", NOW, "x; DROP")
    except ValueError as exc:
        assert "token" in str(exc)
    else:
        raise AssertionError("a bad token was accepted")


# ---- object and row-count checks -------------------------------------------------------------


def test_object_check_names_missing_truncated_and_changed_objects():
    key = "prod/id/postgres/railway.dump"
    missing = check_object(
        "dump",
        "postgres",
        key=key,
        expected_size=100,
        expected_sha256=SHA_A,
        actual_size=None,
        actual_sha256=None,
    )
    assert not missing.passed and "missing" in missing.message and key in missing.message
    short = check_object(
        "dump",
        "postgres",
        key=key,
        expected_size=100,
        expected_sha256=SHA_A,
        actual_size=60,
        actual_sha256=SHA_A,
    )
    assert not short.passed and "truncated" in short.message and "60" in short.message
    changed = check_object(
        "dump",
        "postgres",
        key=key,
        expected_size=100,
        expected_sha256=SHA_A,
        actual_size=100,
        actual_sha256=SHA_B,
    )
    assert not changed.passed and "sha256 mismatch" in changed.message
    good = check_object(
        "dump",
        "postgres",
        key=key,
        expected_size=100,
        expected_sha256=SHA_A,
        actual_size=100,
        actual_sha256=SHA_A,
    )
    assert good.passed and good.status == "passed"
    size_only = check_object(
        "dump",
        "postgres",
        key=key,
        expected_size=100,
        expected_sha256=SHA_A,
        actual_size=100,
        actual_sha256=None,
    )
    assert size_only.passed and "size matches" in size_only.message


def test_an_object_outside_the_set_is_named_as_such_even_when_it_exists():
    key = "prod/other-id/postgres/railway.dump"
    outside = check_object(
        "dump",
        "postgres",
        key=key,
        expected_size=100,
        expected_sha256=SHA_A,
        actual_size=100,
        actual_sha256=SHA_A,
        set_prefix="prod/id/",
    )
    assert not outside.passed and "outside the set (prod/id/)" in outside.message
    inside = check_object(
        "dump",
        "postgres",
        key="prod/id/x.dump",
        expected_size=100,
        expected_sha256=SHA_A,
        actual_size=100,
        actual_sha256=SHA_A,
        set_prefix="prod/id/",
    )
    assert inside.passed


@given(
    st.integers(0, 10**12),
    st.integers(0, 10**12),
    st.sampled_from([SHA_A, SHA_B]),
    st.sampled_from([SHA_A, SHA_B]),
)
def test_object_check_passes_only_when_size_and_digest_agree(want, got, sha_want, sha_got):
    check = check_object(
        "o",
        "set",
        key="k",
        expected_size=want,
        expected_sha256=sha_want,
        actual_size=got,
        actual_sha256=sha_got,
    )
    assert check.passed == (want == got and sha_want == sha_got)


counts = st.dictionaries(
    st.from_regex(r"[a-z]{1,6}\.[A-Za-z_]{1,12}", fullmatch=True), st.integers(0, 10**9)
)


@given(counts, counts)
def test_row_counts_pass_exactly_when_every_table_matches(expected, actual):
    check = check_row_counts("rows", "postgres", expected, actual)
    assert check.passed == (expected == actual)
    if not check.passed:
        first_bad = next(
            t for t in sorted(expected.keys() | actual.keys()) if expected.get(t) != actual.get(t)
        )
        assert first_bad in check.message


def test_row_count_reason_says_which_table_and_by_how_much():
    check = check_row_counts(
        "rows",
        "postgres",
        {"public.LiteLLM_SpendLogs": 120000, "public.gone": 5},
        {"public.LiteLLM_SpendLogs": 119999, "public.new": 1},
    )
    assert not check.passed
    assert "public.LiteLLM_SpendLogs has 119999 rows, the manifest says 120000" in check.message
    assert "public.gone missing after restore" in check.message
    assert "public.new restored" in check.message


def test_row_count_reason_stays_short_for_many_tables():
    expected = {f"s.t{i:03}": i for i in range(50)}
    actual = {f"s.t{i:03}": i + 1 for i in range(50)}
    check = check_row_counts("rows", "clickhouse", expected, actual)
    assert "... and 42 more" in check.message


def test_required_tables():
    ok = check_required_tables("req", "postgres", ["a.x", "b.y"], ["a.x", "b.y", "c.z"])
    assert ok.passed
    bad = check_required_tables("req", "postgres", ["a.x", "b.y"], ["a.x"])
    assert not bad.passed and "b.y" in bad.message and "a.x" not in bad.message


# ---- verdict and report ----------------------------------------------------------------------


def report(checks: list[CheckResult], **extra: object) -> DrillReport:
    return DrillReport(
        stack="prod",
        backup_id="20261122T030000Z-abcdef",
        started_at=NOW,
        finished_at=NOW + timedelta(seconds=42),
        drill_target="postgresql://ops:***@db:5432/railway",
        postgres_mode="stream",
        checks=checks,
        **extra,  # type: ignore[arg-type]
    )


outcomes = st.lists(st.sampled_from(["passed", "failed", "skipped"]), max_size=8)


@given(outcomes)
def test_a_drill_passes_only_when_it_proved_something_and_every_check_passed(results):
    checks = [
        CheckResult(name=f"c{i}", component="postgres", status=o, message="r")
        for i, o in enumerate(results)
    ]
    drill = report(checks)
    assert drill.passed == (bool(results) and all(o == "passed" for o in results))
    assert {c.name for c in drill.problems} == {c.name for c in checks if c.status != "passed"}


def test_failure_message_names_each_failed_check_with_its_reason():
    drill = report(
        [
            passed("manifest", "schema 1", component="set"),
            failed("postgres-dump", "sha256 mismatch for k", component="postgres"),
            skipped("postgres-restore", "dump failed verification", component="postgres"),
        ]
    )
    message = drill.failure_message()
    assert "FAILED" in message
    assert "postgres-dump failed: sha256 mismatch for k" in message
    assert "postgres-restore skipped" in message
    assert "manifest" not in message.split("FAILED:")[1]


def test_report_shows_rto_rpo_sizes_and_throughput():
    drill = report(
        [passed("postgres-row-counts", "12 tables | all match", component="postgres")],
        timings=[
            ComponentTiming(
                component="postgres",
                target="drill_prod_x",
                restore_seconds=10.0,
                verify_seconds=1.0,
                bytes=50_000_000,
            )
        ],
        rpo_seconds=3600 * 5,
        set_size=60_000_000,
    )
    text = drill.to_markdown()
    assert "PASSED" in text
    assert "RPO (age of the set): 5.0 h" in text
    assert "| postgres | `drill_prod_x` | 10.0 | 1.0 | 50.0 MB | 5.0 |" in text
    assert "12 tables \\| all match" in text  # a pipe in a reason cannot break the table
    assert drill.rto_seconds == 10.0
    assert "postgres 10.0s" in drill.summary_line()


def test_rpo_is_the_age_of_the_set():
    assert rpo_seconds(NOW - timedelta(hours=25), NOW) == 25 * 3600
    assert rpo_seconds(NOW + timedelta(seconds=5), NOW) == 0.0  # clock skew is not negative


# ---- restore safety --------------------------------------------------------------------------


@given(
    st.from_regex(r"[a-z_][a-z0-9_]{0,30}", fullmatch=True),
    st.booleans(),
    st.booleans(),
    st.one_of(st.none(), st.text(max_size=10)),
)
def test_restore_writes_into_an_existing_or_live_database_only_when_confirmed(
    target, exists, live, confirm
):
    confirmed = [] if confirm is None else [confirm]
    reason = restore_refusal(
        target, exists=exists, live=live, confirmed=confirmed, engine="postgres"
    )
    if target.startswith("drill_"):
        assert reason is not None
    elif exists or live:
        assert (reason is None) == (confirm == target)
    else:
        assert reason is None


def test_restore_refusal_explains_what_to_do():
    reason = restore_refusal("railway", exists=True, live=True, confirmed=[], engine="postgres")
    assert reason is not None
    assert "live database" in reason and "confirm=['railway']" in reason
    wrong = restore_refusal("railway", exists=True, live=False, confirmed=["Railway"], engine="pg")
    assert wrong is not None and "already exists" in wrong
    assert restore_refusal('x"; DROP', exists=False, live=False, confirmed=[], engine="pg")


def test_replaced_database_is_kept_under_a_dated_name_and_staging_is_not_a_drill_name():
    old = previous_database_name("a" * 63, NOW)
    assert len(old) <= MAX_IDENTIFIER and old.endswith("_before_20261122040000")
    staging = staging_database_name(NOW, "abcdef")
    assert not is_scratch_database(staging, "prod") and not staging.startswith("drill_")


def test_operator_steps_say_pause_first_and_where_to_point_afterwards():
    before = operator_steps("prod", "before", "railway_restored", None, "railway", "default")
    assert any("Pause LiteLLM and Langfuse" in s for s in before)
    after = operator_steps("prod", "after", "railway_restored", "lf", "railway", "default")
    assert any("DATABASE_URL" in s and "railway_restored" in s for s in after)
    assert any("CLICKHOUSE_DB" in s and "'lf'" in s for s in after)
    same = operator_steps("prod", "after", "railway", "default", "railway", "default")
    assert not any("DATABASE_URL" in s or "CLICKHOUSE_DB" in s for s in same)
