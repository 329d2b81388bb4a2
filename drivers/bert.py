"""BERT sentence encoder (all-MiniLM-L6-v2): a model directory in, unit vectors out.

Contract
    ``Encoder.load(dir)`` reads ``config.json`` (Hugging Face BertConfig), ``model.safetensors``
    and ``tokenizer.json`` (WordPiece, with its [CLS]/[SEP] template), plus the sentence-
    transformers files when present (``sentence_bert_config.json``: max_seq_length). A missing,
    unreadable or inconsistent file raises ModelFileError naming it.
    ``encode(texts)`` -> float32 array [len(texts), hidden]: what sentence-transformers computes
    (Transformer -> Pooling(mean) -> Normalize): each text truncated to max_seq_length tokens,
    the last hidden states averaged over its real tokens, L2-normalised.

Batching: texts are sorted by length and run in batches of ``batch_size``, padded to the longest
in the batch; padded keys are masked out of attention and padded positions out of the mean, so a
text's vector does not depend on what it is batched with (up to float rounding).

``EncoderService`` is how the kernel holds an encoder: loaded on first use, run in a worker
thread of its own so the kernel's event loop never waits for it.
"""

from __future__ import annotations

import errno
import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .gguf import ModelFileError

FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    eps: float
    pad_id: int
    max_seq_length: int          # truncation (sentence-transformers' max_seq_length)

    @classmethod
    def read(cls, d: Path) -> "BertConfig":
        c = _json(d / "config.json")
        st = _json(d / "sentence_bert_config.json") if (d / "sentence_bert_config.json").is_file() else {}
        try:
            if c.get("model_type", "bert") != "bert" or c.get("hidden_act", "gelu") != "gelu":
                raise ValueError(f"not a gelu BERT (model_type {c.get('model_type')!r}, "
                                 f"hidden_act {c.get('hidden_act')!r})")
            cfg = cls(vocab_size=int(c["vocab_size"]), hidden_size=int(c["hidden_size"]),
                      n_layers=int(c["num_hidden_layers"]), n_heads=int(c["num_attention_heads"]),
                      intermediate_size=int(c["intermediate_size"]),
                      max_positions=int(c["max_position_embeddings"]),
                      type_vocab_size=int(c.get("type_vocab_size", 2)),
                      eps=float(c.get("layer_norm_eps", 1e-12)), pad_id=int(c.get("pad_token_id", 0)),
                      max_seq_length=min(int(st.get("max_seq_length", c["max_position_embeddings"])),
                                         int(c["max_position_embeddings"])))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(str(d / "config.json"), f"bad BERT config: {type(e).__name__}: {e}") from None
        if min(cfg.vocab_size, cfg.hidden_size, cfg.n_layers, cfg.n_heads, cfg.max_seq_length) < 1 \
                or cfg.hidden_size % cfg.n_heads:
            raise ModelFileError(str(d / "config.json"), "bad BERT config: sizes must be positive and "
                                                         "hidden_size a multiple of num_attention_heads")
        return cfg


def _json(path: Path) -> dict:
    try:
        v = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFileError(str(path), "missing") from None
    except (OSError, ValueError) as e:
        raise ModelFileError(str(path), f"unreadable JSON: {e}") from None
    if not isinstance(v, dict):
        raise ModelFileError(str(path), "not a JSON object")
    return v


def _shapes(c: BertConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the encoder uses, by its Hugging Face name, with its shape."""
    h, i = c.hidden_size, c.intermediate_size
    s = {"embeddings.word_embeddings.weight": (c.vocab_size, h),
         "embeddings.position_embeddings.weight": (c.max_positions, h),
         "embeddings.token_type_embeddings.weight": (c.type_vocab_size, h),
         "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
    for n in range(c.n_layers):
        p = f"encoder.layer.{n}."
        for name in ("query", "key", "value"):
            s[f"{p}attention.self.{name}.weight"], s[f"{p}attention.self.{name}.bias"] = (h, h), (h,)
        s[f"{p}attention.output.dense.weight"], s[f"{p}attention.output.dense.bias"] = (h, h), (h,)
        s[f"{p}attention.output.LayerNorm.weight"] = s[f"{p}attention.output.LayerNorm.bias"] = (h,)
        s[f"{p}intermediate.dense.weight"], s[f"{p}intermediate.dense.bias"] = (i, h), (i,)
        s[f"{p}output.dense.weight"], s[f"{p}output.dense.bias"] = (h, i), (h,)
        s[f"{p}output.LayerNorm.weight"] = s[f"{p}output.LayerNorm.bias"] = (h,)
    return s


def _weights(path: Path, c: BertConfig) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        raw = load_file(str(path))
    except FileNotFoundError:
        raise ModelFileError(str(path), "missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(str(path), f"unreadable safetensors: {e}") from None
    raw = {k.removeprefix("bert."): v for k, v in raw.items()}
    out = {}
    for name, shape in _shapes(c).items():
        t = raw.get(name)
        if t is None:
            raise ModelFileError(str(path), f"missing tensor {name}")
        if tuple(t.shape) != shape:
            raise ModelFileError(str(path), f"tensor {name} has shape {tuple(t.shape)}, config says {shape}")
        if not t.is_floating_point():
            raise ModelFileError(str(path), f"tensor {name} is {t.dtype}, not floating point")
        out[name] = t.float()
    return out


def _tokenizer(path: Path, c: BertConfig):
    from tokenizers import Tokenizer
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:    # the library raises a plain Exception for every kind of bad file
        if not path.is_file():
            raise ModelFileError(str(path), "missing") from None
        raise ModelFileError(str(path), f"unreadable tokenizer: {e}") from None
    if tok.get_vocab_size() > c.vocab_size:
        raise ModelFileError(str(path), f"vocabulary of {tok.get_vocab_size()} exceeds the model's {c.vocab_size}")
    tok.no_padding()                                   # padding is per batch, in encode()
    tok.enable_truncation(max_length=c.max_seq_length)
    return tok


class Encoder:
    """A loaded BERT encoder with mean pooling and L2 normalisation (see the module docstring)."""

    def __init__(self, config: BertConfig, weights: dict[str, torch.Tensor], tokenizer, path: Path):
        self.config, self.w, self.tokenizer, self.path = config, weights, tokenizer, path
        self.dim = config.hidden_size

    @classmethod
    def load(cls, directory: str | Path) -> "Encoder":
        d = Path(directory)
        if not d.is_dir():
            raise ModelFileError(str(d), "no such model directory")
        c = BertConfig.read(d)
        return cls(c, _weights(d / "model.safetensors", c), _tokenizer(d / "tokenizer.json", c), d)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text: [CLS] ... [SEP], truncated to max_seq_length."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Unit vectors [len(texts), dim] (float32), in the order of texts."""
        ids = self.token_ids(texts)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda j: len(ids[j]))
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            width = max(len(ids[j]) for j in rows)
            batch = torch.full((len(rows), width), self.config.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.bool)
            for r, j in enumerate(rows):
                batch[r, :len(ids[j])] = torch.tensor(ids[j], dtype=torch.long)
                mask[r, :len(ids[j])] = True
            out[rows] = self.forward(batch, mask).numpy()
        return out

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, T] (mask True on real tokens) -> pooled unit vectors [B, hidden]."""
        c, w = self.config, self.w
        B, T = ids.shape
        H, D = c.n_heads, c.hidden_size // c.n_heads
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:T]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, "embeddings.LayerNorm")
        keys = mask[:, None, None, :]                      # padded keys take no attention
        for n in range(c.n_layers):
            p = f"encoder.layer.{n}."
            q, k, v = (self._linear(x, f"{p}attention.self.{m}").view(B, T, H, D).transpose(1, 2)
                       for m in ("query", "key", "value"))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keys).transpose(1, 2).reshape(B, T, -1)
            x = self._norm(x + self._linear(a, f"{p}attention.output.dense"), f"{p}attention.output.LayerNorm")
            h = F.gelu(self._linear(x, f"{p}intermediate.dense"))
            x = self._norm(x + self._linear(h, f"{p}output.dense"), f"{p}output.LayerNorm")
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[name + ".weight"], self.w[name + ".bias"])

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.w[name + ".weight"], self.w[name + ".bias"], self.config.eps)


class EncoderService:
    """The kernel's encoder: loaded on the first job, run in one worker thread of its own.

    ``submit(texts)`` returns at once with a Future of the float32 vectors. A job fails with
    OSError: ENOENT when the model is not in the cache (the message names ``llmos pull``),
    ENOEXEC when its files cannot be loaded. A failed load is retried by the next job, so pulling
    the model fixes a running kernel."""

    def __init__(self, source: str | Path):
        self.source = str(source)              # a catalog name (minilm) or a model directory
        self.encoder: Encoder | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llmos-embed")

    def submit(self, texts: list[str]) -> Future:
        return self._pool.submit(self._run, list(texts))

    def _run(self, texts: list[str]) -> np.ndarray:
        if self.encoder is None:
            self.encoder = self.load()
        return self.encoder.encode(texts)

    def load(self) -> Encoder:
        from .catalog import resolve
        try:
            path = resolve(self.source)
        except ModelFileError as e:
            raise OSError(errno.ENOENT, f"embedding model {e}") from None
        try:
            return Encoder.load(path)
        except ModelFileError as e:
            raise OSError(errno.ENOEXEC, f"embedding model {e}") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

