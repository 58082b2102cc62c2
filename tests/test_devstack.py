"""The devstack: every service answers a real request through the library the flows use."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid

import clickhouse_connect
import httpx
import psycopg
import redis

from blocks.stack import Stack
from devstack.core import Devstack, pid_alive, port_is_bound
from devstack.seed import litellm_migrations
from tests.conftest import Receiver


def test_postgres_answers_through_psycopg_with_seeded_tables(stack: Stack) -> None:
    with psycopg.connect(stack.postgres_dsn.get_secret_value()) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                "WHERE schemaname IN ('public', 'langfuse')"
            )
        }
        spend_logs = conn.execute('SELECT count(*) FROM "LiteLLM_SpendLogs"').fetchone()
        token = conn.execute(
            'SELECT metadata, models FROM "LiteLLM_VerificationToken" LIMIT 1'
        ).fetchone()
        params = conn.execute(
            'SELECT litellm_params FROM "LiteLLM_ProxyModelTable" LIMIT 1'
        ).fetchone()
        image = conn.execute("SELECT image FROM langfuse.users LIMIT 1").fetchone()
        migrations = conn.execute(
            "SELECT count(*), count(finished_at), min(applied_steps_count) "
            'FROM public."_prisma_migrations"'
        ).fetchone()
    assert {'"LiteLLM_VerificationToken"', '"LiteLLM_SpendLogs"', "langfuse.projects"} <= {
        t.removeprefix("public.") for t in tables
    }
    assert spend_logs is not None and spend_logs[0] >= 10_000
    assert token is not None and token[0]["purpose"] == "seed" and token[1] == ["gpt-4o-mini"]
    assert params is not None and params[0]["model"] == "openai/gpt-4o-mini"  # jsonb, as LiteLLM's
    assert image is not None and isinstance(image[0], bytes) and len(image[0]) == 128
    # LiteLLM's own schema: every migration litellm-proxy-extras ships, recorded as Prisma does.
    shipped = litellm_migrations()
    assert migrations == (len(shipped), len(shipped), 1) and len(shipped) > 100


def test_redis_answers_with_aof_on_and_a_password(stack: Stack) -> None:
    assert stack.redis_password is not None
    client = redis.Redis(
        host=stack.redis_host,
        port=stack.redis_port,
        password=stack.redis_password.get_secret_value(),
    )
    try:
        assert client.ping()
        assert client.config_get("appendonly")["appendonly"] == "yes"
        client.set("devstack:probe", "1")
        assert client.get("devstack:probe") == b"1"
    finally:
        client.close()
    anonymous = redis.Redis(host=stack.redis_host, port=stack.redis_port)
    try:
        try:
            anonymous.ping()
        except redis.AuthenticationError:
            pass
        else:
            raise AssertionError("Redis answered without a password")
    finally:
        anonymous.close()


def test_s3_round_trip_through_minio(devstack: Devstack, stack: Stack) -> None:
    import io

    from minio import Minio

    client = Minio(
        stack.s3_host,
        access_key=stack.s3_access_key,
        secret_key=stack.s3_secret_key.get_secret_value(),
        secure=False,
    )
    assert client.bucket_exists(stack.backup_bucket)
    assert client.bucket_exists(stack.langfuse_bucket)
    key = f"probe/{uuid.uuid4()}"
    payload = b"x" * (6 * 1024 * 1024)
    client.put_object(
        stack.backup_bucket, key, io.BytesIO(payload), length=-1, part_size=5 * 1024 * 1024
    )
    response = client.get_object(stack.backup_bucket, key)
    try:
        assert response.read() == payload
    finally:
        response.close()
        response.release_conn()
    client.remove_object(stack.backup_bucket, key)
    wrong = Minio(
        stack.s3_host, access_key=stack.s3_access_key, secret_key="wrong-secret", secure=False
    )
    try:
        wrong.bucket_exists(stack.backup_bucket)
    except Exception as exc:  # the server checks signatures
        assert "SignatureDoesNotMatch" in str(exc) or "AccessDenied" in str(exc)
    else:
        raise AssertionError("S3 accepted a wrong secret key")


def test_clickhouse_engine_answers_through_clickhouse_connect(stack: Stack) -> None:
    client = clickhouse_connect.get_client(
        host="127.0.0.1",
        port=int(stack.clickhouse_url.rsplit(":", 1)[1]),
        username=stack.clickhouse_user,
        password=stack.clickhouse_password.get_secret_value(),
    )
    try:
        assert int(client.server_version.split(".")[0]) >= 23
        counts = {
            row[0]: row[1]
            for row in client.query(
                "SELECT name, total_rows FROM system.tables WHERE database = {db:String}",
                parameters={"db": stack.clickhouse_database},
            ).result_rows
        }
        assert {"traces", "observations", "scores"} <= set(counts)
        assert client.command("SELECT count() FROM traces") > 0
    finally:
        client.close()


def test_litellm_proxy_answers_with_the_master_key_only(stack: Stack) -> None:
    key = stack.litellm_master_key.get_secret_value()
    with httpx.Client(base_url=stack.litellm_url, timeout=30) as client:
        assert client.get("/health/liveliness").status_code == 200
        models = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert models.status_code == 200
        assert "canary" in {m["id"] for m in models.json()["data"]}
        reply = client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "canary", "messages": [{"role": "user", "content": "ping"}]},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "pong"
        # Without its database LiteLLM answers 500/400 rather than 401; either way, refused.
        assert client.get("/v1/models").status_code >= 400


def test_langfuse_standin_answers_health_and_ingestion(stack: Stack) -> None:
    auth = (stack.langfuse_public_key, stack.langfuse_secret_key.get_secret_value())
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{stack.langfuse_url}/api/public/health").status_code == 200
        assert client.get(f"{stack.langfuse_worker_url}/api/health").status_code == 200
        trace_id = str(uuid.uuid4())
        event = {
            "id": str(uuid.uuid4()),
            "type": "trace-create",
            "timestamp": "2026-11-22T00:00:00Z",
            "body": {"id": trace_id, "name": "probe"},
        }
        sent = client.post(
            f"{stack.langfuse_url}/api/public/ingestion", json={"batch": [event]}, auth=auth
        )
        assert sent.status_code in (200, 207)
        # Ingestion goes through the queue and the worker, as in Langfuse: readable soon.
        deadline = time.monotonic() + 30
        while (
            found := client.get(f"{stack.langfuse_url}/api/public/traces/{trace_id}", auth=auth)
        ).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert found.status_code == 200 and found.json()["id"] == trace_id
        assert client.get(f"{stack.langfuse_url}/api/public/traces/{trace_id}").status_code == 401


def test_receiver_records_a_post(receiver: Receiver) -> None:
    httpx.post(f"{receiver.url}/slack/T000", json={"text": "hello"}, timeout=5).raise_for_status()
    got = receiver.received("/slack")
    assert len(got) == 1 and got[0]["json"] == {"text": "hello"}


def test_prefect_server_has_the_pool_an_online_worker_and_the_stack_block(
    devstack: Devstack,
) -> None:
    api = devstack.prefect_api_url
    assert httpx.get(f"{api}/health", timeout=5).json() is True
    assert httpx.get(f"{api}/work_pools/devstack", timeout=5).status_code == 200
    deadline = time.monotonic() + 90  # a worker restarted by an earlier test heartbeats again
    while not devstack.worker_online() and time.monotonic() < deadline:
        time.sleep(1)
    assert devstack.worker_online()
    loaded = Stack.load("devstack")
    assert loaded.litellm_url == devstack.url("litellm")
    assert loaded.notifications, "the devstack routes alerts to the receiver"


def test_up_twice_then_down_leaves_no_process_and_no_port(devstack: Devstack) -> None:
    # A folder the postgres user can reach (pytest's tmp is root-only).
    root = devstack.root.parent / ".devstack-updown"
    shutil.rmtree(root, ignore_errors=True)
    other = Devstack(root, log=lambda _m: None)
    other.up(with_worker=True, seed=False)
    first = dict(other.state.pids)
    other.up(with_worker=True, seed=False)
    assert other.state.pids == first, "a second up must not start anything again"
    assert all(pid_alive(pid) for pid in first.values())
    other.down()
    assert not any(pid_alive(pid) for pid in first.values())
    assert [port for port in other.ports.values() if port_is_bound(port)] == []
    shutil.rmtree(root, ignore_errors=True)


def test_a_session_removes_ended_sessions_stacks_and_never_a_running_ones(tmp_path) -> None:
    from tests import conftest

    running, ended = tmp_path / "s1", tmp_path / "s2"
    for folder in (running, ended):
        (folder / "logs").mkdir(parents=True)
        (folder / conftest._LOCK_NAME).touch()
    # Another session (another process) holds its folder's lock while it runs.
    hold = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()"
    )
    lock = str(running / conftest._LOCK_NAME)
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, lock], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        conftest._remove_ended_sessions(tmp_path)
        assert running.is_dir() and not ended.exists()
    finally:
        holder.communicate("")  # the other session ends: its lock is released
    conftest._remove_ended_sessions(tmp_path)
    assert not running.exists()
