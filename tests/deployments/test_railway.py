"""railway.toml, the project's layout: every reference resolves, secrets are generated,
the worker gets the stack. The compiled graph Railway applies: tests/deployments/
test_railway_graph.py."""

from __future__ import annotations

import tomllib

import pytest

from blocks.stack import Stack
from blocks.stack_env import ENV_FIELDS
from deployments.railway import (
    EXPECTED_PUBLIC,
    RAILWAY_FILE,
    RAILWAY_PROVIDED,
    WORKER_SERVICE,
    Template,
    check_langfuse_database,
    check_litellm_config,
    check_public,
    check_references,
    check_secrets,
    check_start_commands,
    check_template,
    check_worker_env,
    langfuse_schema,
    load_template,
    parse_template,
    references,
)


@pytest.fixture
def raw() -> dict:
    with RAILWAY_FILE.open("rb") as handle:
        return tomllib.load(handle)


@pytest.fixture
def template() -> Template:
    return load_template()


def test_the_template_has_no_problem(template: Template) -> None:
    assert check_template(template) == []


def test_the_whole_stack_is_there_with_prefect_instead_of_the_two_daemons(
    template: Template,
) -> None:
    assert set(template.services) == {
        "litellm", "langfuse-web", "langfuse-worker", "postgres", "clickhouse", "redis",
        "minio", "prefect-db", "prefect-server", "prefect-worker", "drill-db",
    }  # fmt: skip
    assert "backup-service" not in template.services
    assert "health-monitor" not in template.services


def test_only_litellm_and_langfuse_web_are_public_the_control_plane_is_private(
    template: Template,
) -> None:
    public = {name for name, service in template.services.items() if service.public}
    assert public == {"litellm", "langfuse-web"} == EXPECTED_PUBLIC
    # nothing points at a public domain of the control plane, and alerts link to the UI
    # only where the operator says it is reachable
    server = template.services["prefect-server"].env
    assert server["PREFECT_UI_URL"].default is None
    assert server["PREFECT_UI_API_URL"].default is None


def test_every_reference_names_a_variable_its_service_defines(template: Template) -> None:
    count = 0
    for service in template.services.values():
        for variable in service.env.values():
            for target, name in references(variable, service.name):
                count += 1
                assert target in template.services, f"{service.name}.{variable.name}"
                defined = set(template.services[target].env) | RAILWAY_PROVIDED
                if template.services[target].public:
                    defined.add("RAILWAY_PUBLIC_DOMAIN")
                assert name in defined, f"{service.name}.{variable.name} -> {target}.{name}"
    assert count > 50  # the check looked at the template's wiring, not at nothing


def test_a_broken_reference_is_reported(raw: dict) -> None:
    worker = next(s for s in raw["services"] if s["name"] == WORKER_SERVICE)
    worker[WORKER_SERVICE]["env"]["REDIS_PASSWORD"] = {"reference": "redis.REDIS_PASWORD"}
    problems = check_references(parse_template(raw))
    assert problems == [
        "prefect-worker.REDIS_PASSWORD: redis defines no variable 'REDIS_PASWORD' "
        "(reference redis.REDIS_PASWORD)"
    ]


def test_an_interpolated_reference_to_an_unknown_service_is_reported(raw: dict) -> None:
    worker = next(s for s in raw["services"] if s["name"] == WORKER_SERVICE)
    worker[WORKER_SERVICE]["env"]["LITELLM_URL"] = {
        "default": "http://${{lite-llm.RAILWAY_PRIVATE_DOMAIN}}:4000"
    }
    problems = check_template(parse_template(raw))
    assert problems == ["prefect-worker.LITELLM_URL: references unknown service 'lite-llm'"]


def test_a_public_domain_of_a_private_service_is_reported(raw: dict) -> None:
    worker = next(s for s in raw["services"] if s["name"] == WORKER_SERVICE)
    worker[WORKER_SERVICE]["env"]["LANGFUSE_WORKER_URL"] = {
        "default": "https://${{langfuse-worker.RAILWAY_PUBLIC_DOMAIN}}"
    }
    assert check_references(parse_template(raw)) == [
        "prefect-worker.LANGFUSE_WORKER_URL: langfuse-worker.RAILWAY_PUBLIC_DOMAIN is only "
        "set on a public service"
    ]


def test_secrets_are_generated_or_referenced_never_defaulted(template: Template) -> None:
    secrets = [
        (service.name, variable)
        for service in template.services.values()
        for variable in service.env.values()
        if variable.is_secret
    ]
    assert len(secrets) > 20
    for service_name, variable in secrets:
        ok = (
            variable.is_generated
            or variable.reference is not None
            or variable.default is None  # entered by the user (optional channels, token)
            or bool(references(variable, service_name))
        )
        assert ok, f"{service_name}.{variable.name}"


def test_a_defaulted_secret_is_reported(raw: dict) -> None:
    redis = next(s for s in raw["services"] if s["name"] == "redis")
    redis["redis"]["env"]["REDIS_PASSWORD"] = {"default": "changeme"}
    assert check_secrets(parse_template(raw)) == [
        'redis.REDIS_PASSWORD: a secret with a fixed default; use generate = "secret" or '
        "${{secret(32)}}"
    ]


def test_the_litellm_master_key_is_generated_with_its_sk_prefix(template: Template) -> None:
    key = template.services["litellm"].env["LITELLM_MASTER_KEY"]
    assert key.default is not None and key.default.startswith("sk-${{secret(")


def test_the_worker_receives_every_variable_the_stack_block_needs(template: Template) -> None:
    worker = template.services[WORKER_SERVICE]
    missing = [
        name for name in ENV_FIELDS if name not in worker.env and name not in RAILWAY_PROVIDED
    ]
    assert missing == []
    # every required field of the block has a value (not left for the user to fill)
    required = [name for name, field in Stack.model_fields.items() if field.is_required()]
    env_of = {field: env for env, field in ENV_FIELDS.items()}
    for field in required:
        variable = worker.env[env_of[field]]
        assert variable.default or variable.reference or variable.generate, field


def test_a_worker_without_a_stack_variable_is_reported(raw: dict) -> None:
    worker = next(s for s in raw["services"] if s["name"] == WORKER_SERVICE)
    del worker[WORKER_SERVICE]["env"]["CLICKHOUSE_PASSWORD"]
    assert check_worker_env(parse_template(raw)) == [
        "prefect-worker does not receive CLICKHOUSE_PASSWORD, which the stack block needs"
    ]


def test_an_extra_public_service_is_reported(raw: dict) -> None:
    postgres = next(s for s in raw["services"] if s["name"] == "postgres")
    postgres["postgres"]["networking"] = {"public": True}
    assert check_public(parse_template(raw)) == ["postgres is public but should not be"]


def test_prefect_server_keeps_its_state_apart_from_the_monitored_postgres_behind_auth(
    template: Template,
) -> None:
    # When the stack's Postgres dies, the Prefect API must not die with it.
    server = template.services["prefect-server"].env
    url = server["PREFECT_API_DATABASE_CONNECTION_URL"].default or ""
    assert url.startswith("postgresql+asyncpg://") and url.endswith(
        "@${{prefect-db.RAILWAY_PRIVATE_DOMAIN}}:5432/prefect"
    )
    assert "postgres." not in url and server["DATABASE_URL"].reference == "prefect-db.DATABASE_URL"
    assert template.services["prefect-db"].volume and not template.services["prefect-db"].public
    assert server["PREFECT_SERVER_API_AUTH_STRING"].is_generated
    worker = template.services[WORKER_SERVICE].env
    assert (
        worker["PREFECT_API_AUTH_STRING"].reference
        == "prefect-server.PREFECT_SERVER_API_AUTH_STRING"
    )
    assert server["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"].default == "events,flow_runs"
    assert server["PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD"].default


def test_the_control_plane_restarts_for_ever_and_keeps_its_leases(template: Template) -> None:
    for name in ("prefect-db", "prefect-server", WORKER_SERVICE):
        assert template.services[name].restart_policy == "ALWAYS", name
    server = template.services["prefect-server"]
    assert (
        server.env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"].default
        == "prefect.server.concurrency.lease_storage.filesystem"
    )
    home = server.env["PREFECT_HOME"].default or ""
    assert server.volume and home.startswith(server.volume + "/")


def test_the_worker_persists_results_on_a_volume_and_runs_our_image(template: Template) -> None:
    worker = template.services[WORKER_SERVICE]
    assert worker.dockerfile == "Dockerfile"
    assert worker.start_command == "/app/docker/entrypoint.sh worker"
    assert worker.env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"].default == "true"
    storage = worker.env["PREFECT_LOCAL_STORAGE_PATH"].default or ""
    assert worker.volume and storage.startswith(worker.volume + "/")
    assert template.services["prefect-server"].start_command == "/app/docker/entrypoint.sh server"


def test_every_alert_channel_variable_is_offered_to_the_worker(template: Template) -> None:
    from deployments.channels import CHANNEL_VARIABLES

    worker = template.services[WORKER_SERVICE].env
    for name in CHANNEL_VARIABLES:
        assert name in worker and worker[name].default is None, name


def test_every_literal_prefect_setting_in_the_template_is_accepted_by_prefect(
    template: Template, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value Prefect rejects (a retention as plain seconds where it wants an ISO
    duration) would stop prefect-server at start on Railway, not here."""
    from prefect.settings.models.root import Settings

    checked = 0
    for service in template.services.values():
        for name, variable in service.env.items():
            value = variable.default
            if not name.startswith("PREFECT_") or not value or "${{" in value:
                continue
            monkeypatch.setenv(name, value)
            checked += 1
        Settings()  # raises a ValidationError naming the variable
        for name in list(service.env):
            monkeypatch.delenv(name, raising=False)
    assert checked >= 5


def test_redis_is_the_official_image_with_a_password_aof_and_noeviction(
    template: Template,
) -> None:
    redis = template.services["redis"]
    assert redis.image == "redis:7.2"
    command = redis.start_command or ""
    assert command.startswith('/bin/sh -c "exec docker-entrypoint.sh redis-server ')
    assert "--requirepass $REDIS_PASSWORD" in command
    assert "--appendonly yes" in command
    assert "--maxmemory $REDIS_MAXMEMORY" in command
    assert "--maxmemory-policy $REDIS_MAXMEMORY_POLICY" in command
    assert redis.env["REDIS_MAXMEMORY"].default == "256mb"
    assert redis.env["REDIS_MAXMEMORY_POLICY"].default == "noeviction"
    # the AOF is written where the volume is mounted
    assert "--dir /data" in command and redis.volume == "/data"
    # no leftovers of the Bitnami image's variables
    assert not {"ALLOW_EMPTY_PASSWORD", "REDIS_AOF_ENABLED", "REDIS_APPENDONLY"} & set(redis.env)


def test_a_start_command_reading_variables_outside_a_shell_is_reported(raw: dict) -> None:
    redis = next(s for s in raw["services"] if s["name"] == "redis")
    redis["redis"]["deploy"]["startCommand"] = "redis-server --requirepass $REDIS_PASWORD"
    assert check_start_commands(parse_template(raw)) == [
        "redis: the start command reads $REDIS_PASWORD but Railway runs it in exec form, "
        'without expansion: wrap it in /bin/sh -c "exec ..."',
        "redis: the start command reads unset $REDIS_PASWORD",
    ]


def test_langfuse_keeps_its_tables_in_the_schema_the_required_lists_name(
    template: Template,
) -> None:
    from flows.deploy_verify import DEFAULT_POSTGRES_TABLES
    from tasks.restore import REQUIRED_POSTGRES_TABLES

    assert langfuse_schema(template) == "langfuse"
    for name in ("langfuse-web", "langfuse-worker"):
        url = template.services[name].env["DATABASE_URL"].default
        assert url == "${{postgres.DATABASE_URL}}?schema=langfuse", name
    # LiteLLM keeps public; every other schema the checks require is Langfuse's
    for tables in (DEFAULT_POSTGRES_TABLES, REQUIRED_POSTGRES_TABLES):
        schemas = {table.partition(".")[0] for table in tables}
        assert schemas == {"public", "langfuse"}
    assert template.services["litellm"].env["DATABASE_URL"].reference == "postgres.DATABASE_URL"


def test_langfuse_in_litellms_public_schema_is_reported(raw: dict) -> None:
    for name in ("langfuse-web", "langfuse-worker"):
        service = next(s for s in raw["services"] if s["name"] == name)
        service[name]["env"]["DATABASE_URL"] = {"reference": "postgres.DATABASE_URL"}
    (problem,) = check_langfuse_database(parse_template(raw))
    assert "names no schema of Langfuse's own" in problem


def test_litellm_on_railway_has_the_canary_and_the_langfuse_callback(
    template: Template,
) -> None:
    from flows.deploy_verify import DeployVerifyConfig

    assert template.services["litellm"].dockerfile == "railway/litellm/Dockerfile"
    assert check_litellm_config(template, DeployVerifyConfig().canary_model) == []
    assert check_litellm_config(template, "no-such-model") == [
        "litellm: config.yaml has no model 'no-such-model' with a mock_response "
        "(deploy-verify's canary, which must spend no tokens)"
    ]
