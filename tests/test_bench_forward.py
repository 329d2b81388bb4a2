"""`llmos bench forward --compile`: the torch path's layers under torch.compile give the eager
step's logits, and a quantized model (one C call a layer) is left out with one line saying why."""

from __future__ import annotations

import gguf
import torch

from llmos.benchmarks import forward
from llmos.drivers.llama import LlamaModel, SeqInput

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
    assert forward.main(["forward", "--dtype", "auto", "--compile", "--batch", "1", "--steps", "1",
                         "--context", "8", "--prefill", "8", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "--compile left out: each layer is one C call" in out and "/compiled" not in out
    rows = [line.split()[:3] for line in out.splitlines() if line.startswith("llmos-q ")]
    assert rows == [["llmos-q", "decode", "b1"], ["llmos-q", "prefill", "8"]]
