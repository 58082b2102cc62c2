"""deploy-verify against the devstack, with every fault made for real.

Faults that live in the stack block (a wrong master key, a changed salt key, a bucket
that does not exist, a LiteLLM without a key) are made by saving a modified copy of
the ``devstack`` block under another name and verifying that name, exactly as an
operator's mistake would reach a real block. Faults of the services themselves
(Langfuse dropping ingestion, Redis AOF off, a renamed table) are made on the
services and undone afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import redis
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
)
from pydantic import SecretStr

from blocks.stack import Stack
from devstack.core import Devstack
from devstack.standins import STANDINS
from tests.flows.deploy_verify_helpers import (
    RUN_IDS,
    Run,
    alerts_for,
    assert_fails_exactly,
    free_port,
    put_manifest,
    remove_prefix,
    save_copy,
    verify,
)
from tests.prefect_api import run_logs

ALL_CHECKS = [
    "master-key",
    "salt-key",
    "services-healthy",
    "litellm-auth",
    "litellm-models",
    "litellm-canary",
    "langfuse-trace",
    "postgres-schema",
    "clickhouse-schema",
    "redis-persistence",
    "s3-buckets",
    "backup-fresh",
    "offsite-copy",
    "railway-deployments",
]
# On the plain devstack: no backup deployment, no off-site target and no Railway token.
SKIPPED_ON_DEVSTACK = {"backup-fresh", "offsite-copy", "railway-deployments"}
BASELINE_HAD_BACKUP = [False]  # set by the baseline fixture
# Checks expected to pass wait as long as the product does by default (a trace found sooner
# ends the wait at once); a backup the first verification starts can load the machine.
FAST = {"trace_poll_s": 0.2}


@pytest.fixture(scope="module")
def baseline(devstack: Devstack) -> Run:
    """The plain devstack verified once; its salt fingerprint is recorded by this run."""
    from prefect.variables import Variable

    from tasks.storage import newest_complete_manifest

    Variable.unset("deploy-verify-devstack-salt-fingerprint")
    BASELINE_HAD_BACKUP[0] = newest_complete_manifest(Stack.load_stack("devstack")) is not None
    return verify("devstack", **FAST)


@pytest.fixture(scope="module")
def railway_api(devstack: Devstack) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(STANDINS / "railway_api.py"), "--port", str(port),
         "--token", "rw-token-standin", "--project-id", "proj-standin",
         "--environment-id", "env-standin"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/__standin/services", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


# ---- a healthy stack -----------------------------------------------------------------------


def test_the_devstack_passes_every_check_it_can_run(baseline: Run, stack: Stack) -> None:
    assert baseline.state.is_completed()
    assert list(baseline.rows) == ALL_CHECKS
    # Whether a backup set exists depends on what ran before in this session: with
    # one (fresh, just made) the freshness check passes, without one it is skipped.
    skipped = set(SKIPPED_ON_DEVSTACK)
    if BASELINE_HAD_BACKUP[0]:
        skipped.discard("backup-fresh")
    assert baseline.statuses("passed") == set(ALL_CHECKS) - skipped
    assert baseline.statuses("skipped") == skipped
    # the skips say why and what to do
    if "backup-fresh" in skipped:
        assert "backup/devstack" in baseline.rows["backup-fresh"]["fix"]
    assert "RAILWAY_API_TOKEN" in baseline.rows["railway-deployments"]["fix"]
    assert "OFFSITE_" in baseline.rows["offsite-copy"]["fix"]


def test_the_canary_trace_is_in_langfuse_by_its_unique_id(baseline: Run, stack: Stack) -> None:
    result = baseline.state.result()
    trace_id = result.trace_id
    assert trace_id and len(trace_id) == 32
    assert trace_id in baseline.rows["langfuse-trace"]["details"]
    response = httpx.get(
        f"{stack.langfuse_url}/api/public/traces/{trace_id}",
        auth=(stack.langfuse_public_key, stack.langfuse_secret_key.get_secret_value()),
        timeout=5,
    )
    assert response.status_code == 200
    assert response.json()["id"] == trace_id
    assert {"deploy-verify", str(baseline.flow_run_id)} <= set(response.json()["tags"])


def test_the_report_artifact_shows_every_check_with_timings(baseline: Run) -> None:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["deploy-verify-devstack"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[baseline.flow_run_id]),
            )
        )
    assert len(artifacts) == 1
    markdown = str(artifacts[0].data)
    assert "deploy-verify on `devstack`: PASSED" in markdown
    for name in ALL_CHECKS:
        assert f"**{name}**" in markdown
    assert " s |" in markdown  # timings


def test_a_complete_stack_passes_all_but_the_off_site_check(
    baseline: Run, devstack: Devstack, railway_api: str
) -> None:
    """With a fresh backup set and Railway's API reachable, only the off-site check is left
    to skip (this copy has no off-site target; tests/flows/test_offsite.py passes it)."""
    save_copy(
        "devstack-complete",
        stack_name="verify-complete",
        railway_api_token=SecretStr("rw-token-standin"),
        railway_api_url=f"{railway_api}/graphql/v2",
        railway_project_id="proj-standin",
        railway_environment_id="env-standin",
    )
    put_manifest(devstack, "verify-complete", datetime.now(UTC) - timedelta(hours=2))
    try:
        run = verify("devstack-complete", require_railway=True, **FAST)
    finally:
        remove_prefix(devstack, "verify-complete/")
    assert run.state.is_completed()
    assert run.statuses("passed") == set(ALL_CHECKS) - {"offsite-copy"}
    assert run.rows["offsite-copy"]["result"] == "skipped"
    assert "2.0 h ago" in run.rows["backup-fresh"]["details"]


# ---- each fault fails exactly its check -------------------------------------------------------


def test_a_wrong_master_key_fails_the_model_listing(baseline: Run, receiver: Any) -> None:
    save_copy("devstack-badkey", litellm_master_key=SecretStr("sk-not-the-proxy-key-0123456789"))
    run = verify("devstack-badkey", **FAST)
    assert_fails_exactly(run, "litellm-models", "refused the stack's master key")
    # what needs an accepted key is skipped, not failed a second time
    assert run.rows["litellm-canary"]["result"] == "skipped"
    assert run.rows["langfuse-trace"]["result"] == "skipped"
    alerts = alerts_for(receiver, "devstack-badkey")
    assert len(alerts) == 1 and "refused the stack's master key" in alerts[0]


def test_a_changed_salt_key_fails_loudly(baseline: Run, receiver: Any) -> None:
    save_copy("devstack-newsalt", litellm_salt_key=SecretStr("sk-salt-rotated-0123456789abcdef"))
    run = verify("devstack-newsalt", **FAST)
    assert_fails_exactly(run, "salt-key", "LITELLM_SALT_KEY changed", "can no longer be decrypted")
    alerts = alerts_for(receiver, "devstack-newsalt")
    assert len(alerts) == 1 and "can no longer be decrypted" in alerts[0]


def test_a_missing_bucket_fails_the_bucket_check(baseline: Run, receiver: Any) -> None:
    save_copy("devstack-nobucket", langfuse_bucket="langfuse-missing")
    run = verify("devstack-nobucket", **FAST)
    assert_fails_exactly(run, "s3-buckets", "missing bucket", "'langfuse-missing'")
    assert alerts_for(receiver, "devstack-nobucket")


def test_langfuse_dropping_traces_fails_the_trace_check(
    baseline: Run, stack: Stack, receiver: Any
) -> None:
    fault = f"{stack.langfuse_url}/__standin/fault"
    httpx.post(fault, json={"mode": "drop_ingestion"}, timeout=5).raise_for_status()
    try:
        run = verify("devstack", trace_timeout_s=3.0, trace_poll_s=0.2)
    finally:
        httpx.post(fault, json={"mode": "ok"}, timeout=5).raise_for_status()
    assert_fails_exactly(run, "langfuse-trace", "did not appear in Langfuse within 3 s")
    assert alerts_for(receiver, "devstack")


def test_redis_without_aof_fails_the_redis_check(baseline: Run, stack: Stack) -> None:
    client = redis.Redis(
        host=stack.redis_host,
        port=stack.redis_port,
        password=stack.redis_password.get_secret_value() if stack.redis_password else None,
    )
    client.config_set("appendonly", "no")
    try:
        run = verify("devstack", **FAST)
    finally:
        client.config_set("appendonly", "yes")
        client.close()
    assert_fails_exactly(run, "redis-persistence", "AOF is off")


def test_a_litellm_without_a_key_fails_the_auth_check(
    baseline: Run, devstack: Devstack, receiver: Any
) -> None:
    port = free_port()
    devstack.start_litellm("litellm_open", port, master_key="")
    try:
        save_copy("devstack-openproxy", litellm_url=f"http://127.0.0.1:{port}")
        run = verify("devstack-openproxy", **FAST)
    finally:
        devstack.stop_service("litellm_open")
    assert_fails_exactly(run, "litellm-auth", "request without a key", "HTTP 200")
    assert alerts_for(receiver, "devstack-openproxy")


def test_a_missing_litellm_table_fails_the_schema_check(
    baseline: Run, devstack: Devstack, receiver: Any
) -> None:
    with psycopg.connect(devstack.admin_dsn("railway"), autocommit=True) as conn:
        conn.execute('ALTER TABLE public."LiteLLM_SpendLogs" RENAME TO "LiteLLM_SpendLogs_moved"')
        try:
            run = verify("devstack", **FAST)
        finally:
            conn.execute(
                'ALTER TABLE public."LiteLLM_SpendLogs_moved" RENAME TO "LiteLLM_SpendLogs"'
            )
    assert_fails_exactly(run, "postgres-schema", 'public."LiteLLM_SpendLogs"', "LiteLLM")
    assert alerts_for(receiver, "devstack")


# ---- backups and Railway --------------------------------------------------------------------


def test_a_stale_backup_fails_and_a_fresh_one_passes(baseline: Run, devstack: Devstack) -> None:
    save_copy("devstack-backups", stack_name="verify-backups")
    put_manifest(devstack, "verify-backups", datetime.now(UTC) - timedelta(hours=50))
    try:
        stale = verify("devstack-backups", **FAST)
        put_manifest(devstack, "verify-backups", datetime.now(UTC) - timedelta(hours=1))
        fresh = verify("devstack-backups", **FAST)
    finally:
        remove_prefix(devstack, "verify-backups/")
    assert_fails_exactly(stale, "backup-fresh", "50.0 h ago", "older than the allowed 26 h")
    assert fresh.rows["backup-fresh"]["result"] == "passed"


def test_a_first_deploy_starts_the_first_backup(baseline: Run) -> None:
    """No backup set yet and a backup deployment exists: one run of it is started."""
    save_copy("devstack-firstbackup", stack_name="verify-firstbackup")
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("backup")
        # no work pool: the run stays scheduled, which is all this test needs to see
        deployment_id = client.create_deployment(flow_id=flow_id, name="verify-firstbackup")
    try:
        run = verify("devstack-firstbackup", **FAST)
        with get_client(sync_client=True) as client:
            started = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
    finally:
        with get_client(sync_client=True) as client:
            for flow_run in client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            ):
                client.delete_flow_run(flow_run.id)
            client.delete_deployment(deployment_id)
    assert run.rows["backup-fresh"]["result"] == "passed"
    assert [r.name for r in started] == ["first-backup-after-deploy"]
    assert "first-backup-after-deploy" in run.rows["backup-fresh"]["details"]


def test_railway_reporting_a_failed_deployment_fails_its_check(
    baseline: Run, railway_api: str
) -> None:
    save_copy(
        "devstack-railway",
        railway_api_token=SecretStr("rw-token-standin"),
        railway_api_url=f"{railway_api}/graphql/v2",
        railway_project_id="proj-standin",
        railway_environment_id="env-standin",
    )
    services = httpx.get(f"{railway_api}/__standin/services", timeout=5).json()
    httpx.post(
        f"{railway_api}/__standin/services", json={**services, "langfuse-worker": "CRASHED"}
    ).raise_for_status()
    try:
        required = verify("devstack-railway", require_railway=True, **FAST)
        optional = verify("devstack-railway", **FAST)
    finally:
        httpx.post(f"{railway_api}/__standin/services", json=services).raise_for_status()
    assert_fails_exactly(required, "railway-deployments", "langfuse-worker CRASHED")
    # optional by default: reported, but the run passes
    assert optional.state.is_completed()
    assert optional.statuses("failed") == {"railway-deployments"}


# ---- secrets ----------------------------------------------------------------------------------


def test_no_secret_in_logs_artifacts_alerts_or_variables(
    baseline: Run, stack: Stack, receiver: Any
) -> None:
    """Runs that pass and runs that fail: the keys appear nowhere a person or the API sees."""
    save_copy("devstack-badkey", litellm_master_key=SecretStr("sk-not-the-proxy-key-0123456789"))
    save_copy("devstack-newsalt", litellm_salt_key=SecretStr("sk-salt-rotated-0123456789abcdef"))
    for name in ("devstack", "devstack-badkey", "devstack-newsalt"):
        verify(name, **FAST)
    secrets = {
        stack.litellm_master_key.get_secret_value(),
        stack.langfuse_secret_key.get_secret_value(),
        "sk-not-the-proxy-key-0123456789",
        "sk-salt-rotated-0123456789abcdef",
        *stack.secret_values(),
    }
    assert stack.litellm_salt_key is not None
    secrets.add(stack.litellm_salt_key.get_secret_value())

    seen: list[str] = []
    with get_client(sync_client=True) as client:
        for flow_run_id in RUN_IDS:
            flow_run = client.read_flow_run(flow_run_id)
            seen.append(json.dumps(flow_run.parameters))
            seen.append((flow_run.state.message if flow_run.state else None) or "")
            seen.extend(run_logs([flow_run_id]))
            seen.extend(
                str(a.data) + str(a.description)
                for a in client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                    )
                )
            )
        variables = client.read_variables()
        seen.extend(json.dumps(v.value) for v in variables)
    alerts = receiver.received("")
    assert alerts, "the failing runs alerted"
    seen.extend(json.dumps(record) for record in alerts)

    assert any("salt-fingerprint" in v.name for v in variables)
    text = "\n".join(seen)
    leaked = [s for s in secrets if s in text]
    assert not leaked, (
        f"{len(leaked)} secret value(s) found in logs, artifacts, alerts or variables"
    )
