"""Paged attention over a flat batch that mixes prefill chunks and single-token decodes.

A step's sequences are grouped by how many new tokens they bring (all decodes form one group, equal
prefill chunks another). The flat batch is laid out group after group, so each group's queries are
one contiguous slice that reshapes to ``[G, q_len, heads, head_dim]`` without copying. For each
group the keys and values are gathered through the block tables into ``[G, kv_heads, ctx, head_dim]``
and handed to ``scaled_dot_product_attention`` (GQA, boolean mask for causality and padding). The
same code runs on CUDA, where SDPA picks its fused kernels; the gather is the paging.

A decode-only step on CUDA can instead take ``decode_metadata``: the same one-group metadata
computed on the device from fixed-shape tensors (block tables, context lengths), so that
drivers/cudagraph.py can capture the step once per shape and replay it.

On a CPU with an fp32 pool and the compiled kernels (drivers/attention_kernels.cpp), the
quantized path uses ``paged_attention_flat`` instead: one C call per layer reads keys and values
straight through the block tables (no gather, no mask tensors), for any mix of sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionGroup:
    """Sequences with the same number of new tokens; rows [start, end) of the flat batch."""
    start: int
    end: int
    n_seqs: int
    q_len: int
    block_tables: torch.Tensor      # [G, max_blocks] long (padded with block 0)
    ctx: int                        # keys to attend: max context length in the group
    mask: torch.Tensor | None       # [G, 1, q_len, ctx] bool (True = attend); None: see causal
    causal: bool                    # no mask: causal (one whole prompt) or every key (decodes)


@dataclass
class AttentionMetadata:
    groups: list[AttentionGroup]
    slots: torch.Tensor             # [T] long: flat KV slot where each new token's K/V is written


def build_metadata(seq_lens: list[tuple[int, int, list[int]]], order: list[int], block_size: int,
                   device: torch.device, window: int | None = None) -> AttentionMetadata:
    """seq_lens[i] = (start_pos, n_new, block_table); ``order`` lists sequence indices group by
    group (as the flat batch is laid out). window: sliding-window attention, a query at position
    p sees keys p - window < k <= p (Gemma 3's local layers). Never touches the KV pool."""
    groups: list[AttentionGroup] = []
    slots: list[int] = []
    row, i = 0, 0
    while i < len(order):
        q_len = seq_lens[order[i]][1]
        j = i
        while j < len(order) and seq_lens[order[j]][1] == q_len:
            j += 1
        members = [seq_lens[k] for k in order[i:j]]
        ctx_lens = [start + q_len for start, _, _ in members]
        ctx = max(ctx_lens)
        n_blocks = -(-ctx // block_size)
        tables = [bt[:n_blocks] + [0] * (n_blocks - len(bt[:n_blocks])) for _, _, bt in members]
        for start, n, bt in members:
            for p in range(start, start + n):
                slots.append(bt[p // block_size] * block_size + p % block_size)
        causal = len(members) == 1 and members[0][0] == 0       # one whole prompt: plain causal
        all_keys = q_len == 1 and min(ctx_lens) == ctx           # equal-length decodes: no mask
        mask = None
        cut = window is not None and ctx > window               # some key is outside a window
        if cut or not (causal or all_keys):
            keys = torch.arange(ctx).view(1, 1, 1, ctx)
            qpos = torch.tensor([start for start, _, _ in members]).view(-1, 1, 1, 1) \
                + torch.arange(q_len).view(1, 1, q_len, 1)
            mask = ((keys <= qpos) & (keys > qpos - window) if cut else keys <= qpos).to(device)
        groups.append(AttentionGroup(row, row + (j - i) * q_len, j - i, q_len,
                                     torch.tensor(tables, dtype=torch.long, device=device), ctx,
                                     mask, causal and q_len > 1 and not cut))
        row += (j - i) * q_len
        i = j
    return AttentionMetadata(groups, torch.tensor(slots, dtype=torch.long, device=device))


def decode_metadata(tables: torch.Tensor, ctx_lens: torch.Tensor, block_size: int,
                    window: int | None = None) -> AttentionMetadata:
    """build_metadata of a step where every sequence brings one token, from device tensors alone
    (no host values read, no sync: a CUDA graph can capture it). tables [B, NB] long; ctx_lens [B]
    long, each sequence's keys with its new token (at position ctx_len - 1). The group attends to
    NB * block_size keys through a mask, so its shape depends on (B, NB) alone."""
    B, NB = tables.shape
    ctx = NB * block_size
    qpos = (ctx_lens - 1).view(B, 1, 1, 1)
    keys = torch.arange(ctx, device=tables.device).view(1, 1, 1, ctx)
    mask = keys <= qpos
    if window is not None:
        mask &= keys > qpos - window
    pos = ctx_lens - 1
    slots = tables.gather(1, (pos // block_size).view(B, 1)).view(B) * block_size + pos % block_size
    return AttentionMetadata([AttentionGroup(0, B, B, 1, tables, ctx, mask, False)], slots)


def eager_sdpa_backends():
    """The SDPA backends for steps whose shapes change every call: all but cuDNN's, which builds an
    execution plan per new shape (on an H100 a bf16 SmolLM2 decode step took 92 ms at any batch
    with it, 12-19 ms without). A context manager."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


@dataclass
class FlatMetadata:
    """Per new token: its sequence (row of ``tables``) and position; and where its K/V go."""
    slots: torch.Tensor             # [T] long: flat KV slot of each new token
    tables: torch.Tensor            # [n_seqs, max_blocks] long, padded with block 0
    seq_of: torch.Tensor            # [T] long: row of tables
    positions: torch.Tensor         # [T] long


def build_flat_metadata(seq_lens: list[tuple[int, int, list[int]]], order: list[int],
                        block_size: int) -> FlatMetadata:
    """As build_metadata (same arguments, same flat layout), for paged_attention_flat."""
    slots: list[int] = []
    seq_of: list[int] = []
    pos: list[int] = []
    for i in order:
        start, n, bt = seq_lens[i]
        for p in range(start, start + n):
            slots.append(bt[p // block_size] * block_size + p % block_size)
        seq_of.extend([i] * n)
        pos.extend(range(start, start + n))
    width = max((-(-(start + n) // block_size) for start, n, _ in seq_lens), default=1)
    tables = [bt[:width] + [0] * (width - len(bt[:width])) for _, _, bt in seq_lens]
    t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return FlatMetadata(t(slots), t(tables), t(seq_of), t(pos))


FLAT_KV_DTYPES = (torch.float32, torch.float16)     # pools the C kernels read and write


def store_kv_flat(lib, qkv: torch.Tensor, n_heads: int, head_dim: int, k_cache: torch.Tensor,
                  v_cache: torch.Tensor, meta: FlatMetadata) -> None:
    """Write this step's K and V (the columns after the queries in fused fp32 QKV rows) into the
    pool at meta.slots, in C (rounded to fp16 for an fp16 pool)."""
    assert qkv.dtype == torch.float32 and qkv.stride(1) == 1 and k_cache.dtype in FLAT_KV_DTYPES
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    rc = lib.llmos_kv_store(qkv.data_ptr(), qkv.stride(0), qkv.shape[0], n_heads, k_cache.shape[2], head_dim,
                            meta.slots.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                            int(k_cache.dtype == torch.float16))
    if rc != 0:
        raise ValueError(f"KV store failed ({rc}): an fp16 pool needs a CPU with F16C")


def paged_attention_flat(lib, q: torch.Tensor, n_heads: int, head_dim: int, k_cache: torch.Tensor,
                         v_cache: torch.Tensor, meta: FlatMetadata, scale: float,
                         window: int | None = None) -> torch.Tensor:
    """As paged_attention, on the CPU in C (``lib``: drivers/quant.py's kernels). q: fp32
    [T, >= n_heads * head_dim] whose first n_heads * head_dim columns are the queries (a view of
    the fused QKV rows is fine); caches fp32 or fp16 (FLAT_KV_DTYPES), contiguous. window: sliding
    window or None."""
    T = q.shape[0]
    if T != meta.positions.numel():
        raise ValueError(f"paged attention: {T} query rows, {meta.positions.numel()} tokens in the metadata")
    assert q.dtype == torch.float32 and q.stride(1) == 1 and k_cache.dtype in FLAT_KV_DTYPES
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    out = torch.empty(T, n_heads * head_dim, dtype=torch.float32)
    rc = lib.llmos_paged_attention(q.data_ptr(), q.stride(0), T, n_heads, k_cache.shape[2], head_dim,
                                   k_cache.data_ptr(), v_cache.data_ptr(), k_cache.shape[1],
                                   meta.tables.data_ptr(), meta.tables.shape[1], meta.seq_of.data_ptr(),
                                   meta.positions.data_ptr(), window or 0, scale, out.data_ptr(),
                                   n_heads * head_dim, int(k_cache.dtype == torch.float16))
    if rc != 0:
        raise ValueError(f"paged attention failed ({rc}): {n_heads} heads, {k_cache.shape[2]} KV heads")
    return out


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q: [T, H, D] (new tokens, flat); caches: [num_blocks, block_size, KVH, D] for one layer,
    already holding this step's K/V. Returns [T, H*D]."""
    n_heads, head_dim = q.shape[1], q.shape[2]
    outs = []
    for g in meta.groups:
        qg = q[g.start:g.end].view(g.n_seqs, g.q_len, n_heads, head_dim).transpose(1, 2)
        flat = g.block_tables.reshape(-1)
        kvh = k_cache.shape[2]
        k = k_cache.index_select(0, flat).view(g.n_seqs, -1, kvh, head_dim)[:, :g.ctx].transpose(1, 2)
        v = v_cache.index_select(0, flat).view(g.n_seqs, -1, kvh, head_dim)[:, :g.ctx].transpose(1, 2)
        o = F.scaled_dot_product_attention(qg, k, v, attn_mask=g.mask, is_causal=g.causal,
                                           scale=scale, enable_gqa=kvh != n_heads)
        outs.append(o.transpose(1, 2).reshape(g.n_seqs * g.q_len, n_heads * head_dim))
    return outs[0] if len(outs) == 1 else torch.cat(outs)
