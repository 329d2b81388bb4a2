"""Gemma 3 on the Llama driver's weights, KV pool and paged attention.

Loaded by ``LlamaModel.load`` (drivers/arch.py picks this class for ``gemma3`` files); it reuses
the loader (fused QKV and gate/up, quantized or float) and ``forward`` (metadata for its windowed
layers included), and differs in ``_compute``, the layers, only:

  - the embeddings are scaled by sqrt(hidden);
  - RMSNorm weights are used as stored: llama.cpp's converter already folded Gemma's (1 + w) into
    them (the 270M file's norms have means of 1-30, and zeros where w = -1);
  - q and k get a per-head RMSNorm before RoPE;
  - layers in ``Gemma3Params.global_layers`` attend to everything with RoPE base
    ``rope.freq_base``; the others attend to the last ``sliding_window`` positions with RoPE base
    10000 (rotate-half RoPE for both: Gemma's q/k rows are not permuted in GGUF);
  - attention output and FFN output each pass an RMSNorm (post_attention_norm, post_ffw_norm)
    before the residual add; the FFN is GELU(tanh)(gate) * up;
  - the softmax scale is ``Gemma3Params.attn_scale``; the output head is the tied embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .arch import Gemma3Params
from .attention import FlatMetadata, paged_attention, paged_attention_flat, store_kv_flat
from .kvstore import KVStorage
from .llama import LlamaModel, Preempted
from .quant import GLU_GELU_TANH, kernels, rms_norm_, rope_


def _rope_tables(base: float, scale: float, head_dim: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [n, head_dim] for rotate-half RoPE with `base`; positions multiplied by `scale`."""
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, dtype=torch.float64) / half))
    angles = torch.outer(torch.arange(n, dtype=torch.float64) * scale, inv_freq)
    cat = lambda t: torch.cat([t] * 2, -1).to(device, torch.float32).contiguous()  # noqa: E731
    return cat(angles.cos()), cat(angles.sin())


class Gemma3Model(LlamaModel):
    """A LlamaModel whose layers run Gemma 3's block (see the module docstring)."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        p: Gemma3Params = config.arch_params
        self.params = p
        self._global = frozenset(p.global_layers)
        n, D = config.context_length, config.head_dim
        # Only global layers at the file's base need the parent's tables rebuilt when scaled.
        if p.rope_global_scale != 1.0:
            self._cos, self._sin = _rope_tables(config.rope_theta, p.rope_global_scale, D, n, self.device)
        self._cos_local, self._sin_local = _rope_tables(p.rope_local_base, 1.0, D, n, self.device)
        self._scale = p.attn_scale
        self.sliding_window = p.sliding_window

    _glu = GLU_GELU_TANH

    def _layer_rope(self, li: int) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        if li in self._global:
            return self._cos, self._sin, None
        return self._cos_local, self._sin_local, self.params.sliding_window

    def _qk_norm_rope(self, qkv: torch.Tensor, positions: torch.Tensor, li: int):
        """Per-head RMSNorm of q and k, then RoPE with the layer's tables; returns q, k views."""
        c, layer = self.config, self.layers[li]
        T, H, KVH, D = qkv.shape[0], c.n_heads, c.n_kv_heads, c.head_dim
        qk = qkv[:, :(H + KVH) * D].view(T, H + KVH, D)
        cos, sin, _ = self._layer_rope(li)
        if self.quantized:                                   # fp32, in place, three C calls
            rms_norm_(qkv, H, layer.extra["attn_q_norm"], c.rms_eps)
            rms_norm_(qkv, KVH, layer.extra["attn_k_norm"], c.rms_eps, offset=H * D)
            rope_(qkv, H + KVH, D, positions, cos, sin)
            return qk[:, :H], qk[:, H:]
        q = F.rms_norm(qk[:, :H].float(), (D,), layer.extra["attn_q_norm"], c.rms_eps)
        k = F.rms_norm(qk[:, H:].float(), (D,), layer.extra["attn_k_norm"], c.rms_eps)
        both = torch.cat([q, k], 1)
        cs, sn, half = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1), D // 2
        both = (both * cs + torch.cat([-both[..., half:], both[..., :half]], -1) * sn).to(self.dtype)
        return both[:, :H], both[:, H:]

    def _add_normed(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> None:
        """x += RMSNorm(y) * w (x: the fp32 residual stream); in C on the quantized path."""
        if self.quantized:
            rms_norm_(y, 1, w, self.config.rms_eps, add_to=x)
        else:
            x += F.rms_norm(y.float(), (self.config.hidden_size,), w, self.config.rms_eps)

    def _compute(self, ids: torch.Tensor, positions: torch.Tensor, meta, local_meta, kv: KVStorage,
                 want: torch.Tensor, interrupt, logits_out: torch.Tensor | None = None,
                 greedy: bool = False) -> torch.Tensor:
        """As LlamaModel._compute (same contract), with Gemma 3's block."""
        c, p = self.config, self.params
        flat = meta if isinstance(meta, FlatMetadata) else None
        x = self._embed(ids) * p.embed_scale
        T, H, KVH, D, eps = ids.shape[0], c.n_heads, c.n_kv_heads, c.head_dim, c.rms_eps
        fused = self._fused_layers() if flat is not None else None
        if fused is not None:             # the loop below, each layer one C call (drivers/fused.py)
            fused.forward(x, flat, kv, interrupt)
        for li, layer in enumerate(self.layers if fused is None else ()):
            if interrupt is not None and interrupt.is_set():
                raise Preempted
            window = self._layer_rope(li)[2]          # None: a global layer
            qkv = layer.wqkv(x, norm=layer.attn_norm, eps=eps)
            q, k = self._qk_norm_rope(qkv, positions, li)
            k_cache, v_cache = kv.k[li], kv.v[li]
            if flat is not None:                  # quantized CPU path: rotated q, k are in qkv
                store_kv_flat(kernels(), qkv, H, D, k_cache, v_cache, flat)
                a = paged_attention_flat(kernels(), qkv, H, D, k_cache, v_cache, flat, self._scale, window)
            else:
                v = qkv[:, (H + KVH) * D:].view(T, KVH, D)
                k_cache.view(-1, KVH, D).index_copy_(0, meta.slots, k.to(k_cache.dtype))
                v_cache.view(-1, KVH, D).index_copy_(0, meta.slots, v.to(v_cache.dtype))
                a = paged_attention(q.to(k_cache.dtype), k_cache, v_cache, meta if window is None else local_meta,
                                    self._scale)
            self._add_normed(x, layer.wo(a), layer.extra["post_attention_norm"])
            y = layer.w_down(layer.w_gate_up(x, norm=layer.ffn_norm, eps=eps), geglu=True)
            self._add_normed(x, y, layer.extra["post_ffw_norm"])
        return self._logits(x, want, interrupt, logits_out, greedy)
