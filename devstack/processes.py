"""The devstack's processes: started in a session of their own with a log file, waited on
until they answer, stopped with their whole process group; and the port helpers.

A process is known by its PID alone (kept in ``state.json`` by the caller), so a later
``python -m devstack down`` from another shell stops what an earlier ``up`` started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

__all__ = [
    "DevstackError",
    "free_port",
    "http_ok",
    "log_tail",
    "pid_alive",
    "port_is_bound",
    "spawn",
    "stop_process_group",
    "wait_until_ready",
]


class DevstackError(RuntimeError):
    """A devstack service could not be started or stopped."""


def free_port(taken: set[int]) -> int:
    """A port free on 127.0.0.1 now and not in ``taken`` (which it joins)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        # SeaweedFS derives gRPC ports as port+10000 when not told otherwise; we tell
        # it, but keep every port below 55535 so a derived one can never overflow.
        if port not in taken and port < 55535:
            taken.add(port)
            return port


def port_is_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0): reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def http_ok(url: str) -> bool:
    """The server at ``url`` answers, and not with a server error."""
    return httpx.get(url, timeout=2.0).status_code < 500


def spawn(
    argv: list[str], *, log_path: Path, env: dict[str, str], cwd: Path, user: str | None = None
) -> int:
    """Start ``argv`` in a new session, output appended to ``log_path``; its PID.

    ``user`` applies only when running as root (PostgreSQL refuses to run as root).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
            user=user if user and os.geteuid() == 0 else None,
        )
    return proc.pid


def log_tail(log_path: Path, lines: int = 15) -> str:
    """The path and the last lines of a process's log, for an error message."""
    tail = ""
    if log_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    return f"{log_path}:\n{tail}"


def wait_until_ready(
    name: str,
    ready: Callable[[], bool],
    *,
    pid: int | None,
    log_path: Path,
    timeout: float,
) -> None:
    """Poll ``ready`` until it returns true; raise with the log's tail if the process
    exits first or ``timeout`` passes. Any exception from ``ready`` counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not pid_alive(pid):
            raise DevstackError(f"{name} exited during start; see {log_tail(log_path)}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.2)
    raise DevstackError(f"{name} not ready after {timeout:.0f}s; see {log_tail(log_path)}")


def stop_process_group(pid: int, *, sig: signal.Signals, grace: float) -> None:
    """Send ``sig`` to the process's group, KILL it after ``grace`` seconds, and wait
    until the process is gone; the rest of its session goes with it."""
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
    # children of the session (uvicorn workers, weed sub-servers) go with the group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
