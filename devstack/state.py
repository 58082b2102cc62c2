"""What a devstack's state folder remembers between runs: its ports, its credentials, the
PIDs of what it started (``state.json``, readable by its owner only).

Ports are picked free on the first ``up`` and kept, so the env file stays valid across
restarts; a folder written before a service existed gets that service's port on load.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from devstack.processes import free_port

__all__ = ["PORT_NAMES", "PROJECT", "Credentials", "State", "load_or_create_state", "write_state"]

# The checkout the devstack runs from; its default state folder is PROJECT/.devstack.
PROJECT = Path(__file__).resolve().parent.parent

PORT_NAMES = (
    "postgres",
    "prefect_db",
    "redis",
    "s3",
    "s3_master",
    "s3_master_grpc",
    "s3_volume",
    "s3_volume_grpc",
    "s3_filer",
    "s3_filer_grpc",
    "s3_grpc",
    # The off-site target: a second SeaweedFS, as a provider outside the project would be.
    "offsite",
    "offsite_master",
    "offsite_master_grpc",
    "offsite_volume",
    "offsite_volume_grpc",
    "offsite_filer",
    "offsite_filer_grpc",
    "offsite_grpc",
    "clickhouse",
    "litellm",
    "langfuse",
    "langfuse_worker",
    "receiver",
    "prefect",
    "health",
)


def _new_age_identity() -> str:
    from pyrage import x25519

    return str(x25519.Identity.generate())


@dataclass
class Credentials:
    postgres_password: str
    redis_password: str
    s3_access_key: str
    s3_secret_key: str
    clickhouse_password: str
    litellm_master_key: str
    litellm_salt_key: str
    langfuse_public_key: str
    langfuse_secret_key: str
    # Newer than the state folders of older versions: generated when missing.
    offsite_access_key: str = field(default_factory=lambda: "offsite" + secrets.token_hex(4))
    offsite_secret_key: str = field(default_factory=lambda: "os-" + secrets.token_urlsafe(18))
    age_identity: str = field(default_factory=lambda: _new_age_identity())

    @classmethod
    def generate(cls) -> Credentials:
        token = secrets.token_urlsafe
        return cls(
            postgres_password="pg-" + token(12),
            redis_password="rd-" + token(12),
            s3_access_key="devstack" + secrets.token_hex(4),
            s3_secret_key="s3-" + token(18),
            clickhouse_password="ch-" + token(12),
            litellm_master_key="sk-master-" + token(16),
            litellm_salt_key="sk-salt-" + token(16),
            langfuse_public_key="pk-lf-" + secrets.token_hex(8),
            langfuse_secret_key="sk-lf-" + token(16),
        )


@dataclass
class State:
    ports: dict[str, int]
    credentials: Credentials
    pids: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"ports": self.ports, "credentials": self.credentials.__dict__, "pids": self.pids},
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> State:
        data = json.loads(text)
        return cls(
            ports=data["ports"], credentials=Credentials(**data["credentials"]), pids=data["pids"]
        )


def load_or_create_state(state_file: Path) -> State:
    """The state in ``state_file``, completed with new services' ports; or a new one."""
    if state_file.exists():
        state = State.from_json(state_file.read_text())
        # A state folder from an older version lacks the ports of newer services.
        taken = set(state.ports.values())
        missing = [name for name in PORT_NAMES if name not in state.ports]
        for name in missing:
            state.ports[name] = free_port(taken)
        if missing:
            write_state(state_file, state)
        return state
    state_file.parent.mkdir(parents=True, exist_ok=True)
    fresh: set[int] = set()
    state = State(
        ports={name: free_port(fresh) for name in PORT_NAMES},
        credentials=Credentials.generate(),
    )
    write_state(state_file, state)
    return state


def write_state(state_file: Path, state: State) -> None:
    """Replace ``state_file`` in one step, readable by its owner only (it holds passwords)."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(state.to_json())
    tmp.chmod(0o600)
    tmp.replace(state_file)
