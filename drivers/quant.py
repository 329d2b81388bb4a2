"""Matmuls on GGUF-quantized weights, kept quantized: as the file stores them (memory-mapped) or
repacked row-grouped at load.

The kernels are C++ (drivers/quant_kernels.cpp): built with the system compiler on first use for
this CPU (``-march=native``) into ``$LLMOS_HOME/kernels/``, keyed by source, compiler and CPU
flags, and loaded with ctypes (16 lanes with AVX-512F, 8 with AVX2, drivers/simd_vec.h; a scalar
path elsewhere). All but Q5_K are repacked at load so that a vector's lanes hold rows
(drivers/rowgroup_kernels.h; the file's pages are then released) and take the input on a 13-bit
integer grid: int16 pairs of x meet int16 pairs of weights (vpmaddwd, or VNNI's vpdpwssd; on an
AMX Xeon, a GEMM's tile products of the int16 split into bytes, drivers/amx_tiles.h); one token
(GEMV) makes the weight pairs in registers as it streams them (without VNNI, fp32 FMAs for Q4_K
and Q6_K), more tokens (GEMM) unpack a panel once for all. Every block sum is exact, so a
token's result is bit-identical whatever the batch. Q5_K keeps GGML's blocks, dequantised to fp32 in registers.
A QLinear's parts (fused QKV, gate/up) run as one call (drivers/qmatmul.h). Why not a library: torch's
``_weight_int8pack_mm`` / ``_weight_int4pack_mm_for_cpu`` were slower than fp32 on an AVX2 EPYC
and do not read GGML block layouts; llama.cpp's Python bindings are not a kernel library. When no
compiler is found or the build fails, ``kernels()`` returns None (logged once) and the driver
dequantises to fp32.

``QLinear`` is y = f(x) @ W.T where W is one or more row-blocks (fused QKV, gate/up), each in a
quant type the kernel knows, f an optional SwiGLU or GEGLU and/or RMSNorm done in the same C call, and the
result optionally added into a residual stream in place. ``Linear`` has the same call
signature on a float tensor (drivers/linear.py's Linear: the fp32 path, and the fallback for
types without a kernel, dequantised once).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import mmap
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from .cpu import cpu_features, isa_summary

log = logging.getLogger("llmos.drivers")

SOURCE = Path(__file__).with_name("quant_kernels.cpp")
SOURCES = (SOURCE, Path(__file__).with_name("attention_kernels.cpp"),     # one library
           Path(__file__).with_name("layer_kernels.cpp"), Path(__file__).with_name("argmax_kernels.cpp"))
HEADERS = tuple(Path(__file__).with_name(h)                                 # in the key
                for h in ("simd_exp.h", "simd_vec.h", "rowgroup_kernels.h", "amx_tiles.h", "qmatmul.h"))
# LLMOS_QUANT values that build another code path than this CPU's widest: the AVX-512 kernels
# through SIMDe (Debian's libsimde-dev; slow) and the scalar kernels of CPUs without AVX2 (the
# last -march wins), so that each runs and is tested on any x86 CPU; and the AVX2 kernels on an
# AVX-512 CPU, or the AVX-512 ones without AMX's tiles on an AMX CPU (A/B runs; fallbacks should
# the wider path be slower there); and the 8-lane kernels with the CPU's other extensions kept (on
# an AVX512-VNNI CPU: 256-bit vpdpwssd/vpdpbusd, the code AVX-VNNI CPUs run, though with 32
# registers where theirs have 16).
ISA_BUILDS = {"avx512-simde": ("-DLLMOS_SIMDE_AVX512",), "scalar": ("-march=x86-64",),
              "avx2": ("-mno-avx512f",), "no-amx": ("-mno-amx-tile", "-mno-amx-int8"),
              "8-lanes": ("-DLLMOS_8_LANES",)}
GLU_SILU, GLU_GELU_TANH = 1, 2          # quant_kernels.cpp's gated activations of a matmul's input
KERNEL_TYPES = {2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K"}
RG_TYPES = 100      # kernel type RG_TYPES + t: type t's rows repacked row-grouped (rowgroup_kernels.h)
_p = ctypes.c_void_p
_i = ctypes.c_int64


class QPart(ctypes.Structure):
    """A weight part of a matmul (drivers/qmatmul.h): N rows of rb bytes in kernel type `type`,
    the output's columns [col, col + N)."""
    _fields_ = [("type", _i), ("W", _p), ("N", _i), ("rb", _i), ("col", _i)]


class QArgs(ctypes.Structure):
    """llmos_qmatmul_args's argument block (its C twin is in quant_kernels.cpp): one per QLinear,
    the weight's fields set once, the step's (X, T, Y, ...) before each call."""
    _fields_ = [("parts", ctypes.POINTER(QPart)), ("n_parts", _i), ("K", _i), ("X", _p), ("T", _i),
                ("ldx", _i), ("Y", _p), ("ldy", _i), ("add", _i), ("glu", _i), ("norm_w", _p),
                ("eps", ctypes.c_float), ("act8", _i)]


def _cache_dir() -> Path:
    from .catalog import home
    return home() / "kernels"


def _build(compiler: str, out: Path, flags: tuple[str, ...] = ()) -> None:
    """Compile SOURCES into the shared library `out` (atomic rename; safe against a concurrent build)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        so = Path(tmp) / out.name
        cmd = [compiler, "-O3", "-march=native", "-ffp-contract=off", "-std=c++17", "-pthread",
               "-shared", "-fPIC", *flags, *[str(p) for p in SOURCES], "-o", str(so)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()[-800:]}")
        os.replace(so, out)


@functools.cache
def kernels() -> ctypes.CDLL | None:
    """The compiled kernel library for this CPU, or None (logged) when it cannot be built.
    LLMOS_QUANT=off disables the kernels; LLMOS_QUANT=avx512-simde, scalar, avx2, no-amx or 8-lanes builds
    that path (ISA_BUILDS) instead of this CPU's widest."""
    mode = os.environ.get("LLMOS_QUANT", "")
    if mode == "off":
        log.info("quantized kernels disabled by LLMOS_QUANT=off")
        return None
    if mode and mode not in ISA_BUILDS:
        log.warning("LLMOS_QUANT=%s is not one of off, %s: building this CPU's kernels", mode, ", ".join(ISA_BUILDS))
    flags = ISA_BUILDS.get(mode, ())
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        log.warning("no C++ compiler found: quantized weights are dequantised to fp32")
        return None
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
        build = f"{version}{isa_summary()}{cpu_features()['model']}{' '.join(flags)}"
        key = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS) + build.encode()).hexdigest()[:16]
        lib_path = _cache_dir() / f"quant-{key}.so"
        if not lib_path.exists():
            log.info("building quantized kernels for %s (%s) into %s",
                     cpu_features()["model"], isa_summary(), lib_path)
            _build(compiler, lib_path, flags)
        lib = ctypes.CDLL(str(lib_path))
    except Exception as e:  # compiler missing pieces, read-only cache, bad toolchain...
        log.warning("quantized kernels unavailable (%s): quantized weights are dequantised to fp32",
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
    lib.llmos_quant_isa.restype = ctypes.c_char_p
    lib.llmos_qmatmul.argtypes = [ctypes.c_int, _p, _i, _i, _i, _p, _i, _i, _p, _i, ctypes.c_int,
                                  ctypes.c_int, _p, ctypes.c_float]
    lib.llmos_qmatmul_args.argtypes = [ctypes.POINTER(QArgs)]
    lib.llmos_qmatmul_argmax.argtypes = [ctypes.POINTER(QArgs), _p]
    lib.llmos_qmatmul_parts.argtypes = [ctypes.POINTER(QPart), _i, _i, _p, _i, _i, _p, _i, ctypes.c_int,
                                        ctypes.c_int, _p, ctypes.c_float, ctypes.c_int]
    lib.llmos_dequant_rows.argtypes = [ctypes.c_int, _p, _i, _i, _p, _i, _p]
    lib.llmos_rowgroup_bytes.argtypes = [ctypes.c_int, _i, _i]
    lib.llmos_rowgroup_bytes.restype = ctypes.c_int64
    lib.llmos_rowgroup_pack.argtypes = [ctypes.c_int, _p, _i, _i, _i, _p]
    lib.llmos_rope.argtypes = [_p, _i, _i, _i, _i, _p, _p, _p]
    lib.llmos_rms_norm.argtypes = [_p, _i, _i, _i, _i, _p, ctypes.c_float, _p, _i]
    lib.llmos_rms_norm.restype = None
    lib.llmos_rope.restype = None
    lib.llmos_paged_attention.argtypes = [_p, _i, _i, _i, _i, _i, _p, _p, _i, _p, _i, _p, _p, _i,
                                          ctypes.c_float, _p, _i, ctypes.c_int]
    lib.llmos_kv_store.argtypes = [_p, _i, _i, _i, _i, _i, _p, _p, _p, ctypes.c_int]
    lib.llmos_quant_stragglers.restype = ctypes.c_int64
    lib.llmos_argmax_rows.argtypes = [_p, _i, _i, _i, _p]
    lib.llmos_argmax_rows.restype = None
    lib.llmos_quant_set_threads(torch.get_num_threads())
    return lib


def kernel_isa() -> str:
    """Which code path the built kernels use ('avx512f', 'avx2-fma' or 'scalar'; '+vnni' where the
    integer GEMM uses VNNI's vpdpwssd, '+amx' where its sums come from AMX tiles), or
    'none (dequantised fp32)' when they could not be built."""
    lib = kernels()
    return lib.llmos_quant_isa().decode() if lib is not None else "none (dequantised fp32)"


# The a8 kernels' arithmetic, named (K-quants on Q8_K activations, Q4_K's integer m term): a new
# name whenever their bits change, so that KV kept from another arithmetic (the prefix disk) is not
# read as theirs.
A8_ARITHMETIC = "a8q8k"


def act8_supported() -> bool:
    """Whether matmuls can take 8-bit activations here (the 'a8' dtype): where the kernels
    have VNNI's vpdpbusd (AVX512-VNNI, or AVX-VNNI on an AVX2 CPU)."""
    lib = kernels()
    return lib is not None and bool(lib.llmos_act8_supported())


def pool_stragglers() -> int:
    """How many times the kernels' thread pool went solo because a worker lagged (preempted by
    other processes, as far as it can tell); 0 without kernels."""
    lib = kernels()
    return int(lib.llmos_quant_stragglers()) if lib is not None else 0


def has_kernel(qtype: int) -> bool:
    return int(qtype) in KERNEL_TYPES and kernels() is not None


def type_name(ktype: int) -> str:
    """A kernel type's GGML name ('Q4_1'), row-grouped or not."""
    return KERNEL_TYPES[ktype % RG_TYPES]


def _release_file_pages(a: np.ndarray) -> None:
    """Drops the resident pages of a (when it is a view of a memory-mapped file) from this process:
    after repacking, the file's copy is not read again, and its pages would count in the RSS a
    second time. Anything else is left alone (another array's memory must not be discarded)."""
    base = a
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is None:
        return
    page = mmap.PAGESIZE
    start = -(-a.ctypes.data // page) * page
    end = (a.ctypes.data + a.nbytes) // page * page
    if end > start:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 4)   # MADV_DONTNEED


class QLinear:
    """y = f(x) @ W.T with W the row-concatenation of `parts`: (qtype, uint8 array [rows, row_bytes])
    in kernel types. Arrays may be np.memmap views of the model file. The weights are immutable;
    a call fills the instance's argument blocks, so calls on one instance must not overlap (a
    model runs one forward at a time, on its engine's thread)."""

    __slots__ = ("parts", "in_features", "out_features", "act8", "_lib", "qparts", "_args", "_call", "_argmax")

    def __init__(self, parts: list[tuple[int, np.ndarray]], in_features: int, act8: bool = False):
        """act8: the row-grouped parts take x at 8 bits, as llama.cpp's Q8_0 activations
        (drivers/rowgroup_kernels.h's grid8_row; the K-quants' as its Q8_K, grid8_row256): about twice the integer rate of the 13-bit grid in
        batched calls; a token's results are the same bits alone or in any batch, but not the 13-bit
        grid's, so greedy tokens may change. Only where act8_supported(); elsewhere the 13-bit grid,
        as without it."""
        self._lib = kernels()
        if self._lib is None:
            raise RuntimeError("quantized kernels are not available")
        for qtype, data in parts:
            if int(qtype) not in KERNEL_TYPES:
                raise ValueError(f"no quantized kernel for GGML type {int(qtype)}")
            if data.dtype != np.uint8 or data.ndim != 2 or not data.flags.c_contiguous:
                raise ValueError("quantized rows must be a C-contiguous uint8 [rows, row_bytes] array")
        self.parts = [self._row_grouped(int(q), d, in_features) for q, d in parts]
        self.in_features = in_features
        self.out_features = sum(d.shape[0] for _, d in parts)
        self.act8 = bool(act8) and act8_supported()
        self.qparts, col = (QPart * len(self.parts))(), 0      # the C view of self.parts
        for i, (q, d) in enumerate(self.parts):
            self.qparts[i] = QPart(q, d.ctypes.data, d.shape[0], d.shape[1], col)
            col += d.shape[0]
        self._args = QArgs(parts=self.qparts, n_parts=len(self.parts), K=in_features, ldy=self.out_features,
                           act8=int(self.act8))
        self._call = functools.partial(self._lib.llmos_qmatmul_args, ctypes.pointer(self._args))
        self._argmax = functools.partial(self._lib.llmos_qmatmul_argmax, ctypes.pointer(self._args))

    def __call__(self, x: torch.Tensor, norm: torch.Tensor | None = None, eps: float = 0.0,
                 swiglu: bool = False, out: torch.Tensor | None = None, geglu: bool = False,
                 into: torch.Tensor | None = None) -> torch.Tensor:
        """x: fp32 [T, K] ([T, 2K] = [gate | up] with swiglu: silu(gate) * up, or geglu:
        gelu_tanh(gate) * up). out given: out += result in place, returned; into given: the
        result is written into it, returned (out and into: contiguous fp32 of the output's shape)."""
        glu = GLU_SILU if swiglu else GLU_GELU_TANH if geglu else 0
        x = self._input(x, glu)
        T = x.shape[0]
        add = int(out is not None)
        if out is not None and into is not None:
            raise ValueError("out (add into) and into (write into) are exclusive")
        out = out if out is not None else into
        if out is None:
            out = torch.empty(T, self.out_features, dtype=torch.float32)
        elif out.dtype != torch.float32 or not out.is_contiguous() or out.shape != (T, self.out_features):
            raise ValueError("out and into must be contiguous fp32 tensors of the output's shape")
        if T == 0:
            return out
        self._set_args(x, glu, norm, eps, out.data_ptr(), add)
        self._check(self._call())
        return out

    def argmax(self, x: torch.Tensor, norm: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
        """self(x, norm, eps).argmax(dim=-1) as int64 [T] (torch's pick: the first index of a row's
        largest value, of its first NaN where it has one). Where every part is row-grouped the
        outputs are never written: each task keeps its rows' best per token (a greedy batch's output
        layer; Gemma 3's 64 x 262144 logits are 67 MB a step); else they are, then argmax_rows."""
        x = self._input(x, 0)
        best = torch.empty(x.shape[0], dtype=torch.int64)
        if x.shape[0] == 0:
            return best
        self._set_args(x, 0, norm, eps, None, 0)
        rc = self._argmax(best.data_ptr())
        if rc == -3:
            return argmax_rows(self(x, norm=norm, eps=eps))
        self._check(rc)
        return best

    def _input(self, x: torch.Tensor, glu: int) -> torch.Tensor:
        """x as contiguous fp32, its width checked against the weights (2K with a gated activation)."""
        if x.dtype != torch.float32:
            x = x.float()
        if not x.is_contiguous():
            x = x.contiguous()
        if x.shape[1] != self.in_features * (2 if glu else 1):
            raise ValueError(f"input has {x.shape[1]} features, weight expects {self.in_features}")
        return x

    def _set_args(self, x: torch.Tensor, glu: int, norm: torch.Tensor | None, eps: float, y: int | None,
                  add: int) -> None:
        a = self._args
        a.X, a.T, a.ldx, a.Y, a.add, a.glu = x.data_ptr(), x.shape[0], x.shape[1], y, add, glu
        a.norm_w, a.eps = None if norm is None else norm.data_ptr(), eps

    def _check(self, rc: int) -> None:
        if rc != 0:
            types = "+".join(str(p.type) for p in self.qparts)
            raise ValueError(f"quantized matmul failed ({rc}): types {types}, K {self.in_features}")

    def _row_grouped(self, qtype: int, data: np.ndarray, K: int) -> tuple[int, np.ndarray]:
        """(RG_TYPES + qtype, data repacked) where the kernels have a row-grouped kernel for qtype,
        else (qtype, data). The repacked array keeps data's shape (its buffer has the last
        group's padding rows beyond it). LLMOS_ROWGROUP=off keeps every matrix in the file's
        block layout (A/B runs; a fallback)."""
        if os.environ.get("LLMOS_ROWGROUP") == "off":
            return qtype, data
        rows, rb = data.shape
        n = int(self._lib.llmos_rowgroup_bytes(qtype, rows, K))
        if n <= 0:
            return qtype, data
        buf = np.empty((-(-n // rb), rb), dtype=np.uint8)
        if self._lib.llmos_rowgroup_pack(qtype, data.ctypes.data, rows, K, rb, buf.ctypes.data) != 0:
            return qtype, data
        _release_file_pages(data)
        return RG_TYPES + qtype, buf[:rows]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Dequantised rows `ids` of W as fp32 [len(ids), K] (embedding lookup)."""
        qtype, data = self.parts[0]
        ids = ids.to(torch.int64).contiguous()
        if len(self.parts) != 1 or (ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= data.shape[0])):
            raise ValueError("row lookup needs one part and ids inside it")
        out = torch.empty(ids.numel(), self.in_features, dtype=torch.float32)
        self._lib.llmos_dequant_rows(qtype, data.ctypes.data, self.in_features, data.shape[1],
                                     ids.data_ptr(), ids.numel(), out.data_ptr())
        return out

    def nbytes(self) -> int:
        """Bytes the weights occupy (a row-grouped part: its whole buffer, Q4_K's unpacked scales
        and the last group's padding rows included)."""
        return sum((d.base if q >= RG_TYPES else d).nbytes for q, d in self.parts)

    def stream_bytes(self, rows: int) -> int:
        """Weight bytes one product reads (all of them, whatever the number of rows)."""
        return self.nbytes()


def rms_norm_(x: torch.Tensor, groups: int, w: torch.Tensor, eps: float, add_to: torch.Tensor | None = None,
              offset: int = 0) -> None:
    """RMSNorm, in C, of `groups` consecutive D-wide groups (D = w's size) starting at column
    `offset` of each row of fp32 x [T, *]: in place, or (add_to: fp32 [T, groups * D]) added into
    add_to with x unchanged."""
    assert x.dtype == torch.float32 and x.is_contiguous() and w.dtype == torch.float32 and w.is_contiguous()
    D = w.numel()
    assert offset + groups * D <= x.shape[1]
    if add_to is not None:
        assert add_to.dtype == torch.float32 and add_to.is_contiguous() and add_to.shape == (x.shape[0], groups * D)
    kernels().llmos_rms_norm(x.data_ptr() + 4 * offset, x.shape[0], x.shape[1], groups, D, w.data_ptr(), eps,
                             None if add_to is None else add_to.data_ptr(), 0 if add_to is None else add_to.shape[1])


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """x.argmax(dim=-1) for a 2-D fp32 CPU tensor whose rows are contiguous, on the kernels' threads
    (the first index of each row's largest value; a row's first NaN where it has one); other
    tensors go to torch, and so does everything while the kernels are not loaded (a process on the
    fp32 path does not build them for this)."""
    lib = kernels() if kernels.cache_info().currsize else None
    if lib is None or x.dim() != 2 or x.device.type != "cpu" or x.dtype != torch.float32 or x.stride(1) != 1 \
            or x.shape[1] == 0:
        return x.argmax(dim=-1)
    out = torch.empty(x.shape[0], dtype=torch.int64)
    lib.llmos_argmax_rows(x.data_ptr(), x.shape[0], x.shape[1], x.stride(0), out.data_ptr())
    return out


def rope_(qkv: torch.Tensor, n_heads: int, head_dim: int, positions: torch.Tensor,
          cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate-half RoPE in place on the first n_heads heads of each row of fp32 qkv [T, *]."""
    assert qkv.dtype == torch.float32 and qkv.is_contiguous() and positions.dtype == torch.int64
    kernels().llmos_rope(qkv.data_ptr(), qkv.shape[0], qkv.shape[1], n_heads, head_dim,
                         positions.data_ptr(), cos.data_ptr(), sin.data_ptr())
