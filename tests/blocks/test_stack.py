"""The stack block: built from Railway-style env, every bad field named, no secret leaks."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote, quote_plus

import pytest

from blocks.stack import Stack
from tasks.clickhouse import quote_string
from tasks.decisions.alerts import NotificationRoute
from tasks.decisions.redaction import redact_url, scrub_values, secret_forms
from tasks.errors import StackConfigError

SECRETS = {
    "DATABASE_URL": "postgresql://litellm:pg-Secret-Pw@db.internal:5432/railway",
    "CLICKHOUSE_PASSWORD": "ch-Secret-Pw",
    "REDIS_PASSWORD": "rd-Secret-Pw",
    "MINIO_ROOT_PASSWORD": "s3-Secret-Key",
    "LITELLM_MASTER_KEY": "sk-master-Secret",
    "LITELLM_SALT_KEY": "sk-salt-Secret",
    "LANGFUSE_SECRET_KEY": "sk-lf-Secret",
}
SECRET_VALUES = [
    "pg-Secret-Pw",
    "ch-Secret-Pw",
    "rd-Secret-Pw",
    "s3-Secret-Key",
    "sk-master-Secret",
    "sk-salt-Secret",
    "sk-lf-Secret",
]


def good_env() -> dict[str, str]:
    return {
        **SECRETS,
        "CLICKHOUSE_URL": "http://clickhouse.railway.internal:8123",
        "CLICKHOUSE_USER": "clickhouse",
        "REDIS_HOST": "redis.railway.internal",
        "REDIS_PORT": "6379",
        "MINIO_ENDPOINT": "http://minio.railway.internal:9000",
        "MINIO_ROOT_USER": "minio",
        "BACKUP_BUCKET": "backups",
        "LITELLM_URL": "http://litellm.railway.internal:4000",
        "LANGFUSE_URL": "http://langfuse-web.railway.internal:3000",
        "LANGFUSE_WORKER_URL": "http://langfuse-worker.railway.internal:3030",
        "LANGFUSE_PUBLIC_KEY": "pk-lf-public",
    }


def test_from_env_builds_every_field() -> None:
    stack = Stack.from_env(good_env(), stack_name="staging")
    assert stack.stack_name == "staging"
    assert stack.postgres_database == "railway"
    assert stack.redis_port == 6379
    assert stack.s3_host == "minio.railway.internal:9000"
    assert stack.s3_secure is False
    assert stack.litellm_master_key.get_secret_value() == "sk-master-Secret"
    assert stack.clickhouse_s3 == "http://minio.railway.internal:9000"
    assert stack.postgres_dsn_for("drill_1").endswith("@db.internal:5432/drill_1")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "DATABASE_URL",
            "postgresql://u:pw@/railway",
            "DATABASE_URL (postgres_dsn): DSN has no host",
        ),
        ("DATABASE_URL", "postgresql://u:pw@db:5432", "DSN names no database"),
        ("DATABASE_URL", "mysql://u:pw@db:3306/x", "scheme must be postgresql://"),
        ("REDIS_PORT", "0", "REDIS_PORT (redis_port)"),
        ("REDIS_PORT", "70000", "REDIS_PORT (redis_port)"),
        ("REDIS_PORT", "six", "REDIS_PORT (redis_port)"),
        (
            "LITELLM_MASTER_KEY",
            "master-123",
            "LITELLM_MASTER_KEY (litellm_master_key): must start with 'sk-'",
        ),
        (
            "MINIO_ENDPOINT",
            "http://minio:9000/backups",
            "MINIO_ENDPOINT (s3_endpoint): must not have a path",
        ),
        (
            "MINIO_ENDPOINT",
            "minio:9000",
            "MINIO_ENDPOINT (s3_endpoint): scheme must be one of http, https",
        ),
        (
            "CLICKHOUSE_URL",
            "http://clickhouse:0",
            "CLICKHOUSE_URL (clickhouse_url): port 0 is not a port",
        ),
        (
            "BACKUP_BUCKET",
            "Bad_Bucket",
            "BACKUP_BUCKET (backup_bucket): is not a valid S3 bucket name",
        ),
    ],
)
def test_each_malformed_field_is_named_with_its_fix(
    variable: str, value: str, expected: str
) -> None:
    env = good_env() | {variable: value}
    with pytest.raises(StackConfigError) as caught:
        Stack.from_env(env)
    message = str(caught.value)
    assert expected in message
    assert "set " in message  # says how to fix it
    for secret in SECRET_VALUES:
        assert secret not in message


def test_every_problem_is_reported_at_once() -> None:
    env = good_env()
    del env["LANGFUSE_WORKER_URL"]
    del env["MINIO_ROOT_PASSWORD"]
    env["REDIS_PORT"] = "0"
    env["LITELLM_MASTER_KEY"] = "nope"
    with pytest.raises(StackConfigError) as caught:
        Stack.from_env(env)
    message = str(caught.value)
    assert "4 problem(s)" in message
    for name in ("LANGFUSE_WORKER_URL", "MINIO_ROOT_PASSWORD", "REDIS_PORT", "LITELLM_MASTER_KEY"):
        assert name in message
    assert "is missing" in message


def test_no_secret_in_repr_str_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    stack = Stack.from_env(good_env())
    logger = logging.getLogger("test")
    with caplog.at_level(logging.INFO):
        logger.info("stack: %s", stack)
        logger.info("stack: %r", stack)
        logger.info("describe:\n%s", stack.describe())
        logger.info("dsn: %s", stack.postgres_dsn_redacted)
    text = caplog.text + repr(stack) + str(stack) + stack.model_dump_json()
    try:
        Stack(**{**stack.model_dump(), "litellm_master_key": "bad-sk-master-Secret"})
    except Exception as exc:  # pydantic's own error text must not echo inputs
        text += str(exc)
    else:
        pytest.fail("a master key without sk- was accepted")
    for secret in SECRET_VALUES:
        assert secret not in text
    assert "postgresql://litellm:***@db.internal:5432/railway" in caplog.text


def test_scrub_removes_secret_values_from_any_text() -> None:
    stack = Stack.from_env(good_env())
    text = "pg_dump: connection to pg-Secret-Pw failed; S3 said s3-Secret-Key; sk-lf-Secret"
    scrubbed = stack.scrub(text)
    for secret in SECRET_VALUES:
        assert secret not in scrubbed
    assert scrubbed.count("***") == 3


def test_scrub_removes_the_escaped_forms_of_a_secret() -> None:
    """A secret quoted into a ClickHouse statement, a URL or JSON is still removed."""
    tricky = "s3-Se'cr\\et/+ Key"
    stack = Stack.from_env(good_env() | {"MINIO_ROOT_PASSWORD": tricky})
    forms = [
        quote_string(tricky)[1:-1],  # inside S3('http://s3/b', 'minio', '<here>')
        quote(tricky, safe=""),
        quote_plus(tricky),
        json.dumps(tricky)[1:-1],
        tricky,
    ]
    assert len(set(forms)) == 5
    for form in forms:
        assert stack.scrub(f"S3('http://s3/b', 'minio', '{form}') failed") == (
            "S3('http://s3/b', 'minio', '***') failed"
        )


def test_scrub_values_replaces_the_longest_value_first() -> None:
    assert scrub_values("token abcdef and abc123", ["abc123", "abcdef"]) == "token *** and ***"
    assert secret_forms(["abc"]) == []  # too short to scrub safely


def test_redact_url_keeps_everything_but_the_password() -> None:
    assert redact_url("postgresql://u:p%40ss@h:5432/d?sslmode=require") == (
        "postgresql://u:***@h:5432/d?sslmode=require"
    )
    assert redact_url("http://h:1/x") == "http://h:1/x"


def test_notification_routes_from_env_and_their_severities() -> None:
    env = good_env() | {
        "NOTIFICATION_ROUTES": "slack-webhook/ops-chat:warning,pager-duty-webhook/pager:critical"
    }
    stack = Stack.from_env(env)
    assert [r.block for r in stack.routes_for("critical")] == [
        "slack-webhook/ops-chat",
        "pager-duty-webhook/pager",
    ]
    assert [r.block for r in stack.routes_for("warning")] == ["slack-webhook/ops-chat"]
    with pytest.raises(StackConfigError, match="NOTIFICATION_ROUTES"):
        Stack.from_env(env | {"NOTIFICATION_ROUTES": "just-a-name"})
    assert NotificationRoute(block="slack-webhook/x").min_severity == "warning"


def test_the_templates_offsite_defaults_alone_configure_no_offsite_copy() -> None:
    # railway.toml gives the worker OFFSITE_S3_REGION (and an empty prefix): a stack
    # without an off-site target must still bootstrap, not fail on the four unset.
    env = {**good_env(), "OFFSITE_S3_REGION": "us-east-1", "OFFSITE_S3_PREFIX": "llm/"}
    assert Stack.from_env(env).offsite is None
    with pytest.raises(StackConfigError, match="OFFSITE_S3_ENDPOINT"):
        Stack.from_env({**env, "OFFSITE_S3_BUCKET": "offsite-copies"})


def test_probes_are_switched_off_in_the_stacks_config_by_name() -> None:
    env = {**good_env(), "OPS_PROBES_OFF": "langfuse-queues, certificates"}
    assert Stack.from_env(env).probes_off == ["langfuse-queues", "certificates"]
    assert Stack.from_env(good_env()).probes_off == []  # every probe on by default
    with pytest.raises(StackConfigError) as raised:
        Stack.from_env({**good_env(), "OPS_PROBES_OFF": "langfuse-queue"})
    message = str(raised.value)
    assert "OPS_PROBES_OFF" in message and "unknown probe(s) langfuse-queue" in message
    assert "set OPS_PROBES_OFF to probe names, comma-separated, from: litellm," in message
