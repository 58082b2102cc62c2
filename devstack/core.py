"""A real local copy of the stack on 127.0.0.1, in a state folder of its own.

Every service is a real process started here and tracked by PID in ``state.json``:
PostgreSQL and Redis (Debian packages), SeaweedFS (S3), the ClickHouse engine (chdb)
behind a thin HTTP front, a LiteLLM proxy with mock models, a Langfuse stand-in, a
webhook receiver, and a Prefect server with a process worker. Ports are picked free
on the first ``up`` and kept, so ``up`` twice is harmless and the env file stays valid.

The test suite drives the same object (session fixture), so the tests and the demo
exercise the same parts. ``Devstack`` is the one entry point; behind it, ``state`` keeps
the state folder, ``processes`` starts, waits on and stops processes, and ``services``
knows how each system starts and when it is ready.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from devstack import processes, services
from devstack.processes import DevstackError, pid_alive, port_is_bound
from devstack.services import LITELLM_VENV, POOL
from devstack.standins import STANDINS
from devstack.state import (
    PORT_NAMES,
    PROJECT,
    Credentials,
    State,
    load_or_create_state,
    write_state,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client as ClickHouseClient
    from minio import Minio

__all__ = [
    "LITELLM_VENV",
    "PAGERDUTY_ROUTING_KEY",
    "POOL",
    "PORT_NAMES",
    "PROJECT",
    "SERVICE_ORDER",
    "STACK_NAME",
    "STANDINS",
    "Credentials",
    "Devstack",
    "DevstackError",
    "State",
    "pid_alive",
    "port_is_bound",
]

STACK_NAME = "devstack"
# Not a secret: the receiver stand-in accepts any routing key.
PAGERDUTY_ROUTING_KEY = "devstack-routing-key"

# Order matters: dependencies first (ready before their dependents start).
SERVICE_ORDER = (
    "postgres",
    "redis",
    "s3",
    "offsite",
    "clickhouse",
    "langfuse",
    "langfuse_worker",
    "receiver",
    "litellm",
    "prefect_db",
    "prefect_server",
    "prefect_worker",
)


class Devstack:
    """The local stack in ``root``; every method is idempotent."""

    def __init__(self, root: Path | str | None = None, log: Callable[[str], None] = print) -> None:
        self.root = Path(
            root or os.environ.get("DEVSTACK_DIR", str(PROJECT / ".devstack"))
        ).resolve()
        self.log = log
        self.state_file = self.root / "state.json"
        self.state = load_or_create_state(self.state_file)

    # ---- state --------------------------------------------------------------------

    def _write_state(self) -> None:
        write_state(self.state_file, self.state)

    @property
    def ports(self) -> dict[str, int]:
        return self.state.ports

    @property
    def creds(self) -> Credentials:
        return self.state.credentials

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.url('prefect')}/api"

    @property
    def receiver_url(self) -> str:
        return self.url("receiver")

    # ---- the env file ---------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Every endpoint and credential, in the original template's variable names."""
        c, p = self.creds, self.ports
        return {
            "STACK_NAME": STACK_NAME,
            "DATABASE_URL": f"postgresql://postgres:{c.postgres_password}@127.0.0.1:{p['postgres']}/railway",
            "CLICKHOUSE_URL": self.url("clickhouse"),
            "CLICKHOUSE_USER": "clickhouse",
            "CLICKHOUSE_PASSWORD": c.clickhouse_password,
            "CLICKHOUSE_DB": "default",
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(p["redis"]),
            "REDIS_PASSWORD": c.redis_password,
            "MINIO_ENDPOINT": self.url("s3"),
            "MINIO_ROOT_USER": c.s3_access_key,
            "MINIO_ROOT_PASSWORD": c.s3_secret_key,
            "BACKUP_BUCKET": "backups",
            "LANGFUSE_S3_BUCKET": "langfuse",
            "LITELLM_URL": self.url("litellm"),
            "LITELLM_MASTER_KEY": c.litellm_master_key,
            "LITELLM_SALT_KEY": c.litellm_salt_key,
            # The devstack's LiteLLM runs without a database on purpose (its DB mode
            # needs Prisma engines from the internet): not a fault to page about.
            "LITELLM_REQUIRES_DB": "false",
            "LANGFUSE_URL": self.url("langfuse"),
            "LANGFUSE_WORKER_URL": self.url("langfuse_worker"),
            "LANGFUSE_PUBLIC_KEY": c.langfuse_public_key,
            "LANGFUSE_SECRET_KEY": c.langfuse_secret_key,
            "RECEIVER_URL": self.receiver_url,
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_UI_URL": self.url("prefect"),
            "PREFECT_HOME": str(self.root / "prefect-client"),
            "OPS_HEALTH_PORT": str(p["health"]),
            "DEVSTACK_DIR": str(self.root),
        }

    def write_env_file(self) -> Path:
        path = self.root / "stack.env"
        lines = [f"{key}={value}" for key, value in self.env().items()]
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    def client_env(self) -> dict[str, str]:
        """Environment for a process that talks to this devstack's Prefect server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(self.env())
        env.update(
            {
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
                "PREFECT_LOCAL_STORAGE_PATH": str(self.root / "results"),
                "PREFECT_LOGGING_LEVEL": "INFO",
            }
        )
        return env

    # ---- clients ----------------------------------------------------------------------

    def admin_dsn(self, database: str = "railway") -> str:
        return services.pg_dsn(self, "postgres", database)

    def minio_client(self) -> Minio:
        from minio import Minio

        return Minio(
            f"127.0.0.1:{self.ports['s3']}",
            access_key=self.creds.s3_access_key,
            secret_key=self.creds.s3_secret_key,
            secure=False,
        )

    def offsite_client(self) -> Minio:
        from minio import Minio

        return Minio(
            f"127.0.0.1:{self.ports['offsite']}",
            access_key=self.creds.offsite_access_key,
            secret_key=self.creds.offsite_secret_key,
            secure=False,
        )

    def offsite_env(self, *, identity: bool = True) -> dict[str, str]:
        """The OFFSITE_* variables of the devstack's off-site target (a second SeaweedFS).

        Not part of :meth:`env`: the devstack's own stack has no off-site copy, so the
        suite's many backups stay quick; tests and the demo add these where they want it.
        """
        from pyrage import x25519

        key = x25519.Identity.from_str(self.creds.age_identity)
        env = {
            "OFFSITE_S3_ENDPOINT": self.url("offsite"),
            "OFFSITE_S3_BUCKET": "offsite",
            "OFFSITE_S3_PREFIX": "llm",
            "OFFSITE_S3_ACCESS_KEY": self.creds.offsite_access_key,
            "OFFSITE_S3_SECRET_KEY": self.creds.offsite_secret_key,
            "OFFSITE_AGE_RECIPIENT": str(key.to_public()),
        }
        if identity:
            env["OFFSITE_AGE_IDENTITY"] = self.creds.age_identity
        return env

    def clickhouse_client(self) -> ClickHouseClient:
        """A clickhouse-connect client for the devstack's ClickHouse, as its own user."""
        import clickhouse_connect

        return clickhouse_connect.get_client(
            host="127.0.0.1",
            port=self.ports["clickhouse"],
            username="clickhouse",
            password=self.creds.clickhouse_password,
        )

    # ---- LiteLLM and the Prefect worker ---------------------------------------------

    def litellm_config(self, master_key: str | None = None) -> str:
        """LiteLLM config with mock models; ``master_key=""`` makes an open proxy."""
        key = self.creds.litellm_master_key if master_key is None else master_key
        return services.litellm_config(key)

    def litellm_env(self) -> dict[str, str]:
        return services.litellm_env(self)

    def start_litellm(self, name: str, port: int, master_key: str | None = None) -> int:
        """Start a LiteLLM proxy (the stack's own, or an extra one a test needs)."""
        return services.start_litellm(self, name, port, master_key)

    def worker_online(self) -> bool:
        return services.worker_online(self)

    # ---- processes ------------------------------------------------------------------

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> int:
        """Start the process ``name`` (log in ``logs/<name>.log``) and keep its PID."""
        pid = processes.spawn(
            argv,
            log_path=self._log_path(name),
            env=env or self.client_env(),
            cwd=cwd or PROJECT,
            user=user,
        )
        self.state.pids[name] = pid
        self._write_state()
        return pid

    def wait_until_ready(
        self, name: str, ready: Callable[[], bool], *, timeout: float = 90.0
    ) -> None:
        processes.wait_until_ready(
            name,
            ready,
            pid=self.state.pids.get(name),
            log_path=self._log_path(name),
            timeout=timeout,
        )

    def _log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def running(self, name: str) -> bool:
        pid = self.state.pids.get(name)
        return pid is not None and pid_alive(pid)

    def start_service(self, name: str) -> None:
        if self.running(name):
            return
        self.log(f"starting {name}")
        services.STARTERS[name](self)

    def stop_service(self, name: str, timeout: float = 30.0) -> None:
        """Stop one process by PID (TERM, then KILL), and wait until it is gone."""
        pid = self.state.pids.get(name)
        if pid is None:
            return
        # Postgres: SIGINT is its "fast" shutdown (rolls back, closes clients).
        sig = signal.SIGINT if name in ("postgres", "prefect_db") else signal.SIGTERM
        # SeaweedFS ignores TERM for a long while; nothing in it needs a clean stop.
        grace = 3.0 if name in ("s3", "offsite") else timeout
        processes.stop_process_group(pid, sig=sig, grace=grace)
        self.state.pids.pop(name, None)
        self._write_state()

    # ---- whole stack ----------------------------------------------------------------

    def up(self, with_worker: bool = True, seed: bool = True) -> None:
        for name in SERVICE_ORDER:
            if name == "prefect_worker" and not with_worker:
                continue
            self.start_service(name)
        self.write_env_file()
        if seed:
            # Imported here: psycopg loads only when a stack is seeded.
            from devstack.seed import seed_all

            seed_all(self)
        self.save_stack_block()

    def down(self) -> None:
        for name in reversed(SERVICE_ORDER):
            self.stop_service(name)
        for name in list(self.state.pids):
            self.stop_service(name)

    def status(self) -> dict[str, str]:
        result = {}
        for name in SERVICE_ORDER:
            pid = self.state.pids.get(name)
            if pid is None:
                result[name] = "stopped"
            else:
                result[name] = f"running (pid {pid})" if pid_alive(pid) else f"dead (pid {pid})"
        return result

    def died(self, lines: int = 60) -> dict[str, str]:
        """Services whose process ended without being stopped, with their logs' tails."""
        return {
            name: processes.log_tail(self._log_path(name), lines=lines)
            for name, pid in self.state.pids.items()
            if not pid_alive(pid)
        }

    def bound_ports(self) -> list[int]:
        return [port for port in self.ports.values() if port_is_bound(port)]

    def save_stack_block(self) -> None:
        """Create (or update) the ``devstack`` stack block document from the env file.

        Alerts route to the receiver through a built-in CustomWebhookNotificationBlock
        document (``custom-webhook/devstack-webhook``), which raises on HTTP errors.
        """
        done = subprocess.run(
            [sys.executable, "-m", "devstack.blocks"], env=self.client_env(),
            capture_output=True, text=True, cwd=PROJECT,
        )  # fmt: skip
        if done.returncode != 0:
            raise DevstackError(f"could not save the stack block:\n{done.stderr[-2000:]}")

    @contextlib.contextmanager
    def stopped(self, name: str) -> Iterator[None]:
        """Stop a service for the duration of the block, then start it again."""
        self.stop_service(name)
        try:
            yield
        finally:
            self.start_service(name)

    @contextlib.contextmanager
    def frozen(self, name: str) -> Iterator[None]:
        """Freeze a service (SIGSTOP) for the duration of the block: its port still
        accepts connections and nothing answers, a hang as the kernel makes one."""
        pid = self.state.pids[name]
        os.killpg(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(pid, signal.SIGCONT)
