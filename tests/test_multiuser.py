"""Several Unix users on one kernel: identity from the OS, roles, privacy, CURVE on TCP, and a
transport no unauthenticated peer can hurt (kernel/cred.py, kernel/server.py).

Clients run as real users (tests/unixusers.py: useradd, then a forked child drops to the uid).
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import time

import pytest
import zmq
import zmq.auth

from llmos.kernel import abi
from llmos.kernel.abi import Sys
from llmos.kernel.waitq import WaitQueues
from llmos.userland import lib
from kernelkit import make_engine
from test_server import Raw, ServerThread, wait_until
from unixusers import ADMIN, ALICE, BOB, ensure_users, run_as

LONG = {"max_tokens": 400, "ignore_eos": True}


@pytest.fixture(scope="module")
def srv(model):
    ensure_users()
    waits = WaitQueues()
    engine = make_engine(model, 256, block_size=4, on_wake=waits.wake)
    with ServerThread(engine, model, waits, lease_s=5.0) as s:
        os.chmod(s.rt, 0o711)                         # as `llmos serve --group` does for its group
        os.chmod(abi.socket_path(s.rt), 0o666)
        yield s


@pytest.fixture(autouse=True)
def clean(srv):
    yield
    eng = srv.kernel.engine

    def kill_all():
        for p in eng.procs.all():
            if p.alive:
                eng.signal(p.pid, signal.SIGKILL)
        srv.server._work.set()

    srv.call(kill_all)

    def reaped():
        for p in eng.procs.all():
            if not p.alive and p.pid not in srv.kernel.waits:
                eng.reap(p.pid)
        return len(eng.procs) == 0

    wait_until(lambda: srv.call(reaped), what="every process reaped")
    assert srv.server.crashed is None and srv.thread.is_alive()


def _spawn_long(prompt="secret plans of alice"):
    with lib.Client() as k:
        pid = k.spawn(prompt, LONG, detached=True)
        return pid, k.info["user"], k.info["admin"]


def _errno_of(fn, *args):
    """0 if fn(*args) succeeds, else the errno of the OSError it raised."""
    try:
        fn(*args)
        return 0
    except OSError as e:
        return e.errno


def _try_everything(pid):
    """As some user: each syscall on another process -> errno (0 = allowed)."""
    with lib.Client() as k:
        out = {
            "stat": _errno_of(k.stat, pid),
            "read": _errno_of(k.read, pid, 0),
            "write": _errno_of(k.write, pid, "more"),
            "fork": _errno_of(lambda: k.kill(k.fork(pid), signal.SIGKILL)),
            "nice+": _errno_of(k.nice, pid, 5),
            "nice-": _errno_of(k.nice, pid, -5),
            "stop": _errno_of(k.kill, pid, signal.SIGSTOP),
            "cont": _errno_of(k.kill, pid, signal.SIGCONT),
            "wait": _errno_of(k.wait, pid, 0),
        }
        out["command"] = next(p["command"] for p in k.ps() if p["pid"] == pid)
        out["user"] = k.info["user"]
        return out


def test_identity_is_the_os_user_and_a_forged_name_gets_nothing(srv):
    pid, user, admin = run_as(ALICE, _spawn_long)
    assert (user, admin) == (ALICE, False)
    assert srv.kernel.engine.procs.get(pid).owner == ALICE

    def forge():
        return lib.Client(user=BOB)

    with pytest.raises(PermissionError, match="only an admin may act as"):
        run_as(ALICE, forge)
    with lib.Client(user=BOB) as k:                 # root (an admin) may act as bob, like sudo -u
        assert k.info["user"] == BOB and k.info["admin"] is False
        assert _errno_of(k.kill, pid, signal.SIGSTOP) == errno.EPERM


def test_every_syscall_on_own_anothers_and_as_admin(srv):
    pid, _, _ = run_as(ALICE, _spawn_long)
    calls = ("stat", "read", "write", "fork", "nice+", "nice-", "stop", "cont", "wait")
    bob = run_as(BOB, _try_everything, pid)
    assert bob["user"] == BOB
    assert {c: bob[c] for c in calls} == {**dict.fromkeys(calls, errno.EPERM), "stat": 0}
    assert bob["command"] == "-"                      # another user's prompt is not shown
    own = run_as(ALICE, _try_everything, pid)
    assert own["command"].startswith("secret plans")
    assert own["nice-"] == errno.EPERM                # a nice below 0 needs privilege, own or not
    assert own["write"] == errno.EINVAL               # allowed, but not a session: the engine says so
    assert all(own[c] in (0, errno.ETIMEDOUT) for c in calls if c not in ("nice-", "write")), own
    adm = run_as(ADMIN, _try_everything, pid)
    assert adm["command"].startswith("secret plans")
    assert all(adm[c] in (0, errno.ETIMEDOUT) for c in calls if c != "write"), adm

    def shutdown():
        with lib.Client() as k:
            return _errno_of(k.shutdown)

    assert run_as(BOB, shutdown) == errno.EPERM
    assert run_as(ALICE, shutdown) == errno.EPERM
    assert srv.thread.is_alive()


def test_a_chosen_next_routing_id_cannot_abort_the_kernel(srv):
    """The probe's crash: a peer takes the id libzmq would generate next (its counter starts at
    rand() = 0x6b8b4567 when unseeded), then a real client arrives. Seeded with a secret, the
    guess misses, and a chosen id is refused anyway."""
    guesses = [Raw(srv.endpoint, ident=b"\x00" + struct.pack(">I", 0x6B8B4567 + i)) for i in range(8)]
    for g in guesses:
        g.send(abi.encode_request(1, Sys.NULL))
    for _ in range(3):
        with lib.Client() as k:
            assert k.null() is None
    for g in guesses:
        g.close()
    assert srv.thread.is_alive() and srv.server.crashed is None


def test_a_session_cannot_be_taken_over_by_another_process(srv):
    victim = Raw(srv.endpoint)
    assert victim.call(1, Sys.HELLO, srv.token)[1] == 0
    ident = next(s.ident for s in srv.server.sessions.values())
    victim.close()

    def thief(ident):
        t = Raw(srv.endpoint, ident=ident)            # the vanished client's id, at once
        t.send(abi.encode_request(2, Sys.PS))
        got, deadline = None, time.monotonic() + 1.0
        while got is None and t.s.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            r = t.reply(timeout=1.0)
            if r[0] == 2:         # its answer (a nil-id liveness notice meant for the session carries nothing)
                got = r
        t.close()
        return got

    got = run_as(BOB, thief, ident)
    assert got is None or got[1] != 0                  # cut off, or told to say hello: never served


def test_frames_before_hello_are_small_and_cost_a_connection(srv):
    before = set(srv.server.sessions)                 # an earlier test's session may not be gone yet
    big = Raw(srv.endpoint)
    big.send(b"\x93" + b"x" * (300 << 10))
    time.sleep(0.3)
    assert set(srv.server.sessions) <= before
    big.close()
    with lib.Client() as k:
        assert k.null() is None


def test_connections_that_never_say_hello_are_cut(srv):
    quiet = [Raw(srv.endpoint) for _ in range(3)]
    try:
        wait_until(lambda: len(srv.server.pre_hello) >= 3, timeout=5, what="connections accepted")
        entries = dict(srv.server.pre_hello)
        for fd, entry in entries.items():             # as if PRE_HELLO_S had passed
            srv.call(srv.server._expire, fd, entry)
        # each was cut (ZeroMQ then reconnects the DEALER: a new entry, maybe on the same fd number)
        assert not any(srv.server.pre_hello.get(fd) is entry for fd, entry in entries.items())
    finally:
        for q in quiet:
            q.close()


def test_curve_on_tcp_good_wrong_and_no_key(model, tmp_path, monkeypatch):
    server_keys = zmq.curve_keypair()
    good = zmq.curve_keypair()
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path))
    monkeypatch.setenv("LLMOS_RUNTIME_DIR", "/nonexistent")     # ServerThread restores this one
    waits = WaitQueues()
    engine = make_engine(model, 64, block_size=4, on_wake=waits.wake)
    with ServerThread(engine, model, waits, extra=["tcp://127.0.0.1:*"], curve=server_keys,
                      curve_keys={good[0]: "carol"}) as s:
        tcp = s.server.endpoints[1]
        os.environ["LLMOS_RUNTIME_DIR"] = "/nonexistent"
        monkeypatch.setenv("LLMOS_KERNEL", tcp)
        monkeypatch.setenv("LLMOS_SERVER_KEY", server_keys[0].decode())
        (tmp_path / "curve").mkdir()
        with pytest.raises(OSError):                  # no key of ours: a fresh one, not authorized
            lib.Client(token="")
        path = tmp_path / "curve" / "client.key_secret"
        zmq.auth.create_certificates(str(tmp_path / "curve"), "client")
        with pytest.raises(OSError):                  # a key the kernel does not know
            lib.Client(token="")
        text = path.read_text().replace(zmq.auth.load_certificate(str(path))[0].decode(), good[0].decode())
        text = text.replace(zmq.auth.load_certificate(str(path))[1].decode(), good[1].decode())
        path.write_text(text)
        with lib.Client(token="") as k:               # the authorized key
            assert k.info["user"] == "carol" and k.null() is None
        monkeypatch.delenv("LLMOS_SERVER_KEY")
        with pytest.raises(OSError):                  # no CURVE at all: refused in the handshake
            lib.Client(token="")
        assert s.server.auth.denied >= 1


FIRST_ID = r'''
import sys, tempfile, zmq
from llmos.kernel.server import Server
from llmos.kernel.syscalls import Kernel
from llmos.kernel.waitq import WaitQueues
ep = "ipc://" + tempfile.mkdtemp() + "/k.sock"
s = Server(Kernel(engine=None, model=None, token="t", waits=WaitQueues()), [ep])
s.bind()
d = s.ctx.socket(zmq.DEALER)
d.connect(ep)
d.send(b"x")
print(s.sock.recv().hex(), flush=True)
import os; os._exit(0)
'''


def test_routing_ids_start_at_a_secret_each_boot():
    """Unseeded, libzmq's first generated id is 00 6b8b4567 in every fresh process (rand())."""
    import subprocess
    import sys
    ids = {subprocess.run([sys.executable, "-c", FIRST_ID], capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip() for _ in range(2)}
    assert len(ids) == 2 and "006b8b4567" not in ids, ids


def _run_and_cached(prompt):
    """Run prompt to the end; how many of its tokens came from the prefix cache."""
    with lib.Client() as k:
        pid = k.spawn(prompt, {"max_tokens": 2, "ignore_eos": True})
        cached = None
        while cached is None or k.stat(pid)["state"] != "ZOMBIE":
            cached = k.stat(pid)["stats"]["cached"]
            time.sleep(0.02)
        cached = k.stat(pid)["stats"]["cached"]
        k.wait(pid)
        return cached


def test_the_prefix_cache_is_not_an_oracle_between_users(srv):
    secret = "the launch code is " + " ".join(f"w{i}" for i in range(40))
    assert run_as(ALICE, _run_and_cached, secret) == 0
    assert run_as(ALICE, _run_and_cached, secret) > 0          # alice's own repeat hits her cache
    assert run_as(BOB, _run_and_cached, secret) == 0            # bob's right guess learns nothing


def test_a_system_wide_socket_and_a_bad_key_file_at_boot(tmp_path, caplog):
    """--group opens the socket to a Unix group; a CURVE key file others may write keeps TCP
    closed with one line, and the local socket serves anyway."""
    import grp
    import stat as st
    from types import SimpleNamespace
    from llmos.kernel import main
    from unixusers import ADMIN_GROUP
    ensure_users()
    sock_dir = tmp_path / "rt"
    sock_dir.mkdir(mode=0o700)
    sock = sock_dir / "kernel.sock"
    sock.touch(mode=0o600)
    main._share_with_group(sock, ADMIN_GROUP)
    gid = grp.getgrnam(ADMIN_GROUP).gr_gid
    assert sock.stat().st_gid == gid and st.S_IMODE(sock.stat().st_mode) == 0o660
    assert sock_dir.stat().st_gid == gid and st.S_IMODE(sock_dir.stat().st_mode) == 0o750
    curve = tmp_path / "curve"
    zmq.auth.create_certificates(str(curve.mkdir() or curve), "kernel")
    os.chmod(curve / "kernel.key_secret", 0o666)
    args = SimpleNamespace(curve_dir=curve)
    assert main._curve(args, ["ipc:///x", "tcp://127.0.0.1:*"]) is None
    assert "TCP not opened" in caplog.text and "writable by others" in caplog.text
    os.chmod(curve / "kernel.key_secret", 0o600)
    good = main._curve(args, ["ipc:///x", "tcp://127.0.0.1:*"])
    assert good["curve"][0] and good["curve_keys"] == {}
    assert main._curve(args, ["ipc:///x"]) is None            # no TCP asked: no CURVE
