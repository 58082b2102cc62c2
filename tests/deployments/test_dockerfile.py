"""The worker image: read, not built (no engine here). Pinned Python, a pg_dump at least as
new as Railway's Postgres, the locked dependencies, and the entrypoint's sequence."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from deployments.railway import load_template
from deployments.settings import PROJECT_DIR

DOCKERFILE = PROJECT_DIR / "Dockerfile"
ENTRYPOINT = PROJECT_DIR / "docker" / "entrypoint.sh"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), " ".join(rest.split())))
    return result


def arg_defaults(steps: list[tuple[str, str]]) -> dict[str, str]:
    return dict(rest.split("=", 1) for keyword, rest in steps if keyword == "ARG" and "=" in rest)


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def test_python_is_pinned_to_a_patch_release_of_the_projects_python(steps) -> None:
    base = [rest for keyword, rest in steps if keyword == "FROM"]
    assert len(base) == 1
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-\w+(@sha256:[0-9a-f]{64})?", base[0])
    assert match, f"base image not pinned to a patch release: {base[0]}"
    pyproject = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())
    assert (
        pyproject["project"]["requires-python"]
        == f">={match[1]}.{match[2]},<{match[1]}.{int(match[2]) + 1}"
    )


def test_the_postgres_client_major_equals_railways_postgres(steps) -> None:
    postgres_image = load_template().services["postgres"].image or ""
    server_major = int(postgres_image.rsplit(":", 1)[1].split(".")[0])
    runs = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    args = arg_defaults(steps)
    installed = re.findall(r"postgresql-client-(\$\{PG_CLIENT_MAJOR\}|\d+)", runs)
    assert installed, "no postgresql-client-N package installed"
    majors = [int(args["PG_CLIENT_MAJOR"]) if m.startswith("$") else int(m) for m in installed]
    # equal, not newer: pg_restore 17 sends settings a PostgreSQL 16 server rejects
    assert majors == [server_major] and server_major >= 16
    # from the PostgreSQL project's repository: Debian bookworm itself ships 15
    assert "apt.postgresql.org/pub/repos/apt bookworm-pgdg main" in runs
    assert "signed-by=" in runs
    assert "pg_dump --version" in runs and "pg_restore --version" in runs


def test_dependencies_come_from_the_lock_file_only(steps) -> None:
    copies = [rest for keyword, rest in steps if keyword == "COPY"]
    assert any("uv.lock" in rest and "pyproject.toml" in rest for rest in copies)
    syncs = [rest for keyword, rest in steps if keyword == "RUN" and "uv sync" in rest]
    assert syncs and all("--frozen" in rest and "--no-dev" in rest for rest in syncs)
    runs = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    assert "pip install" not in runs and "uv pip" not in runs and "uv lock" not in runs
    uv_image = [rest for rest in copies if "astral-sh/uv" in rest]
    assert uv_image and re.search(r"astral-sh/uv:\d+\.\d+\.\d+ ", uv_image[0])


def test_the_entrypoint_is_the_one_railway_starts(steps) -> None:
    assert ("ENTRYPOINT", '["/app/docker/entrypoint.sh"]') in steps
    assert ("WORKDIR", "/app") in steps
    assert os.access(ENTRYPOINT, os.X_OK)
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert "OPS_PROJECT_DIR=/app" in env
    assert "PREFECT_RESULTS_PERSIST_BY_DEFAULT=true" in env


def test_the_worker_serves_health_then_bootstraps_then_verifies_then_works() -> None:
    text = ENTRYPOINT.read_text()
    worker = text[text.index("  worker)") : text.index("  *)")]
    # /health listens before the bootstrap's wait for the API (Railway's healthcheck)
    order = [
        worker.index("python -m deployments.status_server"),
        worker.index("python -m deployments.bootstrap"),
        worker.index('prefect deployment run "deploy-verify/$stack"'),
        worker.index("exec prefect worker start --pool"),
    ]
    assert order == sorted(order)
    assert "--deploy" in worker
    # in the background, or the bootstrap would never run
    status = worker[order[0] : order[1]]
    assert status[: status.index("\n\n")].rstrip().endswith("&")
    server = text[text.index("  server)") : text.index("  worker)")]
    assert server.index("python -m deployments.server_db") < server.index(
        "exec prefect server start"
    )


def test_the_build_context_leaves_local_state_out() -> None:
    ignored = (PROJECT_DIR / ".dockerignore").read_text().split()
    for path in (".venv", ".devstack*", ".git"):
        assert path in ignored


def test_the_entrypoint_is_valid_bash() -> None:
    import subprocess

    done = subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_image_copies_what_the_entrypoint_runs() -> None:
    ignored = (PROJECT_DIR / ".dockerignore").read_text().split()
    for needed in ("deployments", "flows", "tasks", "blocks", "prefect.yaml", "docker"):
        assert needed not in ignored
        assert Path(PROJECT_DIR / needed).exists()
