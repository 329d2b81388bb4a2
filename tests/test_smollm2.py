"""The real default model (SmolLM2-135M-Instruct, GGUF Q4_1) against a reference recorded once with
an independent implementation (tests/fixtures/record_reference.py: Hugging Face transformers), in
the fp32 reference path and in the default path (weights kept quantized, drivers/quant.py); and the
default path's perplexity on a fixed text within 1 % of fp32's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmos.drivers.llama import LlamaModel, SeqInput
from kernelkit import driver_greedy as greedy

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "smollm2_reference.json").read_text())
pytestmark = pytest.mark.slow


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


def test_default_quantized_greedy_matches_independent_reference(smollm2_path):
    model = LlamaModel.load(smollm2_path)
    assert model.quantized and model.weight_bytes() < 110e6        # Q4_1 + Q8_0 as in the file
    out = greedy(model, REFERENCE["prompt_ids"], len(REFERENCE["greedy_ids"]))
    assert out == REFERENCE["greedy_ids"]


TEXT = ("The history of the city begins with a small fishing village on the northern bank of the "
        "river. Over the centuries, merchants built warehouses along the water, and the village grew "
        "into a busy port. In the nineteenth century the railway arrived, bringing factories, new "
        "neighbourhoods and a university. Today the old warehouses hold museums, cafes and small "
        "shops, and visitors walk along the river to watch the boats come in at sunset.")


def perplexity(model: LlamaModel, ids: list[int]) -> float:
    """exp(mean NLL) of ids[1:]. Two forwards: a prefill of the text, then one step with a
    one-token sequence per position p (same blocks; it rewrites p's K/V with the values the
    prefill wrote, as both paths are batch-invariant) whose logits predict ids[p + 1]."""
    kv = model.new_kv(17, 16)
    table = list(range(1, 17))
    model.forward([SeqInput(ids, 0, table, want_logits=False)], kv)
    logits = model.forward([SeqInput([ids[p]], p, table) for p in range(len(ids) - 1)], kv)
    nll = -torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(ids[1:])[:, None]).mean()
    return float(torch.exp(nll))


def test_default_path_perplexity_within_one_percent_of_fp32(smollm2_path):
    fp32 = LlamaModel.load(smollm2_path, dtype="fp32")
    ids = fp32.tokenizer.encode(TEXT)
    assert 60 < len(ids) < 250
    ref = perplexity(fp32, ids)
    del fp32
    got = perplexity(LlamaModel.load(smollm2_path), ids)
    assert abs(got - ref) / ref < 0.01, (got, ref)
