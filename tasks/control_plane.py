"""Tasks that read or write deploy-verify's state on the Prefect server.

- The salt key's fingerprint lives in a Prefect Variable per stack,
  ``deploy-verify-<stack>-salt-fingerprint``: a random salt and
  ``sha256(salt + LITELLM_SALT_KEY)``, never the key. The first verification writes it;
  every later one compares.
- Backup freshness reads the newest complete manifest; on a first deploy (none yet) it
  starts the ``backup/<stack>`` deployment, if there is one, without waiting for it.
- The report is published as a markdown artifact (``deploy-verify-<stack>``) and a
  table artifact (``deploy-verify-<stack>-checks``), so the UI keeps its history.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.variables import Variable
from pydantic import ValidationError

from blocks.stack import Stack
from tasks.decisions.checks import CheckResult, failed, passed, skipped
from tasks.decisions.deploy_checks import ReportRow, table_rows
from tasks.decisions.deploy_judges import SaltRecord, judge_backup_age, judge_master_key, judge_salt
from tasks.errors import OffsiteError, StorageError
from tasks.storage import newest_complete_manifest

__all__ = [
    "check_backup_freshness",
    "check_master_key",
    "check_salt_key",
    "publish_verify_report",
    "report_key",
    "salt_variable_name",
]


def salt_variable_name(stack: Stack) -> str:
    return f"deploy-verify-{stack.stack_name}-salt-fingerprint"


def report_key(stack_document: str) -> str:
    """Artifact keys take lowercase letters, digits and dashes only."""
    return "deploy-verify-" + re.sub(r"[^a-z0-9-]+", "-", stack_document.lower()).strip("-")


@task(name="check-master-key", cache_policy=NO_CACHE, persist_result=False)
def check_master_key(stack: Stack) -> CheckResult:
    """The block validates this too; checked again because a block can be edited in the UI."""
    return judge_master_key(stack.litellm_master_key.get_secret_value().startswith("sk-"))


@task(name="check-salt-key", cache_policy=NO_CACHE, persist_result=False)
def check_salt_key(stack: Stack) -> CheckResult:
    """Compare the salt key with the fingerprint of the first verification (or record it)."""
    name = salt_variable_name(stack)
    raw = Variable.get(name)
    stored: SaltRecord | None = None
    if raw is not None:
        try:
            stored = SaltRecord.model_validate(raw)
        except ValidationError:
            return failed(
                "salt-key",
                f"the Prefect variable {name!r} does not hold a salt fingerprint",
                fix=f"delete the variable {name!r} only if LITELLM_SALT_KEY is known to be the "
                "original; the next run records it again",
            )
    if stored is not None:
        return judge_salt(stored, stack.salt_fingerprint(stored.salt), name)
    salt = secrets.token_hex(16)
    fingerprint = stack.salt_fingerprint(salt)
    result = judge_salt(None, fingerprint, name)
    if fingerprint is not None:
        record = SaltRecord(salt=salt, fingerprint=fingerprint, recorded_at=datetime.now(UTC))
        Variable.set(name, record.model_dump(mode="json"), tags=["deploy-verify"], overwrite=False)
    return result


@task(name="check-backup-freshness", cache_policy=NO_CACHE, persist_result=False)
def check_backup_freshness(
    stack: Stack, max_age_hours: float, start_first_backup: bool
) -> CheckResult:
    """The newest complete set is young enough; with none at all, start a first backup."""
    deployment = f"backup/{stack.stack_name}"
    try:
        manifest = newest_complete_manifest(stack)
    except StorageError as exc:
        return failed(
            "backup-fresh",
            f"could not list the backup sets: {stack.error_line(str(exc), limit=300)}",
            fix="check the backup bucket and the S3 credentials' list/read permissions",
        )
    started_run: str | None = None
    if manifest is None and start_first_backup:
        started_run = _start_first_backup(deployment)
    return judge_backup_age(
        manifest.finished_at if manifest else None,
        manifest.backup_id if manifest else None,
        datetime.now(UTC),
        timedelta(hours=max_age_hours),
        started_run,
        deployment,
    )


@task(name="check-offsite-copy", cache_policy=NO_CACHE, persist_result=False)
def check_offsite_copy(stack: Stack, max_age_hours: float) -> CheckResult:
    """The off-site target answers, its newest complete copy is young enough, and whether
    its bucket keeps versions or locks objects (information, with the fix)."""
    from tasks.offsite import bucket_protection, newest_offsite_set

    if stack.offsite is None:
        return skipped(
            "offsite-copy",
            "no off-site target configured: the backups live only inside the project",
            fix="set the OFFSITE_* variables (README, 'Off-site copy')",
        )
    target = stack.offsite
    try:
        client = target.client(timeout_s=30, retries=1)
        newest = newest_offsite_set(stack, client)
        protection = bucket_protection(client, target.bucket)
    except OffsiteError as exc:
        return failed(
            "offsite-copy",
            stack.error_line(str(exc), limit=300),
            fix="check OFFSITE_S3_ENDPOINT, the bucket and the off-site keys' permissions",
        )
    if newest is None:
        return failed(
            "offsite-copy",
            f"no complete off-site copy on {target.describe()}; {protection}",
            fix="run the backup flow: each run copies every set missing off-site",
        )
    age_h = (datetime.now(UTC) - newest.copied_at).total_seconds() / 3600
    if age_h > max_age_hours:
        return failed(
            "offsite-copy",
            f"newest off-site copy ({newest.backup_id}) is {age_h:.1f} h old; {protection}",
            fix="see the backup runs: an off-site copy that fails ends them Failed",
        )
    return passed(
        "offsite-copy",
        f"newest off-site copy {newest.backup_id}, {age_h:.1f} h old, key "
        f"{newest.key_fingerprint}; {protection}",
    )


def _start_first_backup(deployment: str) -> str | None:
    """Start ``deployment`` without waiting; None when it is not deployed."""
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            return None
    run = run_deployment(
        deployment,
        timeout=0,
        as_subflow=False,
        flow_run_name="first-backup-after-deploy",
        tags=["deploy-verify"],
    )
    assert isinstance(run, FlowRun)  # sync context: run_deployment returns the run itself
    get_run_logger().info("no backup set yet: started %s as flow run %s", deployment, run.name)
    return run.name


@task(name="publish-verify-report", cache_policy=NO_CACHE, persist_result=False)
def publish_verify_report(
    stack_document: str, markdown: str, outcomes: list[ReportRow], summary: str
) -> str:
    """The report as a markdown artifact plus a table artifact; returns the report key."""
    key = report_key(stack_document)
    create_markdown_artifact(markdown=markdown, key=key, description=summary[:500])
    create_table_artifact(
        table=table_rows(outcomes), key=f"{key}-checks", description=summary[:500]
    )
    return key
