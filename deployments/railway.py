"""Reads ``railway.toml`` (the project's layout) and the graph Railway receives, and
checks their wiring.

``railway.toml`` is the one source of truth; ``.railway/railway.py`` translates it into
the graph of Railway's Infrastructure as Code (``railway config plan|apply``).
:func:`compile_definition` evaluates that file the way Railway's CLI does (offline,
with the ``railway-sdk`` package) and :func:`template_from_graph` reads the graph back,
so the same checks run on the layout and on what Railway would apply. Plain functions:
the tests run every check, and ``python -m deployments.railway`` prints the problems
before a plan. What is checked:

- every reference (``reference = "svc.VAR"``, ``${{svc.VAR}}``, ``${{VAR}}``) names a
  service of the template and a variable that service defines or Railway provides
  (``RAILWAY_PUBLIC_DOMAIN`` only on a public service);
- every secret is generated (``generate = "secret"`` or ``${{secret(...)}}``), taken
  from another service, or left for the user to enter; never a literal default;
- the worker receives every variable the stack block is built from;
- only the expected services are public;
- a start command that reads variables runs in a shell (Railway runs it in exec form)
  and reads only variables its service defines;
- Langfuse's services share one ``DATABASE_URL`` naming their own schema
  (``?schema=langfuse``), never LiteLLM's ``public``;
- the litellm service's image carries a config with the model deploy-verify calls
  (a ``mock_response`` canary) and the Langfuse success callback;
- every service that keeps data has a volume, and a Postgres keeps PGDATA on it;
- on the graph: every service and variable of the layout is there, and every generated
  secret is ``preserve()`` (kept as Railway holds it), never a literal: Railway's IaC
  evaluates no ``${{secret()}}``, so it would land verbatim, and a literal secret
  would be replaced by the next apply (``LITELLM_SALT_KEY`` must never change).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from pydantic import BaseModel, Field

from blocks.stack_env import ENV_FIELDS
from deployments.settings import PROJECT_DIR

__all__ = [
    "DATA_SERVICES",
    "EXPECTED_PUBLIC",
    "IAC_FILE",
    "LANGFUSE_SERVICES",
    "PUBLIC_ONLY",
    "RAILWAY_FILE",
    "RAILWAY_PROVIDED",
    "WORKER_SERVICE",
    "Service",
    "Template",
    "Variable",
    "check_graph",
    "check_langfuse_database",
    "check_litellm_config",
    "check_public",
    "check_references",
    "check_secrets",
    "check_start_commands",
    "check_template",
    "check_volumes",
    "check_worker_env",
    "compile_definition",
    "langfuse_schema",
    "litellm_config_path",
    "load_template",
    "main",
    "parse_template",
    "references",
    "template_from_graph",
]

RAILWAY_FILE = PROJECT_DIR / "railway.toml"
IAC_FILE = PROJECT_DIR / ".railway" / "railway.py"
WORKER_SERVICE = "prefect-worker"
# prefect-server is private: its one shared password opens every stack secret and
# `restore` (README, "Who can reach the control plane").
EXPECTED_PUBLIC = frozenset({"litellm", "langfuse-web"})
# Where each service keeps what must survive a redeploy.
DATA_SERVICES: dict[str, str] = {
    "postgres": "/var/lib/postgresql/data",
    "drill-db": "/var/lib/postgresql/data",
    "prefect-db": "/var/lib/postgresql/data",
    "clickhouse": "/var/lib/clickhouse",
    "redis": "/data",
    "minio": "/data",
    "prefect-server": "/data",
    "prefect-worker": "/data",
}

# Variables Railway sets in every service (RAILWAY_PUBLIC_DOMAIN: public ones only).
RAILWAY_PROVIDED = frozenset(
    {
        "RAILWAY_PRIVATE_DOMAIN",
        "RAILWAY_PROJECT_ID",
        "RAILWAY_ENVIRONMENT_ID",
        "RAILWAY_SERVICE_ID",
        "RAILWAY_SERVICE_NAME",
        "RAILWAY_ENVIRONMENT_NAME",
        "RAILWAY_PROJECT_NAME",
    }
)
PUBLIC_ONLY = frozenset({"RAILWAY_PUBLIC_DOMAIN"})

_INTERPOLATION = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")
_SECRET_CALL = re.compile(r"\$\{\{\s*secret\(")
_FUNCTION = re.compile(r"^[a-z]+\(.*\)$")
_SECRET_NAME = re.compile(r"(PASSWORD|SECRET|_KEY$|TOKEN|SALT|AUTH_STRING|_AUTH$)")
_NOT_SECRET = re.compile(r"(PUBLIC_KEY$|^ALLOW_)")


class Variable(BaseModel):
    """One entry of ``[services.<name>.env]``."""

    name: str
    default: str | None = None
    reference: str | None = None
    generate: str | None = None
    description: str | None = None

    @property
    def is_secret(self) -> bool:
        return bool(_SECRET_NAME.search(self.name)) and not _NOT_SECRET.search(self.name)

    @property
    def is_generated(self) -> bool:
        """Generated once (railway.toml), or kept as Railway holds it (the graph)."""
        if self.generate in ("secret", "preserve"):
            return True
        return any(
            token.startswith("secret(") for token in _INTERPOLATION.findall(self.default or "")
        )


class Service(BaseModel):
    name: str
    public: bool = False
    env: dict[str, Variable] = Field(default_factory=dict)
    start_command: str | None = None
    image: str | None = None
    dockerfile: str | None = None
    volume: str | None = None
    restart_policy: str | None = None
    restart_retries: int | None = None
    healthcheck: str | None = None
    healthcheck_timeout: int | None = None
    replicas: int | None = None


class Template(BaseModel):
    services: dict[str, Service]


# Service fields read from a ``deploy`` table: railway.toml and the graph share its keys.
_DEPLOY_KEYS = {
    "start_command": "startCommand",
    "restart_policy": "restartPolicyType",
    "restart_retries": "restartPolicyMaxRetries",
    "healthcheck": "healthcheckPath",
    "healthcheck_timeout": "healthcheckTimeout",
    "replicas": "numReplicas",
}


def _deploy_fields(deploy: Mapping[str, Any]) -> dict[str, Any]:
    return {field: deploy.get(key) for field, key in _DEPLOY_KEYS.items()}


def parse_template(data: Mapping[str, Any]) -> Template:
    """The services of a parsed railway.toml (``[[services]]`` with their sub-tables)."""
    services: dict[str, Service] = {}
    for entry in data.get("services", []):
        name = str(entry["name"])
        body: Mapping[str, Any] = entry.get(name, {})
        env: dict[str, Variable] = {}
        for var_name, spec in body.get("env", {}).items():
            if isinstance(spec, str):
                env[var_name] = Variable(name=var_name, default=spec)
            else:
                env[var_name] = Variable(name=var_name, **spec)
        services[name] = Service(
            name=name,
            public=bool(body.get("networking", {}).get("public", False)),
            env=env,
            image=body.get("source", {}).get("image"),
            dockerfile=body.get("build", {}).get("dockerfilePath"),
            volume=body.get("volume", {}).get("mountPath"),
            **_deploy_fields(body.get("deploy", {})),
        )
    return Template(services=services)


def load_template(path: Path = RAILWAY_FILE) -> Template:
    with path.open("rb") as handle:
        return parse_template(tomllib.load(handle))


def references(variable: Variable, own_service: str) -> list[tuple[str, str]]:
    """Every ``(service, VAR)`` a variable reads; functions like ``secret(32)`` excluded."""
    found: list[tuple[str, str]] = []
    if variable.reference:
        service, _, name = variable.reference.partition(".")
        found.append((service, name) if name else (own_service, service))
    for token in _INTERPOLATION.findall(variable.default or ""):
        if _FUNCTION.match(token):
            continue
        service, dot, name = token.partition(".")
        found.append((service, name) if dot else (own_service, service))
    return found


def check_references(template: Template) -> list[str]:
    problems = []
    for service in template.services.values():
        for variable in service.env.values():
            for target_name, var in references(variable, service.name):
                where = f"{service.name}.{variable.name}"
                target = template.services.get(target_name)
                if target is None:
                    problems.append(f"{where}: references unknown service {target_name!r}")
                elif var in PUBLIC_ONLY:
                    if not target.public:
                        problems.append(
                            f"{where}: {target_name}.{var} is only set on a public service"
                        )
                elif var not in target.env and var not in RAILWAY_PROVIDED:
                    problems.append(
                        f"{where}: {target_name} defines no variable {var!r} "
                        f"(reference {target_name}.{var})"
                    )
                elif (target_name, var) == (service.name, variable.name):
                    problems.append(f"{where}: references itself")
    return problems


def check_secrets(template: Template) -> list[str]:
    problems = []
    for service in template.services.values():
        for variable in service.env.values():
            if not variable.is_secret or variable.reference or variable.is_generated:
                continue
            if variable.default is None:
                continue  # entered by the user at deploy time
            if references(variable, service.name):
                continue  # built from other variables
            problems.append(
                f"{service.name}.{variable.name}: a secret with a fixed default; "
                'use generate = "secret" or ${{secret(32)}}'
            )
    return problems


def check_worker_env(template: Template, needed: Iterable[str] = ENV_FIELDS) -> list[str]:
    worker = template.services.get(WORKER_SERVICE)
    if worker is None:
        return [f"no {WORKER_SERVICE} service"]
    return [
        f"{WORKER_SERVICE} does not receive {name}, which the stack block needs"
        for name in needed
        if name not in worker.env and name not in RAILWAY_PROVIDED
    ]


def check_public(template: Template, expected: frozenset[str] = EXPECTED_PUBLIC) -> list[str]:
    public = {name for name, service in template.services.items() if service.public}
    problems = [f"{name} is public but should not be" for name in sorted(public - expected)]
    problems += [f"{name} should be public" for name in sorted(expected - public)]
    return problems


_SHELL_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def check_start_commands(template: Template) -> list[str]:
    problems = []
    for service in template.services.values():
        command = service.start_command or ""
        used = _SHELL_VARIABLE.findall(command)
        if not used:
            continue
        if not command.startswith("/bin/sh -c "):
            problems.append(
                f"{service.name}: the start command reads ${used[0]} but Railway runs it in "
                'exec form, without expansion: wrap it in /bin/sh -c "exec ..."'
            )
        for name in used:
            if name not in service.env and name not in RAILWAY_PROVIDED:
                problems.append(f"{service.name}: the start command reads unset ${name}")
    return problems


LANGFUSE_SERVICES = ("langfuse-web", "langfuse-worker")


def langfuse_schema(template: Template) -> str | None:
    """The Postgres schema Langfuse's ``DATABASE_URL`` names (Prisma's ``?schema=``)."""
    service = template.services.get(LANGFUSE_SERVICES[0])
    variable = service.env.get("DATABASE_URL") if service else None
    query = urlsplit((variable.default or "") if variable else "").query
    return parse_qs(query).get("schema", [None])[0]


def check_langfuse_database(template: Template) -> list[str]:
    urls = {
        name: (template.services[name].env.get("DATABASE_URL") or Variable(name="DATABASE_URL"))
        for name in LANGFUSE_SERVICES
        if name in template.services
    }
    values = {(v.default, v.reference) for v in urls.values()}
    problems = []
    if len(values) > 1:
        problems.append(f"{' and '.join(urls)} have different DATABASE_URLs")
    schema = langfuse_schema(template)
    if schema in (None, "public"):
        problems.append(
            f"{LANGFUSE_SERVICES[0]}.DATABASE_URL names no schema of Langfuse's own: end it "
            "with ?schema=langfuse, or Langfuse's tables and _prisma_migrations land in "
            "LiteLLM's public schema"
        )
    return problems


def litellm_config_path(template: Template) -> Path | None:
    """The config file the litellm service's Dockerfile copies into its image."""
    service = template.services.get("litellm")
    if service is None or not service.dockerfile:
        return None
    dockerfile = PROJECT_DIR / service.dockerfile
    if not dockerfile.is_file():
        return None
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "COPY" and words[1].endswith((".yaml", ".yml")):
            return PROJECT_DIR / words[1]
    return None


def check_litellm_config(template: Template, canary_model: str = "canary") -> list[str]:
    path = litellm_config_path(template)
    if path is None or not path.is_file():
        return [
            "litellm: no config file built into its image (a Dockerfile with COPY "
            "<config>.yaml): deploy-verify needs the canary model and the Langfuse callback"
        ]
    config = yaml.safe_load(path.read_text()) or {}
    problems = []
    canary = [m for m in config.get("model_list") or [] if m.get("model_name") == canary_model]
    if not canary or "mock_response" not in (canary[0].get("litellm_params") or {}):
        problems.append(
            f"litellm: {path.name} has no model {canary_model!r} with a mock_response "
            "(deploy-verify's canary, which must spend no tokens)"
        )
    callbacks = (config.get("litellm_settings") or {}).get("success_callback") or []
    if "langfuse" not in callbacks:
        problems.append(f"litellm: {path.name} does not send traces to Langfuse")
    return problems


def check_volumes(template: Template) -> list[str]:
    problems = []
    for name, path in DATA_SERVICES.items():
        service = template.services.get(name)
        if service is None:
            continue
        if service.volume != path:
            problems.append(f"{name}: no volume at {path}, where its data lives")
        pgdata = service.env.get("PGDATA")
        if pgdata is not None and not (pgdata.default or "").startswith(f"{path}/"):
            problems.append(f"{name}: PGDATA is not on its volume ({path})")
    return problems


def check_template(template: Template) -> list[str]:
    return (
        check_references(template)
        + check_secrets(template)
        + check_worker_env(template)
        + check_public(template)
        + check_start_commands(template)
        + check_langfuse_database(template)
        + check_litellm_config(template)
        + check_volumes(template)
    )


# ---- the graph Railway applies ----------------------------------------------------


def compile_definition(path: Path = IAC_FILE, environment: str = "production") -> dict[str, Any]:
    """The project graph, evaluated as Railway's CLI evaluates ``.railway/railway.py``:
    the file loaded under its own name, ``main`` (or ``Railway``/``default``) called
    with a context when it takes one, ``to_graph()`` of what it returns. Needs the
    ``railway-sdk`` package (the dev group), no network and no token."""
    from railway_sdk import create_railway_context

    spec = importlib.util.spec_from_file_location("railway_sdk_user", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no project definition at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    program = next(
        (getattr(module, n) for n in ("main", "Railway", "default") if hasattr(module, n)),
        None,
    )
    if program is None:
        raise ValueError(f"{path.name} defines no main(), Railway() or default()")
    context = create_railway_context(environment=environment)
    result = program(context) if inspect.signature(program).parameters else program()
    graph: dict[str, Any] = result.to_graph() if hasattr(result, "to_graph") else result
    return graph


def _graph_variable(service: str, name: str, value: Any) -> Variable | str:
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "literal":
        return Variable(name=name, default=str(value["value"]))
    if kind == "reference":
        target = str(value["resource"]).removeprefix("service.")
        return Variable(name=name, reference=f"{target}.{value['output']}")
    if kind == "preserve":
        return Variable(name=name, generate="preserve")
    return f"{service}.{name}: a {kind or 'raw'} variable the checks cannot read"


def template_from_graph(
    graph: Mapping[str, Any], public: frozenset[str] = EXPECTED_PUBLIC
) -> tuple[Template, list[str]]:
    """The graph's services as a :class:`Template` (and what could not be read).

    Public domains are not part of Railway's graph: ``public`` says which services get
    one (``railway domain``)."""
    services: dict[str, Service] = {}
    problems: list[str] = []
    for node in graph.get("resources", []):
        if node.get("type") != "service":
            continue
        name = str(node["name"])
        env: dict[str, Variable] = {}
        for var_name, value in (node.get("variables") or {}).items():
            read = _graph_variable(name, var_name, value)
            if isinstance(read, str):
                problems.append(read)
            else:
                env[var_name] = read
        mounts = list((node.get("volumeAttachments") or {}).values())
        services[name] = Service(
            name=name,
            public=name in public,
            env=env,
            image=(node.get("source") or {}).get("image"),
            dockerfile=(node.get("build") or {}).get("dockerfilePath"),
            volume=mounts[0]["mountPath"] if mounts else None,
            **_deploy_fields(node.get("deploy") or {}),
        )
    return Template(services=services), problems


_COMPARED = (
    "start_command",
    "image",
    "dockerfile",
    "volume",
    "restart_policy",
    "restart_retries",
    "healthcheck",
    "healthcheck_timeout",
    "replicas",
)


def check_graph(graph: Mapping[str, Any], layout: Template) -> list[str]:
    """The graph against railway.toml, and the layout checks on the graph itself."""
    applied, problems = template_from_graph(graph)
    for name, service in layout.services.items():
        node = applied.services.get(name)
        if node is None:
            problems.append(f"{name}: in railway.toml but not in the project definition")
            continue
        for field in _COMPARED:
            if getattr(node, field) != getattr(service, field):
                problems.append(
                    f"{name}: {field} is {getattr(node, field)!r} in the graph, "
                    f"{getattr(service, field)!r} in railway.toml"
                )
        for var_name, variable in service.env.items():
            got = node.env.get(var_name)
            where = f"{name}.{var_name}"
            if got is None:
                problems.append(f"{where}: in railway.toml but not in the graph")
            elif (variable.is_generated or variable.default is None) and not variable.reference:
                if got.generate != "preserve":
                    problems.append(
                        f"{where}: generated or entered in Railway, so it must be "
                        "preserve() in the graph (a literal is replaced by every apply)"
                    )
            elif (got.default, got.reference) != (variable.default, variable.reference):
                problems.append(f"{where}: differs between the graph and railway.toml")
    for name in sorted(set(applied.services) - set(layout.services)):
        problems.append(f"{name}: in the project definition but not in railway.toml")
    for service in applied.services.values():
        extra = set(service.env) - set(layout.services.get(service.name, service).env)
        for var_name in sorted(extra if service.name in layout.services else ()):
            problems.append(f"{service.name}.{var_name}: in the graph but not in railway.toml")
        for variable in service.env.values():
            if variable.default == "":
                problems.append(
                    f"{service.name}.{variable.name}: an empty literal (Railway reads it back "
                    "as unknown and plans it again at every apply): leave the value out"
                )
            if _SECRET_CALL.search(variable.default or ""):
                problems.append(
                    f"{service.name}.{variable.name}: ${{{{secret()}}}} reaches Railway "
                    "verbatim (its IaC evaluates no template function)"
                )
    return problems + [
        problem
        for problem in check_references(applied)
        + check_secrets(applied)
        + check_worker_env(applied)
        + check_start_commands(applied)
        + check_langfuse_database(applied)
        + check_volumes(applied)
    ]


def main() -> int:
    layout = load_template()
    problems = check_template(layout)
    try:
        problems += check_graph(compile_definition(), layout)
    except ModuleNotFoundError as exc:
        if exc.name != "railway_sdk":
            raise
        problems.append("railway-sdk is not installed (uv sync): the graph was not checked")
    for problem in problems:
        print(problem)
    print(f"railway.toml and .railway/railway.py: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
