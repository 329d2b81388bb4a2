"""kernel/kvcache.py on a real (tiny) KVStorage: allocation, prefix cache, CoW, swap, guards."""

import pytest
import torch

from llmos.drivers.kvstore import KVStorage
from llmos.kernel import kvcache
from llmos.kernel.kvcache import KVCache

BS = 4


def make(num_blocks=8, swap_blocks=0, prefix=True):
    storage = KVStorage(n_layers=2, num_blocks=num_blocks, block_size=BS, n_kv_heads=1, head_dim=2,
                        dtype=torch.float32)
    return KVCache(storage, prefix_cache=prefix, swap_blocks=swap_blocks)


def fill(kv, pid, tokens, computed=None):
    """Allocate and 'compute' tokens for pid: write recognisable values into its slots."""
    computed = len(tokens) if computed is None else computed
    start = kv.tables[pid].tokens if pid in kv.tables else 0
    kv.append(pid, start, computed - start)
    t = kv.tables[pid]
    for pos in range(start, computed):
        b, off = t.blocks[pos // BS], pos % BS
        kv.storage.k[:, b, off] = float(tokens[pos])
        kv.storage.v[:, b, off] = -float(tokens[pos])
    kv.commit(pid, tokens, computed)


def slots(kv, pid, n):
    t = kv.tables[pid]
    return [float(kv.storage.k[0, t.blocks[p // BS], p % BS, 0, 0]) for p in range(n)]


def test_append_and_free_return_every_block():
    kv = make()
    fill(kv, 1, list(range(10)))                  # 3 blocks (4 + 4 + 2)
    assert kv.holds(1) == 3 and kv.available() == 5
    kv.check_invariants()
    kv.free(1)
    kv.check_invariants()
    s = kv.stats()
    assert s["used"] == 0 and s["free"] + s["cached"] == 8 and s["cached"] == 2   # two full blocks kept


def test_prefix_hit_shares_full_blocks_and_counts():
    kv = make()
    prompt = list(range(100, 113))                # 13 tokens: 3 full blocks + 1
    fill(kv, 1, prompt)
    hit = kv.match_prefix(2, prompt)              # while 1 is alive: blocks shared (refcount 2)
    assert hit == 12 and kv.tables[2].blocks == kv.tables[1].blocks[:3]
    assert all(kv.ref[b] == 2 for b in kv.tables[2].blocks)
    kv.check_invariants()
    kv.free(1)
    kv.free(2)
    hit = kv.match_prefix(3, prompt[:8] + [7, 7, 7, 7, 7])     # diverges in block 2
    assert hit == 8
    s = kv.stats()
    assert s["prefix_hit"] == 20 and s["prefix_queried"] == 24
    assert s["prefix_hit_rate"] == pytest.approx(20 / 24)
    kv.check_invariants()


def test_prefix_hit_always_leaves_a_token_to_compute():
    kv = make()
    prompt = list(range(8))
    fill(kv, 1, prompt)
    assert kv.match_prefix(2, prompt) == 4        # not 8: the last token must run for logits


def test_digest_collision_is_caught_by_token_comparison(monkeypatch):
    """Every block digests to the same value, so the lookup finds the registered block for other
    tokens: only the comparison of the tokens themselves keeps it from being shared."""
    monkeypatch.setattr(kvcache, "block_digest", lambda parent, tokens: b"collide")
    kv = make()
    fill(kv, 1, [1, 2, 3, 4, 5])
    kv.free(1)
    assert kv.stats()["cached"] == 1                       # registered under the colliding digest
    assert kv.match_prefix(2, [9, 9, 9, 9, 9]) == 0
    assert kv.match_prefix(3, [1, 2, 3, 4, 9]) == 4        # the same tokens still hit
    kv.check_invariants()


def test_prefix_cache_off_never_registers():
    kv = make(prefix=False)
    fill(kv, 1, list(range(9)))
    kv.free(1)
    assert kv.match_prefix(2, list(range(9))) == 0 and kv.stats()["cached"] == 0


def test_cached_blocks_are_evicted_lru_only_when_free_runs_out():
    kv = make(num_blocks=4)
    fill(kv, 1, [1] * 4 + [2] * 4)               # two full blocks, registered
    kv.free(1)                                    # cached, the tail block first (evicted first)
    fill(kv, 2, [3] * 5)                          # 2 blocks, both from the free list
    assert kv.stats()["evictions"] == 0 and kv.stats()["cached"] == 2
    kv.free(2)                                    # its full block is cached, most recently
    fill(kv, 3, [4] * 4)                          # the free block: still no eviction
    assert kv.stats()["evictions"] == 0
    fill(kv, 4, [5] * 4)                          # evicts the least recent: the [2]*4 tail
    assert kv.stats()["evictions"] == 1
    assert kv.match_prefix(5, [1] * 4 + [2] * 4 + [0]) == 4   # head block still cached
    assert kv.match_prefix(6, [3] * 4 + [0]) == 4
    kv.check_invariants()


def test_fork_is_copy_on_write():
    kv = make()
    tokens = [5, 6, 7, 8, 9, 10]                  # block 0 full, block 1 holds 2 tokens
    fill(kv, 1, tokens)
    assert kv.fork(1, 2)
    assert kv.tables[2].blocks == kv.tables[1].blocks and kv.ref[kv.tables[1].blocks[1]] == 2
    parent_blocks = list(kv.tables[1].blocks)
    fill(kv, 2, tokens + [99])                    # child writes into the shared partial block
    assert kv.tables[2].blocks[0] == parent_blocks[0]         # the full block stays shared
    assert kv.tables[2].blocks[1] != parent_blocks[1]         # the partial one was copied
    assert kv.stats()["cow_copies"] == 1
    assert slots(kv, 2, 7) == [5, 6, 7, 8, 9, 10, 99]         # copy kept the earlier tokens
    fill(kv, 1, tokens + [42])                    # parent now alone on its block: no copy
    assert kv.tables[1].blocks == parent_blocks and kv.stats()["cow_copies"] == 1
    assert slots(kv, 1, 7) == [5, 6, 7, 8, 9, 10, 42]
    kv.check_invariants()


def test_registered_block_is_never_written():
    kv = make()
    fill(kv, 1, [1, 2, 3, 4])                     # full, registered
    b = kv.tables[1].blocks[0]
    kv.tables[1].tokens = 2                       # pretend slots 2.. are stale and rewritten
    kv.append(1, 2, 2)
    assert kv.tables[1].blocks[0] != b and kv.stats()["cow_copies"] == 1
    kv.check_invariants()


def test_swap_out_and_in_is_bit_exact():
    kv = make(num_blocks=6, swap_blocks=4)
    fill(kv, 1, list(range(10)))
    t = kv.tables[1]
    torch.manual_seed(0)
    for b in t.blocks:                            # random bits, not just token values
        kv.storage.k[:, b] = torch.randn_like(kv.storage.k[:, b])
        kv.storage.v[:, b] = torch.randn_like(kv.storage.v[:, b])
    before_k = kv.storage.k[:, t.blocks].clone()
    before_v = kv.storage.v[:, t.blocks].clone()
    assert kv.can_swap_out(1)
    assert kv.swap_out(1) == 3 and kv.is_swapped(1) and kv.stats()["swapped"] == 3
    kv.check_invariants()
    fill(kv, 2, [50] * 20)                        # reuse every block, overwriting them
    kv.free(2)
    for pid in (3,):
        kv.append(pid, 0, 24)                     # take all 6 blocks, then give them back
        kv.free(pid)
    assert kv.can_swap_in(1)
    kv.swap_in(1)
    assert torch.equal(kv.storage.k[:, t.blocks], before_k)
    assert torch.equal(kv.storage.v[:, t.blocks], before_v)
    assert kv.stats()["swapped"] == 0
    kv.check_invariants()


def test_swap_keeps_shared_blocks_resident():
    kv = make(num_blocks=8, swap_blocks=8)
    fill(kv, 1, list(range(6)))
    kv.fork(1, 2)
    fill(kv, 2, list(range(6)) + [1, 2, 3, 4, 5])     # CoW block 1, then a new block 2
    shared = kv.tables[2].blocks[0]
    assert kv.swap_cost(2) == 2
    kv.swap_out(2)
    assert kv.tables[2].blocks == [shared] and kv.ref[shared] == 2
    kv.check_invariants()
    kv.swap_in(2)
    assert kv.tables[2].blocks[0] == shared and slots(kv, 2, 11) == list(range(6)) + [1, 2, 3, 4, 5]
    kv.check_invariants()


def test_stats_slot_utilisation():
    kv = make()
    fill(kv, 1, list(range(6)))                   # 2 blocks, 6 of 8 slots hold tokens
    assert kv.stats()["slot_utilisation"] == pytest.approx(6 / 8)


def test_guards_raise_on_misuse():
    kv = make(num_blocks=2, swap_blocks=0)
    fill(kv, 1, [1, 2, 3])
    with pytest.raises(RuntimeError, match="not empty"):
        kv.match_prefix(1, [1, 2, 3])
    assert kv.blocks_needed(2, 0, 9) == 3
    with pytest.raises(RuntimeError, match="check first"):
        kv.append(2, 0, 9)
    with pytest.raises(RuntimeError, match="append at"):
        kv.append(1, 7, 1)                        # a gap after the covered slots
    assert not kv.can_swap_out(1)
    with pytest.raises(RuntimeError, match="refused"):
        kv.swap_out(1)                            # no swap space
    with pytest.raises(RuntimeError, match="refused"):
        kv.swap_in(1)                             # not swapped out
    with pytest.raises(RuntimeError, match="released with refcount 0"):
        kv._release(kv.free_list[0])              # double free
    with pytest.raises(RuntimeError, match="already has a table"):
        kv.fork(1, 1)
    kv.check_invariants()


def test_check_invariants_detects_corruption():
    kv = make()
    fill(kv, 1, [1, 2, 3, 4, 5])
    kv.ref[kv.tables[1].blocks[0]] += 1
    with pytest.raises(AssertionError, match="refcounts"):
        kv.check_invariants()
    kv.ref[kv.tables[1].blocks[0]] -= 1
    kv.free_list.append(kv.tables[1].blocks[1])
    with pytest.raises(AssertionError):
        kv.check_invariants()


@pytest.mark.parametrize("how", ["freed", "evicted from the cache"])
def test_debug_builds_poison_a_block_that_leaves_use(how):
    """With junk_on_free (LLMOS_DEBUG, tests) a freed or evicted block holds JUNK in every layer's
    K and V, so a stale read shows in the outputs; without it the old values stay."""
    for junk in (True, False):
        storage = KVStorage(n_layers=2, num_blocks=2, block_size=BS, n_kv_heads=1, head_dim=2,
                            dtype=torch.float32)
        kv = KVCache(storage, prefix_cache=how != "freed", junk_on_free=junk)
        fill(kv, 1, list(range(10, 10 + BS)))
        b = kv.tables[1].blocks[0]
        kv.free(1)
        if how != "freed":                       # registered: cached, still readable until taken
            assert float(storage.k[0, b, 0, 0, 0]) == 10.0
            kv.append(2, 0, 2 * BS)              # needs both blocks: evicts the cached one
            assert b in kv.tables[2].blocks
        poisoned = bool((storage.k[:, b] == kvcache.JUNK).all() and (storage.v[:, b] == kvcache.JUNK).all())
        assert poisoned == junk


def test_a_cpu_pool_holds_no_memory_until_its_blocks_are_written():
    """The pool's pages are zeroed by the OS as they are first written: a 768 MiB pool costs a
    boot almost nothing (torch.zeros would touch every page), and reads as zeros."""
    import psutil
    proc = psutil.Process()
    before = proc.memory_info().rss
    storage = KVStorage(n_layers=24, num_blocks=2048, block_size=16, n_kv_heads=4, head_dim=32,
                        dtype=torch.float32)
    pool = 2 * storage.k[:, :storage.num_blocks].numel() * 4      # the pad block aside
    assert pool == 768 << 20
    assert proc.memory_info().rss - before < pool // 8
    storage.fill_block(7, 2.0)
    assert float(storage.k[:, 6].abs().sum()) == 0.0 and float(storage.v[:, 7].sum()) == 2.0 * storage.v[:, 7].numel()
