"""The Railway project, for Railway's Infrastructure as Code (``railway config plan|apply``).

The layout lives in one place, ``railway.toml`` at the repository's top level (every
service, its image or Dockerfile, start command, healthcheck, restart policy, volume and
variables, with comments saying why); this file only translates it into the graph
Railway's CLI plans and applies, with the ``railway-sdk`` package and the standard
library (the CLI runs it with the ``python3`` on PATH: ``uv run railway config plan``).

How railway.toml's variables become Railway's:

- ``reference = "svc.VAR"``: a reference to that service's variable;
- ``default = "..."``: the literal value; Railway resolves ``${{svc.VAR}}``,
  ``${{VAR}}`` and ``${{RAILWAY_PRIVATE_DOMAIN}}`` inside it;
- a generated secret (``generate = "secret"``, or ``${{secret(...)}}`` in the default)
  and a variable the operator enters (no default): ``preserve()``, the value set in
  Railway is kept. ``python -m deployments.railway_secrets`` generates each secret once
  (never again: LITELLM_SALT_KEY must not change), so no apply ever replaces one and a
  second apply plans nothing.

Services built from this repository's Dockerfiles declare no source: their code goes up
with ``railway up --service <name>``. Public domains are not part of the file (Railway
keeps generated domains out of it): ``railway domain --service <name>`` adds one to each
service railway.toml marks public.
"""

import re
import tomllib
from pathlib import Path

from railway_sdk import define_railway, image, preserve, project, service, volume

LAYOUT = Path(__file__).resolve().parent.parent / "railway.toml"
PROJECT_NAME = "llm-gateway"
SECRET_CALL = re.compile(r"\$\{\{\s*secret\(")


def _variable(own, spec):
    if isinstance(spec, str):
        spec = {"default": spec}
    if spec.get("reference"):
        target, dot, output = spec["reference"].partition(".")
        if not dot:  # a variable of the same service
            target, output = own, target
        return {"type": "reference", "resource": f"service.{target}", "output": output}
    default = spec.get("default")
    if spec.get("generate") or default is None or SECRET_CALL.search(default):
        return preserve()
    return default


def _service(entry):
    name = entry["name"]
    body = entry.get(name, {})
    deploy = dict(body.get("deploy", {}))
    config = {
        "env": {key: _variable(name, spec) for key, spec in body.get("env", {}).items()},
        "start": deploy.pop("startCommand", None),
        "healthcheck": deploy.pop("healthcheckPath", None),
        "healthcheckTimeout": deploy.pop("healthcheckTimeout", None),
        "replicas": deploy.pop("numReplicas", None),
        "deploy": deploy or None,
    }
    if body.get("source", {}).get("image"):
        config["source"] = image(body["source"]["image"])
    if body.get("build"):
        config["build"] = dict(body["build"])
    if body.get("volume", {}).get("mountPath"):
        config["volumeMounts"] = {body["volume"]["mountPath"]: volume(f"{name}-data")}
    return service(name, **{key: value for key, value in config.items() if value is not None})


@define_railway
def main(ctx=None):
    with LAYOUT.open("rb") as handle:
        layout = tomllib.load(handle)
    return project(PROJECT_NAME, resources=[_service(entry) for entry in layout["services"]])
