"""qwen2 and gemma3 on tiny generated models (tests/tinyarch.py): the paged driver against a dense
float64 reference written straight from the GGUF tensors, in the fp32 path and the default
(quantized-kernel) path; a sequence longer than Gemma's sliding window; clear one-line errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tinyarch
from llmos.drivers.gguf import GGUFModelFile, ModelFileError
from llmos.drivers.llama import LlamaModel, SeqInput

BLOCK = 4
WINDOW = 8


def dense_reference(path: str, ids: list[int]) -> torch.Tensor:
    """Logits at every position, the plain way: float64, no paging, no fused weights, rotate-half
    RoPE on the rows as stored, Gemma's block written out from its definition (HF Gemma3)."""
    f = GGUFModelFile(path)
    c, gemma = f.config, f.config.arch == "gemma3"
    w = {n: torch.from_numpy(f.tensor(n)).double() for n in f.tensor_names}
    T, H, KVH, D, eps = len(ids), c.n_heads, c.n_kv_heads, c.head_dim, c.rms_eps

    def norm(x, g):          # the file's weights already hold Gemma's (1 + w)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    def rope(x, base):       # x [T, heads, D]; rotate halves (x[:D/2], x[D/2:])
        inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
        cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None], torch.cat([ang.sin()] * 2, -1)[:, None]
        return x * cos + torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1) * sin

    qpos, kpos = torch.arange(T)[:, None], torch.arange(T)[None]
    x = w["token_embd.weight"][ids] * (c.hidden_size ** 0.5 if gemma else 1.0)
    for i in range(c.n_layers):
        p = f"blk.{i}."
        is_global = not gemma or (i + 1) % 6 == 0
        h = norm(x, w[p + "attn_norm.weight"])
        q, k, v = (h @ w[p + f"attn_{n}.weight"].T + w.get(p + f"attn_{n}.bias", 0.0) for n in "qkv")
        q, k, v = q.view(T, H, D), k.view(T, KVH, D), v.view(T, KVH, D)
        if gemma:
            q, k = norm(q, w[p + "attn_q_norm.weight"]), norm(k, w[p + "attn_k_norm.weight"])
        base = c.rope_theta if is_global else 10000.0
        q, k = rope(q, base), rope(k, base).repeat_interleave(H // KVH, 1)
        v = v.repeat_interleave(H // KVH, 1)
        allowed = (kpos <= qpos) & (True if is_global else qpos - kpos < WINDOW)
        s = torch.einsum("qhd,khd->hqk", q, k) / D ** 0.5
        a = torch.einsum("hqk,khd->qhd", s.masked_fill(~allowed, float("-inf")).softmax(-1), v)
        o = a.reshape(T, H * D) @ w[p + "attn_output.weight"].T
        x = x + (norm(o, w[p + "post_attention_norm.weight"]) if gemma else o)
        h = norm(x, w[p + "ffn_norm.weight"])
        g, u = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        act = F.gelu(g, approximate="tanh") if gemma else F.silu(g)
        o = (act * u) @ w[p + "ffn_down.weight"].T
        x = x + (norm(o, w[p + "post_ffw_norm.weight"]) if gemma else o)
    head = w.get("output.weight", w["token_embd.weight"])
    return (norm(x, w["output_norm.weight"]) @ head.T).float()


ARCHS = {"qwen2": dict(n_layers=2), "gemma3": dict(n_layers=6, head_dim=32, sliding_window=WINDOW)}


@pytest.fixture(scope="module", params=list(ARCHS))
def tiny(request, tmp_path_factory):
    arch = request.param
    return tinyarch.build_arch_model(tmp_path_factory.mktemp(arch) / f"{arch}.gguf", arch, **ARCHS[arch])


def run_mixed_batch(model, prompts, split):
    """Step 1: first chunks (or whole prompts); step 2: the rest of each prompt, plus a decode
    token for the prompts already done; every sequence wants logits. Returns (logits, full ids)."""
    kv = model.new_kv(96, BLOCK)
    ids = list(range(1, 96))
    random.Random(0).shuffle(ids)
    tables = [ids[i * 18:(i + 1) * 18] for i in range(len(prompts))]
    model.forward([SeqInput(p[:n], 0, t) for p, n, t in zip(prompts, split, tables)], kv)
    seqs, full = [], []
    for p, n, t in zip(prompts, split, tables):
        rest = p[n:] or [7]
        seqs.append(SeqInput(rest, n, t))
        full.append(p[:n] + rest)
    return model.forward(seqs, kv), full


def mixed_prompts():
    rng = random.Random(1)
    # lengths straddle the window: whole prefills, chunked prefills, two equal decodes past it
    prompts = [[rng.randrange(6, 500) for _ in range(n)] for n in (23, 23, 9, 30, 40, 5)]
    return prompts, [23, 23, 9, 11, 13, 2]


def test_fp32_paged_mixed_batch_equals_dense_reference(tiny):
    model = LlamaModel.load(tiny, dtype="fp32")
    got, full = run_mixed_batch(model, *mixed_prompts())
    for row, ids in enumerate(full):
        want = dense_reference(tiny, ids)[-1]
        assert torch.allclose(got[row], want, atol=2e-4, rtol=0), (row, (got[row] - want).abs().max())


def test_default_quantized_path_tracks_dense_reference(tmp_path, tiny):
    import gguf
    from llmos.drivers.quant import kernels
    if kernels() is None:
        pytest.skip("no C++ compiler: the default path is the fp32 one")
    arch = GGUFModelFile(tiny).config.arch
    path = tinyarch.build_arch_model(tmp_path / "q8.gguf", arch, qtype=gguf.GGMLQuantizationType.Q8_0,
                                     **ARCHS[arch])
    model = LlamaModel.load(path)
    assert model.quantized and "Q8_0" in model.weight_format()
    got, full = run_mixed_batch(model, *mixed_prompts())
    for row, ids in enumerate(full):
        want = dense_reference(path, ids)[-1]     # the same Q8_0 weights, dequantised, float64
        assert np.corrcoef(got[row].numpy(), want.numpy())[0, 1] > 0.999, row
        assert int(got[row].argmax()) == int(want.argmax()), row


def test_sliding_window_matters_in_the_tiny_gemma(tmp_path):
    """The window is not a no-op here: the same file with a window wider than the prompt gives
    different last logits, so the reference comparison above checks the masking."""
    prompt = list(range(10, 40))
    outs = []
    for window in (WINDOW, 1000):
        path = tinyarch.build_arch_model(tmp_path / f"w{window}.gguf", "gemma3", n_layers=6, head_dim=32,
                                         sliding_window=window)
        m = LlamaModel.load(path, dtype="fp32")
        outs.append(m.forward([SeqInput(prompt, 0, list(range(10)))], m.new_kv(12, BLOCK))[0])
    assert (outs[0] - outs[1]).abs().max() > 0.1


def test_gemma_chat_template_when_the_file_has_none(tiny):
    model = LlamaModel.load(tiny, dtype="fp32")
    text = model.tokenizer.render_chat([{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": "hello"},
                                        {"role": "user", "content": "bye"}])
    if model.config.arch == "gemma3":
        assert text == ("<s><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\n"
                        "hello<end_of_turn>\n<start_of_turn>user\nbye<end_of_turn>\n<start_of_turn>model\n")
    else:
        assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")


def _one_line_error(path: str, match: str):
    with pytest.raises(ModelFileError, match=match) as e:
        LlamaModel.load(path)
    assert "\n" not in str(e.value) and str(e.value).startswith(path)


def test_missing_architecture_parts_are_one_line_errors(tmp_path):
    build = tinyarch.build_arch_model
    _one_line_error(build(tmp_path / "a.gguf", "qwen2", drop=("blk.1.attn_k.bias",)),
                    "missing tensor 'blk.1.attn_k.bias'")
    _one_line_error(build(tmp_path / "b.gguf", "gemma3", drop=("blk.0.attn_q_norm.weight",)),
                    "missing tensor 'blk.0.attn_q_norm.weight'")
    _one_line_error(build(tmp_path / "c.gguf", "gemma3", drop=("gemma3.attention.sliding_window",)),
                    "gemma3: missing metadata key 'gemma3.attention.sliding_window'")
    _one_line_error(build(tmp_path / "d.gguf", "gemma3", metadata={"gemma3.rope.scaling.type": "yarn"}),
                    "RoPE scaling 'yarn' .* is not supported")
    _one_line_error(build(tmp_path / "e.gguf", "gemma3", metadata={"gemma3.final_logit_softcapping": 30.0}),
                    "soft-capping .* not supported")
    _one_line_error(build(tmp_path / "f.gguf", "gemma2"),
                    r"unsupported architecture 'gemma2' \(supported: llama, qwen2, gemma3\)")


def test_layer_pattern_and_rope_from_metadata(tmp_path):
    """A converter's per-layer pattern (True: sliding), local RoPE base and linear scaling are read."""
    path = tinyarch.build_arch_model(tmp_path / "p.gguf", "gemma3", n_layers=4, metadata={
        "gemma3.attention.sliding_window_pattern": [True, False, True, False],
        "gemma3.rope.freq_base_swa": 5000.0, "gemma3.rope.scaling.type": "linear",
        "gemma3.rope.scaling.factor": 8.0, "gemma3.attention.scale": 0.25})
    p = GGUFModelFile(path).config.arch_params
    assert (p.global_layers, p.rope_local_base, p.rope_global_scale, p.attn_scale) == ((1, 3), 5000.0, 0.125, 0.25)
