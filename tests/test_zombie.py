"""A detached process that exits stays a zombie, with its exit status and unread output, until its
owner reaps it (kernel/procops.py: init does not reap detached processes), through a real server:
the connection that spawned it is gone, so any connection of the same user may read and wait.
Zombies count toward the owner's max_procs limit, so they cannot fill the process table."""

from __future__ import annotations

import errno

import pytest

from llmos.kernel.limits import DEFAULT
from llmos.kernel.waitq import WaitQueues
from llmos.userland import lib
from kernelkit import kill_and_reap, make_engine
from test_server import ServerThread, wait_until

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def srv(model):
    waits = WaitQueues()
    engine = make_engine(model, 128, block_size=4, on_wake=waits.wake)
    with ServerThread(engine, model, waits, lease_s=0.2) as s:
        yield s


@pytest.fixture(autouse=True)
def clean(srv):
    yield
    wait_until(lambda: srv.call(kill_and_reap, srv), what="every process reaped")


def held_by_init(srv, pid) -> bool:
    """Init holds it (or already reaped it)."""
    return srv.call(lambda: (p := srv.kernel.engine.procs.get(pid)) is None or p.holder == 0)


def spawn_and_leave(srv, **kw) -> int:
    """Spawn as alice on a connection that then goes away; returns once init holds the process."""
    with lib.Client(user="alice", client="leaver") as k:
        pid = k.spawn(PROMPT, ignore_eos=True, **kw)
    wait_until(lambda: held_by_init(srv, pid), what="the lease to end")
    return pid


def test_a_detached_process_outlives_its_connection_as_a_zombie_until_reaped(srv):
    with lib.Client(user="alice", client="twin") as k:
        want = "".join(k.stream(k.spawn(PROMPT, max_tokens=40, ignore_eos=True)))
    pid = spawn_and_leave(srv, max_tokens=40, detached=True)
    wait_until(lambda: srv.call(lambda: not srv.kernel.engine.procs.get(pid).alive), what="its exit")
    with lib.Client(user="alice", client="owner") as k:
        assert k.stat(pid)["state"] == "ZOMBIE"
        assert "".join(k.stream(pid)) == want               # its unread output, all of it
        with lib.Client(user="bob", client="stranger") as b:
            with pytest.raises(PermissionError):
                b.wait(pid, timeout=1)                      # only its owner reaps it
        assert k.wait(pid, timeout=5)["reason"] == "length"
        with pytest.raises(ProcessLookupError):
            k.wait(pid, timeout=1)                          # reaped once
    assert srv.call(lambda: srv.kernel.engine.kv.stats()["used"]) == 0


def test_a_detached_zombie_is_kept_when_its_connection_goes(srv):
    """It exited while its spawner was still there; the spawner leaves without reaping it."""
    with lib.Client(user="alice", client="leaver") as k:
        pid = k.spawn(PROMPT, max_tokens=3, ignore_eos=True, detached=True)
        wait_until(lambda: k.stat(pid)["state"] == "ZOMBIE", what="its exit")
    wait_until(lambda: held_by_init(srv, pid), what="the lease to end")
    with lib.Client(user="alice", client="owner") as k:
        assert k.read(pid, timeout=5)["text"]
        assert k.wait(pid, timeout=5)["reason"] == "length"


def test_an_orphan_that_is_not_detached_is_killed_and_reaped_by_init(srv):
    pid = spawn_and_leave(srv, max_tokens=400)
    wait_until(lambda: srv.call(lambda: srv.kernel.engine.procs.get(pid)) is None, what="init to reap it")
    with lib.Client(user="alice") as k:
        with pytest.raises(ProcessLookupError):
            k.wait(pid, timeout=1)


def test_zombies_count_toward_max_procs(srv):
    with lib.Client(client="admin") as admin:               # the test's OS user is the admin
        admin.limits("default", {"max_procs": 2})     # everyone's (alice is no OS user)
        try:
            zombies = [spawn_and_leave(srv, max_tokens=2, detached=True) for _ in range(2)]
            wait_until(lambda: srv.call(lambda: all(not srv.kernel.engine.procs.get(p).alive for p in zombies)),
                       what="both to exit")
            with lib.Client(user="alice", client="owner") as k:
                with pytest.raises(OSError) as ei:
                    k.spawn(PROMPT, max_tokens=2)
                assert ei.value.errno == errno.EAGAIN and "max_procs=2" in ei.value.strerror
                k.wait(zombies[0], timeout=5)                # reaping one frees its place
                k.wait(k.spawn(PROMPT, max_tokens=2), timeout=10)
        finally:
            admin.limits("default", {"max_procs": DEFAULT["max_procs"]})
