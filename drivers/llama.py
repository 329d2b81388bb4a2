"""A Llama-family transformer in torch that reads and writes a paged KV pool.
(Over 300 lines: loading and the forward of one model family share the layer layout.)

``forward`` takes a flat batch of sequences, each bringing some new tokens (a prefill chunk or one
decode token) at some position, with its block table; it writes the new K/V into the pool, attends
through the block tables (drivers/attention.py) and returns logits only for the sequences that
asked for them. By default (dtype 'auto' on a CPU) GGUF-quantized matrices stay quantized and run
in drivers/quant.py's kernels, RMSNorm and SwiGLU fused into the matmul calls, the residual
adds done in place, and RoPE, the K/V writes and paged attention in C as well (a batch-1 step:
~230 torch ops + ~210 kernel calls); 'fp32'/'bf16' dequantise them once (fp32 is the exact reference path).
Q/K/V and gate/up are fused into one matrix each.

GGUF stores Q and K rows permuted for interleaved-pair RoPE; they are permuted back at load time so
that RoPE here is the cheaper rotate-half form.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

import psutil
from gguf import GGMLQuantizationType

from .arch import ARCHS, model_class
from .catalog import auto_dtype
from .attention import (FLAT_KV_DTYPES, FlatMetadata, build_flat_metadata, build_metadata,
                        eager_sdpa_backends, paged_attention, paged_attention_flat, store_kv_flat)
from .device import MODEL_DTYPES, pick_device, pick_dtype
from .gguf import GGUFModelFile, ModelConfig, ModelFileError
from .kvstore import KVStorage
from .linear import Linear
from .quant import (GLU_SILU, RG_TYPES, QLinear, act8_supported, argmax_rows, has_kernel, kernel_isa, kernels, rope_,
                    type_name)

log = logging.getLogger("llmos.drivers")


class Preempted(Exception):
    """forward() stopped between layers because its `interrupt` event was set (the kernel wants
    the cores for a latency-sensitive process). Nothing was sampled; KV slots written for the
    step's new tokens are stale and are rewritten when the step runs again."""


@dataclass(slots=True)
class SeqInput:
    """One sequence's share of a step. block_table must cover start_pos + len(token_ids) tokens."""
    token_ids: list[int]
    start_pos: int
    block_table: list[int]
    want_logits: bool = True


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaved-RoPE row permutation of a Q or K weight."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


class Layer:
    __slots__ = ("attn_norm", "wqkv", "wo", "ffn_norm", "w_gate_up", "w_down",
                 "bqkv", "extra")     # q/k/v biases (qwen2) or None; drivers/arch.py extra norms


class LlamaModel:
    """Weights on one device. forward() is pure compute: safe in a worker thread as long as nobody
    else touches the KV pool during it. ``quantized``: matrices stay in their GGUF quant types and
    run in drivers/quant.py's kernels (activations and KV in fp32); otherwise they were dequantised
    once into ``dtype``."""

    def __init__(self, config: ModelConfig, layers: list[Layer], embed, out_norm: torch.Tensor,
                 lm_head, dtype: torch.dtype, device: torch.device, tokenizer=None, path: str = "",
                 quantized: bool = False):
        self.config, self.layers, self.embed = config, layers, embed
        self.out_norm, self.lm_head = out_norm, lm_head
        self.dtype, self.device, self.tokenizer, self.path = dtype, device, tokenizer, path
        self.quantized = quantized
        self.kv_dtype = _kv_dtype(dtype, device, quantized)
        self._fused = False                 # not built yet (_fused_layers)
        self.cuda_graphs = os.environ.get("LLMOS_CUDA_GRAPHS", "1") != "0"    # decode steps on CUDA
        self._graphs = None                 # drivers/cudagraph.py's DecodeGraphs, built on first use
        half = config.head_dim // 2
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, half, dtype=torch.float64) / half))
        angles = torch.outer(torch.arange(config.context_length, dtype=torch.float64), inv_freq)
        self._cos = torch.cat([angles.cos()] * 2, -1).to(device, torch.float32)
        self._sin = torch.cat([angles.sin()] * 2, -1).to(device, torch.float32)
        self._scale = 1.0 / math.sqrt(config.head_dim)

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str, dtype: str = "auto", device: str = "auto",
             progress: bool = False, int8_decode: bool = True,
             memory_available: int | None = None) -> "LlamaModel":
        """Load a GGUF file. Raises ModelFileError (one line) before anything is half-built, also
        when the weights would not fit in `memory_available` bytes (default: what the host has).
        dtype 'a13' on a CPU keeps quantized weights quantized (drivers/quant.py) when the kernels
        build, activations on the 13-bit grid; 'a8' does too, with 8-bit activations where the CPU
        has vpdpbusd (llama.cpp's precision: faster prefill and batched decode, but greedy tokens
        may change); 'auto' is 'a8' but for the catalog models whose tokens need 13 bits
        (catalog.auto_dtype: SmolLM2); 'fp32' / 'bf16' dequantise every matrix once (fp32
        is the exact reference).
        int8_decode: in bf16 on CPU, also keep int8 weights for small batches (drivers/linear.py)."""
        if dtype not in MODEL_DTYPES:
            raise ValueError(f"unknown dtype '{dtype}' (use {', '.join(MODEL_DTYPES)})")
        gf = GGUFModelFile(path)
        from .tokenizer import Tokenizer
        tokenizer = Tokenizer.from_metadata(gf.metadata, path=gf.path)
        dev = pick_device(device)
        quantized = dtype in ("auto", "a8", "a13") and dev.type == "cpu" and kernels() is not None
        act8 = quantized and (dtype == "a8" or dtype == "auto" and auto_dtype(gf.path) == "a8") and act8_supported()
        if dtype in ("a8", "a13") and not quantized:
            log.warning("dtype %s: quantized weights are for the quantized CPU path (%s); running as 'auto'", dtype,
                        "kernels unavailable" if dev.type == "cpu" else f"not on {dev.type}")
        elif dtype == "a8" and not act8:
            log.warning("dtype a8: this CPU has no vpdpbusd (VNNI); running as 'a13', activations on the 13-bit grid")
        dt = torch.float32 if quantized else pick_dtype("auto" if dtype in ("a8", "a13") else dtype, dev)
        c = gf.config
        spec = ARCHS[c.arch]
        cls = model_class(c.arch) if cls is LlamaModel else cls     # gemma3: drivers/gemma3.py
        need = resident_weight_bytes(gf, quantized, dt)
        if dev.type == "cpu":
            avail = psutil.virtual_memory().available if memory_available is None else memory_available
            if need > avail:
                raise ModelFileError(gf.path, f"too big for this machine: its weights need "
                                              f"{_size(need)} in memory, {_size(avail)} available")

        def norm(name: str) -> torch.Tensor:
            return torch.from_numpy(gf.tensor(name)).to(dev, torch.float32).contiguous()

        def linear(names: list[str], heads: list[int | None]):
            """One linear over the row-concatenation of `names` (q/k rows un-permuted)."""
            if quantized and all(has_kernel(gf.tensor_type(n)) for n in names):
                copy = len(names) > 1 or any(heads)
                parts: list[tuple[int, np.ndarray]] = []
                for n, h in zip(names, heads):
                    qtype, data = gf.raw(n, copy=copy)
                    data = _unpermute(data, h) if h else data
                    if parts and parts[-1][0] == qtype:          # same type: one fused block
                        parts[-1] = (qtype, np.concatenate([parts[-1][1], data]))
                    else:
                        parts.append((qtype, data))
                return QLinear(parts, int(gf.info(names[0]).shape[0]), act8=act8)
            ws = [_unpermute(gf.tensor(n), h) if h else gf.tensor(n) for n, h in zip(names, heads)]
            if quantized and any(gf.tensor_type(n) != GGMLQuantizationType.F32 for n in names):
                log.info("%s: %s has no quantized kernel; dequantised once to fp32", gf.path,
                         "/".join(sorted({GGMLQuantizationType(gf.tensor_type(n)).name for n in names})))
            w = torch.from_numpy(np.concatenate(ws) if len(ws) > 1 else ws[0])
            return Linear(w.to(dev, dt).contiguous(), int8=int8_decode and not quantized)

        from .progress import steps
        layers = []
        for i in steps(range(c.n_layers), "loading" if quantized else "dequantising", progress):
            p = f"blk.{i}."
            layer = Layer()
            layer.attn_norm = norm(p + "attn_norm.weight")
            layer.wqkv = linear([p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"],
                                [c.n_heads, c.n_kv_heads, None] if spec.rope_interleaved else [None] * 3)
            layer.wo = linear([p + "attn_output.weight"], [None])
            layer.ffn_norm = norm(p + "ffn_norm.weight")
            layer.w_gate_up = linear([p + "ffn_gate.weight", p + "ffn_up.weight"], [None, None])
            layer.w_down = linear([p + "ffn_down.weight"], [None])
            layer.bqkv = torch.cat([norm(p + f"attn_{x}.bias") for x in "qkv"]) if spec.qkv_bias else None
            layer.extra = {n: norm(p + n + ".weight") for n in spec.extra_norms}
            layers.append(layer)
        embed = linear(["token_embd.weight"], [None])
        lm_head = embed if c.tied_embeddings else linear(["output.weight"], [None])
        return cls(c, layers, embed, norm("output_norm.weight"), lm_head, dt, dev, tokenizer,
                   gf.path, quantized)

    def new_kv(self, num_blocks: int, block_size: int) -> KVStorage:
        c = self.config
        return KVStorage(c.n_layers, num_blocks, block_size, c.n_kv_heads, c.head_dim,
                         self.kv_dtype, self.device)

    def kv_bytes_per_token(self) -> int:
        c = self.config
        return 2 * c.n_layers * c.n_kv_heads * c.head_dim * torch.finfo(self.kv_dtype).bits // 8

    # ---- compute -----------------------------------------------------------------------------
    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """fp32 rows of the embedding table (the residual stream's start)."""
        if isinstance(self.embed, QLinear):
            return self.embed.rows(ids)
        return self.embed.weight[ids].float()

    def _rope_qk(self, qkv: torch.Tensor, positions: torch.Tensor, cos_sin):
        """q [T, H, D], k [T, KVH, D] from the fused projection, rotated (rotate-half RoPE).
        cos_sin: this step's (cos, sin) rows for the torch path (None on the quantized path)."""
        c = self.config
        T, H, KVH, D = qkv.shape[0], c.n_heads, c.n_kv_heads, c.head_dim
        if cos_sin is None:                                  # fp32, in place, one C call
            rope_(qkv, H + KVH, D, positions, self._cos, self._sin)
            qk = qkv[:, :(H + KVH) * D].view(T, H + KVH, D)
        else:
            cos, sin = cos_sin
            qk = qkv[:, :(H + KVH) * D].view(T, H + KVH, D).float()     # q and k at once
            half = D // 2
            qk = (qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], -1) * sin).to(self.dtype)
        return qk[:, :H], qk[:, H:]

    def _layout(self, seqs: list[SeqInput]):
        """A step's rows: (order: seqs shortest first, ids and positions in that order, spans
        (start, length, block table) per seq, want: the row of each seq with want_logits)."""
        c = self.config
        for s in seqs:
            if s.start_pos + len(s.token_ids) > c.context_length:
                raise ValueError(f"sequence of {s.start_pos + len(s.token_ids)} tokens exceeds the "
                                 f"model context of {c.context_length}")
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].token_ids))
        ids, pos, last_row = [], [], {}
        for i in order:
            s = seqs[i]
            ids.extend(s.token_ids)
            pos.extend(range(s.start_pos, s.start_pos + len(s.token_ids)))
            last_row[i] = len(ids) - 1
        spans = [(s.start_pos, len(s.token_ids), s.block_table) for s in seqs]
        want = torch.tensor([last_row[i] for i, s in enumerate(seqs) if s.want_logits],
                            dtype=torch.long, device=self.device)
        return order, ids, pos, spans, want

    @torch.inference_mode()
    def forward(self, seqs: list[SeqInput], kv: KVStorage, interrupt=None,
                logits_out: torch.Tensor | None = None, greedy: bool = False) -> torch.Tensor:
        """Run one step. Returns float32 logits [n_want, vocab], rows in the order of the seqs
        with want_logits. Caller guarantees block tables are valid and exclusively writable at
        the new tokens' slots. interrupt: a threading.Event checked before each layer and the
        output layer (before the replay of a captured decode step); once set, raises Preempted.
        logits_out: an fp32 buffer the caller reuses step after step (drivers/runner.py): where the
        output layer can write into it (a quantized one, at least n_want x vocab elements) the
        logits are a view of its start, valid until the caller writes it again; else a new tensor.
        greedy: return each row's argmax instead (int64 [n_want], the logits' own argmax); a
        quantized output layer then never writes the logits (QLinear.argmax)."""
        dev = self.device
        order, ids, pos, spans, want = self._layout(seqs)
        graphs = self._decode_graphs(spans, kv)
        if graphs is not None:
            logits = graphs.run(ids, spans, want, interrupt)
            return argmax_rows(logits) if greedy else logits
        if self._flat_attention(kv):
            meta, local = build_flat_metadata(spans, order, kv.block_size), None
            positions = meta.positions
        else:
            meta = build_metadata(spans, order, kv.block_size, dev)
            local = None if self.sliding_window is None else \
                build_metadata(spans, order, kv.block_size, dev, window=self.sliding_window)
            positions = torch.tensor(pos, dtype=torch.long, device=dev)
        ids_t = torch.tensor(ids, dtype=torch.long, device=dev)
        with eager_sdpa_backends() if dev.type == "cuda" else contextlib.nullcontext():
            return self._compute(ids_t, positions, meta, local, kv, want, interrupt, logits_out, greedy)

    sliding_window: int | None = None     # local layers' window (Gemma 3), None: every layer global

    def _compute(self, ids: torch.Tensor, positions: torch.Tensor, meta, local_meta, kv: KVStorage,
                 want: torch.Tensor, interrupt, logits_out: torch.Tensor | None = None,
                 greedy: bool = False) -> torch.Tensor:
        """The layers and the output head over a step's prepared device tensors: token ids and
        positions [T] in the flat batch's order, attention metadata (FlatMetadata, or
        AttentionMetadata for global layers and ``local_meta`` for windowed ones), ``want`` the
        rows to return logits for (their argmax where greedy, as forward). On the torch path it
        reads no host values and syncs nothing, so drivers/cudagraph.py can capture it."""
        c = self.config
        cos_sin = None if self.quantized else (self._cos[positions].unsqueeze(1),
                                               self._sin[positions].unsqueeze(1))
        x = self._embed(ids)                      # residual stream: fp32
        T, H, KVH, D, eps = ids.shape[0], c.n_heads, c.n_kv_heads, c.head_dim, c.rms_eps
        fused = self._fused_layers() if isinstance(meta, FlatMetadata) else None
        if fused is not None:             # the loop below, each layer one C call (drivers/fused.py)
            fused.forward(x, meta, kv, interrupt)
        for li, layer in enumerate(self.layers if fused is None else ()):
            if interrupt is not None and interrupt.is_set():
                raise Preempted
            qkv = layer.wqkv(x, norm=layer.attn_norm, eps=eps)
            if layer.bqkv is not None:
                qkv += layer.bqkv
            if isinstance(meta, FlatMetadata):            # quantized CPU path: four C calls
                lib = kernels()
                rope_(qkv, H + KVH, D, positions, self._cos, self._sin)
                store_kv_flat(lib, qkv, H, D, kv.k[li], kv.v[li], meta)
                layer.wo(paged_attention_flat(lib, qkv, H, D, kv.k[li], kv.v[li], meta, self._scale),
                         out=x)
                layer.w_down(layer.w_gate_up(x, norm=layer.ffn_norm, eps=eps), swiglu=True, out=x)
                continue
            q, k = self._rope_qk(qkv, positions, cos_sin)
            v = qkv[:, (H + KVH) * D:].view(T, KVH, D)
            k_cache, v_cache = kv.k[li], kv.v[li]
            k_cache.view(-1, KVH, D).index_copy_(0, meta.slots, k)
            v_cache.view(-1, KVH, D).index_copy_(0, meta.slots, v)
            layer.wo(paged_attention(q, k_cache, v_cache, meta, self._scale), out=x)   # x += ...
            layer.w_down(layer.w_gate_up(x, norm=layer.ffn_norm, eps=eps), swiglu=True, out=x)
        return self._logits(x, want, interrupt, logits_out, greedy)

    def _logits(self, x: torch.Tensor, want: torch.Tensor, interrupt,
                logits_out: torch.Tensor | None = None, greedy: bool = False) -> torch.Tensor:
        """The output head over the residual stream's rows `want` (interrupt looked at first),
        into logits_out where forward's contract says so; their argmax where greedy."""
        n, vocab = want.numel(), self.config.vocab_size
        if n == 0:
            return torch.empty(0, dtype=torch.int64) if greedy else torch.empty(0, vocab, device=self.device)
        if interrupt is not None and interrupt.is_set():       # and before the output layer
            raise Preempted
        h = x.index_select(0, want)
        if greedy:
            if isinstance(self.lm_head, QLinear):
                return self.lm_head.argmax(h, norm=self.out_norm, eps=self.config.rms_eps)
            return argmax_rows(self.lm_head(h, norm=self.out_norm, eps=self.config.rms_eps).float())
        if isinstance(self.lm_head, QLinear) and logits_out is not None and logits_out.numel() >= n * vocab:
            # a batch's logits are large (Gemma 3, 64 rows: 67 MB): a new tensor each step was
            # fresh pages from the OS each step, ~10 % of a decode step
            into = logits_out[:n * vocab].view(n, vocab)
            return self.lm_head(h, norm=self.out_norm, eps=self.config.rms_eps, into=into)
        return self.lm_head(h, norm=self.out_norm, eps=self.config.rms_eps).float()

    def _decode_graphs(self, spans: list[tuple[int, int, list[int]]], kv: KVStorage):
        """drivers/cudagraph.py's DecodeGraphs when this decode step (every sequence brings one
        token) can replay a captured one: the torch path on CUDA with ``cuda_graphs`` on, a batch
        within DecodeGraphs.max_batch (64 rows in fp32, else the largest bucket). Else None."""
        if not (self.cuda_graphs and self.device.type == "cuda" and not self.quantized):
            return None
        from .cudagraph import DecodeGraphs
        if self._graphs is None or self._graphs.kv is not kv:
            self._graphs = DecodeGraphs(self, kv)
        return self._graphs if self._graphs.fits(spans) else None

    def _fused_layers(self):
        """drivers/fused.py's FusedLayers for this model (built on first use), or None."""
        if self._fused is False:
            from .fused import FusedLayers
            self._fused = FusedLayers.of(self)
        return self._fused

    _glu = GLU_SILU                       # the FFN's gated activation, for drivers/fused.py

    def _layer_rope(self, li: int) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        """Layer li's RoPE cos/sin tables and attention window (None: all positions)."""
        return self._cos, self._sin, None

    def _flat_attention(self, kv: KVStorage) -> bool:
        """Attention and K/V writes in C (drivers/attention_kernels.cpp): the quantized path on a
        CPU, fp32 or fp16 pool."""
        return self.quantized and self.device.type == "cpu" and kv.k.dtype in FLAT_KV_DTYPES

    def _linears(self) -> list:
        mats = [self.embed] + [getattr(l, n) for l in self.layers
                               for n in ("wqkv", "wo", "w_gate_up", "w_down")]
        return mats if self.lm_head is self.embed else mats + [self.lm_head]

    def weight_bytes(self) -> int:
        """Bytes the weights occupy in memory (quantized bytes as stored, float copies, norms)."""
        norms = sum(t.numel() * 4 for l in self.layers for t in (l.attn_norm, l.ffn_norm))
        return sum(m.nbytes() for m in self._linears()) + norms + self.out_norm.numel() * 4

    def decode_weight_bytes(self, rows: int = 1) -> int:
        """Weight bytes one forward of `rows` tokens streams from memory (the bandwidth bound)."""
        mats = [self.lm_head] + [getattr(l, n) for l in self.layers
                                 for n in ("wqkv", "wo", "w_gate_up", "w_down")]
        return sum(m.stream_bytes(rows) for m in mats)

    def weight_format(self) -> str:
        """What the matmuls run on, e.g. 'Q4_1+Q8_0 on avx2-fma kernels (row-grouped: Q4_1+Q8_0)',
        'float32', or 'bfloat16, decode steps as CUDA graphs' (drivers/cudagraph.py)."""
        if not self.quantized:
            graphs = ", decode steps as CUDA graphs" if self.device.type == "cuda" and self.cuda_graphs else ""
            return str(self.dtype).replace("torch.", "") + graphs
        kinds = {q for m in self._linears() if isinstance(m, QLinear) for q, _ in m.parts}
        types = sorted({type_name(q) for q in kinds})
        grouped = sorted({type_name(q) for q in kinds if q >= RG_TYPES})
        rg = f" (row-grouped: {'+'.join(grouped)})" if grouped else ""
        a8 = ", 8-bit activations" if self.act8 else ""
        return f"{'+'.join(types)} on {kernel_isa()} kernels{rg}{a8}"

    @property
    def act8(self) -> bool:
        """Whether the matmuls take 8-bit activations (dtype 'a8', or 'auto' on any file but a
        catalog model whose tokens need 13 bits, where the CPU has vpdpbusd)."""
        return any(getattr(m, "act8", False) for m in self._linears())


def _kv_dtype(dtype: torch.dtype, device: torch.device, quantized: bool) -> torch.dtype:
    """The KV pool's element type: fp16 on the quantized CPU path when the kernels can convert it
    (F16C): its attention reads half the bytes (at batch 64 the pool, not the weights, is most of
    a step's traffic), with arithmetic in fp32; LLMOS_KV_DTYPE=fp32 keeps fp32. Else the model's."""
    if not quantized or device.type != "cpu" or os.environ.get("LLMOS_KV_DTYPE", "") == "fp32":
        return dtype
    from .quant import kernels
    lib = kernels()
    return torch.float16 if lib is not None and lib.llmos_kv_f16_supported() else dtype


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def resident_weight_bytes(gf: GGUFModelFile, quantized: bool, dtype: torch.dtype) -> int:
    """Bytes the weights of `gf` will take in memory when loaded this way (checked before loading)."""
    total = 0
    for name in gf.tensor_names:
        t = gf.info(name)
        if quantized and len(t.shape) > 1 and has_kernel(int(t.tensor_type)):
            total += int(t.n_bytes)
        else:
            elem = 4 if (quantized or len(t.shape) == 1) else torch.finfo(dtype).bits // 8
            total += int(t.n_elements) * elem
    return total
