"""kernel/limits.py through a real kernel on the tiny model: each limit reached is answered with
its errno and a message naming the limit and the usage, another user still gets service, admins
set limits at run time, and bad limits are clear errors that leave the kernel running."""

from __future__ import annotations

import errno
import signal
import time

import pytest

from llmos.kernel.limits import Limits, LimitsError, load
from llmos.kernel.waitq import WaitQueues
from llmos.userland import lib
from kernelkit import make_engine
from test_server import ServerThread, wait_until
from unixusers import ALICE, BOB, ensure_users

LONG = {"max_tokens": 300, "ignore_eos": True}


@pytest.fixture
def srv(model):
    ensure_users()
    waits = WaitQueues()
    engine = make_engine(model, 256, block_size=4, on_wake=waits.wake)
    with ServerThread(engine, model, waits, lease_s=5.0) as s:
        yield s
        eng = s.kernel.engine

        def kill_all():
            for p in eng.procs.all():
                if p.alive:
                    eng.signal(p.pid, signal.SIGKILL)
            s.server._work.set()

        s.call(kill_all)


def _set(scope, **values):
    with lib.Client() as root:                          # root is an admin
        return root.limits(scope, values)


def test_max_procs_then_another_user_still_served(srv):
    _set(f"user:{ALICE}", max_procs=2)
    with lib.Client(user=ALICE) as a:
        a.spawn("one", LONG)
        a.spawn("two", LONG)
        with pytest.raises(BlockingIOError) as e:          # EAGAIN
            a.spawn("three", LONG)
        assert e.value.errno == errno.EAGAIN and "max_procs=2" in e.value.strerror and "in use: 2" in e.value.strerror
        pid = a.ps()[0]["pid"]
        with pytest.raises(BlockingIOError):
            a.fork(pid)
    with lib.Client(user=BOB) as b:
        assert b.wait(b.spawn("hello", {"max_tokens": 3}))["reason"] == "length"


def test_max_kv_blocks_is_edquot(srv):
    _set(f"user:{ALICE}", max_kv_blocks=100)             # block_size 4: 400 tokens
    with lib.Client(user=ALICE) as a:
        a.spawn("first", {"max_tokens": 200, "ignore_eos": True})
        with pytest.raises(OSError) as e:
            a.spawn("second", {"max_tokens": 300, "ignore_eos": True})
        assert e.value.errno == errno.EDQUOT and "max_kv_blocks=100" in e.value.strerror


def test_max_context_trims_and_refuses(srv):
    _set(f"user:{ALICE}", max_context=24)
    with lib.Client(user=ALICE) as a:
        with pytest.raises(OSError) as e:
            a.spawn(list(range(3, 40)), LONG)
        assert e.value.errno == errno.E2BIG and "max_context=24" in e.value.strerror
        pid = a.spawn(list(range(3, 13)), LONG)            # 10 tokens: at most 14 more
        a.wait(pid)
    with lib.Client(user=BOB) as b:                        # bob is not bound
        assert b.stat(b.spawn(list(range(3, 40)), {"max_tokens": 1}))["prompt_tokens"] == 37


def test_tokens_per_min_throttles_and_then_refuses(srv):
    _set(f"user:{ALICE}", tokens_per_min=20)
    with lib.Client(user=ALICE) as a:
        pid = a.spawn("count", {"max_tokens": 60, "ignore_eos": True})
        wait_until(lambda: a.stat(pid)["tokens"] >= 20, timeout=20, what="20 tokens")
        time.sleep(0.5)
        held = a.stat(pid)["tokens"]
        assert held <= 21                                   # throttled at the limit (one step may finish)
        assert a.limits()["usage"][ALICE]["throttled"] is True
        with pytest.raises(BlockingIOError) as e:
            a.spawn("more", {"max_tokens": 1})
        assert "tokens_per_min=20" in e.value.strerror
    with lib.Client(user=BOB) as b:                         # bob runs while alice waits
        assert b.wait(b.spawn("hi", {"max_tokens": 5, "ignore_eos": True}))["reason"] == "length"


def test_nice_below_zero_needs_an_allowance(srv):
    with lib.Client(user=ALICE) as a:
        with pytest.raises(PermissionError):
            a.spawn("x", LONG, nice=-5)
    _set(f"user:{ALICE}", nice_min=-5)
    with lib.Client(user=ALICE) as a:
        pid = a.spawn("x", LONG, nice=-5)
        with pytest.raises(PermissionError):
            a.nice(pid, -6)


def test_only_admins_set_limits_and_bad_changes_are_clear(srv):
    with lib.Client(user=ALICE) as a:
        with pytest.raises(PermissionError):
            a.limits(f"user:{ALICE}", {"max_procs": 100})
        view = a.limits()
        assert set(view["usage"]) <= {ALICE}                 # a user sees only its own usage
    with lib.Client() as root:
        with pytest.raises(OSError) as e:
            root.limits("user:nobody-such-user", {"max_procs": 1})
        assert e.value.errno == errno.EINVAL and "no such user" in e.value.strerror
        with pytest.raises(OSError) as e:
            root.limits("default", {"max_bananas": 1})
        assert e.value.errno == errno.EINVAL and "unknown limit" in e.value.strerror
        with lib.Client(user=ALICE) as a:
            a.spawn("one", LONG)
            a.spawn("two", LONG)
        with pytest.raises(OSError) as e:
            root.limits(f"user:{ALICE}", {"max_procs": 1})
        assert e.value.errno == errno.EBUSY and "below the current usage (2)" in e.value.strerror
        assert root.limits(f"user:{ALICE}", {"max_procs": 5}) == {"max_procs": 5}
        assert root.limits(f"user:{ALICE}", {"max_procs": None}) == {}
    assert srv.thread.is_alive() and srv.server.crashed is None


def test_limits_file(tmp_path):
    ensure_users()
    f = tmp_path / "limits.toml"
    f.write_text(f'[default]\nmax_procs = 64\n[user.{ALICE}]\ntokens_per_min = 100\nnice_min = -3\n')
    lim = Limits(load(f))
    assert lim.rules["default"] == {"max_procs": 64} and lim.nice_floor(ALICE) == -3
    assert lim.scopes_of(ALICE) == [f"user:{ALICE}", "default"]
    f.write_text('[user.nobody-such-user]\nmax_procs = 1\n')
    with pytest.raises(LimitsError, match="nobody-such-user: no such user"):
        load(f)
    f.write_text('[default]\nmax_procs = "lots"\n')
    with pytest.raises(LimitsError, match="max_procs must be an int"):
        load(f)
    f.write_text('[defaults]\n')
    with pytest.raises(LimitsError, match=r"unknown section \[defaults\]"):
        load(f)
    f.write_text('not toml [')
    with pytest.raises(LimitsError, match="limits.toml"):
        load(f)


def test_a_latency_target_needs_privilege(srv):
    from llmos.kernel.abi import Sys
    with lib.Client(user=ALICE) as a:
        pid = a.spawn("x", LONG)
        with pytest.raises(PermissionError):
            a.latency(pid, 50)
        with pytest.raises(PermissionError):
            a.syscall(Sys.SPAWN, "y", LONG, {"latency_ms": 50})
    with lib.Client() as root:
        with pytest.raises(OSError) as e:
            root.latency(pid, 0)
        assert e.value.errno == errno.EINVAL
        root.latency(pid, 50)
        assert srv.kernel.engine.procs.get(pid).latency_ms == 50.0
        root.latency(pid, None)
        assert srv.kernel.engine.procs.get(pid).latency_ms is None


def test_token_history_stays_bounded_however_long_the_kernel_runs(monkeypatch):
    """Every generated token is noted; without a rate limit nothing else reads the history, so it
    must prune itself (it grew by one entry per token before)."""
    from llmos.kernel import limits as L
    now = [1000.0]
    monkeypatch.setattr(L.time, "monotonic", lambda: now[0])
    lim = L.Limits()
    for _ in range(100_000):                  # 100 s at 1,000 tokens/s
        now[0] += 0.001
        lim.note_tokens("alice", 1)
    assert len(lim._tokens["alice"]) <= L.WINDOW_S / L.BUCKET_S + 2
    assert abs(lim._recent("alice") - 60_000) <= 60       # the last minute, to one bucket
