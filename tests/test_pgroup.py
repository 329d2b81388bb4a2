"""Process groups through the real server on the tiny model: a spawn starts its own group or
joins one of its owner's, fork inherits it, ps shows it, kill(-PGID) signals every member
(STOP/CONT pause and resume a whole group), and `llmos kill -SIG -PGID` / `ps` show and do it."""

from __future__ import annotations

import errno
import io as io_mod

import pytest

from llmos.kernel import abi
from llmos.kernel.abi import Sys
from llmos.kernel.waitq import WaitQueues
from llmos.userland import lib, program
from llmos.userland.bin import kill as kill_cmd, ps as ps_cmd
from kernelkit import make_engine
from test_server import ServerThread, wait_until

LONG = {"max_tokens": 400, "ignore_eos": True}


@pytest.fixture(scope="module")
def srv(model):
    waits = WaitQueues()
    engine = make_engine(model, 256, block_size=4, on_wake=waits.wake)
    with ServerThread(engine, model, waits, lease_s=0.3) as s:
        yield s


@pytest.fixture
def alice(srv):
    with lib.Client(user="alice", client="test") as c:
        yield c
        for p in c.ps():
            if p["owner"] == "alice" and p["state"] != "ZOMBIE":
                c.kill(p["pid"], abi.SIGKILL)
        for p in c.ps():
            if p["owner"] == "alice":
                c.wait(p["pid"])


def err_of(fn, *args) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args)
    assert ei.value.strerror
    return ei.value.errno


def spawn(k, pgid=None, **params):
    opts = {"pgid": pgid} if pgid is not None else None
    return k.syscall(Sys.SPAWN, "Hello world", {**LONG, **params}, opts)


def states(k, pids) -> list[str]:
    by_pid = {p["pid"]: p for p in k.ps()}
    return [by_pid[p]["state"] for p in pids]


def test_a_group_forms_by_spawn_and_fork_and_ps_shows_it(alice):
    leader = spawn(alice)
    member = spawn(alice, pgid=leader)
    child = alice.fork(member)
    other = spawn(alice)
    groups = {p["pid"]: p["pgid"] for p in alice.ps()}
    assert groups[leader] == groups[member] == groups[child] == leader
    assert groups[other] == other
    out = io_mod.StringIO()
    assert ps_cmd.main(["ps"], program.IO("ps", out=out, client=lambda: alice)) == 0
    header, *rows = out.getvalue().splitlines()
    assert header.split()[:3] == ["PID", "PPID", "PGID"]
    assert {r.split()[0]: r.split()[2] for r in rows}[str(child)] == str(leader)


def test_stop_and_cont_of_a_group_pause_and_resume_all_of_it(alice):
    leader = spawn(alice)
    group = [leader, spawn(alice, pgid=leader), spawn(alice, pgid=leader)]
    group.append(alice.fork(group[1]))
    bystander = spawn(alice)
    alice.kill(-leader, abi.SIGSTOP)
    assert states(alice, group) == ["STOPPED"] * 4
    made = {p["pid"]: p["tokens"] for p in alice.ps()}
    wait_until(lambda: {p["pid"]: p["tokens"] for p in alice.ps()}[bystander] > made[bystander] + 3,
               what="the bystander runs on")
    assert all({p["pid"]: p["tokens"] for p in alice.ps()}[q] == made[q] for q in group)
    assert states(alice, [bystander]) != ["STOPPED"]
    alice.kill(-leader, abi.SIGCONT)
    assert "STOPPED" not in states(alice, group)
    wait_until(lambda: all({p["pid"]: p["tokens"] for p in alice.ps()}[q] > made[q] for q in group),
               what="every member generates again")
    alice.kill(-leader, abi.SIGTERM)
    assert [alice.wait(q)["reason"] for q in group] == ["signal"] * 4
    assert states(alice, [bystander]) != ["ZOMBIE"]


def test_the_kill_command_takes_a_negative_pgid(alice):
    leader = spawn(alice)
    member = spawn(alice, pgid=leader)
    err = io_mod.StringIO()
    io = program.IO("kill", out=io_mod.StringIO(), err=err, client=lambda: alice)
    assert kill_cmd.main(["kill", "-STOP", f"-{leader}"], io) == 0, err.getvalue()
    assert states(alice, [leader, member]) == ["STOPPED", "STOPPED"]
    io = program.IO("kill", out=io_mod.StringIO(), err=err, client=lambda: alice)
    assert kill_cmd.main(["kill", "-s", "KILL", "--", f"-{leader}"], io) == 0, err.getvalue()
    assert [alice.wait(q)["reason"] for q in (leader, member)] == ["signal", "signal"]


def test_group_errors(srv, alice):
    assert err_of(alice.kill, -10**9) == errno.ESRCH                  # no such group
    assert err_of(spawn, alice, 10**9) == errno.ESRCH                  # joining a group that is not there
    leader = spawn(alice)
    with lib.Client(user="bob", client="test") as bob:
        assert err_of(bob.kill, -leader) == errno.EPERM               # alice's group
        assert err_of(spawn, bob, leader) == errno.EPERM              # may not join it
    assert states(alice, [leader]) == ["RUNNING"] or states(alice, [leader]) == ["READY"]
