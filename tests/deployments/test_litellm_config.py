"""railway/litellm/config.yaml in a real LiteLLM: the canary answers without a provider
and its call is traced in Langfuse, as deploy-verify expects on a fresh Railway stack."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from devstack.core import LITELLM_VENV, Devstack

CONFIG = Path(__file__).resolve().parents[2] / "railway" / "litellm" / "config.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def railway_litellm(
    devstack: Devstack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    port = _free_port()
    key = "sk-railway-config-" + uuid4().hex
    env = {**devstack.litellm_env(), "LITELLM_MASTER_KEY": key}
    log = (tmp_path_factory.mktemp("litellm") / "litellm.log").open("wb")
    argv = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(CONFIG)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        argv,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, "LiteLLM exited with the Railway config"
            try:
                if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "LiteLLM did not start with the Railway config"
            time.sleep(0.5)
        yield url, key
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_the_canary_answers_and_its_call_is_traced_in_langfuse(
    railway_litellm: tuple[str, str], devstack: Devstack
) -> None:
    url, key = railway_litellm
    trace_id = uuid4().hex
    response = httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": "canary",
            "messages": [{"role": "user", "content": "ping"}],
            "metadata": {"trace_id": trace_id, "tags": ["railway-config-test"]},
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "pong"
    assert response.json()["usage"]["total_tokens"] >= 0

    auth = (devstack.creds.langfuse_public_key, devstack.creds.langfuse_secret_key)
    deadline = time.monotonic() + 60
    while True:
        found = httpx.get(
            f"{devstack.url('langfuse')}/api/public/traces/{trace_id}", auth=auth, timeout=5
        )
        if found.status_code == 200:
            break
        assert time.monotonic() < deadline, f"trace {trace_id} never reached Langfuse"
        time.sleep(0.5)
    assert found.json()["id"] == trace_id


def test_the_proxy_refuses_a_call_without_the_master_key(railway_litellm: tuple[str, str]) -> None:
    url, _ = railway_litellm
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "canary", "messages": [{"role": "user", "content": "ping"}]},
        timeout=30,
    )
    assert response.status_code >= 400
