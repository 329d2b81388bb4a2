"""drivers/bert.py on the tiny generated BERT (tests/tinybert.py): the real loading and encoding
code against a straightforward reference computation, batching, and bad model files.

The reference is written independently of the driver: one text at a time (no padding, no mask),
float64, attention as explicit softmax(q k^T / sqrt(d)) v, GELU by erf, layer norm by hand.
"""

from __future__ import annotations

import errno
import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import tinybert
from llmos.drivers.bert import Encoder, EncoderService
from llmos.drivers.gguf import ModelFileError

TEXTS = ["hello world", "the kernel process memory page block cache", "a", "",
         "once upon a time there lived a little cat in a house under a tree " * 3,   # truncated
         "café naïve über ka lo mi", "UPPER case Words Are Lowered", "x y z"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    return tinybert.build_tiny_bert(tmp_path_factory.mktemp("tinybert") / "tiny-bert")


@pytest.fixture(scope="session")
def encoder(tiny_bert):
    return Encoder.load(tiny_bert)


def reference(model_dir, ids: list[int]) -> np.ndarray:
    """Mean-pooled, normalised last hidden state of one unpadded sequence (float64)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(str(model_dir / "model.safetensors")).items()
         if v.dtype != np.int64}
    H, eps = cfg["num_attention_heads"], cfg["layer_norm_eps"]

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

    def lin(x, name):
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    T = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:T] \
        + w["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "embeddings.LayerNorm")
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        q, k, v = (lin(x, f"{p}attention.self.{m}") for m in ("query", "key", "value"))
        d = q.shape[1] // H
        heads = []
        for h in range(H):
            s = slice(h * d, (h + 1) * d)
            scores = q[:, s] @ k[:, s].T / math.sqrt(d)
            e = np.exp(scores - scores.max(-1, keepdims=True))
            heads.append((e / e.sum(-1, keepdims=True)) @ v[:, s])
        x = ln(x + lin(np.concatenate(heads, 1), f"{p}attention.output.dense"), f"{p}attention.output.LayerNorm")
        u = lin(x, f"{p}intermediate.dense")
        g = 0.5 * u * (1 + np.vectorize(math.erf)(u / math.sqrt(2)))
        x = ln(x + lin(g, f"{p}output.dense"), f"{p}output.LayerNorm")
    m = x.mean(0)
    return m / np.linalg.norm(m)


def test_batched_encoding_matches_the_reference(tiny_bert, encoder):
    vecs = encoder.encode(TEXTS, batch_size=3)       # several batches, each padded differently
    assert vecs.shape == (len(TEXTS), 32) and vecs.dtype == np.float32
    for text, ids, v in zip(TEXTS, encoder.token_ids(TEXTS), vecs):
        np.testing.assert_allclose(v, reference(tiny_bert, ids), atol=2e-5, err_msg=text)


def test_vectors_are_unit_length_and_distinct(encoder):
    vecs = encoder.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs.T
    assert (sims[~np.eye(len(TEXTS), dtype=bool)] < 0.999).all()


def test_a_texts_vector_does_not_depend_on_its_batch(encoder):
    alone = np.stack([encoder.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=len(TEXTS)), alone, atol=1e-5)
    np.testing.assert_allclose(encoder.encode(TEXTS[::-1], batch_size=2)[::-1], alone, atol=1e-5)


def test_tokenization_adds_cls_sep_and_truncates(encoder):
    ids = encoder.token_ids(TEXTS)
    cls, sep = encoder.tokenizer.token_to_id("[CLS]"), encoder.tokenizer.token_to_id("[SEP]")
    assert all(i[0] == cls and i[-1] == sep for i in ids)
    assert len(ids[4]) == encoder.config.max_seq_length == 24      # sentence_bert_config.json
    assert ids[3] == [cls, sep]
    assert encoder.token_ids(["Hello"]) == encoder.token_ids(["hello"])    # BertNormalizer lowercases


def test_a_longer_max_seq_length_reads_more_tokens(tmp_path):
    d = tinybert.build_tiny_bert(tmp_path / "m", max_seq_length=48)
    enc = Encoder.load(d)
    assert len(enc.token_ids([TEXTS[4]])[0]) == 48


# ---- bad model files ---------------------------------------------------------------------------

@pytest.fixture
def copy(tiny_bert, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(tiny_bert, d)
    return d


def test_missing_directory(tmp_path):
    with pytest.raises(ModelFileError, match="no such model directory"):
        Encoder.load(tmp_path / "nope")


def test_truncated_safetensors(copy):
    f = copy / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="model.safetensors: unreadable safetensors"):
        Encoder.load(copy)


def test_garbage_safetensors(copy):
    (copy / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFileError, match="model.safetensors: unreadable safetensors"):
        Encoder.load(copy)


def test_missing_tensor_and_wrong_shape(copy):
    f = copy / "model.safetensors"
    w = load_file(str(f))
    del w["encoder.layer.1.output.dense.bias"]
    save_file(w, str(f))
    with pytest.raises(ModelFileError, match="missing tensor encoder.layer.1.output.dense.bias"):
        Encoder.load(copy)
    w["encoder.layer.1.output.dense.bias"] = np.zeros(31, np.float32)
    save_file(w, str(f))
    with pytest.raises(ModelFileError, match=r"encoder.layer.1.output.dense.bias has shape \(31,\)"):
        Encoder.load(copy)


def test_prefixed_tensor_names_load(copy, encoder):
    """Checkpoints saved from BertForX carry a 'bert.' prefix; the names are otherwise the same."""
    f = copy / "model.safetensors"
    save_file({"bert." + k: v for k, v in load_file(str(f)).items()}, str(f))
    np.testing.assert_allclose(Encoder.load(copy).encode(TEXTS[:2]), encoder.encode(TEXTS[:2]), atol=1e-6)


@pytest.mark.parametrize("text, message", [
    ("{not json", "config.json: unreadable JSON"),
    ("[1, 2]", "config.json: not a JSON object"),
    ('{"hidden_size": 32}', "config.json: bad BERT config: KeyError"),
])
def test_bad_config(copy, text, message):
    (copy / "config.json").write_text(text)
    with pytest.raises(ModelFileError, match=message):
        Encoder.load(copy)


def test_config_that_is_not_bert_or_splits_heads_unevenly(copy):
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(dict(cfg, hidden_act="relu")))
    with pytest.raises(ModelFileError, match="not a gelu BERT"):
        Encoder.load(copy)
    (copy / "config.json").write_text(json.dumps(dict(cfg, num_attention_heads=5)))
    with pytest.raises(ModelFileError, match="multiple of num_attention_heads"):
        Encoder.load(copy)


def test_bad_and_missing_tokenizer(copy):
    (copy / "tokenizer.json").write_text('{"model": 1}')
    with pytest.raises(ModelFileError, match="tokenizer.json: unreadable tokenizer"):
        Encoder.load(copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ModelFileError, match="tokenizer.json: missing"):
        Encoder.load(copy)


# ---- the kernel's service ------------------------------------------------------------------------

def test_service_loads_on_first_job_in_its_own_thread(tiny_bert, encoder):
    svc = EncoderService(tiny_bert)
    try:
        assert svc.encoder is None
        job = svc.submit(TEXTS)
        np.testing.assert_allclose(job.result(30), encoder.encode(TEXTS), atol=1e-6)
        assert svc.encoder is not None
    finally:
        svc.close()


def test_service_errors_name_the_problem_and_a_later_job_retries(copy, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "home"))
    svc = EncoderService("minilm")
    try:
        with pytest.raises(OSError, match="llmos pull minilm") as e:
            svc.submit(["x"]).result(30)
        assert e.value.errno == errno.ENOENT
    finally:
        svc.close()
    good = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(good[:100])
    svc = EncoderService(copy)
    try:
        with pytest.raises(OSError, match="unreadable safetensors") as e:
            svc.submit(["x"]).result(30)
        assert e.value.errno == errno.ENOEXEC
        (copy / "model.safetensors").write_bytes(good)         # fixed on disk: the next job loads
        assert svc.submit(["x"]).result(30).shape == (1, 32)
    finally:
        svc.close()


def test_forward_masks_padding(encoder):
    """Padding a sequence with garbage ids changes nothing when the mask marks them."""
    ids = torch.tensor([encoder.token_ids(["hello world"])[0]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    padded = torch.cat([ids, torch.full((1, 5), 7)], 1)
    pmask = torch.cat([mask, torch.zeros((1, 5), dtype=torch.bool)], 1)
    with torch.inference_mode():
        torch.testing.assert_close(encoder.forward(padded, pmask), encoder.forward(ids, mask), atol=1e-6, rtol=0)
