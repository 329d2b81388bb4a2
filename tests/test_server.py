"""kernel/server.py over a real ZeroMQ socket: framing, authentication, bad input, leases.

The server runs in a thread on a uvloop loop, bound to an ipc socket in a temporary runtime dir.
Tests that need processes use the real engine on the tiny model (tiny_engine fixture).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import pytest
import uvloop
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

from llmos.kernel import abi
from llmos.kernel.abi import Sys
from llmos.kernel.server import Server
from llmos.kernel.syscalls import Kernel
from llmos.kernel.waitq import WaitQueues
from llmos.userland import lib


class ServerThread:
    """A Server on its own uvloop thread, in a fresh runtime dir (also set as LLMOS_RUNTIME_DIR)."""

    def __init__(self, engine=None, model=None, waits=None, lease_s: float = 0.3, extra=(), **kw):
        """engine: built with on_wake=waits.wake (kernelkit.make_kernel_parts)."""
        self.rt = abi.ensure_runtime_dir(Path(tempfile.mkdtemp(prefix="llmos-t-")))
        self.token = abi.write_token(self.rt)
        self.endpoint = abi.ipc_endpoint(abi.socket_path(self.rt))
        self.kernel = Kernel(engine=engine, model=model, token=self.token, waits=waits or WaitQueues(),
                             lease_s=lease_s, info={"model": "tiny"})
        self.server = Server(self.kernel, [self.endpoint, *extra], **kw)
        self.server.bind()
        self.thread = threading.Thread(target=lambda: uvloop.run(self.server.serve()), daemon=True)

    def __enter__(self):
        self._env = os.environ.get("LLMOS_RUNTIME_DIR")
        os.environ["LLMOS_RUNTIME_DIR"] = str(self.rt)
        self.thread.start()
        while self.server.loop is None or self.server._stopped is None:
            time.sleep(0.005)
        return self

    def call(self, fn, *args):
        """Run fn(*args) on the server's loop thread and return its result."""
        fut = asyncio.run_coroutine_threadsafe(_acall(fn, *args), self.server.loop)
        return fut.result(10)

    def __exit__(self, *exc):
        if self.thread.is_alive():
            self.server.loop.call_soon_threadsafe(self.server.shutdown)
            self.thread.join(10)
        assert not self.thread.is_alive(), "server did not stop"
        if self._env is None:
            os.environ.pop("LLMOS_RUNTIME_DIR", None)
        else:
            os.environ["LLMOS_RUNTIME_DIR"] = self._env


async def _acall(fn, *args):
    return fn(*args)


def wait_until(cond, timeout=10.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def raw_dealer() -> zmq.Socket:
    """An unconnected DEALER (LINGER 0) for a raw test peer, on the process's shared context: a peer a
    failed test never closed must not leave a context for the garbage collector to end (pyzmq's
    Context.__del__ can hang on open sockets)."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    return s


class Raw:
    """A bare DEALER for sending arbitrary frames."""

    def __init__(self, endpoint: str, ident: bytes | None = None):
        self.s = raw_dealer()
        if ident is not None:
            self.s.setsockopt(zmq.ROUTING_ID, ident)
        self.s.connect(endpoint)

    def send(self, *frames: bytes):
        self.s.send_multipart(list(frames))

    def reply(self, timeout=5.0):
        assert self.s.poll(int(timeout * 1000)), "no reply"
        return abi.decode_reply(self.s.recv())

    def call(self, req_id, sysno, *args):
        self.send(abi.encode_request(req_id, sysno, *args))
        return self.reply()

    def close(self):
        self.s.close(0)


@pytest.fixture
def srv():
    with ServerThread() as s:
        yield s


@pytest.fixture
def raw(srv):
    r = Raw(srv.endpoint)
    assert r.call(1, Sys.HELLO, srv.token, "tester")[1] == 0
    yield r
    r.close()


def test_hello_is_required_and_checks_the_token(srv):
    r = Raw(srv.endpoint)
    assert r.call(1, Sys.NULL)[:2] == (1, errno.EACCES)
    assert r.call(2, Sys.HELLO, "wrong", "x")[:2] == (2, errno.EACCES)
    assert r.call(3, Sys.HELLO, 12345)[:2] == (3, errno.EACCES)
    assert r.call(4, Sys.NULL)[:2] == (4, errno.EACCES)
    assert srv.server.sessions == {}
    rid, err, info = r.call(5, Sys.HELLO, srv.token, "alice", "test")
    assert (rid, err) == (5, 0) and info["user"] == "alice" and info["abi"] == abi.ABI_VERSION
    assert r.call(6, Sys.NULL) == (6, 0, None)
    assert r.call(7, Sys.HELLO, srv.token, "alice")[1] == 0            # same user again: fine
    assert r.call(8, Sys.HELLO, srv.token, "mallory")[1] == errno.EALREADY
    assert r.call(9, Sys.HELLO, srv.token, "bad\nname")[1] == errno.EINVAL
    r.close()


def test_every_kind_of_bad_frame(raw):
    cases = [
        ([b"\xc1"], (None, errno.EPROTO)),
        ([msgpack.packb({"a": 1})], (None, errno.EPROTO)),
        ([abi.encode_request(11, 9999)], (11, errno.ENOSYS)),
        ([abi.encode_request(12, -1)], (12, errno.ENOSYS)),
        ([msgpack.packb([13, "ps"])], (13, errno.ENOSYS)),
        ([msgpack.packb([14, 2**40])], (14, errno.ENOSYS)),
        ([abi.encode_request(15, Sys.NULL, 1)], (15, errno.EINVAL)),            # arity
        ([abi.encode_request(16, Sys.NULL), b"extra"], (16, errno.EPROTO)),     # multi-frame
        ([b"", abi.encode_request(17, Sys.NULL)], (None, errno.EPROTO)),        # REQ-style envelope
        ([abi.encode_request(18, Sys.NULL, *range(abi.MAX_ARGS + 1))], (18, errno.E2BIG)),
        ([abi.encode_request(19, Sys.HELLO, "x" * (abi.MAX_FRAME_BYTES + 1))], (19, errno.E2BIG)),  # id from the prefix
        ([b"\x93\x14\x00\xa1\xff"], (20, errno.EPROTO)),                          # a str that is not UTF-8
    ]
    for frames, want in cases:
        raw.send(*frames)
        rid, err, msg = raw.reply()
        assert (rid, err) == want, (frames[0][:40], rid, err, msg)
        assert isinstance(msg, str) and msg
    assert raw.call(99, Sys.NULL) == (99, 0, None)


def test_a_frame_over_the_hard_limit_drops_only_that_peer(srv, raw):
    big = Raw(srv.endpoint)
    big.send(b"x" * (abi.HARD_FRAME_BYTES + 1))
    assert not big.s.poll(300)
    big.close()
    assert raw.call(2, Sys.NULL) == (2, 0, None)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(st.binary(max_size=64), min_size=1, max_size=3))
def test_fuzz_frames_each_get_one_errno_reply(srv, raw, frames):
    raw.send(*frames)
    rid, err, value = raw.reply()
    if err == 0:   # only a well-formed null/hello could succeed
        assert len(frames) == 1
    assert not raw.s.poll(0), "more than one reply"
    assert raw.call(1, Sys.NULL) == (1, 0, None)


def test_sync_client_maps_errors_to_oserror_subclasses(srv):
    with lib.Client(client="t") as c:
        assert c.null() is None
        with pytest.raises(OSError) as ei:
            c.syscall(77)
        assert ei.value.errno == errno.ENOSYS
        with pytest.raises(OSError) as ei:
            c.syscall(Sys.KILL)
        assert ei.value.errno == errno.EINVAL and "kill(pid, sig=15)" in ei.value.strerror


def test_a_bind_that_fails_releases_its_context_and_zap_thread():
    """An unclosed context whose ZAP thread still holds a socket hangs forever when collected."""
    s = Server(Kernel(engine=None, model=None, token="t", waits=WaitQueues()), ["ipc:///nonexistent/dir/k.sock"])
    with pytest.raises(zmq.ZMQError):
        s.bind()
    assert s.ctx.closed and s.auth is None and s.sock.closed


def test_client_without_a_kernel_names_the_command_that_starts_one(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOS_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(ConnectionRefusedError, match="llmos serve --daemon"):
        lib.Client()
    # a stale socket file and token left by a dead kernel
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind(abi.ipc_endpoint(abi.socket_path(tmp_path)))
    s.close(0)
    ctx.term()
    abi.socket_path(tmp_path).touch()
    abi.write_token(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError, match="llmos serve --daemon"):
        lib.Client(connect_timeout=0.5)
    assert time.monotonic() - t0 < 3


def test_async_client_runs_calls_concurrently(srv):
    async def go():
        k = await lib.AsyncClient.connect(client="t")
        try:
            results = await asyncio.gather(*[k.null() for _ in range(200)])
            assert results == [None] * 200
            with pytest.raises(OSError) as ei:
                await k.syscall(1234)
            assert ei.value.errno == errno.ENOSYS
        finally:
            await k.close()
    asyncio.run(go())


CLIENT = """
import sys, time
from llmos.userland import lib
c = lib.Client(client="doomed")
print("ready", flush=True)
time.sleep(60)
"""


def test_a_vanished_client_loses_its_session(srv):
    child = subprocess.Popen([sys.executable, "-c", CLIENT], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        wait_until(lambda: len(srv.server.sessions) == 1, what="session")
        child.send_signal(signal.SIGKILL)
        child.wait()
        wait_until(lambda: not srv.server.sessions, timeout=2, what="session end")
    finally:
        child.kill()
        child.wait()


DROPPED_IN_A_CYCLE = """
import asyncio, gc
from llmos.userland import lib
c = lib.Client(client="cyclic")
c.null()
c.me = c                                  # a cycle, as a traceback that holds the client makes
del c
async def dropped():
    a = await lib.AsyncClient.connect(client="cyclic-async")
    await a.null()
    a.me = a
asyncio.run(dropped())
gc.collect()                              # finalises each client's context and sockets
print("collected", flush=True)
"""


def test_a_client_dropped_in_a_reference_cycle_is_collected_without_hanging(srv):
    """pyzmq's Context.__del__ closes its sockets through weak references, which the garbage
    collector clears first: a dropped connection's context then waited for its open sockets
    forever (in the middle of whatever allocation ran the collector)."""
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", DROPPED_IN_A_CYCLE], capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.strip() == "collected", out.stderr[-2000:]


def test_a_closed_connection_s_fd_is_not_kept_by_its_session(srv):
    """The kernel learns of a lost peer a moment after the disconnect (a probe); meanwhile the
    session must not hold the closed fd's number, which the next connection may get: _expire
    spares a connection whose fd a session holds, so one that never says hello would stay."""
    c = lib.Client(client="leaving")
    c.null()
    sess = srv.call(lambda: next(s for s in srv.server.sessions.values() if s.client == "leaving"))
    assert sess.fd is not None
    c.close()
    wait_until(lambda: sess.fd is None, timeout=5, what="the session to drop the closed fd")


def test_a_peer_may_not_choose_its_routing_id(srv):
    """A chosen routing id is refused and cut off (one equal to the next generated id made
    libzmq abort; kernel/server.py), so no peer can wear another's session."""
    with lib.Client() as victim:
        victim.null()
        thief = Raw(srv.endpoint, ident=next(iter(srv.server.sessions)))    # a live session's id
        thief.send(abi.encode_request(2, Sys.NULL))
        assert not thief.s.poll(500)          # libzmq refuses a duplicate id: nothing arrives
        thief.close()
        chosen = Raw(srv.endpoint, ident=b"victim")
        chosen.send(abi.encode_request(3, Sys.HELLO, srv.token))
        assert not chosen.s.poll(500) or chosen.reply()[1] == errno.EPROTO
        assert len(srv.server.sessions) == 1 and victim.null() is None
        chosen.close()


def test_a_live_idle_client_keeps_its_session(srv):
    with lib.Client(client="idle") as c:
        time.sleep(srv.kernel.lease_s * 3)
        assert len(srv.server.sessions) == 1
        assert c.null() is None


def test_shutdown_syscall_stops_the_server(srv):
    with lib.Client() as c:
        c.shutdown()
    srv.thread.join(5)
    assert not srv.thread.is_alive()
