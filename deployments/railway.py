"""Reads ``railway.toml`` (the original template's format) and checks its wiring.

Plain functions, no I/O beyond reading the file: the tests run every check, and
``python -m deployments.railway`` prints the problems of a template before it is
published. What is checked:

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
  (a ``mock_response`` canary) and the Langfuse success callback.
"""

from __future__ import annotations

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
    "EXPECTED_PUBLIC",
    "LANGFUSE_SERVICES",
    "PUBLIC_ONLY",
    "RAILWAY_FILE",
    "RAILWAY_PROVIDED",
    "WORKER_SERVICE",
    "Service",
    "Template",
    "Variable",
    "check_langfuse_database",
    "check_litellm_config",
    "check_public",
    "check_references",
    "check_secrets",
    "check_start_commands",
    "check_template",
    "check_worker_env",
    "langfuse_schema",
    "litellm_config_path",
    "load_template",
    "main",
    "parse_template",
    "references",
]

RAILWAY_FILE = PROJECT_DIR / "railway.toml"
WORKER_SERVICE = "prefect-worker"
EXPECTED_PUBLIC = frozenset({"litellm", "langfuse-web", "prefect-server"})

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
        if self.generate == "secret":
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


class Template(BaseModel):
    services: dict[str, Service]


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
            start_command=body.get("deploy", {}).get("startCommand"),
            image=body.get("source", {}).get("image"),
            dockerfile=body.get("build", {}).get("dockerfilePath"),
            volume=body.get("volume", {}).get("mountPath"),
            restart_policy=body.get("deploy", {}).get("restartPolicyType"),
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


def check_template(template: Template) -> list[str]:
    return (
        check_references(template)
        + check_secrets(template)
        + check_worker_env(template)
        + check_public(template)
        + check_start_commands(template)
        + check_langfuse_database(template)
        + check_litellm_config(template)
    )


def main() -> int:
    problems = check_template(load_template())
    for problem in problems:
        print(problem)
    print(f"railway.toml: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
