"""Reading GGUF model files with the `gguf` package: architecture config, tensors, metadata.

Contract: constructing a ``GGUFModelFile`` either succeeds with a validated config (every tensor the
architecture needs is present, of a supported type, inside the file) or raises ``ModelFileError``
whose message is one line naming the file and what is wrong. Tensors are dequantised lazily, one at
a time, by ``tensor(name)`` with the package's own quant routines, or handed out as stored by
``raw(name)`` (the file's bytes, memory-mapped) for the quantized kernels (drivers/quant.py).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

from .arch import ARCHS, ArchError

SUPPORTED_ARCHS = tuple(ARCHS)   # per-architecture differences: drivers/arch.py
SUPPORTED_TYPES = frozenset({QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
                             QT.Q4_K, QT.Q5_K, QT.Q6_K})
LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


class ModelFileError(Exception):
    """A model file that cannot be used. ``str(e)`` is one line: '<path>: <what is wrong>'."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    name: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    rope_theta: float
    rms_eps: float
    tied_embeddings: bool
    arch_params: object = None      # drivers/arch.py: the architecture's own (e.g. Gemma3Params)


def _field_value(field):
    """Python value of a GGUF metadata field (arrays of strings/numbers as lists)."""
    if field.types and field.types[0] == GGUFValueType.ARRAY:
        if len(field.types) > 1 and field.types[1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    return field.contents()


def _ran_out_of_data(e: Exception) -> bool:
    """Whether the reader's exception means it read past the end of the file: numpy's views of a
    short memory map come out too small to reshape, index or reinterpret."""
    text = str(e)
    return isinstance(e, IndexError) or "cannot reshape" in text or "must be a divisor" in text


class GGUFModelFile:
    """A parsed GGUF file. Memory-maps the file; tensors are dequantised on demand."""

    def __init__(self, path: str):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise ModelFileError(self.path, "no such model file")
        try:
            self._reader = GGUFReader(self.path, "r")
        except Exception as e:  # the reader raises ValueError, struct/numpy errors on corrupt input
            if _ran_out_of_data(e):
                raise ModelFileError(self.path, f"not a readable GGUF file: truncated (the file ends at "
                                                f"byte {os.path.getsize(self.path)}, inside the data its "
                                                f"header describes)") from None
            raise ModelFileError(self.path, f"not a readable GGUF file ({type(e).__name__}: {e})") from None
        try:
            self.metadata = {name: _field_value(f) for name, f in self._reader.fields.items()
                             if not name.startswith("GGUF.")}
        except Exception as e:
            raise ModelFileError(self.path, f"corrupt metadata ({e})") from None
        self._tensors = {t.name: t for t in self._reader.tensors}
        self.config = self._read_config()
        self._check_tensors()

    @property
    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def _meta(self, key: str, default=None, required: bool = True):
        value = self.metadata.get(key, default)
        if value is None and required:
            raise ModelFileError(self.path, f"missing metadata key '{key}'")
        return value

    def _read_config(self) -> ModelConfig:
        arch = self._meta("general.architecture")
        if arch not in SUPPORTED_ARCHS:
            raise ModelFileError(self.path, f"unsupported architecture '{arch}' "
                                            f"(supported: {', '.join(SUPPORTED_ARCHS)})")
        a = arch
        hidden = int(self._meta(f"{a}.embedding_length"))
        n_heads = int(self._meta(f"{a}.attention.head_count"))
        n_kv = int(self._meta(f"{a}.attention.head_count_kv", n_heads))
        head_dim = int(self._meta(f"{a}.attention.key_length", hidden // max(n_heads, 1)))
        embd = self._tensors.get("token_embd.weight")
        if embd is None:
            raise ModelFileError(self.path, "missing tensor 'token_embd.weight'")
        vocab = int(self._meta(f"{a}.vocab_size", int(embd.shape[-1])))
        cfg = ModelConfig(
            arch=arch, name=str(self.metadata.get("general.name", os.path.basename(self.path))),
            n_layers=int(self._meta(f"{a}.block_count")), hidden_size=hidden, n_heads=n_heads,
            n_kv_heads=n_kv, head_dim=head_dim,
            intermediate_size=int(self._meta(f"{a}.feed_forward_length")), vocab_size=vocab,
            context_length=int(self._meta(f"{a}.context_length", 2048)),
            rope_theta=float(self._meta(f"{a}.rope.freq_base", 10000.0)),
            rms_eps=float(self._meta(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
            tied_embeddings="output.weight" not in self._tensors)
        if ARCHS[arch].params is not None:
            try:
                cfg = dataclasses.replace(cfg, arch_params=ARCHS[arch].params(
                    lambda k, d: self.metadata.get(k, d), a, cfg.n_layers, hidden, head_dim))
            except (ArchError, TypeError, ValueError) as e:
                raise ModelFileError(self.path, f"{arch}: {e}") from None
        if min(cfg.n_layers, hidden, n_heads, n_kv, head_dim, cfg.intermediate_size, vocab) < 1 \
                or n_heads % n_kv:
            raise ModelFileError(self.path, f"inconsistent model shape {cfg}")
        return cfg

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        c = self.config
        q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        shapes = {"token_embd.weight": (c.vocab_size, c.hidden_size),
                  "output_norm.weight": (c.hidden_size,)}
        if not c.tied_embeddings:
            shapes["output.weight"] = (c.vocab_size, c.hidden_size)
        per_layer = {"attn_norm": (c.hidden_size,), "attn_q": (q, c.hidden_size),
                     "attn_k": (kv, c.hidden_size), "attn_v": (kv, c.hidden_size),
                     "attn_output": (c.hidden_size, q), "ffn_norm": (c.hidden_size,),
                     "ffn_gate": (c.intermediate_size, c.hidden_size),
                     "ffn_up": (c.intermediate_size, c.hidden_size),
                     "ffn_down": (c.hidden_size, c.intermediate_size)}
        for i in range(c.n_layers):
            for part, shape in per_layer.items():
                shapes[f"blk.{i}.{part}.weight"] = shape
            for name, shape in ARCHS[c.arch].layer_tensors(c.hidden_size, q, kv, c.head_dim).items():
                shapes[f"blk.{i}.{name}"] = shape
        return shapes

    def _check_tensors(self) -> None:
        size = os.path.getsize(self.path)
        for name, shape in self._expected_shapes().items():
            t = self._tensors.get(name)
            if t is None:
                raise ModelFileError(self.path, f"missing tensor '{name}'")
            if t.tensor_type not in SUPPORTED_TYPES:
                raise ModelFileError(self.path, f"tensor '{name}' has unsupported type "
                                                f"{t.tensor_type.name}")
            if tuple(int(d) for d in reversed(t.shape)) != shape:
                raise ModelFileError(self.path, f"tensor '{name}' has shape "
                                                f"{tuple(reversed(t.shape.tolist()))}, expected {shape}")
            if t.data_offset + t.n_bytes > size:
                raise ModelFileError(self.path, f"truncated: tensor '{name}' ends past the end of the file")

    def tensor(self, name: str) -> np.ndarray:
        """Dequantised float32 array in torch layout ([out, in] for matrices)."""
        t = self._tensors.get(name)
        if t is None:
            raise ModelFileError(self.path, f"missing tensor '{name}'")
        shape = tuple(int(d) for d in reversed(t.shape))
        try:
            data = dequantize(np.asarray(t.data), t.tensor_type)
        except Exception as e:
            raise ModelFileError(self.path, f"cannot dequantise '{name}' ({e})") from None
        return np.array(data, dtype=np.float32).reshape(shape)  # owned, writable

    def info(self, name: str):
        """The reader's record of a tensor (shape in GGUF order, tensor_type, n_bytes, n_elements)."""
        return self._tensors[name]

    def tensor_type(self, name: str) -> int:
        """The GGML type id of a tensor (GGMLQuantizationType value)."""
        return int(self._tensors[name].tensor_type)

    def raw(self, name: str, copy: bool = False) -> tuple[int, np.ndarray]:
        """(GGML type, the tensor as stored: uint8 [rows, bytes per row]). Without copy it is a
        read-only view of the memory-mapped file; with copy it is read with file I/O into fresh
        memory (so the mapped pages are never touched: no double counting in RSS)."""
        t = self._tensors[name]
        rows = int(np.prod([int(d) for d in t.shape[1:]], dtype=np.int64)) if len(t.shape) > 1 else 1
        if not copy:
            return int(t.tensor_type), np.asarray(t.data).view(np.uint8).reshape(rows, -1)
        data = np.fromfile(self.path, dtype=np.uint8, count=int(t.n_bytes), offset=int(t.data_offset))
        return int(t.tensor_type), data.reshape(rows, -1)

    def tensor_bytes(self) -> int:
        """Bytes of weight data as stored in the file (quantised)."""
        return sum(int(t.n_bytes) for t in self._tensors.values())
