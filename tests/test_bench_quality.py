"""`llmos bench quality`: the fp32 path with its matmul inputs rounded to a b-bit grid, against a
recorded reference and the fp32 path's perplexity, on a tiny generated model."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
import torch

from llmos.benchmarks import quality
from llmos.drivers import quant
from llmos.drivers.llama import LlamaModel

import tinymodel


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    path = tinymodel.build_tiny_model(tmp_path / "t.gguf", qtype=gguf.GGMLQuantizationType.Q8_0)
    monkeypatch.setattr("llmos.drivers.catalog.resolve", lambda *a, **k: Path(path))
    return path


def run(capsys, *args) -> tuple[int, str, str]:
    rc = quality.main(["quality", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_round_to_grid_keeps_each_block_on_its_integers():
    x = torch.randn(3, 64) * torch.tensor([1e-3] * 32 + [50.0] * 32)   # two blocks' scales apart
    y = quality.round_to_grid(x, 8)
    for block in (slice(0, 32), slice(32, 64)):
        scale = x[:, block].abs().amax(1, keepdim=True) / 127
        steps = y[:, block] / scale
        assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 127 + 1e-3
        assert torch.allclose(y[:, block], x[:, block], atol=float(scale.max()) / 2 + 1e-9, rtol=0)
    assert torch.equal(quality.round_to_grid(torch.zeros(1, 32), 8), torch.zeros(1, 32))


def test_rows_per_grid_against_the_reference_and_fp32(tiny, tmp_path, capsys):
    fp32 = LlamaModel.load(tiny, dtype="fp32", device="cpu")
    prompt = fp32.tokenizer.encode("the river and the port")
    ref = {"prompt_ids": prompt, "greedy_ids": quality.greedy(fp32, prompt, 6)}
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    rc, out, _ = run(capsys, "--model", "tiny", "--bits", "2,20", "--reference", str(tmp_path / "ref.json"),
                     "--json")
    assert rc == 0
    got = json.loads(out)
    rows = got["rows"]
    a8 = quant.act8_supported()                    # not a catalog model: 'auto' is a8 where it runs
    assert got["default_path"].endswith(", 8-bit activations") == a8
    other = ["a13"] if a8 else []                  # the other activations, where they differ
    assert list(rows) == ["default path", *other, "fp32", "fp32, inputs on 2 bits", "fp32, inputs on 20 bits"]
    assert rows["fp32"]["reference_tokens"] == 6 and rows["fp32"]["perplexity_vs_fp32"] == 0
    assert rows["fp32"]["perplexity"] == pytest.approx(quality.perplexity(fp32, fp32.tokenizer.encode(quality.TEXT)))
    assert abs(rows["fp32, inputs on 20 bits"]["perplexity_vs_fp32"]) < 1e-4    # nearly exact
    assert abs(rows["fp32, inputs on 2 bits"]["perplexity_vs_fp32"]) > 1e-3     # the grid is applied
    rc, out, _ = run(capsys, "--model", "tiny", "--bits", "8")      # no recorded reference for it
    assert rc == 0 and "reference none" in out and "fp32, inputs on 8 bits" in out


def test_set_grid_wraps_every_matmul_and_undoes_it(tiny):
    m = LlamaModel.load(tiny, dtype="fp32", device="cpu")
    ids = m.tokenizer.encode(quality.TEXT)
    exact = quality.perplexity(m, ids)
    quality.set_grid(m, 3)
    assert all(isinstance(getattr(layer, n), quality.GridLinear) for layer in m.layers for n in quality.MATRICES)
    assert isinstance(m.lm_head, quality.GridLinear) and quality.perplexity(m, ids) != exact
    quality.set_grid(m, None)
    assert quality.perplexity(m, ids) == exact


def test_set_grid_refuses_a_quantized_model(tiny):
    with pytest.raises(ValueError, match="needs a float model"):
        quality.set_grid(LlamaModel.load(tiny, device="cpu"), 8)


@pytest.mark.parametrize("bits", ["eight", "1", "8,40"])
def test_bad_bits_are_one_line(capsys, bits):
    rc, _, err = run(capsys, "--bits", bits)
    assert rc == 2 and "comma-separated integers from 2 to 24" in err


def test_a_missing_model_is_one_line(capsys):
    rc, _, err = run(capsys, "--model", "/nonexistent/model.gguf")
    assert rc == 1 and err.startswith("llmos bench quality: ") and "\n" == err[-1] and err.count("\n") == 1


def test_a_corrupt_model_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    rc, _, err = run(capsys, "--model", str(tmp_path / "bad.gguf"))
    assert rc == 1 and err.startswith("llmos bench quality: ") and err.count("\n") == 1


@pytest.mark.parametrize("text, why", [
    (None, "No such file"),
    ("{not json", "not JSON"),
    ('{"prompt_ids": [1, 2]}', "needs non-empty integer lists"),
    ('{"prompt_ids": [1], "greedy_ids": ["a"]}', "needs non-empty integer lists"),
])
def test_a_bad_reference_is_one_line(tiny, tmp_path, capsys, text, why):
    ref = tmp_path / "ref.json"
    if text is not None:
        ref.write_text(text)
    rc, out, err = run(capsys, "--model", "tiny", "--reference", str(ref))
    assert rc == 1 and why in err and err.startswith("llmos bench quality: ") and out == ""
