"""The real default model (SmolLM2-135M-Instruct, GGUF Q4_1) against a reference recorded once with
an independent implementation (tests/fixtures/record_reference.py: Hugging Face transformers), in
the fp32 reference path and in the default path (weights kept quantized, drivers/quant.py); and the
default path's perplexity on a fixed text within 1 % of fp32's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmos.benchmarks.quality import TEXT, greedy, perplexity
from llmos.drivers.catalog import auto_dtype
from llmos.drivers.llama import LlamaModel

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
    """The default path is the 13-bit grid here (catalog: its tokens need it), wherever the file lies."""
    assert auto_dtype(smollm2_path) == "a13"
    model = LlamaModel.load(smollm2_path)
    assert model.quantized and not model.act8 and model.weight_bytes() < 110e6    # Q4_1 + Q8_0 as in the file
    out = greedy(model, REFERENCE["prompt_ids"], len(REFERENCE["greedy_ids"]))
    assert out == REFERENCE["greedy_ids"]


def test_default_path_perplexity_within_one_percent_of_fp32(smollm2_path):
    fp32 = LlamaModel.load(smollm2_path, dtype="fp32")
    ids = fp32.tokenizer.encode(TEXT)
    assert 60 < len(ids) < 250
    ref = perplexity(fp32, ids)
    del fp32
    got = perplexity(LlamaModel.load(smollm2_path), ids)
    assert abs(got - ref) / ref < 0.01, (got, ref)
