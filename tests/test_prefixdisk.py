"""The persistent prefix-cache tier (kernel/prefixdisk.py, kernel/kvcache.py's disk hooks): a
prefix prefilled once is served from disk by a fresh KV pool (a restart) with identical output;
a damaged or forged file is rejected (logged, deleted) and the block computed, never a wrong
answer; the size limit evicts what an earlier boot wrote. Engines on the tiny model stand for
boots; the last test boots a real kernel twice with `--prefix-disk`."""

from __future__ import annotations

import logging
import os
import time

import pytest

from llmos.kernel.kvcache import block_digest, owner_namespace
from llmos.kernel.prefixdisk import PrefixDisk
from llmos.userland import lib
from kernelkit import greedy, make_engine, prompt, solo

BS, N = 4, 8
LONG = prompt(1, 120)


def boot(model, root, limit=64 << 20):
    e = make_engine(model, 128, block_size=BS)
    st = e.storage
    e.kv.disk = PrefixDisk(root, "tiny-fp32-bs4", tuple(st.swap_out([0])[0].shape), st.dtype, limit)
    return e


def run(e, ids):
    p = e.spawn(ids, greedy(N), owner="alice")
    e.run_until_idle()
    e.reap(p.pid)
    return p


def chain(ids) -> list[str]:
    """The file names of ids' full blocks, in order."""
    d, out = owner_namespace("alice"), []
    for i in range(len(ids) // BS):
        d = block_digest(d, tuple(ids[i * BS:(i + 1) * BS]))
        out.append(f"{d.hex()}.kv")
    return out


def test_a_prefix_paid_for_once_is_not_prefilled_after_a_restart(model, tmp_path):
    first = run(e := boot(model, tmp_path), LONG)
    assert first.stats.cached == 0 and e.kv.persist() >= len(LONG) // BS - 1
    again = run(e2 := boot(model, tmp_path), LONG)
    assert again.stats.cached == (len(LONG) - 1) // BS * BS                  # every full block from disk
    assert again.output_ids == first.output_ids == solo(model, LONG, N)
    assert e2.kv.stats()["prefix_disk"]["disk_loads"] == (len(LONG) - 1) // BS
    e2.kv.check_invariants()


def written(model, root):
    """A boot that prefilled LONG and wrote its blocks: the directory and LONG's file names."""
    run(e := boot(model, root), LONG)
    e.kv.persist()
    return root / "tiny-fp32-bs4", chain(LONG)


@pytest.mark.parametrize("harm, why", [("damaged", "checksum"), ("forged", "prefix differs")])
def test_a_damaged_or_forged_block_is_ignored_and_computed(model, tmp_path, caplog, harm, why):
    d, names = written(model, tmp_path)
    if harm == "damaged":                             # one bit of block 10's V
        raw = bytearray((d / names[10]).read_bytes())
        raw[-1] ^= 0x40
        (d / names[10]).write_bytes(bytes(raw))
    else:                                             # block 11's (intact) file under block 10's name
        (d / names[10]).write_bytes((d / names[11]).read_bytes())
    with caplog.at_level(logging.WARNING, logger="llmos.kernel"):
        p = run(boot(model, tmp_path), LONG)
    assert p.stats.cached == 10 * BS                  # the chain stops at the bad block
    assert p.output_ids == solo(model, LONG, N)       # computed, never a wrong answer
    assert any(names[10] in r.getMessage() and why in r.getMessage() for r in caplog.records)
    assert not (d / names[10]).exists()               # deleted


def test_the_size_limit_evicts_an_earlier_boots_blocks(model, tmp_path):
    probe, names = written(model, tmp_path / "probe")
    limit = sum((probe / n).stat().st_size for n in names[:12])     # LONG's first 12 blocks
    run(e := boot(model, tmp_path, limit), LONG)
    assert e.kv.persist() == 12 and e.kv.disk.used == limit         # full: the rest is not written
    other = prompt(2, 120)
    p = run(e := boot(model, tmp_path, limit), other)
    n = e.kv.persist()
    assert 8 <= n and e.kv.disk.used <= limit                       # the new boot's blocks replace them
    files = {f.name for f in (tmp_path / "tiny-fp32-bs4").glob("*.kv")}
    assert files == set(chain(other)[:n]) and e.kv.disk.counters["disk_evictions"] == 12
    assert p.output_ids == solo(model, other, N)


def test_a_restarted_kernel_serves_the_prefix_from_disk(tmp_path, tiny_model_path, monkeypatch):
    from test_checkpoint_daemon import boot as serve, llmos
    env = dict(os.environ, LLMOS_RUNTIME_DIR=str(tmp_path / "rt"), LLMOS_HOME=str(tmp_path / "home"))
    monkeypatch.setenv("LLMOS_RUNTIME_DIR", env["LLMOS_RUNTIME_DIR"])
    text = "A long system prompt that every chat starts with. " * 12
    outs = []
    for _ in range(2):
        kern = serve(env, str(tiny_model_path), extra=["--prefix-disk", "64M"])
        try:
            with lib.Client() as k:
                pid = k.spawn(text, max_tokens=12, ignore_eos=True)
                outs.append(("".join(k.stream(pid)), k.stat(pid)["stats"]["cached"]))
                k.wait(pid)
        finally:
            assert llmos("stop", env=env).returncode == 0
            kern.wait(60)
    assert outs[0][1] == 0 and outs[1][1] > 0 and outs[1][0] == outs[0][0]
    assert list((tmp_path / "home" / "prefix").glob("*/*.kv"))


def test_a8_and_a13_kernels_keep_their_prefix_blocks_apart(tmp_path, monkeypatch):
    """An a8 kernel's prompt KV comes from 8-bit activations: a kernel on the 13-bit grid must not
    read it from disk as its own (nor the other way round), nor one of another a8 arithmetic (its
    name, quant.A8_ARITHMETIC, is in the key)."""
    from pathlib import Path
    from gguf import GGMLQuantizationType as QT
    import tinymodel
    from llmos.drivers import quant
    from llmos.drivers.llama import LlamaModel
    from llmos.kernel.main import _prefix_disk
    if not quant.act8_supported():
        pytest.skip("no vpdpbusd on this CPU: a8 runs as a13")
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))
    path = tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=QT.Q8_0)
    dirs = []
    for dtype in ("a13", "a8"):
        e = make_engine(LlamaModel.load(path, dtype=dtype), 64, block_size=BS)
        _prefix_disk(e, Path(path), 1 << 20)
        dirs.append(e.kv.disk.dir)
    assert dirs[0] != dirs[1] and dirs[0].parent == dirs[1].parent == tmp_path / "home" / "prefix"
    assert f"-{quant.A8_ARITHMETIC}-" in dirs[1].name and quant.A8_ARITHMETIC not in dirs[0].name
