"""`llmos bench forward --compile`: the torch path's layers under torch.compile give the eager
step's logits, and a quantized model (one C call a layer) is left out with one line saying why."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
import torch

from llmos.benchmarks import forward
from llmos.drivers.llama import LlamaModel, SeqInput
from llmos.drivers.quant import act8_supported

import tinymodel


def step_logits(m: LlamaModel) -> tuple[torch.Tensor, torch.Tensor]:
    kv = m.new_kv(8, 4)
    prefill = m.forward([SeqInput([3, 7, 11, 5, 9], 0, [1, 2]), SeqInput([4, 8], 0, [3])], kv)
    decode = m.forward([SeqInput([6], 5, [1, 2]), SeqInput([2], 2, [3])], kv)
    return prefill, decode


def test_compiled_layers_give_the_eager_logits(tmp_path):
    m = LlamaModel.load(tinymodel.build_tiny_model(tmp_path / "t.gguf"), dtype="fp32", device="cpu")
    eager = step_logits(m)
    assert forward.compile_layers(m, context=8) > 0
    assert "_compute" in vars(m)                                  # the instance now runs the compiled build
    compiled = step_logits(m)
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_compile_is_left_out_for_a_quantized_model(tmp_path, monkeypatch, capsys):
    path = tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=gguf.GGMLQuantizationType.Q8_0)
    monkeypatch.setattr(forward, "resolve", lambda *a, **k: __import__("pathlib").Path(path))
    assert forward.main(["forward", "--dtype", "a13", "--compile", "--batch", "1", "--steps", "1",
                         "--context", "8", "--prefill", "8", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "--compile left out: each layer is one C call" in out and "/compiled" not in out
    rows = [line.split()[:3] for line in out.splitlines() if line.startswith("llmos-a13 ")]
    assert rows == [["llmos-a13", "decode", "b1"], ["llmos-a13", "prefill", "8"]]


def test_two_dtypes_of_one_arithmetic_keep_their_rows_apart(tmp_path, monkeypatch, capsys):
    """--dtype a8,auto on a file whose 'auto' is a8 (or, without vpdpbusd, a13 for both): two
    engines, the second named with its dtype, each with its own rows."""
    path = tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=gguf.GGMLQuantizationType.Q8_0)
    monkeypatch.setattr(forward, "resolve", lambda *a, **k: Path(path))
    assert forward.main(["forward", "--dtype", "a8,auto", "--batch", "1", "--steps", "1", "--context", "8",
                         "--prefill", "0", "--device", "cpu", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    first = "llmos-a8" if act8_supported() else "llmos-a13"
    assert [(r["engine"], r["figure"]) for r in rows] == [(first, "decode b1"), (f"{first}(auto)", "decode b1")]


def test_rounds_take_turns_with_llama_cpp_and_print_each_ratio_and_the_median(tmp_path, monkeypatch, capsys):
    """--vs llama.cpp --rounds 3: llmos's first dtype and llama.cpp alternate; each round's ratio
    is against the same round's llama.cpp figure. llama.cpp's runs are stood in for here by a
    recorder with fixed figures (the real one needs the optional bench extra's build)."""
    from llmos.benchmarks import llamacpp
    path = tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=gguf.GGMLQuantizationType.Q8_0)
    monkeypatch.setattr(forward, "resolve", lambda *a, **k: __import__("pathlib").Path(path))
    calls = []

    def recorded_llama_cpp(*a):
        calls.append(a)
        return {"decode b1": 1e9 * len(calls), "prefill 8": 1e9}          # round r: r x 1e9 tok/s

    monkeypatch.setattr(llamacpp, "measure", recorded_llama_cpp)
    assert forward.main(["forward", "--dtype", "a13", "--batch", "1", "--steps", "1", "--context", "8",
                         "--prefill", "8", "--device", "cpu", "--vs", "llama.cpp", "--rounds", "3", "--json"]) == 0
    rows = __import__("json").loads(capsys.readouterr().out)["results"]
    assert len(calls) == 3
    mine = [r for r in rows if r["engine"] == "llmos-a13" and r["figure"] == "decode b1"]
    assert [r["round"] for r in mine] == [1, 2, 3]
    for r in mine:
        assert r["vs_llama_cpp"] == pytest.approx(r["tokens_per_s"] / (1e9 * r["round"]), rel=1e-9)
    assert forward.main(["forward", "--rounds", "2"]) == 1
    assert "more than 1 only with --vs" in capsys.readouterr().out
