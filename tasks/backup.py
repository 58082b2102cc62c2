"""The backup set as a whole: its id, its manifest, its pruning and its report.

The parts are made elsewhere (:mod:`tasks.postgres`, :mod:`tasks.clickhouse`); here
they are checked against the bucket and sealed with the manifest, which is written
last, and only then is anything pruned. Plans and reports become Prefect artifacts:
``backup-retention-<stack>`` (every set kept or deleted, and why) and
``backup-report-<stack>`` (sizes, durations, throughput, row counts).
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from datetime import UTC, datetime
from uuid import UUID

import httpx
import prefect
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from blocks.stack import Stack
from tasks.clickhouse import ClickHouseBackupOutcome
from tasks.decisions import retention
from tasks.decisions.manifest import (
    BackupManifest,
    PostgresDump,
    StoredObject,
    backup_id_time,
    is_backup_id,
    manifest_key,
    new_backup_id,
    set_prefix,
)
from tasks.decisions.retention import ObjectRecord, RetentionPlan, RetentionPolicy, UploadRecord
from tasks.drill_records import read_drill_verdicts
from tasks.errors import BackupError, StorageError
from tasks.pg_tools import PgVersions
from tasks.retry import RETRY_TRANSIENT, RETRY_TRANSIENT_QUICK, RUN_CACHE
from tasks.slots import create_slot, hold_slot
from tasks.storage import (
    MultipartUpload,
    abort_multipart_upload,
    delete_objects,
    list_backup_sets,
    list_multipart_uploads,
    list_stack_objects,
    newest_complete_manifest,
    object_size,
    put_small_object,
)

__all__ = [
    "ENDED_STATES",
    "RetentionResult",
    "apply_retention",
    "backup_slot_name",
    "drills_scheduled",
    "ended_backup_runs",
    "ensure_backup_slot",
    "first_few",
    "one_backup_at_a_time",
    "plan_retention",
    "read_expected_dump_size",
    "run_name_for_set",
    "start_backup_set",
    "write_manifest",
]

# ---- one backup per stack at a time ---------------------------------------------------


def backup_slot_name(stack: str) -> str:
    return f"backup-{stack}"


@task(
    name="ensure-backup-slot",
    **RETRY_TRANSIENT_QUICK,
    cache_policy=NO_CACHE,
)
def ensure_backup_slot(stack: str) -> str:
    """Create the global concurrency limit ``backup-<stack>`` (limit 1) if it is missing."""
    return create_slot(backup_slot_name(stack))


@contextlib.contextmanager
def one_backup_at_a_time(stack: str, wait_s: float) -> Iterator[None]:
    """Hold the slot ``backup-<stack>`` (:mod:`tasks.slots`) for the block."""
    name = backup_slot_name(stack)
    try:
        with hold_slot(name, wait_s):
            yield
    except TimeoutError:
        raise BackupError(
            f"another backup of {stack} holds the slot {name!r}; this run waited {wait_s:.0f} s "
            "and did nothing. Let the running backup finish, or raise lock_timeout_s."
        ) from None


# ---- the set --------------------------------------------------------------------------


@task(name="start-backup-set", persist_result=True, cache_policy=RUN_CACHE)
def start_backup_set(stack: Stack) -> str:
    """A new backup id. Persisted, so a retried flow run keeps writing the same set.

    The flow run is renamed after the set (``backup-<stack>-<backup-id>``): the UI says
    which set a run wrote, and retention knows which incomplete sets belong to runs
    that ended (:func:`ended_backup_runs`) rather than to runs still in flight.
    """
    backup_id = new_backup_id()
    logger = get_run_logger()
    logger.info("Backup set %s/%s", stack.backup_bucket, set_prefix(stack.stack_name, backup_id))
    flow_run_id = flow_run.get_id()
    if flow_run_id:
        try:
            with get_client(sync_client=True) as client:
                client.update_flow_run(
                    UUID(flow_run_id), name=run_name_for_set(stack.stack_name, backup_id)
                )
        except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
            logger.warning("could not rename the flow run after its set: %s", exc)
    return backup_id


def run_name_for_set(stack: str, backup_id: str) -> str:
    return f"backup-{stack}-{backup_id}"


ENDED_STATES = [StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]


def ended_backup_runs(stack: str) -> dict[str, str]:
    """Backup id -> final state name, for the backup runs of ``stack`` that ended badly."""
    prefix = run_name_for_set(stack, "")
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["backup"])),
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(like_=prefix),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=ENDED_STATES)),
            ),
            limit=200,
        )
    ended: dict[str, str] = {}
    for run in runs:
        backup_id = run.name.removeprefix(prefix)
        if run.name.startswith(prefix) and is_backup_id(backup_id) and run.state is not None:
            ended[backup_id] = run.state.name or run.state.type.value
    return ended


@task(
    name="read-expected-dump-size",
    cache_policy=NO_CACHE,
    **RETRY_TRANSIENT,
)
def read_expected_dump_size(stack: Stack) -> int:
    """The previous complete dump's size, for the progress bar (0 when none)."""
    previous = newest_complete_manifest(stack)
    return previous.postgres.dump_size if previous else 0


@task(
    name="write-manifest",
    persist_result=True,
    cache_policy=RUN_CACHE,
    **RETRY_TRANSIENT,
)
def write_manifest(
    stack: Stack,
    backup_id: str,
    versions: PgVersions,
    dump: PostgresDump,
    clickhouse: list[ClickHouseBackupOutcome],
) -> BackupManifest:
    """Check every object of the set in the bucket, then write ``manifest.json``.

    Written last: its presence is what makes the set complete.
    """
    logger = get_run_logger()
    objects = [
        StoredObject(
            key=dump.dump_key, size=dump.dump_size, sha256=dump.dump_sha256, kind="postgres-dump"
        ),
        *(outcome.descriptor for outcome in clickhouse),
    ]
    for obj in objects:
        stored = object_size(stack, obj.key)
        if stored != obj.size:
            raise StorageError(
                f"{obj.key} is {'missing' if stored is None else f'{stored} bytes'} in the "
                f"bucket, but {obj.size} bytes were written; no manifest written. The set "
                "stays incomplete; check the S3 service and run the backup again."
            )
    tool_versions = {
        "python": platform.python_version(),
        "prefect": prefect.__version__,
        "pg_dump": versions.pg_dump,
        "postgres": versions.server,
    }
    for outcome in clickhouse:
        tool_versions[f"clickhouse:{outcome.backup.database}"] = outcome.backup.server_version
    manifest = BackupManifest(
        backup_id=backup_id,
        stack=stack.stack_name,
        bucket=stack.backup_bucket,
        started_at=backup_id_time(backup_id),
        finished_at=datetime.now(UTC),
        tool_versions=tool_versions,
        objects=objects,
        postgres=dump,
        clickhouse=[outcome.backup for outcome in clickhouse],
    )
    key = manifest_key(stack.stack_name, backup_id)
    put_small_object(stack, key, manifest.to_json(), "application/json")
    logger.info("Manifest written: %s (%d objects checked)", key, len(objects))
    return manifest


# ---- pruning --------------------------------------------------------------------------


class RetentionResult(BaseModel):
    dry_run: bool
    deleted_sets: list[str]
    deleted_objects: int
    aborted_uploads: int


@task(
    name="plan-retention",
    cache_policy=NO_CACHE,
    **RETRY_TRANSIENT,
)
def plan_retention(
    stack: Stack, backup_id: str, *, policy: RetentionPolicy, dry_run: bool
) -> RetentionPlan:
    """List the bucket and decide, per set, keep or delete; publish the plan artifact."""
    logger = get_run_logger()
    entries = list_stack_objects(stack)
    objects = [ObjectRecord(key=e.key, size=e.size, last_modified=e.last_modified) for e in entries]
    complete = {info.backup_id for info in list_backup_sets(stack) if info.complete}
    uploads = [
        UploadRecord(key=u.key, upload_id=u.upload_id, initiated=u.initiated)
        for u in list_multipart_uploads(stack)
    ]
    if policy.require_verified is None:
        policy = policy.model_copy(update={"require_verified": drills_scheduled(stack.stack_name)})
    verdicts = read_drill_verdicts(stack, entries)
    plan = retention.plan_retention(
        stack.stack_name,
        objects,
        complete_ids=complete,
        uploads=uploads,
        policy=policy,
        now=datetime.now(UTC),
        current_backup_id=backup_id,
        failed_runs=ended_backup_runs(stack.stack_name),
        verdicts=verdicts,
    )
    create_table_artifact(
        key=f"backup-retention-{stack.stack_name}",
        table=plan.rows(),
        description=(
            f"Retention plan for {stack.stack_name}"
            f"{' (dry run: nothing deleted)' if dry_run else ''}: "
            f"{len(plan.kept_complete)} complete sets kept, {len(plan.deleted_sets)} sets "
            f"deleted, {len(plan.aborts)} unfinished uploads aborted."
        ),
    )
    logger.info(
        "Retention counts %s; %d sets drilled, newest verified: %s",
        "only verified sets (require_verified)" if plan.policy.verified_only else "every set",
        len(verdicts),
        plan.newest_verified or "none",
    )
    logger.info(
        "Retention: keep %d complete sets, delete %s, abort %d uploads%s",
        len(plan.kept_complete),
        first_few(plan.deleted_sets),
        len(plan.aborts),
        " (dry run)" if dry_run else "",
    )
    return plan


def drills_scheduled(stack: str) -> bool:
    """True when ``restore-drill/<stack>`` exists, is not paused and has an active schedule.

    What ``require_verified`` follows when a run leaves it empty: read at run time, so
    a drill schedule paused in the UI turns it off at the next backup, and a run started
    with a config of its own (which replaces the deployment's whole ``config``) keeps it.
    When the API cannot say, it answers True: verified retention only ever keeps more.
    """
    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(f"restore-drill/{stack}")
    except ObjectNotFound:
        return False
    except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
        get_run_logger().warning(
            "could not read restore-drill/%s (%s): retention counts only verified sets", stack, exc
        )
        return True
    return not deployment.paused and any(s.active for s in deployment.schedules)


@task(
    name="apply-retention",
    cache_policy=NO_CACHE,
    **RETRY_TRANSIENT,
)
def apply_retention(stack: Stack, plan: RetentionPlan, dry_run: bool) -> RetentionResult:
    """Delete what the plan deletes: each set's manifest first, then the rest."""
    logger = get_run_logger()
    if dry_run or not plan.pruning:
        return RetentionResult(
            dry_run=dry_run, deleted_sets=[], deleted_objects=0, aborted_uploads=0
        )
    deleted = 0
    for decision in plan.sets:
        if decision.action != "delete":
            continue
        # Manifest first: if deletion stops half-way, the rest is an incomplete set,
        # never a "complete" set with missing objects.
        head, rest = decision.delete_keys[:1], decision.delete_keys[1:]
        deleted += delete_objects(stack, head) + delete_objects(stack, rest)
        logger.info("Retention: deleted set %s (%d objects)", decision.backup_id, decision.objects)
    for upload in plan.aborts:
        abort_multipart_upload(
            stack, MultipartUpload(key=upload.key, upload_id=upload.upload_id, initiated=None)
        )
    return RetentionResult(
        dry_run=False,
        deleted_sets=plan.deleted_sets,
        deleted_objects=deleted,
        aborted_uploads=len(plan.aborts),
    )


def first_few(items: list[str], n: int = 5) -> str:
    if not items:
        return "nothing"
    shown = ", ".join(items[:n])
    return shown + (f" ... and {len(items) - n} more" if len(items) > n else "")
