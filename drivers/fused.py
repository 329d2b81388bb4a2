"""A decoder layer as one C call on the quantized CPU path (drivers/layer_kernels.cpp): Llama,
Qwen2 and Gemma 3 layers.

``FusedLayers.of(model)`` builds, once, each layer's argument block from its QLinear weights,
norms and RoPE tables (the model's ``_layer_rope(li)``; Gemma's per-head and post norms from
``layer.extra``); ``forward(x, meta, kv)`` then runs each layer of a step with one ctypes call
instead of ~12-17 Python calls into the same kernels (bit-identical: the same kernels, in the same
order, on the same buffers). Built only when every layer's four matmuls are QLinear (a type
without a kernel keeps the Python loop). ``LLMOS_FUSED=off`` turns it off (A/B runs, tests).
"""

from __future__ import annotations

import ctypes
import os

import torch

from .quant import QLinear, QPart, kernels

_i, _p, _f = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float


class QLin(ctypes.Structure):
    _fields_ = [("parts", ctypes.POINTER(QPart)), ("n_parts", _i), ("K", _i), ("out", _i), ("act8", _i)]


class LayerW(ctypes.Structure):
    _fields_ = [("qkv", QLin), ("o", QLin), ("gu", QLin), ("down", QLin),
                ("attn_norm", _p), ("ffn_norm", _p), ("bqkv", _p), ("q_norm", _p), ("k_norm", _p),
                ("post_attn_norm", _p), ("post_ffw_norm", _p), ("cos_t", _p), ("sin_t", _p),
                ("window", _i), ("glu", _i)]


class Step(ctypes.Structure):
    _fields_ = [("x", _p), ("T", _i), ("hidden", _i), ("eps", _f), ("qkv", _p), ("att", _p), ("gu", _p),
                ("out", _p), ("H", _i), ("KVH", _i), ("D", _i), ("pos", _p),
                ("slots", _p), ("tables", _p), ("max_blocks", _i), ("seq_of", _p), ("block_size", _i),
                ("scale", _f), ("f16", _i)]


def _qlin(lin: QLinear, keep: list) -> QLin:
    parts = (QPart * len(lin.qparts))(*lin.qparts)      # a copy of the QLinear's own parts
    keep.append(parts)
    return QLin(parts, len(lin.parts), lin.in_features, lin.out_features, int(lin.act8))


class FusedLayers:
    """Argument blocks of every layer of one model. Calls must not overlap (one forward at a time)."""

    def __init__(self, model):
        c, self._keep = model.config, []
        self.blocks = []
        ptr = lambda t: None if t is None else t.data_ptr()          # noqa: E731
        for li, layer in enumerate(model.layers):
            cos, sin, window = model._layer_rope(li)
            norms = [layer.extra.get(n) for n in ("attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm")]
            w = LayerW(_qlin(layer.wqkv, self._keep), _qlin(layer.wo, self._keep), _qlin(layer.w_gate_up, self._keep),
                       _qlin(layer.w_down, self._keep), layer.attn_norm.data_ptr(), layer.ffn_norm.data_ptr(),
                       ptr(layer.bqkv), *map(ptr, norms), cos.data_ptr(), sin.data_ptr(), window or 0, model._glu)
            self._keep += [layer.attn_norm, layer.ffn_norm, layer.bqkv, cos, sin, *norms]
            self.blocks.append((w, ctypes.pointer(w)))
        self.qkv_out, self.gu_out = model.layers[0].wqkv.out_features, model.layers[0].w_gate_up.out_features
        self.step = Step()
        self._step_ptr = ctypes.pointer(self.step)
        s = self.step
        s.hidden, s.eps, s.H, s.KVH, s.D = c.hidden_size, c.rms_eps, c.n_heads, c.n_kv_heads, c.head_dim
        s.scale = model._scale
        self._layer = kernels().llmos_decoder_layer
        self._layer.argtypes = [ctypes.POINTER(LayerW), ctypes.POINTER(Step), _p, _p]
        self._kv = (0, 0, 0)                # pool addresses and layer stride: set by begin()

    @staticmethod
    def of(model) -> FusedLayers | None:
        """The model's fused layers, or None when a layer has a matmul without a kernel (or off)."""
        if os.environ.get("LLMOS_FUSED", "") == "off" or kernels() is None:
            return None
        names = ("wqkv", "wo", "w_gate_up", "w_down")
        if not all(isinstance(getattr(l, n), QLinear) for l in model.layers for n in names):
            return None
        return FusedLayers(model)

    def begin(self, x: torch.Tensor, meta, kv) -> list[torch.Tensor]:
        """Set this step's fields; returns the step's scratch buffers (keep them alive until the
        last layer ran)."""
        T, s = x.shape[0], self.step
        bufs = [torch.empty(T, self.qkv_out), torch.empty(T, s.H * s.D), torch.empty(T, self.gu_out),
                torch.empty(T, s.hidden)]
        s.x, s.T = x.data_ptr(), T
        s.qkv, s.att, s.gu, s.out = (b.data_ptr() for b in bufs)
        s.pos, s.slots, s.tables, s.seq_of = (meta.positions.data_ptr(), meta.slots.data_ptr(),
                                              meta.tables.data_ptr(), meta.seq_of.data_ptr())
        s.max_blocks, s.block_size = meta.tables.shape[1], kv.block_size
        s.f16 = int(kv.k.dtype == torch.float16)
        self._kv = (kv.k.data_ptr(), kv.v.data_ptr(), kv.k[0].numel() * kv.k.element_size())
        return bufs

    def run(self, li: int) -> None:
        """Layer li on the step set by begin()."""
        k0, v0, stride = self._kv
        rc = self._layer(self.blocks[li][1], self._step_ptr, k0 + li * stride, v0 + li * stride)
        if rc != 0:
            raise ValueError(f"fused layer {li} failed ({rc})")

    def forward(self, x: torch.Tensor, meta, kv, interrupt=None) -> None:
        """Every layer on the residual stream x (updated in place) for the step `meta` describes;
        raises Preempted between layers once `interrupt` is set."""
        from .llama import Preempted
        scratch = self.begin(x, meta, kv)
        for li in range(len(self.blocks)):
            if interrupt is not None and interrupt.is_set():
                raise Preempted
            self.run(li)
        del scratch
