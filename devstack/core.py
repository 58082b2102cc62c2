"""A real local copy of the stack on 127.0.0.1, in a state folder of its own.

Every service is a real process started here and tracked by PID in ``state.json``:
PostgreSQL and Redis (Debian packages), SeaweedFS (S3), the ClickHouse engine (chdb)
behind a thin HTTP front, a LiteLLM proxy with mock models, a Langfuse stand-in, a
webhook receiver, and a Prefect server with a process worker. Ports are picked free
on the first ``up`` and kept, so ``up`` twice is harmless and the env file stays valid.

The test suite drives the same object (session fixture), so the tests and the demo
exercise the same parts.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from devstack.standins import STANDINS

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client as ClickHouseClient

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

PROJECT = Path(__file__).resolve().parent.parent
PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
LITELLM_VENV = Path(os.environ.get("LITELLM_VENV", PROJECT / ".venv-litellm"))
POOL = "devstack"
STACK_NAME = "devstack"
# Not a secret: the receiver stand-in accepts any routing key.
PAGERDUTY_ROUTING_KEY = "devstack-routing-key"

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
    "clickhouse",
    "litellm",
    "langfuse",
    "langfuse_worker",
    "receiver",
    "prefect",
    "health",
)

# Order matters: dependencies first (ready before their dependents start).
SERVICE_ORDER = (
    "postgres",
    "redis",
    "s3",
    "clickhouse",
    "langfuse",
    "langfuse_worker",
    "receiver",
    "litellm",
    "prefect_db",
    "prefect_server",
    "prefect_worker",
)


class DevstackError(RuntimeError):
    """A devstack service could not be started or stopped."""


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        # SeaweedFS derives gRPC ports as port+10000 when not told otherwise; we tell
        # it, but keep every port below 55535 so a derived one can never overflow.
        if port not in taken and port < 55535:
            taken.add(port)
            return port


def port_is_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0): reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pg_bin(name: str) -> str:
    for directory in PG_BIN_CANDIDATES:
        candidate = directory / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise DevstackError(f"{name} not found: install PostgreSQL (apt-get install postgresql)")
    return found


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


class Devstack:
    """The local stack in ``root``; every method is idempotent."""

    def __init__(self, root: Path | str | None = None, log: Callable[[str], None] = print) -> None:
        self.root = Path(root or os.environ.get("DEVSTACK_DIR", PROJECT / ".devstack")).resolve()
        self.log = log
        self.state_file = self.root / "state.json"
        self.state = self._load_or_create_state()

    # ---- state --------------------------------------------------------------------

    def _load_or_create_state(self) -> State:
        if self.state_file.exists():
            state = State.from_json(self.state_file.read_text())
            # A state folder from an older version lacks the ports of newer services.
            taken = set(state.ports.values())
            missing = [name for name in PORT_NAMES if name not in state.ports]
            for name in missing:
                state.ports[name] = _free_port(taken)
            if missing:
                self._write_state(state)
            return state
        self.root.mkdir(parents=True, exist_ok=True)
        taken: set[int] = set()
        state = State(
            ports={name: _free_port(taken) for name in PORT_NAMES},
            credentials=Credentials.generate(),
        )
        self._write_state(state)
        return state

    def _write_state(self, state: State | None = None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text((state or self.state).to_json())
        tmp.chmod(0o600)
        tmp.replace(self.state_file)

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

    # ---- processes ------------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> int:
        log_path = self.root / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            kwargs: dict[str, object] = {}
            if user and os.geteuid() == 0:
                kwargs["user"] = user
            proc = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env or self.client_env(),
                cwd=cwd or PROJECT,
                start_new_session=True,
                **kwargs,  # type: ignore[arg-type]
            )
        self.state.pids[name] = proc.pid
        self._write_state()
        return proc.pid

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        pid = self.state.pids.get(name)
        while time.monotonic() < deadline:
            if pid is not None and not pid_alive(pid):
                raise DevstackError(f"{name} exited during start; see {self._log_tail(name)}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.2)
        raise DevstackError(f"{name} not ready after {timeout:.0f}s; see {self._log_tail(name)}")

    def _log_tail(self, name: str) -> str:
        path = self.root / "logs" / f"{name}.log"
        tail = ""
        if path.exists():
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-15:])
        return f"{path}:\n{tail}"

    def _http_ok(self, url: str, **kwargs: object) -> bool:
        return httpx.get(url, timeout=2.0, **kwargs).status_code < 500  # type: ignore[arg-type]

    def running(self, name: str) -> bool:
        pid = self.state.pids.get(name)
        return pid is not None and pid_alive(pid)

    # ---- services -------------------------------------------------------------------

    def _start_postgres(self) -> None:
        self._start_pg_cluster("postgres", self.root / "postgres", max_connections=40)
        self._wait("postgres", lambda: self._pg_ready())

    def _start_prefect_db(self) -> None:
        """The Prefect server's own PostgreSQL, apart from the stack's (its own failure
        domain: tests stop the stack's Postgres, and the control plane must not notice).
        PostgreSQL rather than SQLite: under the suite's load SQLite answers "database is
        locked" to writes that started as reads, and the server logs errors."""
        self._start_pg_cluster("prefect_db", self.root / "prefect-db", max_connections=60)
        self._wait("prefect_db", self._prefect_db_ready)

    def _prefect_db_ready(self) -> bool:
        import psycopg

        with psycopg.connect(
            self._pg_dsn("prefect_db", "postgres"), connect_timeout=2, autocommit=True
        ) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'prefect'").fetchone():
                conn.execute("CREATE DATABASE prefect")
        return True

    def _start_pg_cluster(self, name: str, root: Path, max_connections: int) -> None:
        data = root / "data"
        sock = root / "sock"
        user = "postgres" if os.geteuid() == 0 else None
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            sock.mkdir(parents=True, exist_ok=True)
            pwfile = root / "pwfile"
            pwfile.write_text(self.creds.postgres_password + "\n")
            if user:
                info = pwd.getpwnam(user)
                for path in (root, data, sock, pwfile):
                    os.chown(path, info.pw_uid, info.pw_gid)
            initdb = subprocess.run(
                [
                    _pg_bin("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--pwfile",
                    str(pwfile),
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                ],
                capture_output=True,
                text=True,
                user=user,
            )
            pwfile.unlink()
            if initdb.returncode != 0:
                raise DevstackError(f"initdb failed in {data}:\n{initdb.stderr[-2000:]}")
        argv = [
            _pg_bin("postgres"), "-D", str(data), "-p", str(self.ports[name]),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sock}",
            "-c", f"max_connections={max_connections}", "-c", "fsync=off",
            "-c", "log_min_messages=warning",
        ]  # fmt: skip
        self._spawn(name, argv, env=dict(os.environ), user=user)

    def _pg_ready(self) -> bool:
        import psycopg

        with psycopg.connect(self.admin_dsn("postgres"), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def admin_dsn(self, database: str = "railway") -> str:
        return self._pg_dsn("postgres", database)

    def _pg_dsn(self, service: str, database: str) -> str:
        c, p = self.creds, self.ports
        return f"postgresql://postgres:{c.postgres_password}@127.0.0.1:{p[service]}/{database}"

    def _start_redis(self) -> None:
        data = self.root / "redis"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port", str(self.ports["redis"]), "--bind", "127.0.0.1",
            "--requirepass", self.creds.redis_password, "--appendonly", "yes",
            "--dir", str(data), "--daemonize", "no", "--save", "",
            "--maxmemory", "256mb", "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        self._spawn("redis", argv, env=dict(os.environ))
        self._wait("redis", self._redis_ready)

    def _redis_ready(self) -> bool:
        import redis

        client = redis.Redis(
            host="127.0.0.1", port=self.ports["redis"], password=self.creds.redis_password
        )
        try:
            return bool(client.ping())
        finally:
            client.close()

    def _start_s3(self) -> None:
        data = self.root / "s3"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3-identities.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [
                                {
                                    "accessKey": self.creds.s3_access_key,
                                    "secretKey": self.creds.s3_secret_key,
                                }
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        config.chmod(0o600)
        p = self.ports
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or "weed"
        argv = [
            weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['s3_master']}", f"-master.port.grpc={p['s3_master_grpc']}",
            f"-volume.port={p['s3_volume']}", f"-volume.port.grpc={p['s3_volume_grpc']}",
            f"-filer.port={p['s3_filer']}", f"-filer.port.grpc={p['s3_filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.config={config}", "-master.volumeSizeLimitMB=1024", "-volume.max=0",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", f"-filer.localSocket={data}/filer.sock",
        ]  # fmt: skip
        self._spawn("s3", argv, env=dict(os.environ))
        self._wait("s3", self._s3_ready, timeout=120)

    def minio_client(self):  # type: ignore[no-untyped-def]
        from minio import Minio

        return Minio(
            f"127.0.0.1:{self.ports['s3']}",
            access_key=self.creds.s3_access_key,
            secret_key=self.creds.s3_secret_key,
            secure=False,
        )

    def clickhouse_client(self) -> ClickHouseClient:
        """A clickhouse-connect client for the devstack's ClickHouse, as its own user."""
        import clickhouse_connect

        return clickhouse_connect.get_client(
            host="127.0.0.1",
            port=self.ports["clickhouse"],
            username="clickhouse",
            password=self.creds.clickhouse_password,
        )

    def _s3_ready(self) -> bool:
        client = self.minio_client()
        for bucket in ("backups", "langfuse"):
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)
        return True

    def _start_clickhouse(self) -> None:
        data = self.root / "clickhouse"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, str(STANDINS / "clickhouse_http.py"),
            "--port", str(self.ports["clickhouse"]), "--data-dir", str(data),
            "--user", "clickhouse", "--password", self.creds.clickhouse_password,
        ]  # fmt: skip
        self._spawn("clickhouse", argv, env=dict(os.environ))
        self._wait("clickhouse", lambda: self._http_ok(f"{self.url('clickhouse')}/ping"))

    def _start_langfuse(self, role: str) -> None:
        name = "langfuse" if role == "web" else "langfuse_worker"
        argv = [
            sys.executable, str(STANDINS / "langfuse.py"), "--port", str(self.ports[name]),
            "--role", role, "--public-key", self.creds.langfuse_public_key,
            "--secret-key", self.creds.langfuse_secret_key,
        ]  # fmt: skip
        # As real Langfuse takes them: ingested events are written to ClickHouse too.
        env = dict(os.environ)
        env.update(
            {
                "CLICKHOUSE_URL": self.url("clickhouse"),
                "CLICKHOUSE_USER": "clickhouse",
                "CLICKHOUSE_PASSWORD": self.creds.clickhouse_password,
                "CLICKHOUSE_DB": "default",
            }
        )
        self._spawn(name, argv, env=env)
        path = "/api/public/health" if role == "web" else "/api/health"
        self._wait(name, lambda: self._http_ok(f"{self.url(name)}{path}"))

    def _start_receiver(self) -> None:
        argv = [
            sys.executable,
            str(STANDINS / "receiver.py"),
            "--port",
            str(self.ports["receiver"]),
        ]
        self._spawn("receiver", argv, env=dict(os.environ))
        self._wait("receiver", lambda: self._http_ok(f"{self.receiver_url}/__received"))

    def litellm_config(self, master_key: str | None = None) -> str:
        """LiteLLM config with mock models; ``master_key=""`` makes an open proxy."""
        key = self.creds.litellm_master_key if master_key is None else master_key
        # LiteLLM >= 1.10x refuses to start without a key unless told it is on purpose.
        general = (
            f"  master_key: {key}\n"
            if key
            else "  dangerously_permit_weak_or_unset_master_key: true\n"
        )
        return (
            "model_list:\n"
            "  - model_name: canary\n"
            "    litellm_params:\n"
            "      model: openai/gpt-4o-mini\n"
            "      api_key: mock-not-a-key\n"
            "      mock_response: pong\n"
            "  - model_name: gpt-4o-mini\n"
            "    litellm_params:\n"
            "      model: openai/gpt-4o-mini\n"
            "      api_key: mock-not-a-key\n"
            "      mock_response: Hello from the devstack mock model.\n"
            # Traffic (devstack/traffic.py) spreads requests over several models, and
            # sends a share to `flaky` on purpose: it always fails, as a provider outage.
            "  - model_name: claude-3-haiku\n"
            "    litellm_params:\n"
            "      model: anthropic/claude-3-haiku-20240307\n"
            "      api_key: mock-not-a-key\n"
            "      mock_response: Hello from the second devstack mock model.\n"
            "  - model_name: flaky\n"
            "    litellm_params:\n"
            "      model: openai/gpt-4o-mini\n"
            "      api_key: mock-not-a-key\n"
            "      mock_response: litellm.InternalServerError\n"
            # Without it LiteLLM retries with back-off and each failure takes ~5 s.
            "      num_retries: 0\n"
            "litellm_settings:\n"
            '  success_callback: ["langfuse"]\n'
            "  telemetry: false\n"
            "general_settings:\n" + general
        )

    def litellm_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VIRTUAL_ENV"))}
        env.update(
            {
                "LANGFUSE_HOST": self.url("langfuse"),
                "LANGFUSE_PUBLIC_KEY": self.creds.langfuse_public_key,
                "LANGFUSE_SECRET_KEY": self.creds.langfuse_secret_key,
                "LANGFUSE_FLUSH_INTERVAL": "0.5",
                "LITELLM_SALT_KEY": self.creds.litellm_salt_key,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
                "NO_DOCS": "True",
            }
        )
        return env

    def start_litellm(self, name: str, port: int, master_key: str | None = None) -> int:
        """Start a LiteLLM proxy (the stack's own, or an extra one a test needs)."""
        config = self.root / f"{name}.yaml"
        config.write_text(self.litellm_config(master_key))
        config.chmod(0o600)
        binary = LITELLM_VENV / "bin" / "litellm"
        if not binary.exists():
            raise DevstackError(
                f"{binary} missing: run scripts/setup.sh (it builds LiteLLM's own virtualenv)"
            )
        argv = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        pid = self._spawn(name, argv, env=self.litellm_env())
        self._wait(
            name,
            lambda: (
                httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=2).status_code
                == 200
            ),
            timeout=180,
        )
        return pid

    def _start_prefect_server(self) -> None:
        home = self.root / "prefect-server"
        home.mkdir(parents=True, exist_ok=True)
        env = self.client_env()
        env.update(
            {
                "PREFECT_HOME": str(home),
                "PREFECT_API_DATABASE_CONNECTION_URL": self._pg_dsn(
                    "prefect_db", "prefect"
                ).replace("postgresql://", "postgresql+asyncpg://", 1),
                "PREFECT_SERVER_API_HOST": "127.0.0.1",
                "PREFECT_SERVER_API_PORT": str(self.ports["prefect"]),
                "PREFECT_UI_API_URL": self.prefect_api_url,
                # Schedules of deployments not touched recently are filled every 10 s
                # (default 60 s), so the scheduler test sees runs without a long wait.
                "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "10",
            }
        )
        env.pop("PREFECT_API_URL", None)
        prefect = str(Path(sys.executable).parent / "prefect")
        argv = [
            prefect,
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.ports["prefect"]),
        ]
        self._spawn("prefect_server", argv, env=env)
        self._wait(
            "prefect_server",
            lambda: httpx.get(f"{self.prefect_api_url}/health", timeout=2).status_code == 200,
            timeout=180,
        )
        prefect_cli = [prefect, "work-pool", "create", POOL, "--type", "process"]
        subprocess.run(prefect_cli, env=self.client_env(), capture_output=True, check=False)

    def _start_prefect_worker(self) -> None:
        prefect = str(Path(sys.executable).parent / "prefect")
        argv = [
            prefect,
            "worker",
            "start",
            "--pool",
            POOL,
            "--type",
            "process",
            "--name",
            "devstack-worker",
        ]
        self._spawn("prefect_worker", argv)
        self._wait("prefect_worker", lambda: self.worker_online(), timeout=90)

    def worker_online(self) -> bool:
        response = httpx.post(
            f"{self.prefect_api_url}/work_pools/{POOL}/workers/filter", json={}, timeout=2
        )
        return response.status_code == 200 and any(
            w.get("status") == "ONLINE" for w in response.json()
        )

    def start_service(self, name: str) -> None:
        if self.running(name):
            return
        starters: dict[str, Callable[[], object]] = {
            "postgres": self._start_postgres,
            "prefect_db": self._start_prefect_db,
            "redis": self._start_redis,
            "s3": self._start_s3,
            "clickhouse": self._start_clickhouse,
            "langfuse": lambda: self._start_langfuse("web"),
            "langfuse_worker": lambda: self._start_langfuse("worker"),
            "receiver": self._start_receiver,
            "litellm": lambda: self.start_litellm("litellm", self.ports["litellm"]),
            "prefect_server": self._start_prefect_server,
            "prefect_worker": self._start_prefect_worker,
        }
        self.log(f"starting {name}")
        starters[name]()

    def stop_service(self, name: str, timeout: float = 30.0) -> None:
        """Stop one process by PID (TERM, then KILL), and wait until it is gone."""
        pid = self.state.pids.get(name)
        if pid is None:
            return
        if pid_alive(pid):
            # Postgres: SIGINT is its "fast" shutdown (rolls back, closes clients).
            sig = signal.SIGINT if name in ("postgres", "prefect_db") else signal.SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            # SeaweedFS ignores TERM for a long while; nothing in it needs a clean stop.
            grace = 3.0 if name == "s3" else timeout
            deadline = time.monotonic() + grace
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                while pid_alive(pid):
                    time.sleep(0.05)
        # children of the session (uvicorn workers, weed sub-servers) go with the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
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
