"""A tiny, deterministic BERT sentence encoder for tests: a model directory laid out as the
all-MiniLM-L6-v2 package lays it out, built in well under a second, no downloads.

build_tiny_bert(dir) writes
  - config.json               a Hugging Face BertConfig (2 layers, hidden 32, 4 heads, 64 positions)
  - sentence_bert_config.json max_seq_length 24, so long texts exercise truncation
  - tokenizer.json            a WordPiece tokenizer (BertNormalizer, BertPreTokenizer,
                              [CLS] $A [SEP] template) trained here on tinymodel's generated text
  - model.safetensors         random float32 weights under the Hugging Face names (with the
                              position_ids buffer and pooler the real file also carries)

Weight scales: matrices N(0, 1/fan_in), embeddings N(0, 1), norms 1 + N(0, 0.1), biases
N(0, 0.1): every layer changes the hidden states by O(1), so a wrong mask, pooling or layer
order changes the vectors visibly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import tinymodel

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_config(vocab_size: int) -> dict:
    return {"architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 64, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12, "pad_token_id": 0, "vocab_size": vocab_size}


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(tinymodel.training_text(),
                            trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return tok


def tiny_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, i, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]

    def mat(rows, cols):
        return rng.normal(0, 1 / np.sqrt(cols), (rows, cols))

    def vec(size, mean=0.0):
        return mean + rng.normal(0, 0.1, size)

    w = {"embeddings.word_embeddings.weight": rng.normal(0, 1, (config["vocab_size"], h)),
         "embeddings.position_embeddings.weight": rng.normal(0, 1, (config["max_position_embeddings"], h)),
         "embeddings.token_type_embeddings.weight": rng.normal(0, 1, (config["type_vocab_size"], h)),
         "embeddings.LayerNorm.weight": vec(h, 1.0), "embeddings.LayerNorm.bias": vec(h)}
    for layer in range(n):
        p = f"encoder.layer.{layer}."
        for name in ("query", "key", "value"):
            w[f"{p}attention.self.{name}.weight"], w[f"{p}attention.self.{name}.bias"] = mat(h, h), vec(h)
        w[f"{p}attention.output.dense.weight"], w[f"{p}attention.output.dense.bias"] = mat(h, h), vec(h)
        w[f"{p}attention.output.LayerNorm.weight"] = vec(h, 1.0)
        w[f"{p}attention.output.LayerNorm.bias"] = vec(h)
        w[f"{p}intermediate.dense.weight"], w[f"{p}intermediate.dense.bias"] = mat(i, h), vec(i)
        w[f"{p}output.dense.weight"], w[f"{p}output.dense.bias"] = mat(h, i), vec(h)
        w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"] = vec(h, 1.0), vec(h)
    w["pooler.dense.weight"], w["pooler.dense.bias"] = mat(h, h), vec(h)
    return {k: v.astype(np.float32) for k, v in w.items()}


def build_tiny_bert(directory: str | Path, seed: int = 0, max_seq_length: int = 24) -> Path:
    """Write the tiny model directory (see the module docstring); returns its path."""
    from safetensors.numpy import save_file
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    config = tiny_config(tok.get_vocab_size())
    (d / "config.json").write_text(json.dumps(config, indent=2))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    tok.save(str(d / "tokenizer.json"))
    tensors = tiny_weights(config, seed)
    tensors["embeddings.position_ids"] = np.arange(config["max_position_embeddings"], dtype=np.int64)[None]
    save_file(tensors, str(d / "model.safetensors"))
    return d
