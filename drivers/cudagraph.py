"""DecodeGraphs: decode steps on a GPU replayed from CUDA graphs, one replay a step.

On the torch path a decode step (every sequence brings one token) launches each of its ~1500
kernels from Python; on an H100 that took 12-23 ms of CPU for 2-4 ms of GPU work (SmolLM2). A
CUDA graph records the launches once and replays them as one. A graph fixes its shapes and its
memory addresses, so the step is captured per bucket, (batch rounded up to BATCH_BUCKETS,
block-table width rounded up to a power of two), into static input tensors, with attention
metadata computed on the device (drivers/attention.py's decode_metadata). A step copies its
token ids, context lengths and block tables into the bucket's inputs in one host-to-device copy,
replays, and takes the rows it wants from the bucket's logits. Padded rows attend to and write
only the KV pool's pad block (drivers/kvstore.py). All buckets share one memory pool.

Contract: as LlamaModel.forward (the caller holds the KV pool's slots), and one DecodeGraphs per
(model, KVStorage): the graphs hold the pool's addresses. A replay cannot stop between layers:
``interrupt`` is looked at once, before it. ``capture=False`` runs the same static step eagerly,
so a CPU tests everything but the capture itself.
"""

from __future__ import annotations

import torch

from .attention import decode_metadata

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
# Largest fp32 decode step replayed from a graph. Every bucket's attention has a mask, and in fp32
# with GQA SDPA then runs its math kernel over the width bucket's keys, where an eager step of
# equal lengths needs no mask: on an H100 (SmolLM2 shapes) fp32 graphs gave b64 12.85 ms against
# 27.17 eager, but b256 44.94 against 29.16. bf16 gained at every batch (b256 8.48 against 20.40).
FP32_MAX_BATCH = 64
MIN_WIDTH = 4                   # block-table width of the smallest bucket (64 tokens at 16 a block)


def bucket_width(blocks: int, limit: int) -> int:
    """The bucket's block-table width for a step whose longest table needs `blocks` blocks: the
    next power of two (at least MIN_WIDTH), at most `limit` (a whole context's blocks)."""
    w = MIN_WIDTH
    while w < blocks:
        w *= 2
    return min(w, max(limit, blocks))


class StaticStep:
    """One bucket: a decode step of `batch` rows with block tables `width` wide, whose inputs
    live in one tensor (`packed`: per row the token id, the context length, the block table)."""

    def __init__(self, model, kv, batch: int, width: int, capture: bool, pool=None):
        self.model, self.kv, self.batch, self.width = model, kv, batch, width
        self.packed = torch.tensor(self.pad_rows(batch), device=model.device)
        self.ids, self.ctx_lens, self.tables = self.packed[:, 0], self.packed[:, 1], self.packed[:, 2:]
        self.rows = torch.arange(batch, device=model.device)
        self.graph = None
        if not capture:
            return
        side = torch.cuda.Stream(model.device)           # warm-up off the capturing stream (lazy
        side.wait_stream(torch.cuda.current_stream(model.device))      # cuBLAS/SDPA set-up)
        with torch.cuda.stream(side):
            self._step()
        torch.cuda.current_stream(model.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the kernel's other threads may query the GPU meanwhile (meminfo's free
        # memory); only this thread's unsafe calls would break the capture
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.logits = self._step()

    def pad_rows(self, n: int) -> list[list[int]]:
        """n rows of packed inputs that touch only the pad block: token 0 at position 0."""
        return [[0, 1] + [self.kv.pad_block] * self.width for _ in range(n)]

    @torch.inference_mode()
    def _step(self) -> torch.Tensor:
        m, bs = self.model, self.kv.block_size
        meta = decode_metadata(self.tables, self.ctx_lens, bs)
        local = None if m.sliding_window is None else decode_metadata(self.tables, self.ctx_lens, bs,
                                                                      m.sliding_window)
        return m._compute(self.ids, self.ctx_lens - 1, meta, local, self.kv, self.rows, None)

    def run(self, packed: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
        """packed: host rows (see pad_rows) of this bucket's shape; returns logits[want] (a copy)."""
        self.packed.copy_(packed)
        logits = self._step() if self.graph is None else (self.graph.replay(), self.logits)[1]
        return logits.index_select(0, want)


class DecodeGraphs:
    """The captured decode steps of one model on one KV pool, captured on first use of a bucket."""

    def __init__(self, model, kv, capture: bool | None = None):
        self.model, self.kv = model, kv
        self.capture = model.device.type == "cuda" if capture is None else capture
        self.max_width = -(-model.config.context_length // kv.block_size)
        self.steps: dict[tuple[int, int], StaticStep] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.max_batch = FP32_MAX_BATCH if model.dtype == torch.float32 else BATCH_BUCKETS[-1]

    def fits(self, spans: list[tuple[int, int, list[int]]]) -> bool:
        """Whether these (start, new tokens, block table) spans are a decode step with a bucket
        (at most max_batch of them)."""
        return len(spans) <= self.max_batch and all(n == 1 for _, n, _ in spans)

    def run(self, ids: list[int], spans: list[tuple[int, int, list[int]]], want: torch.Tensor,
            interrupt=None) -> torch.Tensor:
        """Logits [len(want), vocab] of a decode step (ids[i] the token of spans[i], which starts
        at spans[i][0]), as LlamaModel.forward returns them."""
        from .llama import Preempted
        bs = self.kv.block_size
        blocks = max(-(-(start + 1) // bs) for start, _, _ in spans)
        batch = next(b for b in BATCH_BUCKETS if b >= len(spans))
        key = (batch, bucket_width(blocks, self.max_width))
        step = self.steps.get(key)
        if step is None:
            step = self.steps[key] = StaticStep(self.model, self.kv, *key, self.capture, self.pool)
        pad = [self.kv.pad_block] * step.width
        rows = [[token, start + 1] + table[:-(-(start + 1) // bs)] for token, (start, _, table) in zip(ids, spans)]
        rows = [r + pad[:len(pad) + 2 - len(r)] for r in rows] + step.pad_rows(batch - len(rows))
        if interrupt is not None and interrupt.is_set():
            raise Preempted
        return step.run(torch.tensor(rows), want)
