"""The real default model (SmolLM2-135M-Instruct, GGUF Q4_1) against a reference recorded once with
an independent implementation (tests/fixtures/record_reference.py: Hugging Face transformers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmos.drivers.llama import LlamaModel, SeqInput

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "smollm2_reference.json").read_text())
pytestmark = pytest.mark.slow


def greedy(model: LlamaModel, prompt: list[int], n: int) -> list[int]:
    kv = model.new_kv(8, 16)
    table = list(range(8))
    out, ids, pos = [], prompt, 0
    for _ in range(n):
        logits = model.forward([SeqInput(ids, pos, table)], kv)
        pos += len(ids)
        ids = [int(logits[0].argmax())]
        out.append(ids[0])
    return out


def test_fp32_greedy_matches_independent_reference(smollm2_path):
    model = LlamaModel.load(smollm2_path, dtype="fp32")
    prompt = model.tokenizer.encode(model.tokenizer.render_chat(REFERENCE["messages"]))
    assert prompt == REFERENCE["prompt_ids"]
    out = greedy(model, prompt, len(REFERENCE["greedy_ids"]))
    assert out == REFERENCE["greedy_ids"]
    assert "Paris" in model.tokenizer.decode(out[:REFERENCE["first_stop_index"]])


def test_bf16_answers_the_question(smollm2_path):
    model = LlamaModel.load(smollm2_path, dtype="bf16")
    out = greedy(model, REFERENCE["prompt_ids"], 8)
    assert "Paris" in model.tokenizer.decode(out)
