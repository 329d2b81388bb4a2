"""The KV block allocator (xv6: kalloc.c): free list, refcounts, prefix cache, copy-on-write, swap.
(Over 300 lines: every way a block changes hands is here, so that one owner keeps the refcounts.)

Every physical block of the driver's KVStorage is in exactly one of three places:
  free    refcount 0, holds nothing worth keeping (a deque; popped from the left)
  cached  refcount 0, a full block registered under its prefix digest; kept until memory is
          wanted, then evicted least-recently-freed first (an OrderedDict, oldest first)
  used    refcount > 0: referenced by that many process block tables
A process's Table lists its blocks in position order: token p lives in blocks[p // block_size].

Prefix caching: a full block's digest is blake2b(parent digest + its token ids), so a digest names
the whole prefix up to the block's end; a hit is also verified by comparing the block's tokens
and parent digest. A strong digest (not Python's hash) because blocks are shared across owners.

Persistent tier (optional, kernel/prefixdisk.py as `disk`): a prefix lookup that misses in memory
asks the disk, which verifies the block's tokens; a block hit in memory is written there (hot), and
persist() writes every registered block (the kernel's shutdown).

Writes: a block is written only when its refcount is 1 and it is not registered in the prefix
cache; `append` copies any other block (copy-on-write after fork, or a registered block) first.
Swap: `swap_out` moves the blocks a process holds alone to host memory (shared ones stay where
they are) and `swap_in` puts them back into fresh blocks, bit-exact.

Check/act pairs: `blocks_needed`/`append`, `can_swap_out`/`swap_out`, `can_swap_in`/`swap_in`;
the act raises RuntimeError (a kernel bug) where the check would have said no.
All methods run on the engine's owner thread, never while a forward is using the storage.

Debug builds (junk_on_free, on when the engine checks invariants): a block that goes back to the
free list, or is evicted from the cache, is filled with JUNK, a large finite value, so that a
forward reading a slot it does not own changes the tokens (the solo-equality tests catch it).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass, field


JUNK = 3.0e4        # finite in fp16/bf16/fp32; swamps any attention score or value it meets


def block_digest(parent: bytes, tokens) -> bytes:
    return hashlib.blake2b(parent + array("q", tokens).tobytes(), digest_size=16).digest()


def owner_namespace(owner: str) -> bytes:
    """The root of an owner's digest chains: cached blocks are shared only between processes of
    one owner, so the cache cannot tell anyone whether another user sent a prompt (a hit is
    visible in stat's `cached` and in time to first token)."""
    return hashlib.blake2b(b"owner\0" + owner.encode(), digest_size=16).digest()


@dataclass(eq=False)
class Table:
    """One process's block table. tokens: slots covered by the last append (≥ computed)."""
    blocks: list[int] = field(default_factory=list)
    tokens: int = 0
    hashed: int = 0                 # leading full blocks whose digest chain is known
    digest: bytes = b""             # digest of block hashed-1 (b"" for the empty prefix)
    swapped: tuple | None = None    # (handle, positions) while swapped out; blocks holds the rest


class KVCache:
    def __init__(self, storage, *, prefix_cache: bool = True, swap_blocks: int = 0,
                 junk_on_free: bool = False):
        self.storage = storage
        self.junk_on_free = junk_on_free
        self.block_size: int = storage.block_size
        self.num_blocks: int = storage.num_blocks
        self.prefix_cache = prefix_cache
        self.swap_capacity = swap_blocks
        self.swap_used = 0
        self.ref = [0] * self.num_blocks
        self.free_list: deque[int] = deque(range(self.num_blocks))
        self.cached: OrderedDict[int, None] = OrderedDict()
        self.key: list[tuple[bytes, bytes, tuple] | None] = [None] * self.num_blocks  # digest, parent, tokens
        self.by_digest: dict[bytes, int] = {}
        self.tables: dict[int, Table] = {}
        self.disk = None                # kernel/prefixdisk.py's PrefixDisk: the persistent tier, if on
        self.counters = dict(prefix_queried=0, prefix_hit=0, cow_copies=0, evictions=0,
                             swapped_out=0, swapped_in=0)

    # ---- blocks -----------------------------------------------------------------------------
    def available(self) -> int:
        """Blocks an allocation can get now: free plus evictable cached."""
        return len(self.free_list) + len(self.cached)

    def _take(self) -> int:
        if self.free_list:
            b = self.free_list.popleft()
        elif self.cached:
            b, _ = self.cached.popitem(last=False)
            digest = self.key[b][0]
            del self.by_digest[digest]
            self.key[b] = None
            self.counters["evictions"] += 1
            if self.junk_on_free:
                self.storage.fill_block(b, JUNK)
        else:
            raise RuntimeError("kvcache: allocation with no free or cached block (check first)")
        self.ref[b] = 1
        return b

    def _release(self, b: int) -> None:
        if self.ref[b] <= 0:
            raise RuntimeError(f"kvcache: block {b} released with refcount {self.ref[b]}")
        self.ref[b] -= 1
        if self.ref[b] == 0:
            if self.key[b] is not None:
                self.cached[b] = None
            else:
                self.free_list.append(b)
                if self.junk_on_free:
                    self.storage.fill_block(b, JUNK)

    def _acquire(self, b: int) -> None:
        if self.ref[b] == 0:
            del self.cached[b]          # only registered blocks can be acquired at refcount 0
        self.ref[b] += 1

    # ---- tables -----------------------------------------------------------------------------
    def table(self, pid: int) -> Table:
        t = self.tables.get(pid)
        if t is None:
            t = self.tables[pid] = Table()
        return t

    def holds(self, pid: int) -> int:
        """Resident blocks in pid's table (0 when it has none)."""
        t = self.tables.get(pid)
        return len(t.blocks) if t else 0

    def is_swapped(self, pid: int) -> bool:
        t = self.tables.get(pid)
        return bool(t and t.swapped)

    def match_prefix(self, pid: int, tokens: list[int], namespace: bytes = b"") -> int:
        """Attach cached blocks holding a prefix of `tokens` to pid's empty table; returns how
        many tokens they cover (whole blocks, always leaving at least one token to compute).
        namespace roots the table's digest chain (owner_namespace): hits stay within it."""
        t = self.table(pid)
        if t.blocks or t.swapped:
            raise RuntimeError(f"kvcache: match_prefix on pid {pid} whose table is not empty")
        t.digest = namespace
        bs = self.block_size
        n_full = (len(tokens) - 1) // bs if tokens else 0
        self.counters["prefix_queried"] += n_full * bs
        if not self.prefix_cache:
            return 0
        for i in range(n_full):
            blk = tuple(tokens[i * bs:(i + 1) * bs])
            digest = block_digest(t.digest, blk)
            b = self.by_digest.get(digest)
            if b is None and self.disk is not None:
                b = self._from_disk(digest, t.digest, blk)
            if b is None or self.key[b][1] != t.digest or self.key[b][2] != blk:
                break
            if self.disk is not None and not self.disk.has(digest):
                self._to_disk(b)                # hit: a hot prefix, kept across restarts
            self._acquire(b)
            t.blocks.append(b)
            t.digest, t.hashed = digest, i + 1
        t.tokens = len(t.blocks) * bs
        self.counters["prefix_hit"] += t.tokens
        return t.tokens

    def _from_disk(self, digest: bytes, parent: bytes, blk: tuple):
        """The persistent tier's copy of a block, into a cached block (None: absent or rejected)."""
        if not self.disk.has(digest) or not self.available():
            return None
        handle = self.disk.load(digest, parent, blk)
        if handle is None:
            return None
        b = self._take()
        self.storage.swap_in(handle, [b])
        self.key[b], self.by_digest[digest] = (digest, parent, blk), b
        self.ref[b] = 0
        self.cached[b] = None
        return b

    def _to_disk(self, b: int) -> bool:
        digest, parent, blk = self.key[b]
        return self.disk.save(digest, parent, blk, *self.storage.swap_out([b]))

    def persist(self) -> int:
        """Write every registered block to the persistent tier, parents first (in registration
        order), until it is full; returns how many were written."""
        n = 0
        for digest, b in list(self.by_digest.items()) if self.disk is not None else ():
            if not self.disk.has(digest):
                if not self._to_disk(b):
                    break
                n += 1
        return n

    def _writes(self, t: Table, start: int, n: int):
        """Indices of existing blocks that [start, start+n) writes and that must be copied first."""
        bs = self.block_size
        end = min(len(t.blocks), -(-(start + n) // bs))
        return [i for i in range(start // bs, end)
                if self.ref[t.blocks[i]] > 1 or self.key[t.blocks[i]] is not None]

    def blocks_needed(self, pid: int, start: int, n: int) -> int:
        """Blocks that append(pid, start, n) would take from the pool."""
        t = self.tables.get(pid) or Table()
        if t.swapped:
            raise RuntimeError(f"kvcache: pid {pid} is swapped out")
        new = max(0, -(-(start + n) // self.block_size) - len(t.blocks))
        return new + len(self._writes(t, start, n))

    def append(self, pid: int, start: int, n: int) -> None:
        """Make slots [start, start+n) of pid writable: copy shared/registered blocks, add new ones."""
        short = self.reserve(pid, start, n)
        if short:
            raise RuntimeError(f"kvcache: append for pid {pid} lacks {short} blocks (check first)")

    def reserve(self, pid: int, start: int, n: int) -> int:
        """append() if the pool has the blocks, returning 0; else change nothing and return the
        number of blocks needed (check and act in one pass, for the scheduler's hot path)."""
        t = self.tables.get(pid)
        if t is None:
            t = self.table(pid)
        bs = self.block_size
        if start > t.tokens or t.swapped:
            raise RuntimeError(f"kvcache: append at {start} to pid {pid} covering {t.tokens} tokens")
        if n == 1 and start < len(t.blocks) * bs:          # a decode into its own block: no work
            b = t.blocks[start // bs]
            if self.ref[b] == 1 and self.key[b] is None:
                if start >= t.tokens:
                    t.tokens = start + 1
                return 0
        writes = self._writes(t, start, n)
        need = max(0, -(-(start + n) // bs) - len(t.blocks)) + len(writes)
        if need > len(self.free_list) + len(self.cached):
            return need
        for i in writes:
            old, new = t.blocks[i], self._take()
            if start > i * bs:          # the block holds tokens before start: keep them
                self.storage.copy_block(old, new)
                self.counters["cow_copies"] += 1
            t.blocks[i] = new
            self._release(old)
        while len(t.blocks) * bs < start + n:
            t.blocks.append(self._take())
        t.tokens = max(t.tokens, start + n)
        return 0

    def commit(self, pid: int, tokens: list[int], computed: int) -> None:
        """Tokens [0, computed) of pid are now in its blocks: register newly full blocks."""
        t = self.tables[pid]
        bs = self.block_size
        while (t.hashed + 1) * bs <= computed:
            i = t.hashed
            blk = tuple(tokens[i * bs:(i + 1) * bs])
            digest = block_digest(t.digest, blk)
            b = t.blocks[i]
            if self.prefix_cache and digest not in self.by_digest and self.key[b] is None:
                self.key[b] = (digest, t.digest, blk)
                self.by_digest[digest] = b
            t.digest, t.hashed = digest, i + 1

    def truncate(self, pid: int, computed: int) -> None:
        """Forget slots at and after `computed` (their contents are stale); keeps the blocks."""
        t = self.tables.get(pid)
        if t and not t.swapped:
            t.tokens = min(t.tokens, computed)

    def fork(self, parent: int, child: int) -> bool:
        """Share parent's resident blocks with child. False (child gets nothing) if swapped out."""
        p = self.tables.get(parent)
        if child in self.tables:
            raise RuntimeError(f"kvcache: fork into pid {child} which already has a table")
        if p is None or p.swapped:
            return False
        for b in p.blocks:
            self._acquire(b)
        self.tables[child] = Table(list(p.blocks), p.tokens, p.hashed, p.digest)
        return True

    def free(self, pid: int) -> None:
        """Drop pid's table: blocks go back (registered ones into the cache, tail first evicted)."""
        t = self.tables.pop(pid, None)
        if t is None:
            return
        for b in reversed(t.blocks):
            self._release(b)
        if t.swapped:
            self.swap_used -= len(t.swapped[1])

    # ---- swap -------------------------------------------------------------------------------
    def _exclusive(self, t: Table) -> list[int]:
        return [i for i, b in enumerate(t.blocks) if self.ref[b] == 1]

    def swap_cost(self, pid: int) -> int:
        """Blocks swap_out(pid) would move to host (those pid holds alone)."""
        t = self.tables.get(pid)
        return len(self._exclusive(t)) if t and not t.swapped else 0

    def can_swap_out(self, pid: int) -> bool:
        n = self.swap_cost(pid)
        return n > 0 and self.swap_used + n <= self.swap_capacity

    def swap_out(self, pid: int) -> int:
        """Move pid's exclusive blocks to host memory; returns how many were freed."""
        t = self.tables[pid]
        if not self.can_swap_out(pid):
            raise RuntimeError(f"kvcache: swap_out of pid {pid} refused (check first)")
        positions = self._exclusive(t)
        ids = [t.blocks[i] for i in positions]
        handle = self.storage.swap_out(ids)
        t.swapped = (handle, positions)
        keep = set(positions)
        t.blocks = [b for i, b in enumerate(t.blocks) if i not in keep]
        for b in ids:
            self._release(b)
        self.swap_used += len(ids)
        self.counters["swapped_out"] += len(ids)
        return len(ids)

    def adopt(self, pid: int, handle, tokens: int, namespace: bytes = b"") -> bool:
        """Give pid (no table yet) the KV of a swap_out()-shaped host handle holding its first
        `tokens` slots, as if swapped out: the scheduler swaps it in through the allocator, and
        its full blocks join the prefix cache at the next commit. False (nothing changed) when
        the swap pool has no room (a restored checkpoint then recomputes)."""
        n = handle[0].shape[1]
        if pid in self.tables:
            raise RuntimeError(f"kvcache: adopt into pid {pid} which already has a table")
        if n * self.block_size < tokens or self.swap_used + n > self.swap_capacity:
            return False
        self.tables[pid] = Table([], tokens, 0, namespace, (handle, list(range(n))))
        self.swap_used += n
        return True

    def can_swap_in(self, pid: int) -> bool:
        t = self.tables.get(pid)
        return bool(t and t.swapped) and len(t.swapped[1]) <= self.available()

    def swap_in(self, pid: int) -> None:
        t = self.tables[pid]
        if not self.can_swap_in(pid):
            raise RuntimeError(f"kvcache: swap_in of pid {pid} refused (check first)")
        handle, positions = t.swapped
        ids = [self._take() for _ in positions]
        self.storage.swap_in(handle, ids)
        kept = iter(t.blocks)
        slot = dict(zip(positions, ids))
        t.blocks = [slot[i] if i in slot else next(kept) for i in range(len(t.blocks) + len(ids))]
        t.swapped = None
        self.swap_used -= len(ids)
        self.counters["swapped_in"] += len(ids)

    # ---- accounting ---------------------------------------------------------------------------
    def stats(self) -> dict:
        bs, fill = self.block_size, {}
        for t in self.tables.values():
            if t.swapped:
                continue
            for i, b in enumerate(t.blocks):
                fill[b] = max(fill.get(b, 0), min(bs, max(0, t.tokens - i * bs)))
        used = self.num_blocks - len(self.free_list) - len(self.cached)
        c = self.counters
        return dict(total=self.num_blocks, used=used, cached=len(self.cached), free=len(self.free_list),
                    swapped=self.swap_used, swap_capacity=self.swap_capacity, block_size=bs,
                    bytes_per_block=self.storage.bytes_per_block,
                    slot_utilisation=(sum(fill.values()) / (used * bs)) if used else 1.0,
                    prefix_hit_rate=(c["prefix_hit"] / c["prefix_queried"]) if c["prefix_queried"] else 0.0,
                    **c, **({"prefix_disk": self.disk.stats()} if self.disk is not None else {}))

    def check_invariants(self) -> None:
        """Raise AssertionError unless every block is free xor cached xor referenced, and
        refcounts equal the references from block tables."""
        refs = [0] * self.num_blocks
        swapped = 0
        for pid, t in self.tables.items():
            assert len(set(t.blocks)) == len(t.blocks), f"pid {pid} lists a block twice"
            for b in t.blocks:
                refs[b] += 1
            if t.swapped:
                swapped += len(t.swapped[1])
            else:
                assert len(t.blocks) * self.block_size >= t.tokens, f"pid {pid}: table too short"
        assert refs == self.ref, "refcounts differ from block-table references"
        free, cached = set(self.free_list), set(self.cached)
        assert len(free) == len(self.free_list), "a block is on the free list twice"
        assert not free & cached, "a block is both free and cached"
        for b in range(self.num_blocks):
            placed = (b in free) + (b in cached) + (self.ref[b] > 0)
            assert placed == 1, f"block {b} is in {placed} places (free/cached/used)"
            assert b not in free or self.key[b] is None, f"free block {b} is registered"
            assert b not in cached or self.key[b] is not None, f"cached block {b} is not registered"
        for digest, b in self.by_digest.items():
            assert self.key[b] is not None and self.key[b][0] == digest, f"digest map wrong at {b}"
        assert sum(k is not None for k in self.key) == len(self.by_digest), "stray registration"
        assert swapped == self.swap_used <= self.swap_capacity, "swap accounting is off"
