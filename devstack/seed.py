"""Realistic data for the devstack: LiteLLM's own schema, Langfuse's tables as modelled.

Postgres (database ``railway``): LiteLLM's tables in ``public`` come from the migrations
the ``litellm-proxy-extras`` package ships (the ones ``litellm`` applies with ``prisma
migrate deploy`` at start), applied in order and recorded in ``_prisma_migrations`` the
way Prisma records them, so the schema is LiteLLM's own (97 tables, mixed-case quoted
names, jsonb, arrays; ``LiteLLM_SpendLogs`` large enough to matter). Langfuse's tables in
schema ``langfuse`` are modelled (bytea included). ClickHouse (database
``default``): ``traces``, ``observations`` and ``scores`` as Langfuse v3 shapes them.
Seeding is idempotent: it runs once per state folder.

The seed knows the data, not the stack: it takes anything with the two connections it
needs (``devstack.core.Devstack`` is one), so ``core`` imports ``seed`` and not the
other way round.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import psycopg

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client as ClickHouseClient

__all__ = [
    "CH_TRACE_ROWS",
    "CLICKHOUSE_DATA",
    "CLICKHOUSE_SCHEMA",
    "POSTGRES_DATA",
    "POSTGRES_SCHEMA",
    "SPEND_LOG_ROWS",
    "SeedTarget",
    "apply_litellm_migrations",
    "clickhouse_client",
    "create_postgres_schema",
    "litellm_migrations",
    "seed_all",
    "seed_clickhouse",
    "seed_postgres",
]


class SeedTarget(Protocol):
    """What seeding needs of a stack: an admin DSN per database and a ClickHouse client."""

    def admin_dsn(self, database: str = ...) -> str: ...

    def clickhouse_client(self) -> ClickHouseClient: ...


SPEND_LOG_ROWS = int(os.environ.get("DEVSTACK_SPEND_LOG_ROWS", "120000"))
CH_TRACE_ROWS = int(os.environ.get("DEVSTACK_CH_TRACE_ROWS", "50000"))

# Langfuse's Postgres tables stay modelled (the template's ``?schema=langfuse``); its
# ``_prisma_migrations`` has Prisma's own shape.
_LITELLM_VENV = Path(
    os.environ.get("LITELLM_VENV", Path(__file__).resolve().parents[1] / ".venv-litellm")
)

# Prisma's own bookkeeping table, as ``prisma migrate deploy`` creates it.
PRISMA_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS {schema}."_prisma_migrations" (
    id varchar(36) PRIMARY KEY NOT NULL, checksum varchar(64) NOT NULL, finished_at timestamptz,
    migration_name varchar(255) NOT NULL, logs text, rolled_back_at timestamptz,
    started_at timestamptz NOT NULL DEFAULT now(), applied_steps_count integer NOT NULL DEFAULT 0)
"""


def litellm_migrations(venv: Path = _LITELLM_VENV) -> list[tuple[str, str]]:
    """(name, SQL) of every migration ``litellm-proxy-extras`` ships, oldest first."""
    found = sorted(venv.glob("lib/python*/site-packages/litellm_proxy_extras/migrations"))
    if not found:
        raise FileNotFoundError(
            f"litellm-proxy-extras migrations not found under {venv}: run scripts/setup.sh "
            "(it builds LiteLLM's own virtualenv)"
        )
    folders = sorted(p for p in found[-1].iterdir() if (p / "migration.sql").is_file())
    return [(p.name, (p / "migration.sql").read_text(encoding="utf-8")) for p in folders]


def apply_litellm_migrations(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Apply LiteLLM's migrations not yet recorded, in order; how many were applied.

    Recorded like Prisma does: a row per migration with the SHA-256 of its script,
    ``started_at`` before and ``finished_at`` after, one applied step. Scripts run as
    Prisma runs them, outside an explicit transaction (some build indexes
    ``CONCURRENTLY``); a script that fails leaves its row unfinished, as Prisma would.
    """
    conn.commit()
    was_autocommit, conn.autocommit = conn.autocommit, True
    try:
        conn.execute(PRISMA_MIGRATIONS_TABLE.format(schema="public"))
        done = {
            str(row[0])
            for row in conn.execute(
                'SELECT migration_name FROM public."_prisma_migrations" '
                "WHERE finished_at IS NOT NULL"
            )
        }
        applied = 0
        for name, sql in litellm_migrations():
            if name in done:
                continue
            row_id = str(uuid.uuid4())
            conn.execute(
                'INSERT INTO public."_prisma_migrations" (id, checksum, migration_name) '
                "VALUES (%s, %s, %s)",
                (row_id, hashlib.sha256(sql.encode()).hexdigest(), name),
            )
            conn.execute(sql)
            conn.execute(
                'UPDATE public."_prisma_migrations" SET finished_at = now(), '
                "applied_steps_count = 1 WHERE id = %s",
                (row_id,),
            )
            applied += 1
        return applied
    finally:
        conn.autocommit = was_autocommit


def create_postgres_schema(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """LiteLLM's schema from its migrations, then Langfuse's modelled tables."""
    apply_litellm_migrations(conn)
    conn.execute(POSTGRES_SCHEMA)


POSTGRES_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS langfuse;
CREATE TABLE IF NOT EXISTS langfuse."_prisma_migrations" (
    id varchar(36) PRIMARY KEY, checksum varchar(64) NOT NULL, finished_at timestamptz,
    migration_name varchar(255) NOT NULL, logs text, rolled_back_at timestamptz,
    started_at timestamptz NOT NULL DEFAULT now(), applied_steps_count integer NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS langfuse.organizations (
    id text PRIMARY KEY, name text NOT NULL, created_at timestamp(3) NOT NULL DEFAULT now(),
    cloud_config jsonb);
CREATE TABLE IF NOT EXISTS langfuse.projects (
    id text PRIMARY KEY, org_id text NOT NULL REFERENCES langfuse.organizations(id),
    name text NOT NULL, created_at timestamp(3) NOT NULL DEFAULT now(), deleted_at timestamp(3));
CREATE TABLE IF NOT EXISTS langfuse.users (
    id text PRIMARY KEY, name text, email text UNIQUE, image bytea,
    created_at timestamp(3) NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS langfuse.api_keys (
    id text PRIMARY KEY, public_key text UNIQUE NOT NULL, hashed_secret_key text NOT NULL,
    display_secret_key text NOT NULL, project_id text REFERENCES langfuse.projects(id),
    created_at timestamp(3) NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS langfuse.prompts (
    id text PRIMARY KEY, project_id text NOT NULL REFERENCES langfuse.projects(id),
    name text NOT NULL, version integer NOT NULL, prompt jsonb NOT NULL, labels text[] DEFAULT '{}',
    config jsonb NOT NULL DEFAULT '{}', created_at timestamp(3) NOT NULL DEFAULT now());
"""

POSTGRES_DATA = """
INSERT INTO langfuse."_prisma_migrations" (id, checksum, finished_at, migration_name, applied_steps_count)
SELECT md5('langfuse' || g), md5('l' || g), now(), format('2024%s_langfuse_%s', lpad(g::text, 4, '0'), g), 1
FROM generate_series(1, 180) g;
INSERT INTO public."LiteLLM_UserTable" (user_id, user_email, max_budget, spend, models, metadata)
SELECT 'user-' || g, 'user' || g || '@example.com', 100 + g, g * 0.37,
       ARRAY['gpt-4o-mini', 'canary'], jsonb_build_object('team', 'team-' || (g % 7), 'tier', g % 3)
FROM generate_series(1, 500) g;
INSERT INTO public."LiteLLM_VerificationToken" (token, key_name, key_alias, spend, expires, models, user_id, metadata)
SELECT encode(sha256(('key' || g)::bytea), 'hex'), 'sk-...' || right(md5(g::text), 4), 'alias ' || g,
       g * 0.11, now() + (g || ' days')::interval, ARRAY['gpt-4o-mini'], 'user-' || (1 + g % 500),
       jsonb_build_object('purpose', 'seed', 'n', g, 'ünïcode', '✓')
FROM generate_series(1, 2000) g;
INSERT INTO public."LiteLLM_ProxyModelTable"
    (model_id, model_name, litellm_params, model_info, created_by, updated_by)
SELECT 'model-' || g, 'model ' || g,
       jsonb_build_object('model', 'openai/gpt-4o-mini', 'api_key', encode(sha256(('enc' || g)::bytea), 'base64')),
       jsonb_build_object('mode', 'chat', 'max_tokens', 4096 * g), 'seed', 'seed'
FROM generate_series(1, 40) g;
INSERT INTO public."LiteLLM_Config" (param_name, param_value)
VALUES ('general_settings', '{"alerting": ["slack"], "max_parallel_requests": 100}'),
       ('litellm_settings', '{"success_callback": ["langfuse"]}');
INSERT INTO public."LiteLLM_SpendLogs"
    (request_id, call_type, api_key, spend, total_tokens, prompt_tokens, completion_tokens,
     "startTime", "endTime", model, "user", metadata, cache_hit, request_tags, messages, response)
SELECT 'chatcmpl-' || md5(g::text), 'acompletion', encode(sha256(('key' || (g % 2000))::bytea), 'hex'),
       (g % 1000) * 0.00001, 40 + g % 900, 20 + g % 400, 20 + g % 500,
       timestamp '2026-01-01' + (g || ' seconds')::interval,
       timestamp '2026-01-01' + (g || ' seconds')::interval + interval '850 milliseconds',
       CASE g % 3 WHEN 0 THEN 'gpt-4o-mini' WHEN 1 THEN 'canary' ELSE 'claude-3-haiku' END,
       'user-' || (1 + g % 500),
       jsonb_build_object('user_api_key_alias', 'alias ' || (g % 2000), 'trace_id', md5('t' || g)),
       'False', '["prod", "seed"]'::jsonb,
       jsonb_build_array(jsonb_build_object('role', 'user', 'content', repeat('hello ', 10 + g % 30))),
       jsonb_build_object('id', 'resp-' || g, 'choices', jsonb_build_array(jsonb_build_object('text', md5(g::text))))
FROM generate_series(1, {rows}) g;
INSERT INTO langfuse.organizations (id, name) VALUES ('org-1', 'Seed Org');
INSERT INTO langfuse.projects (id, org_id, name) VALUES ('proj-1', 'org-1', 'gateway');
INSERT INTO langfuse.users (id, name, email, image)
SELECT 'u' || g, 'User ' || g, 'u' || g || '@example.com', decode(repeat(md5(g::text), 8), 'hex')
FROM generate_series(1, 50) g;
INSERT INTO langfuse.api_keys (id, public_key, hashed_secret_key, display_secret_key, project_id)
VALUES ('key-1', 'pk-lf-seed', md5('not-a-secret'), 'sk-lf-...seed', 'proj-1');
INSERT INTO langfuse.prompts (id, project_id, name, version, prompt, labels)
SELECT 'prompt-' || g, 'proj-1', 'prompt ' || (g % 10), g, to_jsonb('You are helpful #' || g), ARRAY['production']
FROM generate_series(1, 200) g;
"""

CLICKHOUSE_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS {db}.traces (
        id String, timestamp DateTime64(3), name String, user_id Nullable(String),
        metadata Map(LowCardinality(String), String), release Nullable(String),
        tags Array(String), input Nullable(String), output Nullable(String),
        session_id Nullable(String), project_id String, created_at DateTime64(3),
        updated_at DateTime64(3), is_deleted UInt8, event_ts DateTime64(3)
    ) ENGINE = ReplacingMergeTree(event_ts, is_deleted)
    PARTITION BY toYYYYMM(timestamp) ORDER BY (project_id, toDate(timestamp), id)""",
    """CREATE TABLE IF NOT EXISTS {db}.observations (
        id String, trace_id String, project_id String, type LowCardinality(String),
        parent_observation_id Nullable(String), start_time DateTime64(3),
        end_time Nullable(DateTime64(3)), name String, level LowCardinality(String),
        provided_model_name Nullable(String), usage_details Map(LowCardinality(String), UInt64),
        cost_details Map(LowCardinality(String), Decimal64(12)),
        total_cost Nullable(Decimal64(12)), input Nullable(String), output Nullable(String),
        created_at DateTime64(3), updated_at DateTime64(3), is_deleted UInt8, event_ts DateTime64(3)
    ) ENGINE = ReplacingMergeTree(event_ts, is_deleted)
    PARTITION BY toYYYYMM(start_time) ORDER BY (project_id, type, toDate(start_time), id)""",
    """CREATE TABLE IF NOT EXISTS {db}.scores (
        id String, timestamp DateTime64(3), project_id String, trace_id String, name String,
        value Float64, source String, comment Nullable(String), data_type String,
        string_value Nullable(String), created_at DateTime64(3), updated_at DateTime64(3),
        is_deleted UInt8, event_ts DateTime64(3)
    ) ENGINE = ReplacingMergeTree(event_ts, is_deleted)
    PARTITION BY toYYYYMM(timestamp) ORDER BY (project_id, toDate(timestamp), name, id)""",
]

CLICKHOUSE_DATA = [
    """INSERT INTO {db}.traces SELECT
        concat('trace-', toString(number)), toDateTime64('2026-01-01 00:00:00', 3) + number,
        concat('chat ', toString(number % 17)), concat('user-', toString(number % 500)),
        map('env', 'prod', 'model', if(number % 2 = 0, 'gpt-4o-mini', 'canary')), NULL,
        ['seed', 'gateway'], concat('{"q":"', toString(number), '"}'), 'pong', NULL, 'proj-1',
        now64(3), now64(3), 0, now64(3)
      FROM numbers({rows})""",
    """INSERT INTO {db}.observations SELECT
        concat('obs-', toString(number)), concat('trace-', toString(intDiv(number, 3))), 'proj-1',
        'GENERATION', NULL, toDateTime64('2026-01-01 00:00:00', 3) + number,
        toDateTime64('2026-01-01 00:00:01', 3) + number, 'litellm-acompletion', 'DEFAULT',
        'gpt-4o-mini', map('input', number % 500, 'output', number % 300),
        map('total', toDecimal64(number % 100 / 1000000, 12)), toDecimal64(number % 100 / 1000000, 12),
        'hello', 'pong', now64(3), now64(3), 0, now64(3)
      FROM numbers({rows3})""",
    """INSERT INTO {db}.scores SELECT
        concat('score-', toString(number)), toDateTime64('2026-01-01 00:00:00', 3) + number,
        'proj-1', concat('trace-', toString(number * 2)), 'quality', (number % 10) / 10.0, 'API',
        NULL, 'NUMERIC', NULL, now64(3), now64(3), 0, now64(3)
      FROM numbers({rows_half})""",
]


def seed_postgres(stack: SeedTarget) -> None:
    with psycopg.connect(stack.admin_dsn("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'railway'").fetchone()
        if not exists:
            conn.execute("CREATE DATABASE railway")
    with psycopg.connect(stack.admin_dsn("railway")) as conn:
        seeded = conn.execute(
            "SELECT to_regclass('public.\"LiteLLM_SpendLogs\"') IS NOT NULL"
        ).fetchone()
        if seeded and seeded[0]:
            count = conn.execute('SELECT count(*) FROM public."LiteLLM_SpendLogs"').fetchone()
            if count and count[0] > 0:
                return
        create_postgres_schema(conn)
        conn.execute(POSTGRES_DATA.replace("{rows}", str(SPEND_LOG_ROWS)))
        conn.execute("ANALYZE")


def clickhouse_client(stack: SeedTarget) -> ClickHouseClient:
    """A client for the stack's ClickHouse (``stack.clickhouse_client()``)."""
    return stack.clickhouse_client()


def seed_clickhouse(stack: SeedTarget, database: str = "default") -> None:
    client = clickhouse_client(stack)
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
        for ddl in CLICKHOUSE_SCHEMA:
            client.command(ddl.format(db=database))
        if int(client.query(f"SELECT count() FROM {database}.traces").result_rows[0][0]) > 0:
            return
        for insert in CLICKHOUSE_DATA:
            # str.replace, not format: the statements hold JSON braces.
            statement = (
                insert.replace("{db}", database)
                .replace("{rows}", str(CH_TRACE_ROWS))
                .replace("{rows3}", str(CH_TRACE_ROWS * 3))
                .replace("{rows_half}", str(CH_TRACE_ROWS // 2))
            )
            client.command(statement)
    finally:
        client.close()


def seed_all(stack: SeedTarget) -> None:
    seed_postgres(stack)
    seed_clickhouse(stack)
