"""How the devstack starts each system, in dependency order: the two PostgreSQL clusters,
Redis, SeaweedFS (S3), the ClickHouse front, the Langfuse and receiver stand-ins, the
LiteLLM proxy, the Prefect server and its process worker.

Each starter takes the :class:`~devstack.core.Devstack` (its ports, credentials and state
folder), spawns the process and returns once the service answers a real request.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from devstack.processes import DevstackError, http_ok
from devstack.standins import STANDINS
from devstack.state import PROJECT

if TYPE_CHECKING:
    from devstack.core import Devstack

__all__ = [
    "LITELLM_VENV",
    "POOL",
    "STARTERS",
    "WORKER_QUERY_SECONDS",
    "litellm_config",
    "litellm_env",
    "pg_dsn",
    "start_litellm",
    "worker_online",
]

LITELLM_VENV = Path(os.environ.get("LITELLM_VENV", PROJECT / ".venv-litellm"))
POOL = "devstack"
PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _pg_bin(name: str) -> str:
    for directory in PG_BIN_CANDIDATES:
        candidate = directory / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise DevstackError(f"{name} not found: install PostgreSQL (apt-get install postgresql)")
    return found


# ---- PostgreSQL: the stack's, and the Prefect server's own --------------------------


def pg_dsn(stack: Devstack, service: str, database: str) -> str:
    c, p = stack.creds, stack.ports
    return f"postgresql://postgres:{c.postgres_password}@127.0.0.1:{p[service]}/{database}"


def _start_postgres(stack: Devstack) -> None:
    _start_pg_cluster(stack, "postgres", stack.root / "postgres", max_connections=40)
    stack.wait_until_ready("postgres", lambda: _pg_ready(stack))


def _start_prefect_db(stack: Devstack) -> None:
    """The Prefect server's own PostgreSQL, apart from the stack's (its own failure
    domain: tests stop the stack's Postgres, and the control plane must not notice).
    PostgreSQL rather than SQLite: under the suite's load SQLite answers "database is
    locked" to writes that started as reads, and the server logs errors."""
    _start_pg_cluster(stack, "prefect_db", stack.root / "prefect-db", max_connections=60)
    stack.wait_until_ready("prefect_db", lambda: _prefect_db_ready(stack))


def _prefect_db_ready(stack: Devstack) -> bool:
    import psycopg

    with psycopg.connect(
        pg_dsn(stack, "prefect_db", "postgres"), connect_timeout=2, autocommit=True
    ) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'prefect'").fetchone():
            conn.execute("CREATE DATABASE prefect")
    return True


def _start_pg_cluster(stack: Devstack, name: str, root: Path, max_connections: int) -> None:
    data = root / "data"
    sock = root / "sock"
    user = "postgres" if os.geteuid() == 0 else None
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        sock.mkdir(parents=True, exist_ok=True)
        pwfile = root / "pwfile"
        pwfile.write_text(stack.creds.postgres_password + "\n")
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
        _pg_bin("postgres"), "-D", str(data), "-p", str(stack.ports[name]),
        "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sock}",
        "-c", f"max_connections={max_connections}", "-c", "fsync=off",
        "-c", "log_min_messages=warning",
    ]  # fmt: skip
    stack.spawn(name, argv, env=dict(os.environ), user=user)


def _pg_ready(stack: Devstack) -> bool:
    import psycopg

    with psycopg.connect(stack.admin_dsn("postgres"), connect_timeout=2) as conn:
        conn.execute("SELECT 1")
    return True


# ---- Redis and S3 ----------------------------------------------------------------------


def _start_redis(stack: Devstack) -> None:
    data = stack.root / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        shutil.which("redis-server") or "/usr/bin/redis-server",
        "--port", str(stack.ports["redis"]), "--bind", "127.0.0.1",
        "--requirepass", stack.creds.redis_password, "--appendonly", "yes",
        "--dir", str(data), "--daemonize", "no", "--save", "",
        "--maxmemory", "256mb", "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    stack.spawn("redis", argv, env=dict(os.environ))
    stack.wait_until_ready("redis", lambda: _redis_ready(stack))


def _redis_ready(stack: Devstack) -> bool:
    import redis

    client = redis.Redis(
        host="127.0.0.1", port=stack.ports["redis"], password=stack.creds.redis_password
    )
    try:
        return bool(client.ping())
    finally:
        client.close()


def _start_s3(stack: Devstack) -> None:
    c = stack.creds
    _start_seaweed(stack, "s3", c.s3_access_key, c.s3_secret_key, ("backups", "langfuse"))


def _start_offsite(stack: Devstack) -> None:
    c = stack.creds
    _start_seaweed(stack, "offsite", c.offsite_access_key, c.offsite_secret_key, ("offsite",))


def _start_seaweed(
    stack: Devstack, name: str, access_key: str, secret_key: str, buckets: tuple[str, ...]
) -> None:
    """A SeaweedFS server with an S3 front on ports ``<name>``, ``<name>_master``, ..."""
    data = stack.root / name
    data.mkdir(parents=True, exist_ok=True)
    config = stack.root / f"{name}-identities.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    config.chmod(0o600)
    p = {key.removeprefix(name): port for key, port in stack.ports.items() if key.startswith(name)}
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or "weed"
    argv = [
        weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={p['_master']}", f"-master.port.grpc={p['_master_grpc']}",
        f"-volume.port={p['_volume']}", f"-volume.port.grpc={p['_volume_grpc']}",
        f"-filer.port={p['_filer']}", f"-filer.port.grpc={p['_filer_grpc']}",
        "-s3", f"-s3.port={p['']}", f"-s3.port.grpc={p['_grpc']}",
        f"-s3.config={config}", "-master.volumeSizeLimitMB=1024", "-volume.max=0",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", f"-filer.localSocket={data}/filer.sock",
    ]  # fmt: skip
    stack.spawn(name, argv, env=dict(os.environ))
    stack.wait_until_ready(name, lambda: _buckets_made(stack, name, buckets), timeout=120)


def _buckets_made(stack: Devstack, name: str, buckets: tuple[str, ...]) -> bool:
    client = stack.minio_client() if name == "s3" else stack.offsite_client()
    for bucket in buckets:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
    return True


# ---- the stand-ins: ClickHouse front, Langfuse, the alert receiver ---------------------


def _start_clickhouse(stack: Devstack) -> None:
    data = stack.root / "clickhouse"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, str(STANDINS / "clickhouse_http.py"),
        "--port", str(stack.ports["clickhouse"]), "--data-dir", str(data),
        "--user", "clickhouse", "--password", stack.creds.clickhouse_password,
    ]  # fmt: skip
    stack.spawn("clickhouse", argv, env=dict(os.environ))
    stack.wait_until_ready("clickhouse", lambda: http_ok(f"{stack.url('clickhouse')}/ping"))


def _start_langfuse(stack: Devstack, role: str) -> None:
    name = "langfuse" if role == "web" else "langfuse_worker"
    argv = [
        sys.executable, str(STANDINS / "langfuse.py"), "--port", str(stack.ports[name]),
        "--role", role, "--public-key", stack.creds.langfuse_public_key,
        "--secret-key", stack.creds.langfuse_secret_key,
    ]  # fmt: skip
    # As real Langfuse takes them: ingested events are written to ClickHouse too.
    env = dict(os.environ)
    env.update(
        {
            "CLICKHOUSE_URL": stack.url("clickhouse"),
            "CLICKHOUSE_USER": "clickhouse",
            "CLICKHOUSE_PASSWORD": stack.creds.clickhouse_password,
            "CLICKHOUSE_DB": "default",
            # Ingestion through a real BullMQ queue in the stack's Redis, as Langfuse does.
            "REDIS_CONNECTION_STRING": (
                f"redis://:{stack.creds.redis_password}@127.0.0.1:{stack.ports['redis']}/0"
            ),
            "STANDIN_WEB_URL": stack.url("langfuse"),
        }
    )
    stack.spawn(name, argv, env=env)
    path = "/api/public/health" if role == "web" else "/api/health"
    stack.wait_until_ready(name, lambda: http_ok(f"{stack.url(name)}{path}"))


def _start_receiver(stack: Devstack) -> None:
    argv = [
        sys.executable,
        str(STANDINS / "receiver.py"),
        "--port",
        str(stack.ports["receiver"]),
    ]
    stack.spawn("receiver", argv, env=dict(os.environ))
    stack.wait_until_ready("receiver", lambda: http_ok(f"{stack.receiver_url}/__received"))


# ---- LiteLLM ---------------------------------------------------------------------------


def litellm_config(key: str) -> str:
    """LiteLLM config with mock models; an empty ``key`` makes an open proxy."""
    # LiteLLM >= 1.10x refuses to start without a key unless told it is on purpose.
    general = (
        f"  master_key: {key}\n" if key else "  dangerously_permit_weak_or_unset_master_key: true\n"
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
        # Traffic (devstack/traffic/schedule.py) spreads requests over several models, and
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


def litellm_env(stack: Devstack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VIRTUAL_ENV"))}
    env.update(
        {
            "LANGFUSE_HOST": stack.url("langfuse"),
            "LANGFUSE_PUBLIC_KEY": stack.creds.langfuse_public_key,
            "LANGFUSE_SECRET_KEY": stack.creds.langfuse_secret_key,
            "LANGFUSE_FLUSH_INTERVAL": "0.5",
            "LITELLM_SALT_KEY": stack.creds.litellm_salt_key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "NO_DOCS": "True",
            # A crash of the interpreter prints every thread's Python stack in the log.
            "PYTHONFAULTHANDLER": "1",
        }
    )
    return env


# LiteLLM's CLI (`litellm --config ...`, as the image runs it) with one change: uvicorn
# on the standard asyncio loop. The CLI hard-codes uvloop, and uvloop segfaulted the
# devstack's proxy under sustained traffic on two-core machines (uvloop#706 is open).
LITELLM_ON_ASYNCIO = (
    "import sys\n"
    "from litellm.proxy.proxy_cli import ProxyInitializationHelpers, run_server\n"
    "ProxyInitializationHelpers.get_loop_type = staticmethod(lambda: 'asyncio')\n"
    "sys.exit(run_server())\n"
)


def start_litellm(stack: Devstack, name: str, port: int, master_key: str | None = None) -> int:
    """Start a LiteLLM proxy (the stack's own, or an extra one a test needs); its PID."""
    config = stack.root / f"{name}.yaml"
    config.write_text(stack.litellm_config(master_key))
    config.chmod(0o600)
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        raise DevstackError(
            f"{binary} missing: run scripts/setup.sh (it builds LiteLLM's own virtualenv)"
        )
    argv = [
        str(LITELLM_VENV / "bin" / "python"),
        "-c",
        LITELLM_ON_ASYNCIO,
        *("--config", str(config), "--host", "127.0.0.1", "--port", str(port)),
    ]
    pid = stack.spawn(name, argv, env=stack.litellm_env())
    stack.wait_until_ready(
        name,
        lambda: (
            httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=2).status_code == 200
        ),
        timeout=180,
    )
    return pid


# ---- Prefect: the server (on its own PostgreSQL) and a process worker -----------------


def _start_prefect_server(stack: Devstack) -> None:
    home = stack.root / "prefect-server"
    home.mkdir(parents=True, exist_ok=True)
    env = stack.client_env()
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_DATABASE_CONNECTION_URL": pg_dsn(stack, "prefect_db", "prefect").replace(
                "postgresql://", "postgresql+asyncpg://", 1
            ),
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(stack.ports["prefect"]),
            "PREFECT_UI_API_URL": stack.prefect_api_url,
            # Schedules of deployments not touched recently are filled every 10 s
            # (default 60 s), so the scheduler test sees runs without a long wait.
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "10",
            # As on Railway: leases on disk (PREFECT_HOME), found again after a restart.
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": (
                "prefect.server.concurrency.lease_storage.filesystem"
            ),
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
        str(stack.ports["prefect"]),
    ]
    stack.spawn("prefect_server", argv, env=env)
    stack.wait_until_ready(
        "prefect_server",
        lambda: httpx.get(f"{stack.prefect_api_url}/health", timeout=2).status_code == 200,
        timeout=180,
    )
    prefect_cli = [prefect, "work-pool", "create", POOL, "--type", "process"]
    subprocess.run(prefect_cli, env=stack.client_env(), capture_output=True, check=False)


WORKER_QUERY_SECONDS = 2


def _start_prefect_worker(stack: Devstack) -> None:
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
    # As on Railway: a sweep starts within seconds of its scheduled time, not 10.
    env = {**stack.client_env(), "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_QUERY_SECONDS)}
    stack.spawn("prefect_worker", argv, env=env)
    stack.wait_until_ready("prefect_worker", stack.worker_online, timeout=90)


def worker_online(stack: Devstack) -> bool:
    response = httpx.post(
        f"{stack.prefect_api_url}/work_pools/{POOL}/workers/filter", json={}, timeout=2
    )
    return response.status_code == 200 and any(w.get("status") == "ONLINE" for w in response.json())


# Service name -> its starter; ``Devstack.start_service`` runs them in SERVICE_ORDER.
STARTERS: dict[str, Callable[[Devstack], object]] = {
    "postgres": _start_postgres,
    "prefect_db": _start_prefect_db,
    "redis": _start_redis,
    "s3": _start_s3,
    "offsite": _start_offsite,
    "clickhouse": _start_clickhouse,
    "langfuse": lambda stack: _start_langfuse(stack, "web"),
    "langfuse_worker": lambda stack: _start_langfuse(stack, "worker"),
    "receiver": _start_receiver,
    "litellm": lambda stack: stack.start_litellm("litellm", stack.ports["litellm"]),
    "prefect_server": _start_prefect_server,
    "prefect_worker": _start_prefect_worker,
}
