"""Checkpoint and restore (kernel/checkpoint.py, kernel/hibernate.py) on the tiny model.

A restored process continues exactly: the same tokens as the uninterrupted process, greedy and
seeded sampling, cut mid-prefill or mid-decode, into another block size, a sleeping session's
next turn; its KV goes through the allocator (swapped in) and joins the prefix cache. Through the
syscalls: every refusal has its errno (ENOEXEC, EIO, EPERM, ENOENT, EINVAL) and the kernel runs on
with no block leaked.
"""

from __future__ import annotations

import errno
import shutil
import signal
from pathlib import Path

import pytest

from llmos.drivers.sampler import SamplingParams
from llmos.kernel import checkpoint as ck
from llmos.kernel.hibernate import Checkpoints
from llmos.kernel.proc import ProcState
from llmos.kernel.waitq import WaitQueues
from llmos.userland import lib
from kernelkit import greedy, kill_and_reap, make_engine, prompt
from test_server import ServerThread, wait_until

SAMPLED = SamplingParams(max_tokens=40, temperature=0.9, top_k=50, seed=7, ignore_eos=True)


def cycle(engine, p, model_path, into=None):
    """Checkpoint p through the file format, kill and reap it, restore into `into` (or the same
    engine): the new process."""
    proc, k, v = ck.snapshot(engine, p)
    data = ck.encode(proc, k, v, ck.fingerprint(model_path), ck.layout_of(engine.storage))
    engine.signal(p.pid, signal.SIGKILL)
    engine.reap(p.pid)
    into = into or engine
    header, k2, v2 = ck.decode(data, ck.fingerprint(model_path), ck.layout_of(into.storage))
    return ck.install(into, header["process"], k2, v2, holder=None)


def uninterrupted(model, params, n_prompt=30, **cfg):
    e = make_engine(model, 64, block_size=4, **cfg)
    p = e.spawn(prompt(1, n_prompt), params)
    e.run_until_idle()
    return p.output_ids


@pytest.mark.parametrize("params", [greedy(40), SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("cut", [1, 3, 12])          # mid-prefill (chunks of 8), first token, decoding
def test_restore_continues_exactly(model, tiny_model_path, params, cut):
    want = uninterrupted(model, params, max_step_tokens=8)
    e = make_engine(model, 64, block_size=4, max_step_tokens=8)
    p = e.spawn(prompt(1, 30), params)
    for _ in range(cut):
        e.step()
    assert p.computed > 0
    q = cycle(e, p, tiny_model_path)
    assert q.pid != p.pid and e.kv.is_swapped(q.pid)          # its KV waits in the swap pool
    e.run_until_idle()
    assert q.output_ids == want
    assert q.exit.reason == "length"
    assert e.kv.stats()["used"] == 0 and e.kv.swap_used == 0


def test_restore_into_another_block_size(model, tiny_model_path):
    want = uninterrupted(model, greedy(30))
    e = make_engine(model, 64, block_size=4)
    p = e.spawn(prompt(1, 30), greedy(30))
    for _ in range(6):
        e.step()
    other = make_engine(model, 32, block_size=16)
    q = cycle(e, p, tiny_model_path, into=other)
    other.run_until_idle()
    assert q.output_ids == want


def test_restored_kv_joins_the_prefix_cache(model, tiny_model_path):
    e = make_engine(model, 64, block_size=4)
    p = e.spawn(prompt(2, 24), greedy(4))
    e.step()
    q = cycle(e, p, tiny_model_path)
    e.run_until_idle()
    hits = e.kv.counters["prefix_hit"]
    r = e.spawn(q.tokens[:20], greedy(2))                      # shares the restored blocks' prefix
    e.run_until_idle()
    assert e.kv.counters["prefix_hit"] - hits >= 16 and r.stats.cached >= 16


def test_a_sleeping_session_restores_with_its_unread_output_and_next_turn(model, tiny_model_path):
    def first_turn(e):
        p = e.spawn(prompt(3, 20), greedy(6), session=True)
        e.run_until_idle()
        assert p.state is ProcState.SLEEPING
        return p

    e0 = make_engine(model, 64, block_size=4)
    a = first_turn(e0)
    said = a.channel.read()
    e0.write(a.pid, [5, 6, 7])
    e0.run_until_idle()
    want = a.output_ids

    e = make_engine(model, 64, block_size=4)
    p = first_turn(e)
    q = cycle(e, p, tiny_model_path)
    assert q.state is ProcState.SLEEPING and q.session
    assert q.channel.read() == said                           # unread output travels with it
    e.write(q.pid, [5, 6, 7])
    e.run_until_idle()
    assert q.output_ids == want


def test_a_stopped_process_comes_back_running(model, tiny_model_path):
    want = uninterrupted(model, greedy(20))
    e = make_engine(model, 64, block_size=4)
    p = e.spawn(prompt(1, 30), greedy(20))
    for _ in range(5):
        e.step()
    e.signal(p.pid, signal.SIGSTOP)
    q = cycle(e, p, tiny_model_path)
    assert q.state is ProcState.NEW
    e.run_until_idle()
    assert q.output_ids == want


def test_hundred_cycles_keep_blocks_and_output_exact(model, tiny_model_path):
    params = SamplingParams(max_tokens=110, temperature=0.9, seed=11, ignore_eos=True)
    want = uninterrupted(model, params, max_step_tokens=8)
    e = make_engine(model, 64, block_size=4, max_step_tokens=8)
    p = e.spawn(prompt(1, 30), params)
    for _ in range(100):
        e.step()
        p = cycle(e, p, tiny_model_path)
        e.kv.check_invariants()
        assert e.kv.stats()["used"] == 0 and e.kv.swap_used == -(-p.computed // 4)  # only its KV, swapped
    e.run_until_idle()
    assert p.output_ids == want
    assert e.kv.stats()["used"] == 0 and e.kv.swap_used == 0
    assert e.kv.stats()["free"] + e.kv.stats()["cached"] == 64


# ---- the file: every refusal ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_model_path(tmp_path_factory):
    import tinymodel
    return tinymodel.build_tiny_model(tmp_path_factory.mktemp("other") / "other.gguf", seed=1)


def _file(model, model_path, **kw):
    e = make_engine(model, 64, block_size=4)
    p = e.spawn(prompt(1, 12), greedy(8))
    e.step()
    proc, k, v = ck.snapshot(e, p)
    proc.update(kw)
    return ck.encode(proc, k, v, ck.fingerprint(model_path), ck.layout_of(e.storage)), e


def test_damaged_and_foreign_files_are_refused(model, tiny_model_path, other_model_path):
    data, e = _file(model, tiny_model_path)
    fp, layout = ck.fingerprint(tiny_model_path), ck.layout_of(e.storage)
    assert ck.fingerprint(other_model_path) != fp

    def refused(blob, model_fp=fp):
        with pytest.raises(ck.KernelError) as ei:
            ck.decode(blob, model_fp, layout)
        return ei.value.errno

    assert ck.decode(data, fp, layout)[0]["process"]["tokens"] == e.procs.get(1).tokens
    assert refused(data[:len(data) // 2]) == errno.EIO                  # truncated
    for at in (20, len(data) // 2, len(data) - 40):                     # bit flips: header, KV, KV end
        flipped = bytearray(data)
        flipped[at] ^= 0x10
        assert refused(bytes(flipped)) == errno.EIO
    assert refused(b"GGUF" + data[4:]) == errno.ENOEXEC                  # not a checkpoint
    future = bytearray(data)
    future[8] = ck.FORMAT_VERSION + 1
    assert refused(bytes(future)) == errno.ENOEXEC
    other, _ = _file(model, other_model_path)                           # another model's fingerprint
    assert refused(other) == errno.ENOEXEC
    assert refused(data, ck.fingerprint(other_model_path)) == errno.ENOEXEC


# ---- through the syscalls --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def srv(model, tiny_model_path, tmp_path_factory):
    waits = WaitQueues()
    engine = make_engine(model, 128, block_size=4, on_wake=waits.wake)
    with ServerThread(engine, model, waits, lease_s=0.3) as s:
        s.kernel.checkpoints = Checkpoints(engine, tiny_model_path, tmp_path_factory.mktemp("ckpt"))
        yield s


@pytest.fixture(autouse=True)
def clean(request):
    yield
    if "srv" in request.fixturenames:
        srv = request.getfixturevalue("srv")
        wait_until(lambda: srv.call(kill_and_reap, srv), what="all processes reaped and blocks freed")
        srv.call(srv.kernel.engine.kv.check_invariants)
        assert srv.server.crashed is None and srv.thread.is_alive()


def err_of(fn, *args, **kw) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args, **kw)
    assert ei.value.strerror
    return ei.value.errno


def test_checkpoint_and_restore_syscalls(srv):
    with lib.Client(user="alice") as k:
        pid = k.spawn("Once upon a time", max_tokens=30, ignore_eos=True, seed=3, temperature=0.8)
        want = "".join(k.stream(pid))
        k.wait(pid)
        pid = k.spawn("Once upon a time", max_tokens=30, ignore_eos=True, seed=3, temperature=0.8)
        got = k.read(pid)["text"]
        info = k.checkpoint(pid, "story")
        assert Path(info["path"]).name == "story.ckpt" and "/alice/" in info["path"]
        assert info["pid"] == pid and info["bytes"] == Path(info["path"]).stat().st_size
        st = k.stat(pid)                    # it keeps running (or has ended by itself since, not killed)
        assert st["state"] != "ZOMBIE" or st["exit"]["reason"] == "length", st
        k.kill(pid, "KILL")
        k.wait(pid)
        new = k.restore("story")
        assert new != pid
        got += "".join(k.stream(new))                                   # unread output included
        assert got == want
        assert k.wait(new)["tokens"] == 30
        default = k.checkpoint(k.spawn("x", max_tokens=2))
        assert default["name"] == f"{default['pid']}-{srv.kernel.checkpoints.boot_id}"


def test_restore_refusals_have_errnos(srv, other_model_path):
    svc = srv.kernel.checkpoints
    with lib.Client(user="alice") as k, lib.Client(user="bob") as bob:
        pid = k.spawn("hello there", max_tokens=200, ignore_eos=True)
        info = k.checkpoint(pid)
        data = Path(info["path"]).read_bytes()
        adir = Path(info["path"]).parent
        (adir / "cut.ckpt").write_bytes(data[:len(data) // 2])
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 1
        (adir / "flip.ckpt").write_bytes(bytes(flipped))
        future = bytearray(data)
        future[8] = 99
        (adir / "future.ckpt").write_bytes(bytes(future))
        (adir / "junk.ckpt").write_bytes(b"not a checkpoint at all")
        e = make_engine(srv.kernel.model, 16, block_size=4)
        proc, kk, vv = ck.snapshot(e, e.spawn([5, 6, 7], greedy(2)))
        proc["owner"] = "alice"
        (adir / "other.ckpt").write_bytes(ck.encode(proc, kk, vv, ck.fingerprint(other_model_path), svc.layout))
        assert err_of(k.restore, "cut") == errno.EIO
        assert err_of(k.restore, "flip") == errno.EIO
        assert err_of(k.restore, "future") == errno.ENOEXEC
        assert err_of(k.restore, "junk") == errno.ENOEXEC
        assert err_of(k.restore, "other") == errno.ENOEXEC
        assert err_of(k.restore, "missing") == errno.ENOENT
        assert err_of(k.restore, "/etc/passwd") == errno.EPERM          # not an admin: names only
        assert err_of(k.restore, "../x") == errno.EINVAL
        assert err_of(k.checkpoint, pid, "/tmp/x.ckpt") == errno.EPERM
        assert err_of(bob.checkpoint, pid) == errno.EPERM                # not his process
        bdir = svc.owner_dir("bob")
        bdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(info["path"], bdir / "stolen.ckpt")
        assert err_of(bob.restore, "stolen") == errno.EPERM              # alice's checkpoint
        assert k.stat(pid)["state"] in ("RUNNING", "READY")              # the kernel runs on
        assert srv.call(lambda: srv.kernel.engine.kv.swap_used) == 0     # nothing half-restored
        assert not list(adir.glob(".*.tmp"))
