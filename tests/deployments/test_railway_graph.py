"""The project definition Railway applies (``.railway/railway.py``), compiled offline with
the ``railway-sdk`` package and checked as a graph: every service and variable of
railway.toml is there, every reference resolves, every secret is generated once and kept
(never a literal an apply would replace), the worker receives the stack, start commands
that expand variables run in a shell, volumes where data lives, and healthcheck paths
the services really serve. The secrets are set once through Railway's CLI (a stand-in)."""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from blocks.stack_env import ENV_FIELDS
from deployments.railway import (
    IAC_FILE,
    RAILWAY_PROVIDED,
    WORKER_SERVICE,
    Template,
    check_graph,
    compile_definition,
    load_template,
    template_from_graph,
)
from deployments.railway_secrets import DEFAULT_ALPHABET, generate, generated_secrets
from deployments.settings import PROJECT_DIR
from devstack.core import Devstack

STANDIN_CLI = PROJECT_DIR / "devstack" / "standins" / "railway_cli.py"

# What Railway's CLI runs (`python3 -c <this> <file>`, railway cli src/iac/eval.rs):
# the file loaded under its own module name, PARTIAL and main/Railway/default read,
# the context from RAILWAY_IAC_CONTEXT, one JSON document on stdout.
CLI_EVALUATOR = """
import importlib.util, inspect, json, os, sys
from railway_sdk import create_railway_context
spec = importlib.util.spec_from_file_location("railway_sdk_user", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
partial = next((getattr(module, n) for n in ("PARTIAL", "Partial", "partial") if hasattr(module, n)), None)
program = next(getattr(module, n) for n in ("main", "Railway", "default") if hasattr(module, n))
ctx = create_railway_context(json.loads(os.environ.get("RAILWAY_IAC_CONTEXT") or "{}"))
result = program(ctx) if inspect.signature(program).parameters else program()
graph = result.to_graph() if hasattr(result, "to_graph") else result
print(json.dumps({"partial": partial, "project": graph}))
"""


@pytest.fixture(scope="module")
def layout() -> Template:
    return load_template()


@pytest.fixture
def graph() -> dict[str, Any]:
    return compile_definition()


def node(graph: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in graph["resources"] if r.get("name") == name)


def test_the_definition_compiles_to_the_layout_with_no_problem(
    graph: dict[str, Any], layout: Template
) -> None:
    assert check_graph(graph, layout) == []
    # a deploy setting lost in translation is named
    drifted = copy.deepcopy(graph)
    del node(drifted, WORKER_SERVICE)["deploy"]["healthcheckTimeout"]
    assert check_graph(drifted, layout) == [
        "prefect-worker: healthcheck_timeout is None in the graph, 600 in railway.toml"
    ]
    services = {r["name"] for r in graph["resources"] if r["type"] == "service"}
    assert services == set(layout.services)
    assert len(services) == 11  # the nine of the stack, drill-db and prefect-db
    variables = sum(len(r.get("variables", {})) for r in graph["resources"])
    assert variables == sum(len(s.env) for s in layout.services.values()) > 150


def test_railways_evaluator_reads_it_from_any_folder_with_only_json_on_stdout(
    graph: dict[str, Any], tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CLI_EVALUATOR, str(IAC_FILE)],
        cwd=tmp_path,  # the CLI runs it from wherever the operator is
        env={**os.environ, "RAILWAY_IAC_CONTEXT": json.dumps({"environment": "production"})},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    evaluated = json.loads(done.stdout)
    assert evaluated == {"partial": None, "project": graph}


def test_a_second_apply_has_nothing_to_change(graph: dict[str, Any], layout: Template) -> None:
    # The graph is the same at every evaluation (no value drawn at plan time), and what
    # Railway holds (the secrets, the operator's variables) is preserve(): Railway's diff
    # finds nothing to change (`railway config plan --detailed-exit-code` exits 0).
    assert compile_definition() == graph
    for resource in graph["resources"]:
        for name, value in resource.get("variables", {}).items():
            assert value["type"] in {"literal", "reference", "preserve"}, name
    # an empty literal is read back as unknown and planned again at every apply
    empty = copy.deepcopy(graph)
    node(empty, WORKER_SERVICE)["variables"]["OFFSITE_S3_PREFIX"] = {"type": "literal", "value": ""}
    assert (
        "prefect-worker.OFFSITE_S3_PREFIX: an empty literal (Railway reads it back as unknown "
        "and plans it again at every apply): leave the value out"
    ) in check_graph(empty, layout)


def test_a_broken_reference_is_named(graph: dict[str, Any], layout: Template) -> None:
    broken = copy.deepcopy(graph)
    node(broken, WORKER_SERVICE)["variables"]["REDIS_PASSWORD"]["output"] = "REDIS_PASWORD"
    problems = check_graph(broken, layout)
    assert (
        "prefect-worker.REDIS_PASSWORD: redis defines no variable 'REDIS_PASWORD' "
        "(reference redis.REDIS_PASWORD)"
    ) in problems
    unknown = copy.deepcopy(graph)
    node(unknown, "litellm")["variables"]["DATABASE_URL"]["resource"] = "service.postgress"
    assert "litellm.DATABASE_URL: references unknown service 'postgress'" in check_graph(
        unknown, layout
    )


def test_a_missing_secret_is_named(graph: dict[str, Any], layout: Template) -> None:
    missing = copy.deepcopy(graph)
    del node(missing, "litellm")["variables"]["LITELLM_SALT_KEY"]
    problems = check_graph(missing, layout)
    assert "litellm.LITELLM_SALT_KEY: in railway.toml but not in the graph" in problems
    assert (
        "prefect-worker.LITELLM_SALT_KEY: litellm defines no variable 'LITELLM_SALT_KEY' "
        "(reference litellm.LITELLM_SALT_KEY)"
    ) in problems


def test_a_secret_as_a_literal_is_named(graph: dict[str, Any], layout: Template) -> None:
    # What a naive translation does: Railway would store the text itself, and the next
    # apply would put it back over the real salt.
    literal = copy.deepcopy(graph)
    node(literal, "litellm")["variables"]["LITELLM_SALT_KEY"] = {
        "type": "literal",
        "value": "sk-${{secret(48)}}",
    }
    problems = check_graph(literal, layout)
    assert (
        "litellm.LITELLM_SALT_KEY: generated or entered in Railway, so it must be preserve() "
        "in the graph (a literal is replaced by every apply)"
    ) in problems
    assert (
        "litellm.LITELLM_SALT_KEY: ${{secret()}} reaches Railway verbatim (its IaC "
        "evaluates no template function)"
    ) in problems
    fixed = copy.deepcopy(graph)
    node(fixed, "redis")["variables"]["REDIS_PASSWORD"] = {"type": "literal", "value": "pw"}
    assert "redis.REDIS_PASSWORD: a secret with a fixed default" in " ".join(
        check_graph(fixed, layout)
    )


def test_every_variable_the_stack_block_reads_reaches_the_worker(graph: dict[str, Any]) -> None:
    applied, unread = template_from_graph(graph)
    assert unread == []
    worker = applied.services[WORKER_SERVICE].env
    provided = RAILWAY_PROVIDED  # RAILWAY_PROJECT_ID, RAILWAY_ENVIRONMENT_ID: Railway's own
    assert [name for name in ENV_FIELDS if name not in worker and name not in provided] == []
    without = copy.deepcopy(graph)
    del node(without, WORKER_SERVICE)["variables"]["CLICKHOUSE_PASSWORD"]
    assert (
        "prefect-worker does not receive CLICKHOUSE_PASSWORD, which the stack block needs"
        in check_graph(without, load_template())
    )


def test_start_commands_that_expand_variables_run_in_a_shell(
    graph: dict[str, Any], layout: Template
) -> None:
    redis = node(graph, "redis")["deploy"]["startCommand"]
    assert redis.startswith('/bin/sh -c "exec docker-entrypoint.sh redis-server ')
    exec_form = copy.deepcopy(graph)
    node(exec_form, "redis")["deploy"]["startCommand"] = (
        "redis-server --requirepass $REDIS_PASSWORD"
    )
    assert (
        "redis: the start command reads $REDIS_PASSWORD but Railway runs it in exec form, "
        'without expansion: wrap it in /bin/sh -c "exec ..."'
    ) in check_graph(exec_form, layout)
    # the image roles of the control plane, never the image's default
    assert node(graph, "prefect-server")["deploy"]["startCommand"] == (
        "/app/docker/entrypoint.sh server"
    )
    assert node(graph, WORKER_SERVICE)["deploy"]["startCommand"] == (
        "/app/docker/entrypoint.sh worker"
    )


def test_every_service_that_keeps_data_has_a_volume_there(
    graph: dict[str, Any], layout: Template
) -> None:
    mounts = {
        r["name"]: [a["mountPath"] for a in r.get("volumeAttachments", {}).values()]
        for r in graph["resources"]
        if r["type"] == "service"
    }
    assert mounts["postgres"] == ["/var/lib/postgresql/data"]
    assert mounts["clickhouse"] == ["/var/lib/clickhouse"]
    assert mounts["redis"] == mounts["minio"] == mounts[WORKER_SERVICE] == ["/data"]
    assert mounts["litellm"] == mounts["langfuse-web"] == []  # stateless
    lost = copy.deepcopy(graph)
    del node(lost, "postgres")["volumeAttachments"]
    assert "postgres: no volume at /var/lib/postgresql/data, where its data lives" in (
        check_graph(lost, layout)
    )


def test_the_secrets_are_generated_with_the_shape_each_service_needs(layout: Template) -> None:
    wanted = {(s.service, s.name): s.spec for s in generated_secrets(layout)}
    for required in (
        ("litellm", "LITELLM_MASTER_KEY"),
        ("litellm", "LITELLM_SALT_KEY"),
        ("langfuse-web", "NEXTAUTH_SECRET"),
        ("langfuse-web", "SALT"),
        ("langfuse-web", "ENCRYPTION_KEY"),
        ("postgres", "POSTGRES_PASSWORD"),
        ("redis", "REDIS_PASSWORD"),
        ("prefect-server", "PREFECT_SERVER_API_AUTH_STRING"),
    ):
        assert required in wanted, required
    master = generate(wanted[("litellm", "LITELLM_MASTER_KEY")])
    assert re.fullmatch(r"sk-[A-Za-z0-9]{48}", master)  # LiteLLM rejects keys without sk-
    assert re.fullmatch(r"[0-9a-f]{64}", generate(wanted[("langfuse-web", "ENCRYPTION_KEY")]))
    assert re.fullmatch(r"admin:[A-Za-z0-9]{32}", generate(wanted[("prefect-server", "PREFECT_SERVER_API_AUTH_STRING")]))  # fmt: skip
    password = generate(wanted[("postgres", "POSTGRES_PASSWORD")])
    assert len(password) == 32 and set(password) <= set(DEFAULT_ALPHABET)  # safe in a URL
    assert generate(wanted[("litellm", "LITELLM_SALT_KEY")]) != generate(
        wanted[("litellm", "LITELLM_SALT_KEY")]
    )


def _railway_cli(tmp_path: Path, services: dict[str, Any]) -> tuple[Path, Path]:
    state = tmp_path / "railway-state.json"
    state.write_text(json.dumps(services))
    executable = tmp_path / "railway"
    executable.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN_CLI}" "$@"\n')
    executable.chmod(executable.stat().st_mode | stat.S_IXUSR)
    return executable, state


def _seed(executable: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deployments.railway_secrets", "--railway", str(executable), *extra],
        cwd=PROJECT_DIR,
        env={**os.environ, "RAILWAY_STANDIN_STATE": str(state)},
        capture_output=True,
        text=True,
    )


def test_secrets_are_set_once_and_the_salt_never_again(layout: Template, tmp_path: Path) -> None:
    # the project as the first apply leaves it: every service, no secret yet
    executable, state = _railway_cli(tmp_path, {name: {} for name in layout.services})
    dry = _seed(executable, state, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(state.read_text()) == {name: {} for name in layout.services}

    first = _seed(executable, state)
    assert first.returncode == 0, first.stderr
    held = json.loads(state.read_text())
    assert held["litellm"]["LITELLM_MASTER_KEY"].startswith("sk-")
    salt = held["litellm"]["LITELLM_SALT_KEY"]
    assert first.stdout.count("generated ") == len(generated_secrets(layout)) > 15
    # no value on any command line, nor in the output
    calls = (tmp_path / "railway-state.json.calls").read_text()
    for values in held.values():
        for value in values.values():
            assert value not in calls and value not in first.stdout

    second = _seed(executable, state)
    assert second.returncode == 0, second.stderr
    assert "generated " not in second.stdout
    assert "kept      litellm.LITELLM_SALT_KEY (already set: never regenerated)" in second.stdout
    assert json.loads(state.read_text()) == held
    assert held["litellm"]["LITELLM_SALT_KEY"] == salt


def test_an_existing_stacks_salt_is_kept_even_sealed(layout: Template, tmp_path: Path) -> None:
    services: dict[str, dict[str, str | None]] = {name: {} for name in layout.services}
    services["litellm"]["LITELLM_SALT_KEY"] = "sk-the-salt-of-a-stack-running-since-2025"
    services["litellm"]["LITELLM_MASTER_KEY"] = None  # sealed: listed without its value
    executable, state = _railway_cli(tmp_path, services)
    done = _seed(executable, state)
    assert done.returncode == 0, done.stderr
    held = json.loads(state.read_text())["litellm"]
    assert held["LITELLM_SALT_KEY"] == "sk-the-salt-of-a-stack-running-since-2025"
    assert held["LITELLM_MASTER_KEY"] is None
    assert "kept      litellm.LITELLM_MASTER_KEY" in done.stdout


def test_a_project_not_yet_applied_fails_clearly(tmp_path: Path) -> None:
    executable, state = _railway_cli(tmp_path, {})
    done = _seed(executable, state)
    assert done.returncode == 1
    assert "failed: Service 'litellm' not found" in done.stderr


@pytest.mark.parametrize(
    ("service", "url_name"),
    [("litellm", "litellm"), ("langfuse-web", "langfuse"), ("langfuse-worker", "langfuse_worker")],
)
def test_healthcheck_paths_are_served_by_the_devstacks_services(
    graph: dict[str, Any], devstack: Devstack, service: str, url_name: str
) -> None:
    # prefect-server's and prefect-worker's: tests/deployments/test_image_environment.py,
    # against the image's own entrypoint
    path = node(graph, service)["deploy"]["healthcheckPath"]
    response = httpx.get(f"{devstack.url(url_name)}{path}", timeout=10)
    assert response.status_code == 200, f"{service} {path}: {response.status_code}"
