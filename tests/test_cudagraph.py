"""Decode steps replayed from CUDA graphs (drivers/cudagraph.py).

On any machine: the static step a graph captures (bucketed shapes, metadata computed on the
device, padded rows on the pad block) run eagerly gives the logits and the KV writes of an
ordinary forward, for Llama and for Gemma 3's windowed layers. With a GPU: the captured replay
gives what eager CUDA gives, and a step replays instead of launching its kernels."""

from __future__ import annotations

import pytest
import torch

import tinyarch
from llmos.drivers.attention import decode_metadata
from llmos.drivers.cudagraph import DecodeGraphs, bucket_width
from llmos.drivers.llama import LlamaModel, Preempted, SeqInput

BS = 4
CUDA = torch.cuda.is_available()


def decode_step(model, lengths: list[int], seed: int = 0, want=None):
    """A KV pool holding a prefill of each length (scattered block tables), and the next step's
    decode inputs: one token per sequence at position length."""
    g = torch.Generator().manual_seed(seed)
    per_seq = -(-(max(lengths) + 1) // BS)
    kv = model.new_kv(len(lengths) * per_seq + 2, BS)
    order = torch.randperm(kv.num_blocks, generator=g).tolist()
    tables = [order[i * per_seq:(i + 1) * per_seq] for i in range(len(lengths))]
    prompts = [torch.randint(3, 500, (n,), generator=g).tolist() for n in lengths]
    model.forward([SeqInput(p, 0, t, want_logits=False) for p, t in zip(prompts, tables)], kv)
    want = want or [True] * len(lengths)
    step = [SeqInput([7 + i], n, t, want_logits=w) for i, (n, t, w) in enumerate(zip(lengths, tables, want))]
    return kv, step


def clone_kv(kv):
    copy = type(kv).__new__(type(kv))
    copy.__dict__.update(kv.__dict__)
    copy.k, copy.v = kv.k.clone(), kv.v.clone()
    return copy


def graphs_vs_forward(model, lengths, want=None, capture=False):
    kv, step = decode_step(model, lengths, want=want)
    kv2 = clone_kv(kv)
    model.cuda_graphs = False
    eager = model.forward(step, kv)
    graphs = DecodeGraphs(model, kv2, capture=capture)
    order, ids, pos, spans, rows = model._layout(step)
    assert graphs.fits(spans)
    static = graphs.run(ids, spans, rows)
    return eager, static, kv, kv2, graphs


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    path = tinyarch.build_arch_model(tmp_path_factory.mktemp("g3") / "g.gguf", "gemma3", n_layers=6,
                                     sliding_window=8)
    return LlamaModel.load(path, dtype="fp32", device="cpu")


@pytest.mark.parametrize("lengths", [[5], [3, 17, 9], [1, 30, 2, 12, 8]])
def test_the_static_step_gives_the_logits_and_kv_of_a_forward(model, lengths):
    eager, static, kv, kv2, graphs = graphs_vs_forward(model, lengths)
    assert static.shape == eager.shape
    torch.testing.assert_close(static, eager, rtol=1e-4, atol=1e-4)
    real = slice(0, kv.num_blocks)              # everything but the pad block is as forward left it
    torch.testing.assert_close(kv2.k[:, real], kv.k[:, real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kv2.v[:, real], kv.v[:, real], rtol=1e-5, atol=1e-5)
    (batch, width), = graphs.steps
    assert batch >= len(lengths) and width * BS >= max(lengths) + 1


def test_rows_that_want_no_logits_are_left_out(model):
    eager, static, *_ = graphs_vs_forward(model, [4, 11, 6], want=[True, False, True])
    assert static.shape[0] == 2
    torch.testing.assert_close(static, eager, rtol=1e-4, atol=1e-4)


def test_gemma3_windowed_layers_in_the_static_step(gemma3):
    lengths = [20, 3, 13]                          # beyond the window of 8 and within it
    eager, static, *_ = graphs_vs_forward(gemma3, lengths)
    torch.testing.assert_close(static, eager, rtol=1e-4, atol=1e-4)


def test_the_window_of_decode_metadata():
    tables = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 9]])
    meta = decode_metadata(tables, torch.tensor([14, 5]), 4, window=3)
    g, = meta.groups
    assert g.ctx == 16 and not g.causal
    assert g.mask[0, 0, 0].nonzero().flatten().tolist() == [11, 12, 13]
    assert g.mask[1, 0, 0].nonzero().flatten().tolist() == [2, 3, 4]
    assert meta.slots.tolist() == [6 * 4 + 1, 8 * 4 + 0]


def test_buckets_are_reused_and_widths_are_powers_of_two(model):
    kv, step = decode_step(model, [2, 6, 9])
    graphs = DecodeGraphs(model, kv, capture=False)
    for seqs in (step[:2], step[:1], step[1:], step):
        _, ids, _, spans, rows = model._layout(seqs)
        graphs.run(ids, spans, rows)
    assert sorted(graphs.steps) == [(1, 4), (2, 4), (4, 4)]
    assert [bucket_width(n, 256) for n in (1, 4, 5, 9, 200)] == [4, 4, 8, 16, 256]
    assert bucket_width(129, 200) == 200                # never wider than a whole context


def test_a_prefill_is_no_decode_step(model):
    kv, step = decode_step(model, [2, 6])
    graphs = DecodeGraphs(model, kv, capture=False)
    _, _, _, spans, _ = model._layout([SeqInput([1, 2], 3, step[0].block_table)] + step[1:])
    assert not graphs.fits(spans)


def test_fp32_steps_above_64_rows_run_eagerly_and_bf16_ones_up_to_256(tiny_model_path):
    """fp32 graphs lost to eager above 64 rows on an H100 (their masked GQA attention); bf16 won."""
    spans = [(5, 1, [1, 2])] * 257
    for dtype, largest in (("fp32", 64), ("bf16", 256)):
        model = LlamaModel.load(tiny_model_path, dtype=dtype, device="cpu")
        graphs = DecodeGraphs(model, model.new_kv(4, BS), capture=False)
        assert graphs.fits(spans[:largest]) and not graphs.fits(spans[:largest + 1])


def test_an_interrupt_before_the_replay_preempts(model):
    import threading
    kv, step = decode_step(model, [2, 6])
    graphs = DecodeGraphs(model, kv, capture=False)
    stop = threading.Event()
    stop.set()
    _, ids, _, spans, rows = model._layout(step)
    with pytest.raises(Preempted):
        graphs.run(ids, spans, rows, stop)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch,dtype", [("llama", "fp32"), ("llama", "bf16"), ("gemma3", "fp32")])
def test_a_replayed_step_equals_eager_cuda(tiny_model_path, tmp_path, arch, dtype):
    path = tiny_model_path if arch == "llama" else \
        tinyarch.build_arch_model(tmp_path / "g.gguf", "gemma3", n_layers=6, sliding_window=8)
    model = LlamaModel.load(path, dtype=dtype, device="cuda")
    lengths = [5, 40, 17, 2, 9]
    kv, step = decode_step(model, lengths)
    kv2 = clone_kv(kv)
    model.cuda_graphs = False
    eager = model.forward(step, kv)
    model.cuda_graphs = True
    replayed = [model.forward(step, kv2) for _ in range(2)]          # capture, then replay
    assert model._graphs is not None and all(s.graph is not None for s in model._graphs.steps.values())
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == "fp32" else dict(rtol=0.05, atol=0.1)
    for r in replayed:
        torch.testing.assert_close(r, eager, **tol)
    assert r.argmax(-1).tolist() == eager.argmax(-1).tolist()


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_greedy_decoding_with_graphs_equals_eager_cuda(tiny_model_path):
    from kernelkit import driver_greedy
    model = LlamaModel.load(tiny_model_path, dtype="fp32", device="cuda")
    prompt = list(range(5, 25))
    model.cuda_graphs = False
    eager = driver_greedy(model, prompt, 24)
    model.cuda_graphs = True
    assert driver_greedy(model, prompt, 24) == eager
    assert model._graphs is not None and model._graphs.steps
    assert model.weight_format() == "float32, decode steps as CUDA graphs"



@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_an_engine_on_cuda_with_graphs_gives_the_tokens_of_eager_cuda(tiny_model_path):
    """Continuous batching (prefill chunks between decode steps, processes ending at different
    steps, so buckets change) through the kernel's engine."""
    from kernelkit import greedy, make_engine, prompt
    model = LlamaModel.load(tiny_model_path, dtype="fp32", device="cuda")
    outs = []
    for graphs in (False, True):
        model.cuda_graphs = graphs
        e = make_engine(model, 256, prefix_cache=False)
        procs = [e.spawn(prompt(s, 5 + 9 * s), greedy(6 + 5 * s)) for s in range(6)]
        e.run_until_idle()
        outs.append([p.output_ids for p in procs])
    assert outs[1] == outs[0]
    assert len(model._graphs.steps) >= 3
