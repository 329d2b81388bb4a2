"""Clients outlive a kernel restart (userland/lib.py): a still-open Client or AsyncClient reconnects
to a restarted kernel on its next call and says hello again (a new token included); a call in
flight when the kernel dies fails at once with ECONNRESET saying it stopped or restarted; a call
while no kernel runs fails the same way naming `llmos serve --daemon`, and the one after that,
once a kernel is back, goes through. A real `llmos.kernel.main serve` on the tiny model, its own
runtime dir and $LLMOS_HOME; sessions come back under their pids (kernel/hibernate.py)."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import threading
import time

import pytest

from llmos.kernel import abi
from llmos.userland import lib
from test_checkpoint_daemon import boot, llmos


@pytest.fixture
def env(tmp_path, monkeypatch):
    e = dict(os.environ, LLMOS_RUNTIME_DIR=str(tmp_path / "rt"), LLMOS_HOME=str(tmp_path / "home"),
             PYTHONUNBUFFERED="1")
    monkeypatch.setenv("LLMOS_RUNTIME_DIR", e["LLMOS_RUNTIME_DIR"])
    return e


def stop(env, kern) -> None:
    assert llmos("stop", env=env).returncode == 0
    kern.wait(60)


def test_an_open_client_reconnects_to_a_restarted_kernel(env, tiny_model_path):
    kern = boot(env, str(tiny_model_path))
    try:
        c = lib.Client(client="survivor")
        first = c.info["kernel_pid"]
        pid = c.spawn([{"role": "user", "content": "hi"}], max_tokens=4, session=True)
        c.read(pid)
        token = abi.read_token(abi.runtime_dir())
        stop(env, kern)
        t0 = time.monotonic()
        with pytest.raises(ConnectionResetError, match="llmos serve --daemon") as ei:
            c.ps()                                   # no kernel now: said plainly, at once
        assert ei.value.errno == errno.ECONNRESET and time.monotonic() - t0 < 5
        kern = boot(env, str(tiny_model_path))
        assert abi.read_token(abi.runtime_dir()) != token
        assert {p["pid"] for p in c.ps()} == {pid}   # no EACCES "call hello first": it said hello again
        assert c.info["kernel_pid"] == kern.pid != first and c.reconnects == 1
        c.write(pid, [{"role": "user", "content": "and then?"}])
        while not c.read(pid)["turn_end"]:         # its session, restored under its pid, goes on
            pass
        stop(env, kern)                              # a restart with no call in between
        kern = boot(env, str(tiny_model_path))
        assert c.stat(pid)["pid"] == pid and c.reconnects == 2 and c.info["kernel_pid"] == kern.pid
        c.close()
    finally:
        stop(env, kern)


def test_a_call_in_flight_when_the_kernel_dies_names_the_restart(env, tiny_model_path):
    kern = boot(env, str(tiny_model_path))
    try:
        c = lib.Client(client="parked")
        pid = c.spawn([{"role": "user", "content": "hi"}], max_tokens=4, session=True)
        "".join(c.stream(pid))                     # it sleeps: the next read parks in the kernel
        threading.Timer(0.5, os.kill, (kern.pid, signal.SIGKILL)).start()
        t0 = time.monotonic()
        with pytest.raises(ConnectionResetError, match="during read .*restarted") as ei:
            c.read(pid)
        assert ei.value.errno == errno.ECONNRESET and time.monotonic() - t0 < 10
        kern.wait(10)
        kern = boot(env, str(tiny_model_path))
        assert c.null() is None and c.reconnects == 1

        async def go():
            a = await lib.AsyncClient.connect(client="async")
            os.kill(kern.pid, signal.SIGKILL)
            kern.wait(10)
            await asyncio.sleep(0.5)
            with pytest.raises(ConnectionResetError, match="llmos serve --daemon"):
                await a.null()
            return a
        a = asyncio.run(go())
        kern = boot(env, str(tiny_model_path))

        async def again():
            assert await a.null() is None and a.reconnects == 1
            assert (await a.uname())["sysname"] == "llmos"
            await a.close()
        asyncio.run(again())
        c.close()
    finally:
        stop(env, kern)
