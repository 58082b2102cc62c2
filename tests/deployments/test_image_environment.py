"""The image's environment, run for real (no container engine here).

What the Dockerfile builds, built the same way: the repository's files as `COPY . .`
sees them, `uv sync --frozen --no-dev` into a fresh folder, nothing else on PATH. From
that folder, `docker/entrypoint.sh server` and `docker/entrypoint.sh worker` run with
the variables railway.toml gives prefect-server and prefect-worker, against the
devstack, until the deploy-verify run the worker queues at start has completed.

A module only the dev group provides (pytest, hypothesis, chdb, uvicorn's extras...)
imported by the product fails here, naming the module and the package.
"""

from __future__ import annotations

import fnmatch
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from deployments.railway import (
    WORKER_SERVICE,
    Template,
    compile_definition,
    load_template,
    template_from_graph,
)
from deployments.settings import PROJECT_DIR
from devstack.core import STACK_NAME, Devstack
from devstack.processes import free_port
from devstack.services import pg_dsn

PRODUCT_PACKAGES = ("blocks", "tasks", "flows", "deployments")
START_DEADLINE_S = 300.0
SCHEDULED = (
    "HEALTH_SWEEP", "BACKUP", "RESTORE_DRILL", "DEPLOY_VERIFY", "INGESTION_CANARY", "CAPACITY",
)  # fmt: skip

# Imports every module of the packages the image runs; prints one line per failure.
IMPORT_CHECK = """
import importlib, pkgutil, sys
failed = []
for package in sys.argv[1:]:
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def dockerignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    for pattern in patterns:
        bare = pattern.removeprefix("**/").rstrip("/")
        if any(fnmatch.fnmatch(part, bare) for part in parts):
            return True
    return False


def copy_build_context(destination: Path) -> None:
    """The files `COPY . .` puts in the image: tracked, minus .dockerignore's."""
    patterns = [
        line.strip()
        for line in (PROJECT_DIR / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=PROJECT_DIR, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        source = PROJECT_DIR / name
        if dockerignored(name, patterns) or not source.is_file():
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def uv() -> str:
    found = shutil.which("uv")
    if found is None:
        pytest.fail("uv is not on PATH (scripts/setup.sh installs it)")
    return found


def image_env(app: Path, home: Path, *layers: dict[str, str]) -> dict[str, str]:
    """The Dockerfile's ENV lines, with the fresh folder for /app; nothing inherited."""
    return {
        "PATH": f"{app / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "OPS_PROJECT_DIR": str(app),
        "PYTHONUNBUFFERED": "1",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    } | {key: value for layer in layers for key, value in layer.items()}


def literal_env(template: Template, service: str) -> dict[str, str]:
    """The variables railway.toml gives ``service`` that need no other service."""
    return {
        name: variable.default
        for name, variable in template.services[service].env.items()
        if variable.default and "${{" not in variable.default
    }


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's /app: the build context and a `uv sync --frozen --no-dev` venv."""
    app = tmp_path_factory.mktemp("image") / "app"
    copy_build_context(app)
    synced = subprocess.run(
        [uv(), "sync", "--frozen", "--no-dev"],
        cwd=app,
        env={
            **os.environ,
            "UV_PROJECT_ENVIRONMENT": str(app / ".venv"),
            "UV_PYTHON": sys.executable,
            "UV_LINK_MODE": "copy",
            "VIRTUAL_ENV": "",
        },
        capture_output=True,
        text=True,
    )
    assert synced.returncode == 0, f"uv sync --frozen --no-dev failed:\n{synced.stderr[-3000:]}"
    return app


def import_check(app: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(app / ".venv" / "bin" / "python"), "-c", IMPORT_CHECK, *PRODUCT_PACKAGES],
        cwd=app,
        env=image_env(app, app.parent),
        capture_output=True,
        text=True,
    )


def test_the_image_has_no_dev_dependency(app: Path) -> None:
    venv = app / ".venv" / "lib"
    installed = {p.name.split("-")[0].lower() for p in venv.glob("python*/site-packages/*")}
    for dev_only in ("pytest", "hypothesis", "chdb", "mypy", "ruff"):
        assert dev_only not in installed, f"{dev_only} is in the image's environment"


def test_every_product_module_imports_in_the_image(app: Path) -> None:
    checked = import_check(app)
    assert checked.returncode == 0, f"modules that fail in the image:\n{checked.stdout}"


def test_a_dev_only_import_fails_naming_the_module(app: Path) -> None:
    planted = app / "tasks" / "uses_a_dev_dependency.py"
    planted.write_text("import hypothesis\n")
    try:
        checked = import_check(app)
    finally:
        planted.unlink()
    assert checked.returncode == 1
    assert checked.stdout.strip() == (
        "tasks.uses_a_dev_dependency: ModuleNotFoundError: No module named 'hypothesis'"
    )


class Started:
    """One entrypoint role, in its own process group, its output in a file."""

    def __init__(self, role: str, app: Path, env: dict[str, str], log: Path) -> None:
        self.role = role
        self.log = log
        self._handle = log.open("wb")
        self.process = subprocess.Popen(
            [str(app / "docker" / "entrypoint.sh"), role],  # its shebang, as the image runs it
            cwd=app,
            env=env,
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(
                f"entrypoint.sh {self.role} exited with {self.process.returncode}:\n{self.output()}"
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._handle.close()


def wait_until(what: str, condition: Any, watched: list[Started]) -> Any:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        for started in watched:
            started.check_alive()
        result = condition()
        if result:
            return result
        time.sleep(0.5)
    logs = "\n".join(f"--- {s.role}\n{s.output()}" for s in watched)
    pytest.fail(f"{what}: not within {START_DEADLINE_S:.0f} s\n{logs}")


@pytest.fixture(scope="module")
def control_plane(app: Path, devstack: Devstack) -> Iterator[dict[str, Any]]:
    """prefect-server and prefect-worker started from the image's environment."""
    template = load_template()
    # the healthcheck paths Railway is told to probe (the compiled project definition)
    applied, _ = template_from_graph(compile_definition())
    server_check, worker_check = (
        applied.services[name].healthcheck for name in ("prefect-server", WORKER_SERVICE)
    )
    assert server_check and worker_check
    base = app.parent
    taken = set(devstack.ports.values())
    api_port, health_port = free_port(taken), free_port(taken)
    # Basic auth on, as on Railway: the server asks for it, the worker sends it.
    auth = f"admin:{secrets.token_urlsafe(24)}"
    database = f"ops_image_{secrets.token_hex(4)}"
    admin = pg_dsn(devstack, "prefect_db", "postgres")
    api_url = f"http://127.0.0.1:{api_port}/api"
    server_env = image_env(
        app,
        base,
        literal_env(template, "prefect-server"),
        {
            "DATABASE_URL": admin,
            "PREFECT_API_DATABASE_CONNECTION_URL": pg_dsn(devstack, "prefect_db", database).replace(
                "postgresql://", "postgresql+asyncpg://"
            ),
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(api_port),
            "PORT": str(api_port),
            "PREFECT_HOME": str(base / "server-data" / "prefect"),
            "PREFECT_SERVER_API_AUTH_STRING": auth,
        },
    )
    stack_env = {
        key: value
        for key, value in devstack.env().items()
        if not key.startswith(("PREFECT_", "DEVSTACK_")) and key != "RECEIVER_URL"
    }
    worker_env = image_env(
        app,
        base,
        literal_env(template, WORKER_SERVICE),
        stack_env,
        {
            "PREFECT_API_URL": api_url,
            "PREFECT_API_AUTH_STRING": auth,
            "PREFECT_HOME": str(base / "worker-data" / "prefect"),
            "PREFECT_LOCAL_STORAGE_PATH": str(base / "worker-data" / "prefect-results"),
            "OPS_HEALTH_PORT": str(health_port),
            "PORT": str(health_port),
        },
        # only the run the worker queues at start; no schedule fires meanwhile
        {f"OPS_{flow}_ACTIVE": "false" for flow in SCHEDULED},
    )
    server = Started("server", app, server_env, base / "server.log")
    started = [server]
    try:
        wait_until(
            f"prefect-server answering its healthcheck {server_check}",
            lambda: _answers(f"http://127.0.0.1:{api_port}{server_check}"),
            started,
        )
        worker = Started("worker", app, worker_env, base / "worker.log")
        started.append(worker)
        yield {
            "api_url": api_url,
            "health_url": f"http://127.0.0.1:{health_port}{worker_check}",
            "database_dsn": pg_dsn(devstack, "prefect_db", database),
            "auth": tuple(auth.split(":", 1)),
            "started": started,
        }
    finally:
        for process in reversed(started):
            process.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _on_start_runs(api_url: str, auth: tuple[str, str]) -> list[dict[str, Any]]:
    try:
        response = httpx.post(
            f"{api_url}/flow_runs/filter",
            json={"flow_runs": {"tags": {"all_": ["on-start"]}}},
            auth=auth,
            timeout=5,
        )
    except httpx.HTTPError:
        return []
    return response.json() if response.status_code == 200 else []


def test_server_and_worker_from_the_image_run_a_deployment_to_completion(
    control_plane: dict[str, Any],
) -> None:
    started: list[Started] = control_plane["started"]
    api_url, auth = control_plane["api_url"], control_plane["auth"]
    # the API refuses whoever does not hold the shared credential
    assert httpx.get(f"{api_url}/deployments/filter", timeout=5).status_code == 401

    def finished() -> dict[str, Any] | None:
        for run in _on_start_runs(api_url, auth):
            if run["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                return run
        return None

    run = wait_until("the deploy-verify run queued at the worker's start", finished, started)
    worker = started[-1]
    assert run["state_type"] == "COMPLETED", (
        f"deploy-verify ended {run['state_name']}:\n{worker.output()}"
    )
    deployment = httpx.get(
        f"{api_url}/deployments/{run['deployment_id']}", auth=auth, timeout=5
    ).json()
    assert deployment["name"] == STACK_NAME
    # prefect-worker answers the healthcheck Railway probes
    assert _answers(control_plane["health_url"])
    # the server keeps its state in the database its start command created
    with psycopg.connect(control_plane["database_dsn"]) as conn:
        (runs,) = conn.execute("SELECT count(*) FROM flow_run").fetchone() or (0,)
    assert runs >= 1
