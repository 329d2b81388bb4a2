"""Helpers for the gateway tests: a real kernel daemon on the tiny model and a real `llmos gateway`
subprocess in front of it, on a free loopback port.

Fixtures (import them into a test module by name: ``from gatewaykit import env, url, k``):
env (module: a kernel on the tiny model), url (module: a gateway in front of it), k (a client
of that kernel, for checking what the gateway did)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from llmos.userland import lib


def llmos(*args, env, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.shell.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def kernel(model_path: str, *extra: str, **environ: str):
    """A kernel daemon on a fresh runtime dir; yields its environment (LLMOS_RUNTIME_DIR, LLMOS_HOME)."""
    rt = Path(tempfile.mkdtemp(prefix="llmos-gw-"))
    env = dict(os.environ, LLMOS_RUNTIME_DIR=str(rt / "run"), LLMOS_HOME=str(rt / "home"), PYTHONUNBUFFERED="1",
               **environ)
    (rt / "home").mkdir()
    r = llmos("serve", "--daemon", "--model", model_path, "--kv-blocks", "256", "--block-size", "4",
              "--dtype", "fp32", "--lease", "1", *extra, env=env, timeout=300)    # boot on a loaded box
    assert r.returncode == 0, r.stderr
    pid = int((rt / "run" / "kernel.pid").read_text())
    try:
        yield env
    finally:
        llmos("stop", env=env)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(rt, ignore_errors=True)


def start_gateway(env: dict, *args: str, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """`llmos gateway` on a free port; returns (process, base URL) once /health answers."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmos.shell.cli", "gateway", "--listen", f"127.0.0.1:{port}",
                             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code in (200, 401):
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("gateway did not answer /health")


def stop_gateway(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def gateway(env: dict, *args: str):
    proc, url = start_gateway(env, *args)
    try:
        yield url
    finally:
        stop_gateway(proc)


@contextmanager
def environ(env: dict):
    """os.environ updated with env's llmos variables (so lib.Client finds this kernel)."""
    keys = ("LLMOS_RUNTIME_DIR", "LLMOS_HOME")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def settle(k, user: str | None = None, timeout: float = 10.0) -> list[dict]:
    """Wait until no process remains in the kernel (of user, if given; with no user, also until
    the KV pool is free: a process killed during a step keeps its blocks until the step's commit);
    returns what is left."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in k.ps() if user is None or p["owner"] == user]
        done = not left and (user is not None or k.meminfo()["kv"]["used"] == 0)
        if done or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(scope="module")
def env(tiny_model_path):
    with kernel(tiny_model_path) as env:
        yield env


@pytest.fixture(scope="module")
def url(env):
    with gateway(env) as url:
        yield url


@pytest.fixture
def k(env):
    with environ(env), lib.Client(client="test-gateway") as c:
        yield c


def greedy(k, prompt, n: int, **params) -> str:
    """The text of a greedy generation of n tokens straight through the kernel."""
    pid = k.spawn(prompt, {"max_tokens": n, "temperature": 0, **params})
    text = "".join(k.stream(pid))
    k.wait(pid)
    return text
