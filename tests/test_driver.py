"""The driver on the tiny generated model: paged attention vs a dense reference, batch invariance,
quantised weights, and clear errors for bad model files and bad inputs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT

import tinymodel
from llmos.drivers.gguf import GGUFModelFile, ModelFileError
from llmos.drivers.llama import LlamaModel, SeqInput
from llmos.drivers.quant import act8_supported, kernels

BLOCK = 4


def dense_reference(path: str, ids: list[int]) -> torch.Tensor:
    """Logits of every position, computed the plain way straight from the GGUF tensors: no paging,
    no weight repacking, interleaved-pair RoPE exactly as llama.cpp applies it to GGUF weights."""
    f = GGUFModelFile(path)
    c = f.config
    w = {n: torch.from_numpy(f.tensor(n)).double() for n in f.tensor_names}

    def norm(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.rms_eps) * g

    def rope(x):  # x [T, heads, D]; rotate adjacent pairs (2i, 2i+1)
        T, D = x.shape[0], x.shape[-1]
        inv = 1.0 / c.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
        cos, sin = ang.cos()[:, None], ang.sin()[:, None]
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)

    T, H, KVH, D = len(ids), c.n_heads, c.n_kv_heads, c.head_dim
    x = w["token_embd.weight"][ids]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(c.n_layers):
        p = f"blk.{i}."
        h = norm(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).view(T, H, D))
        k = rope((h @ w[p + "attn_k.weight"].T).view(T, KVH, D)).repeat_interleave(H // KVH, 1)
        v = (h @ w[p + "attn_v.weight"].T).view(T, KVH, D).repeat_interleave(H // KVH, 1)
        s = torch.einsum("qhd,khd->hqk", q, k) / D ** 0.5
        a = torch.einsum("hqk,khd->qhd", s.masked_fill(~causal, float("-inf")).softmax(-1), v)
        x = x + a.reshape(T, H * D) @ w[p + "attn_output.weight"].T
        h = norm(x, w[p + "ffn_norm.weight"])
        g, u = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ w[p + "ffn_down.weight"].T
    head = w.get("output.weight", w["token_embd.weight"])
    return (norm(x, w["output_norm.weight"]) @ head.T).float()


def scattered_tables(n_seqs: int, blocks_each: int, num_blocks: int, seed: int = 0):
    """Disjoint, shuffled (non-contiguous) block tables."""
    ids = list(range(1, num_blocks))
    random.Random(seed).shuffle(ids)
    return [ids[i * blocks_each:(i + 1) * blocks_each] for i in range(n_seqs)]


@pytest.fixture(params=["fp32", "auto"])
def either_path(request, model, tiny_model_path):
    """The fp32 reference path (torch attention), and the default path on a CPU (quantized
    weights when the file has them; attention and K/V writes in C, drivers/attention_kernels.cpp)."""
    if request.param == "fp32":
        return model
    auto = LlamaModel.load(tiny_model_path, device="cpu")
    assert auto._flat_attention(auto.new_kv(2, BLOCK)) == (kernels() is not None)
    return auto


def test_paged_mixed_batch_equals_dense_reference(either_path, tiny_model_path):
    model = either_path
    rng = random.Random(1)
    prompts = [[rng.randrange(6, 500) for _ in range(n)] for n in (23, 9, 17, 17, 30)]
    kv = model.new_kv(64, BLOCK)
    tables = scattered_tables(len(prompts), 10, 64)
    # step 1: whole prefills for seqs 0-1, first chunks for 2-4 (chunked prefill)
    split = [len(prompts[0]), len(prompts[1]), 8, 5, 11]
    model.forward([SeqInput(p[:n], 0, t) for p, n, t in zip(prompts, split, tables)], kv)
    # step 2: decodes for 0-1 mixed with the remaining chunks of 2-4; every sequence wants logits
    nxt = [7, 8]
    seqs = [SeqInput([nxt[0]], len(prompts[0]), tables[0]), SeqInput([nxt[1]], len(prompts[1]), tables[1])]
    seqs += [SeqInput(p[n:], n, t) for p, n, t in zip(prompts[2:], split[2:], tables[2:])]
    got = model.forward(seqs, kv)
    full = [prompts[0] + [nxt[0]], prompts[1] + [nxt[1]]] + prompts[2:]
    atol = 1e-4 if kv.k.dtype == torch.float32 else 5e-3     # an fp16 pool rounds K and V (~5e-4 relative)
    for row, ids in enumerate(full):
        want = dense_reference(tiny_model_path, ids)[-1]
        assert torch.allclose(got[row], want, atol=atol, rtol=0), (row, (got[row] - want).abs().max())


def greedy(model, prompt, n, kv, table, others=(), rows=None):
    """Greedy-decode `n` tokens for `prompt`; each step also carries `others`' work (a list of
    (SeqInput-factory) callables) so the sequence runs inside a mixed batch. rows: a list that
    gets each step's logits of the sequence."""
    out, pos = [], 0
    ids = list(prompt)
    for step in range(n):
        seqs = [SeqInput(ids, pos, table)] + [make(step) for make in others]
        logits = model.forward(seqs, kv)
        if rows is not None:
            rows.append(logits[0].clone())
        pos += len(ids)
        ids = [int(logits[0].argmax())]
        out.append(ids[0])
    return out


def test_batch_invariance_greedy(either_path):
    assert_batch_invariant(either_path)


def test_batch_invariance_greedy_on_8_bit_activations(tmp_path):
    """dtype 'a8' (where the CPU has vpdpbusd): one-token steps alone take the a8 GEMV passes,
    the batched steps the a8 GEMM; a token's bits, and so its greedy tokens, are the same."""
    model = LlamaModel.load(tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=QT.Q4_0), dtype="a8")
    assert model.act8 == act8_supported()
    assert_batch_invariant(model, same_bits=True)


def assert_batch_invariant(model, same_bits=False):
    """A sequence greedy-decoded alone and inside steps that carry other sequences' prefill chunks
    and decodes gets the same tokens (same_bits: the same logits, bit for bit)."""
    rng = random.Random(2)
    prompt = [rng.randrange(6, 500) for _ in range(19)]
    kv = model.new_kv(200, BLOCK)
    tables = scattered_tables(8, 12, 200, seed=3)
    alone_rows, batched_rows = [], []
    alone = greedy(model, prompt, 12, kv, tables[0], rows=alone_rows)
    noise = [[rng.randrange(6, 500) for _ in range(40)] for _ in range(6)]

    def other(i):  # seq i: prefill chunks of 7 tokens, then single-token decodes
        def make(step):
            start = min(step * 7, 35) + max(0, step - 5)
            ids = noise[i][start:start + 7] if step < 5 else [noise[i][step % 40]]
            return SeqInput(ids, start, tables[i + 1], want_logits=step % 2 == 0)
        return make
    batched = greedy(model, prompt, 12, kv, tables[0], [other(i) for i in range(6)], rows=batched_rows)
    assert alone == batched
    assert len(set(alone)) > 1   # the tiny model does not degenerate into one token
    if same_bits:
        assert all(torch.equal(a, b) for a, b in zip(alone_rows, batched_rows))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_quantised_weights_load_and_track_f32(tmp_path, qtype):
    import gguf
    f32 = tinymodel.build_tiny_model(tmp_path / "f32.gguf")
    q = tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=getattr(gguf.GGMLQuantizationType, qtype))
    ids = list(range(10, 30))
    outs = []
    for path in (f32, q):
        m = LlamaModel.load(str(path), dtype="fp32")
        outs.append(m.forward([SeqInput(ids, 0, [1, 2, 3, 4, 5])], m.new_kv(8, BLOCK))[0])
    corr = np.corrcoef(outs[0].cpu().numpy(), outs[1].cpu().numpy())[0, 1]
    assert corr > 0.9


def test_bf16_close_to_fp32(tiny_model_path, model):
    m16 = LlamaModel.load(tiny_model_path, dtype="bf16")
    ids = list(range(40, 60))
    a = model.forward([SeqInput(ids, 0, [1, 2, 3, 4, 5])], model.new_kv(8, BLOCK))[0]
    b = m16.forward([SeqInput(ids, 0, [1, 2, 3, 4, 5])], m16.new_kv(8, BLOCK))[0]
    assert m16.dtype == torch.bfloat16
    assert np.corrcoef(a.cpu().numpy(), b.cpu().numpy())[0, 1] > 0.99


def test_prompt_longer_than_context_is_a_clear_error(model):
    n = model.config.context_length + 1
    with pytest.raises(ValueError, match="exceeds the model context"):
        model.forward([SeqInput([5] * n, 0, list(range(n // BLOCK + 1)))], model.new_kv(2, BLOCK))


def _corrupt(tmp_path, src, name, edit) -> str:
    data = bytearray(open(src, "rb").read())
    edit(data)
    out = tmp_path / name
    out.write_bytes(bytes(data))
    return str(out)


def test_bad_model_files_give_one_line_errors(tmp_path, tiny_model_path):
    size = len(open(tiny_model_path, "rb").read())
    cases = {
        "missing.gguf": (None, "no such model file"),
        "truncated.gguf": (lambda d: d.__delitem__(slice(size - 1000, None)), "truncated"),
        "cut-in-half.gguf": (lambda d: d.__delitem__(slice(size // 2, None)), "truncated"),
        "header.gguf": (lambda d: d.__delitem__(slice(40, None)), "not a readable GGUF"),
        "magic.gguf": (lambda d: d.__setitem__(slice(0, 4), b"NOPE"), "not a readable GGUF"),
    }
    for name, (edit, message) in cases.items():
        path = str(tmp_path / name) if edit is None else _corrupt(tmp_path, tiny_model_path, name, edit)
        with pytest.raises(ModelFileError) as e:
            LlamaModel.load(path)
        assert message in e.value.problem and "\n" not in str(e.value)
        assert "reshape" not in e.value.problem
        assert str(e.value).startswith(path)


def test_unknown_architecture_and_missing_tensor(tmp_path):
    import gguf
    w = gguf.GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ModelFileError, match="unsupported architecture 'mamba'"):
        LlamaModel.load(str(tmp_path / "mamba.gguf"))
    path = tinymodel.build_tiny_model(tmp_path / "ok.gguf")
    # drop one tensor by rewriting the file without it
    src = GGUFModelFile(str(path))
    w = gguf.GGUFWriter(str(tmp_path / "holey.gguf"), "llama")
    for k, v in src.metadata.items():
        if k.startswith("llama."):
            if isinstance(v, float):
                w.add_float32(k, v)
            else:
                w.add_uint32(k, v)
    for n in src.tensor_names:
        if n != "blk.1.ffn_up.weight":
            w.add_tensor(n, src.tensor(n))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ModelFileError, match="missing tensor 'blk.1.ffn_up.weight'"):
        GGUFModelFile(str(tmp_path / "holey.gguf"))


def test_unsupported_tensor_type_is_named(tmp_path):
    import gguf
    path = tinymodel.build_tiny_model(tmp_path / "iq.gguf", qtype=gguf.GGMLQuantizationType.Q5_0)
    # Q5_0 is supported; a Q2_K tensor is not: patch the type id of one tensor in place
    src = GGUFModelFile(str(path))
    assert src.config.n_layers == 2
    data = bytearray(open(path, "rb").read())
    t = src._tensors["blk.0.ffn_up.weight"]
    # the type id is the uint32 right after the tensor's dims in its info record
    name = b"blk.0.ffn_up.weight"
    at = data.index(name) + len(name) + 4 + 8 * len(t.shape)
    assert int.from_bytes(data[at:at + 4], "little") == t.tensor_type
    data[at:at + 4] = int(gguf.GGMLQuantizationType.IQ2_XXS).to_bytes(4, "little")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="unsupported type|not a readable"):
        GGUFModelFile(str(bad))
