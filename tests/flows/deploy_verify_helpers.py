"""What the deploy-verify tests share: a run and its report, block copies, planted sets.

A fault in the stack block is a modified copy saved under another name
(``save_copy``); a backup set is planted as its manifest alone (``put_manifest``).

``verify`` records every run's id in ``RUN_IDS`` so that the last test can scan all of
them for secrets.
"""

from __future__ import annotations

import io
import json
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.objects import State

from blocks.stack import Stack
from devstack.core import Devstack
from flows.deploy_verify import DeployVerifyConfig, deploy_verify
from tasks.decisions.manifest import BackupManifest, PostgresDump, manifest_key, new_backup_id

__all__ = [
    "RUN_IDS",
    "Run",
    "alerts_for",
    "assert_fails_exactly",
    "free_port",
    "put_manifest",
    "remove_prefix",
    "report_rows",
    "save_copy",
    "verify",
]

RUN_IDS: list[UUID] = []  # every run of the deploy-verify tests, for the secret scan


@dataclass
class Run:
    state: State
    flow_run_id: UUID
    rows: dict[str, dict[str, str]]

    def statuses(self, status: str) -> set[str]:
        return {name for name, row in self.rows.items() if row["result"] == status}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def report_rows(flow_run_id: UUID, stack: str) -> dict[str, dict[str, str]]:
    """The run's table artifact, as the UI shows it: check -> row."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"deploy-verify-{stack}-checks"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    assert len(artifacts) == 1, f"expected one report table for run {flow_run_id}"
    data: Any = artifacts[0].data
    rows = json.loads(data) if isinstance(data, str) else data
    return {row["check"]: row for row in rows}


def verify(stack: str, **config: Any) -> Run:
    state = deploy_verify(stack=stack, config=DeployVerifyConfig(**config), return_state=True)
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    RUN_IDS.append(flow_run_id)
    return Run(state=state, flow_run_id=flow_run_id, rows=report_rows(flow_run_id, stack))


def save_copy(name: str, **changes: Any) -> Stack:
    """A copy of the devstack block with ``changes``, saved as its own document."""
    base = Stack.load("devstack")
    values = {field: getattr(base, field) for field in Stack.model_fields}
    values.update(changes)
    copy = Stack(**values)
    copy.save(name, overwrite=True)
    return copy


def assert_fails_exactly(run: Run, check: str, *cause: str) -> str:
    """The run failed; ``check`` is the only failed check; its message names the cause."""
    assert run.state.is_failed()
    assert run.statuses("failed") == {check}
    message = run.rows[check]["details"]
    for words in cause:
        assert words in message
    assert run.rows[check]["fix"], "a failed check says how to fix it"
    assert check in (run.state.message or "")
    return message


def alerts_for(receiver: Any, stack: str) -> list[str]:
    texts = []
    for record in receiver.received("/custom"):
        body = record.get("json") or {}
        text = f"{body.get('title', '')}\n{body.get('text', '')}"
        if stack in text:
            texts.append(text)
    return texts


def put_manifest(devstack: Devstack, stack_name: str, finished_at: datetime) -> str:
    """A complete backup set by definition: its manifest.json, written last."""
    backup_id = new_backup_id(finished_at - timedelta(minutes=5))
    manifest = BackupManifest(
        backup_id=backup_id,
        stack=stack_name,
        bucket="backups",
        started_at=finished_at - timedelta(minutes=5),
        finished_at=finished_at,
        objects=[],
        postgres=PostgresDump(
            database="railway",
            server_version="15",
            pg_dump_version="15",
            snapshot_id="00000003-00000002-1",
            dump_key=f"{stack_name}/{backup_id}/postgres/railway.dump",
            dump_size=0,
            dump_sha256="0" * 64,
            table_rows={},
            seconds=1.0,
        ),
    )
    data = manifest.to_json()
    devstack.minio_client().put_object(
        "backups", manifest_key(stack_name, backup_id), io.BytesIO(data), len(data)
    )
    return backup_id


def remove_prefix(devstack: Devstack, prefix: str) -> None:
    client = devstack.minio_client()
    for item in client.list_objects("backups", prefix=prefix, recursive=True):
        client.remove_object("backups", item.object_name)
