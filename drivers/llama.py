"""A Llama-family transformer in torch that reads and writes a paged KV pool.

``forward`` takes a flat batch of sequences, each bringing some new tokens (a prefill chunk or one
decode token) at some position, with its block table; it writes the new K/V into the pool, attends
through the block tables (drivers/attention.py) and returns logits only for the sequences that
asked for them. Weights are dequantised from GGUF once at load time into fp32 or bf16.

GGUF stores Q and K rows permuted for interleaved-pair RoPE; they are permuted back at load time so
that RoPE here is the cheaper rotate-half form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .attention import build_metadata, paged_attention
from .device import pick_device, pick_dtype
from .gguf import GGUFModelFile, ModelConfig
from .kvstore import KVStorage
from .linear import Linear


@dataclass
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
    __slots__ = ("attn_norm", "wqkv", "wo", "ffn_norm", "w_gate_up", "w_down")


class LlamaModel:
    """Weights on one device, in one dtype. forward() is pure compute: safe in a worker thread
    as long as nobody else touches the KV pool during it."""

    def __init__(self, config: ModelConfig, layers: list[Layer], embed: torch.Tensor,
                 out_norm: torch.Tensor, lm_head: torch.Tensor, dtype: torch.dtype,
                 device: torch.device, tokenizer=None, path: str = "", weight_bytes: int = 0):
        self.config, self.layers, self.embed = config, layers, embed
        self.out_norm, self.lm_head = out_norm, lm_head
        self.dtype, self.device, self.tokenizer, self.path = dtype, device, tokenizer, path
        self.weight_bytes = weight_bytes
        half = config.head_dim // 2
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, half, dtype=torch.float64) / half))
        angles = torch.outer(torch.arange(config.context_length, dtype=torch.float64), inv_freq)
        self._cos = torch.cat([angles.cos()] * 2, -1).to(device, torch.float32)
        self._sin = torch.cat([angles.sin()] * 2, -1).to(device, torch.float32)
        self._scale = 1.0 / math.sqrt(config.head_dim)

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str, dtype: str = "auto", device: str = "auto",
             progress: bool = False, int8_decode: bool = True) -> "LlamaModel":
        """Load a GGUF file. Raises ModelFileError (one line) before anything is half-built.
        int8_decode: in bf16 on CPU, also keep int8 weights for small batches (drivers/linear.py)."""
        gf = GGUFModelFile(path)
        from .tokenizer import Tokenizer
        tokenizer = Tokenizer.from_metadata(gf.metadata, path=gf.path)
        dev = pick_device(device)
        dt = pick_dtype(dtype, dev)
        c = gf.config

        def t(name: str) -> torch.Tensor:
            return torch.from_numpy(gf.tensor(name))

        def put(x: torch.Tensor, keep_fp32: bool = False) -> torch.Tensor:
            return x.to(dev, torch.float32 if keep_fp32 else dt).contiguous()

        def linear(x: torch.Tensor) -> Linear:
            return Linear(put(x), int8=int8_decode)

        from .progress import steps
        layers = []
        for i in steps(range(c.n_layers), "dequantising", progress):
            p = f"blk.{i}."
            layer = Layer()
            layer.attn_norm = put(t(p + "attn_norm.weight"), keep_fp32=True)
            q = _unpermute(gf.tensor(p + "attn_q.weight"), c.n_heads)
            k = _unpermute(gf.tensor(p + "attn_k.weight"), c.n_kv_heads)
            layer.wqkv = linear(torch.from_numpy(np.concatenate([q, k, gf.tensor(p + "attn_v.weight")])))
            layer.wo = linear(t(p + "attn_output.weight"))
            layer.ffn_norm = put(t(p + "ffn_norm.weight"), keep_fp32=True)
            layer.w_gate_up = linear(torch.cat([t(p + "ffn_gate.weight"), t(p + "ffn_up.weight")]))
            layer.w_down = linear(t(p + "ffn_down.weight"))
            layers.append(layer)
        embed = put(t("token_embd.weight"))
        lm_head = Linear(embed if c.tied_embeddings else put(t("output.weight")), int8=int8_decode)
        return cls(c, layers, embed, put(t("output_norm.weight"), keep_fp32=True), lm_head, dt, dev,
                   tokenizer, gf.path, gf.tensor_bytes())

    def new_kv(self, num_blocks: int, block_size: int) -> KVStorage:
        c = self.config
        return KVStorage(c.n_layers, num_blocks, block_size, c.n_kv_heads, c.head_dim,
                         self.dtype, self.device)

    def kv_bytes_per_token(self) -> int:
        c = self.config
        return 2 * c.n_layers * c.n_kv_heads * c.head_dim * torch.finfo(self.dtype).bits // 8

    # ---- compute -----------------------------------------------------------------------------
    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), w, self.config.rms_eps).to(self.dtype)

    @torch.inference_mode()
    def forward(self, seqs: list[SeqInput], kv: KVStorage) -> torch.Tensor:
        """Run one step. Returns float32 logits [n_want, vocab], rows in the order of the seqs
        with want_logits. Caller guarantees block tables are valid and exclusively writable at
        the new tokens' slots."""
        c, dev = self.config, self.device
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
        meta = build_metadata([(s.start_pos, len(s.token_ids), s.block_table) for s in seqs],
                              order, kv.block_size, dev)
        want = torch.tensor([last_row[i] for i, s in enumerate(seqs) if s.want_logits],
                            dtype=torch.long, device=dev)
        positions = torch.tensor(pos, dtype=torch.long, device=dev)
        cos = self._cos[positions].unsqueeze(1)
        sin = self._sin[positions].unsqueeze(1)
        x = self.embed[torch.tensor(ids, dtype=torch.long, device=dev)].float()  # residual stream: fp32
        T, H, KVH, D = len(ids), c.n_heads, c.n_kv_heads, c.head_dim
        half = D // 2
        for li, layer in enumerate(self.layers):
            h = self._norm(x, layer.attn_norm)
            qkv = layer.wqkv(h)
            qk = qkv[:, :(H + KVH) * D].view(T, H + KVH, D).float()     # RoPE on q and k at once
            qk = (qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], -1) * sin).to(self.dtype)
            q, k = qk[:, :H], qk[:, H:]
            v = qkv[:, (H + KVH) * D:].view(T, KVH, D)
            k_cache, v_cache = kv.k[li], kv.v[li]
            k_cache.view(-1, KVH, D).index_copy_(0, meta.slots, k)
            v_cache.view(-1, KVH, D).index_copy_(0, meta.slots, v)
            attn = paged_attention(q, k_cache, v_cache, meta, self._scale)
            x = x + layer.wo(attn).float()
            h = self._norm(x, layer.ffn_norm)
            gate, up = layer.w_gate_up(h).chunk(2, dim=-1)
            x = x + layer.w_down(F.silu(gate) * up).float()
        if want.numel() == 0:
            return torch.empty(0, c.vocab_size, device=dev)
        x = self._norm(x.index_select(0, want), self.out_norm)
        return self.lm_head(x).float()

    def decode_weight_bytes(self, rows: int = 1) -> int:
        """Weight bytes one forward of `rows` tokens streams from memory (the bandwidth bound)."""
        from .linear import INT8_MAX_ROWS
        total = 0
        for lin in [self.lm_head] + [getattr(l, n) for l in self.layers
                                     for n in ("wqkv", "wo", "w_gate_up", "w_down")]:
            if lin.w8 is not None and rows <= INT8_MAX_ROWS:
                total += lin.w8.numel() + lin.scales.numel() * lin.scales.element_size()
            else:
                total += lin.weight.numel() * lin.weight.element_size()
        return total
