"""Tiny deterministic qwen2 and gemma3 GGUF files for tests (tests/tinymodel.py does llama).

Same vocabulary, weight scales and writer as tinymodel (read its docstring), plus what each
architecture adds, laid out as llama.cpp's converter writes them (q/k rows NOT permuted: both run
rotate-half RoPE):
  qwen2   q/k/v biases N(0, 0.5) (large enough that forgetting them changes the argmax).
  gemma3  head_dim != hidden / heads (key_length), per-head q/k norms, post-attention and post-FFN
          norms (all stored with Gemma's +1 already folded in, as the converter does), tied
          embeddings, a small sliding window and the every-6th-layer-global rule (6 layers: layer
          5 is global), no chat template (the driver supplies Gemma's).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tinymodel import _matrix, _norm, sp_vocab, write_tensors

_FILE_TYPES = {None: "ALL_F32", "Q8_0": "MOSTLY_Q8_0"}


def build_arch_model(path, arch: str, *, seed: int = 0, n_layers: int = 2, hidden: int = 64,
                     n_heads: int = 4, n_kv_heads: int = 2, head_dim: int | None = None,
                     intermediate: int = 128, context_length: int = 256, vocab_size: int = 512,
                     sliding_window: int = 8, qtype=None, metadata: dict | None = None,
                     drop: tuple[str, ...] = ()) -> str:
    """Write a tiny `arch` ('qwen2' or 'gemma3') GGUF at `path`; return it as a str.
    qtype: None (float32) or a gguf.GGMLQuantizationType for every 2-D matrix. metadata: extra
    (key, value) pairs written as given (str/float/int/list); drop: tensor or metadata keys to leave out."""
    import gguf

    head_dim = head_dim or hidden // n_heads
    q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
    tokens, scores, types = sp_vocab(vocab_size)
    rng = np.random.default_rng(seed)
    t: dict[str, np.ndarray] = {"token_embd.weight": rng.standard_normal((vocab_size, hidden)).astype(np.float32)}
    for i in range(n_layers):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = _norm(rng, hidden)
        t[p + "attn_q.weight"] = _matrix(rng, q_dim, hidden)
        t[p + "attn_k.weight"] = _matrix(rng, kv_dim, hidden)
        t[p + "attn_v.weight"] = _matrix(rng, kv_dim, hidden)
        t[p + "attn_output.weight"] = _matrix(rng, hidden, q_dim)
        t[p + "ffn_norm.weight"] = _norm(rng, hidden)
        t[p + "ffn_gate.weight"] = _matrix(rng, intermediate, hidden)
        t[p + "ffn_up.weight"] = _matrix(rng, intermediate, hidden)
        t[p + "ffn_down.weight"] = _matrix(rng, hidden, intermediate)
        if arch == "qwen2":
            for x, n in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
                t[p + f"attn_{x}.bias"] = (0.5 * rng.standard_normal(n)).astype(np.float32)
        elif arch == "gemma3":
            t[p + "attn_q_norm.weight"] = _norm(rng, head_dim)
            t[p + "attn_k_norm.weight"] = _norm(rng, head_dim)
            t[p + "post_attention_norm.weight"] = _norm(rng, hidden)
            t[p + "post_ffw_norm.weight"] = _norm(rng, hidden)
    t["output_norm.weight"] = _norm(rng, hidden)
    if arch == "qwen2":
        t["output.weight"] = 3.0 * _matrix(rng, vocab_size, hidden)

    path = str(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(path, arch)
    kv = {"general.name": f"tiny-{arch}-{n_layers}x{hidden}-seed{seed}",
          f"{arch}.block_count": n_layers, f"{arch}.context_length": context_length,
          f"{arch}.embedding_length": hidden, f"{arch}.feed_forward_length": intermediate,
          f"{arch}.attention.head_count": n_heads, f"{arch}.attention.head_count_kv": n_kv_heads,
          f"{arch}.attention.key_length": head_dim, f"{arch}.attention.value_length": head_dim,
          f"{arch}.rope.freq_base": 1000000.0,
          f"{arch}.attention.layer_norm_rms_epsilon": 1e-6,
          "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
          "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.bos_token_id": 1,
          "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.add_bos_token": True,
          "tokenizer.ggml.add_space_prefix": True}
    if arch == "gemma3":
        kv[f"{arch}.attention.sliding_window"] = sliding_window
    kv.update(metadata or {})
    for key, value in kv.items():
        if key in drop:
            continue
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, value)
    if _FILE_TYPES.get(getattr(qtype, "name", qtype)):
        w.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[getattr(qtype, "name", qtype)]))
    return write_tensors(w, {n: a for n, a in t.items() if n not in drop}, qtype, path)
