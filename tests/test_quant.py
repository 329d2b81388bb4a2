"""The quantized matmul kernels (drivers/quant.py, quant_kernels.cpp) against gguf-py's own
dequantisation, on random blocks of every kernel type; the model's quantized path on tiny models;
fallbacks and refusals.

Tolerance: the kernels dequantise each weight block exactly, and the row-grouped ones (every type
but Q5_K on a vector CPU) multiply it by the activations on their 13-bit grid (on_grid below), so
against gguf-py's dequantised weights in float64 times the same activations only fp32 rounding is
left: a few ulps of sum_i |w_i x_i| per output.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize

import tinyarch
import tinymodel
from llmos.drivers import quant
from llmos.drivers.gguf import ModelFileError
from llmos.drivers.linear import Linear
from llmos.drivers.llama import LlamaModel, SeqInput
from llmos.drivers.sampler import SamplingParams

KERNEL_TYPES = [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.Q6_K]
HALF_FIELDS = {QT.Q4_0: [0], QT.Q5_0: [0], QT.Q8_0: [0], QT.Q4_1: [0, 2], QT.Q5_1: [0, 2],
               QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208]}

pytestmark = pytest.mark.skipif(quant.kernels() is None, reason="no C++ compiler: kernels not built")


EMULATED_ISA = {"avx512-simde": "avx512f (SIMDe emulation)", "scalar": "scalar"}


@pytest.fixture(params=["native", "avx2", *EMULATED_ISA])
def isa(request, monkeypatch):
    """Runs a test on this CPU's kernels, on the AVX2 kernels (8 lanes) where this CPU's are wider,
    then on the AVX-512 kernels (16 lanes) built through SIMDe's emulation of the intrinsics, and
    on the scalar kernels of CPUs without AVX2, so each path is checked on any x86 CPU (.ci/run
    installs Debian's libsimde-dev)."""
    if request.param == "native":
        yield quant.kernel_isa()
        return
    if request.param in ("avx2", "8-lanes") and not quant.kernel_isa().startswith("avx512"):
        pytest.skip("this CPU's own kernels are the AVX2 ones (or it has no AVX2)")
    if request.param == "avx512-simde" and not Path("/usr/include/simde/x86/avx512.h").exists():
        pytest.skip("SIMDe headers (Debian libsimde-dev) are not installed")
    monkeypatch.setenv("LLMOS_QUANT", request.param)
    quant.kernels.cache_clear()
    try:
        eight_lanes = request.param in ("avx2", "8-lanes")
        assert quant.kernel_isa() == EMULATED_ISA.get(request.param, "avx2-fma") or eight_lanes \
            and quant.kernel_isa() == "avx2-fma+vnni"
        yield quant.kernel_isa()
    finally:
        quant.kernels.cache_clear()        # the next kernels() is this CPU's again


def on_grid(x: torch.Tensor) -> torch.Tensor:
    """x as the row-grouped kernels take it (drivers/rowgroup_kernels.h), written independently:
    each 32-block of a row rounded to integers in [-4095, 4095] times 2^(e - 12), e the exponent
    of the block's largest |x| (frexp), 2^-149 at the least; a block with a non-finite value all NaN."""
    b = x.double().numpy().reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(b).max(-1, keepdims=True)
    g = np.ldexp(1.0, np.maximum(np.frexp(amax)[1] - 12, -149))
    q = np.clip(np.rint(b / g), -4095, 4095) * g
    q = np.where(np.isfinite(amax), q, np.nan)
    return torch.from_numpy(q.reshape(x.shape)).to(x.dtype)


def grid_of(qtype, isa: str):
    """The activations the kernel for qtype multiplies: on the grid where it runs row-grouped."""
    grouped = qtype != QT.Q5_K and not isa.startswith("scalar")
    return on_grid if grouped else (lambda x: x)


def random_blocks(qtype, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """Random bytes in qtype's block layout, with sane fp16 scale fields: [rows, row_bytes]."""
    rng = np.random.default_rng(seed)
    elems, nbytes = GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, (rows, k // elems, nbytes), dtype=np.uint8)
    for off in HALF_FIELDS[qtype]:
        half = rng.uniform(0.001, 0.02, (rows, k // elems)).astype(np.float16)
        data[:, :, off:off + 2] = half.view(np.uint8).reshape(rows, k // elems, 2)
    return data.reshape(rows, -1)


@pytest.mark.parametrize("qtype", KERNEL_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("rows,k,tokens", [(1, 256, 1), (7, 256, 3), (13, 512, 70), (33, 768, 9)])
def test_kernel_matches_dequantised_matmul(qtype, rows, k, tokens, isa):
    w = random_blocks(qtype, rows, k, seed=rows * 1000 + tokens)
    wf = torch.from_numpy(dequantize(w, qtype).reshape(rows, k).astype(np.float64))
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(rows))
    got = quant.QLinear([(qtype, w)], k)(x).double()
    xg = grid_of(qtype, isa)(x).double()
    bound = xg.abs() @ wf.abs().T
    assert torch.all((got - xg @ wf.T).abs() <= 2e-6 * bound + 1e-6)


@pytest.mark.parametrize("qtype", KERNEL_TYPES, ids=lambda q: q.name)
def test_row_lookup_equals_gguf_dequantisation(qtype):
    w = random_blocks(qtype, 9, 512, seed=3)
    want = torch.from_numpy(dequantize(w, qtype).reshape(9, 512).astype(np.float32))
    ids = torch.tensor([8, 0, 3, 3])
    got = quant.QLinear([(qtype, w)], 512).rows(ids)
    assert torch.allclose(got, want[ids], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("K", [512, 1792])              # 1792: the GEMM runs K in chunks of 768
@pytest.mark.parametrize("qtype", [QT.Q4_1, QT.Q5_0, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q8_0], ids=lambda q: q.name)
def test_a_token_gets_the_same_bits_alone_or_in_any_batch(qtype, K, isa):
    """Alone (GEMV), with 1-3 others (GEMV passes sharing the weights) or in a GEMM's 256-token
    chunks (the batch's last 6 a second chunk, from token 256): the same bits."""
    w = random_blocks(qtype, 37, K, seed=5)
    lin = quant.QLinear([(qtype, w)], K)
    x = torch.randn(262, K, generator=torch.Generator().manual_seed(9))
    batch = lin(x)
    for t in (0, 1, 255, 256, 261):
        assert torch.equal(lin(x[t:t + 1]), batch[t:t + 1])
    for a, b in ((5, 12), (20, 22), (30, 33), (40, 44), (127, 130), (250, 262)):
        assert torch.equal(lin(x[a:b]), batch[a:b])


@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q6_K], ids=lambda q: q.name)
def test_row_grouped_weights_give_the_block_layout_s_products_in_any_batch(qtype, isa):
    """Every type but Q5_K is repacked with rows in the vector lanes wherever the kernels are vector
    ones; 131 rows: whole GEMV passes, single groups and a last group with padding rows."""
    lib = quant.kernels()
    rows, K = 131, 512
    w = random_blocks(qtype, rows, K, seed=11)
    lin = quant.QLinear([(qtype, w)], K)
    vector = not isa.startswith("scalar")
    assert lin.parts[0][0] == (quant.RG_TYPES + qtype if vector else qtype)
    x = torch.randn(70, K, generator=torch.Generator().manual_seed(4))
    got = lin(x)
    want = torch.empty(70, rows)          # the block layout's kernel on the file's bytes, x on the grid
    xg = grid_of(qtype, isa)(x)
    assert lib.llmos_qmatmul(qtype, w.ctypes.data, rows, K, w.shape[1], xg.data_ptr(), 70, K, want.data_ptr(),
                             rows, 0, 0, None, 0.0) == 0
    bound = xg.abs() @ torch.from_numpy(dequantize(w, qtype).reshape(rows, K)).abs().T
    assert torch.all((got - want).abs() <= 2e-6 * bound + 1e-6)
    for t in (0, 1, 68, 69):
        assert torch.equal(lin(x[t:t + 1]), got[t:t + 1])
    assert torch.equal(lin(x[3:8]), got[3:8])
    if vector:      # nbytes counts the repacked buffer: whole groups of rows, Q4_K's scales unpacked
        n = lib.llmos_rowgroup_bytes(qtype, rows, K)
        assert n >= w.nbytes and lin.nbytes() == -(-n // w.shape[1]) * w.shape[1]
    ids = torch.tensor([130, 0, 64, 7])
    want_rows = torch.empty(4, K)
    lib.llmos_dequant_rows(qtype, w.ctypes.data, K, w.shape[1], ids.data_ptr(), 4, want_rows.data_ptr())
    assert torch.equal(lin.rows(ids), want_rows)


@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q8_0, QT.Q6_K], ids=lambda q: q.name)
def test_the_activations_grid_at_its_edges_gives_the_same_bits_alone_or_batched(qtype, isa):
    """Tokens whose blocks are zero, denormal (the grid's 2^-149 floor), huge, or hold an infinity:
    the GEMV (one token) and the integer GEMM (a batch) give the same bits, equal to the block
    layout's exact kernel on the grid; a block with an infinity leaves no output of its token finite."""
    lib = quant.kernels()
    rows, K = 19, 256
    w = random_blocks(qtype, rows, K, seed=7)
    lin = quant.QLinear([(qtype, w)], K)
    x = torch.randn(6, K, generator=torch.Generator().manual_seed(2))
    x[0, :32] = 0.0
    x[1] *= 1e-40                     # denormal: on the grid exactly as they are
    x[2] *= 1e30
    x[3, 40] = float("inf")
    x[4, :32] *= 1e-30                # one block far below the others
    got = lin(x)
    for t in range(6):
        torch.testing.assert_close(lin(x[t:t + 1]), got[t:t + 1], rtol=0, atol=0, equal_nan=True)
    assert not torch.isfinite(got[3]).any() and torch.isfinite(got[[0, 1, 2, 4, 5]]).all()
    xg = grid_of(qtype, isa)(x)
    want = torch.empty(6, rows)
    assert lib.llmos_qmatmul(qtype, w.ctypes.data, rows, K, w.shape[1], xg.data_ptr(), 6, K, want.data_ptr(),
                             rows, 0, 0, None, 0.0) == 0
    bound = xg.abs() @ torch.from_numpy(dequantize(w, qtype).reshape(rows, K)).abs().T
    ok = [0, 1, 2, 4, 5]
    assert torch.all((got[ok] - want[ok]).abs() <= 2e-6 * bound[ok] + 1e-43)     # + a few denormal steps


def on_grid8(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """x as an a8 GEMM takes it (grid8_row; the K-quants' grid8_row256 with block 256), written
    independently, as llama.cpp's Q8_0 (Q8_K) activations: each block rounded to integers in [-127,
    127] times g = its largest |x| / 127 in fp32 (0 for a block below the smallest normal times 127);
    float64."""
    b = x.float().numpy().reshape(*x.shape[:-1], -1, block)
    g = np.abs(b).max(-1, keepdims=True) / np.float32(127)
    g = np.where(g >= np.finfo(np.float32).tiny, g, np.float32(0))
    inv = np.divide(np.float32(1), g, out=np.zeros_like(g), where=g > 0)
    q = np.clip(np.rint(b * inv), -127, 127).astype(np.float64) * g.astype(np.float64)
    return torch.from_numpy(q.reshape(x.shape))


@pytest.mark.parametrize("isa", ["native", "avx2", "8-lanes", *EMULATED_ISA], indirect=True)
@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q6_K], ids=lambda q: q.name)
def test_a8_takes_8_bit_activations_and_a_token_s_bits_do_not_depend_on_its_batch(qtype, isa):
    """act8 where the kernels have vpdpbusd (16 lanes, or 8: '8-lanes' keeps an AVX512-VNNI CPU's
    VNNI in the 8-lane build, the path of AVX-VNNI CPUs): a batch (262 tokens: a 256-token chunk,
    then 6 from token 256; micro-kernel calls of 4 tokens, then 1) is the dequantised weights times x
    on the 8-bit grid, not the 13-bit one; a block with an infinity leaves its token's outputs
    non-finite and no other's. 1 to 5 tokens alone (the a8 GEMV passes up to rg_few_max), and 258
    (a chunk's last 2 tokens in GEMV passes inside a GEMM job), are the same rows' bits as in the
    batch, and so are a lone token with an infinity and one with a zero block. Kernels without
    vpdpbusd keep the 13-bit grid's bits. 128, 37, 20 and 9 rows: micro-kernel calls and GEMV passes
    on 4, 3, 2 and 1 groups of rows. The K-quants take x with one g a 256-block (llama.cpp's Q8_K),
    the others one a 32-block."""
    K = 512
    x = torch.randn(262, K, generator=torch.Generator().manual_seed(6))
    x[6, :32] = 0.0
    x[7, :256] = 0.0                                      # a zero 256-block, for the K-quants
    x[9, 40] = float("inf")
    x[259, 100] = float("inf")                            # in the second chunk
    ok = [t for t in range(262) if t not in (9, 259)]
    xg = on_grid8(x[ok], 256 if qtype in (QT.Q4_K, QT.Q6_K) else 32)
    for rows in (128, 37, 20, 9):
        w = random_blocks(qtype, rows, K, seed=13)
        a8, grid = quant.QLinear([(qtype, w)], K, act8=True), quant.QLinear([(qtype, w)], K)
        assert a8.act8 == quant.act8_supported() and not grid.act8
        got = a8(x)
        if not a8.act8:
            torch.testing.assert_close(got, grid(x), rtol=0, atol=0, equal_nan=True)
            continue
        for t in (1, 2, 3, 4, 5):
            assert torch.equal(a8(x[:t]), got[:t]), t
        for lo, hi in ((6, 7), (7, 8), (9, 10), (6, 10)):  # zero blocks, an infinity, both with others
            torch.testing.assert_close(a8(x[lo:hi]), got[lo:hi], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(a8(x[:258]), got[:258], rtol=0, atol=0, equal_nan=True)
        assert not torch.isfinite(got[[9, 259]]).any()
        wf = torch.from_numpy(dequantize(w, qtype).reshape(rows, K).astype(np.float64))
        bound = xg.abs() @ wf.abs().T
        assert torch.all((got[ok].double() - xg @ wf.T).abs() <= 2e-6 * bound + 1e-6)
        assert (got[ok] - grid(x)[ok]).abs().max() > 1e-4 * bound.max()


def test_a8_model_tracks_the_13_bit_path_with_or_without_fused_layers(tmp_path, monkeypatch):
    """dtype 'a8' ('auto' on a file outside the catalog): quantized weights, matmuls on 8-bit
    activations where the CPU has vpdpbusd (named by weight_format), logits near the 13-bit path's
    ('a13'); the fused layers pass act8 on."""
    path = tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=QT.Q8_0)
    a13, a8, auto = LlamaModel.load(path, dtype="a13"), LlamaModel.load(path, dtype="a8"), LlamaModel.load(path)
    assert a8.quantized and a8.act8 == auto.act8 == quant.act8_supported()
    assert a8.weight_format().endswith(", 8-bit activations") == a8.act8 and a8.weight_format() == auto.weight_format()
    assert a13.quantized and not a13.act8 and not a13.weight_format().endswith("activations")
    ids = list(range(10, 40))

    def logits(m):
        return m.forward([SeqInput(ids, 0, list(range(8)))], m.new_kv(8, 4))[0]
    a, b = logits(a13), logits(a8)
    assert (a - b).abs().max() < 2e-2 * a.abs().max() and torch.equal(a, b) != a8.act8
    assert torch.equal(logits(auto), b)
    monkeypatch.setenv("LLMOS_FUSED", "off")
    assert torch.equal(logits(LlamaModel.load(path, dtype="a8")), b)


def test_auto_takes_8_bit_activations_but_for_a_catalog_model_whose_tokens_need_13_bits(tmp_path, monkeypatch):
    """'auto' is 'a13' for a catalog model's file whose entry says so (SmolLM2's), found by its size
    and sha256 wherever it lies; 'a8' for any other file (Gemma 3's; the user's, even one of the
    same size); 'a13' and 'fp32' choose for themselves; an unknown dtype is one clear error."""
    import dataclasses
    import shutil
    from llmos.drivers import catalog
    assert catalog.CATALOG["smollm2"].auto_dtype == "a13" and catalog.CATALOG["gemma3"].auto_dtype == "a8"
    smol = tinymodel.build_tiny_model(tmp_path / "smol.gguf", qtype=QT.Q8_0)     # stands in for the real file
    entry = dataclasses.replace(catalog.CATALOG["smollm2"], size=Path(smol).stat().st_size,
                                sha256=catalog._sha256(Path(smol)))
    monkeypatch.setitem(catalog.CATALOG, "smollm2", entry)
    (tmp_path / "copy").mkdir()
    copy = shutil.copy(smol, tmp_path / "copy" / "renamed.gguf")
    other = tmp_path / "other.gguf"                                  # the same size, another byte
    other.write_bytes(Path(smol).read_bytes()[:-1] + b"\x01")
    assert [catalog.auto_dtype(p) for p in (smol, copy, other)] == ["a13", "a13", "a8"]
    assert not LlamaModel.load(copy).act8 and LlamaModel.load(copy, dtype="a8").act8 == quant.act8_supported()
    assert LlamaModel.load(other).act8 == quant.act8_supported()
    assert not LlamaModel.load(other, dtype="a13").act8
    assert not LlamaModel.load(other, dtype="fp32").quantized
    with pytest.raises(ValueError, match="unknown dtype 'a9'"):
        LlamaModel.load(smol, dtype="a9")


def test_a8_where_it_cannot_apply_runs_as_a13_or_auto_and_says_why(tmp_path, monkeypatch, caplog):
    from llmos.drivers import llama
    path = tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=QT.Q8_0)
    monkeypatch.setattr(llama, "act8_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="llmos.drivers"):
        m = LlamaModel.load(path, dtype="a8")
    assert m.quantized and not m.act8 and "no vpdpbusd" in caplog.text
    caplog.clear()
    monkeypatch.setenv("LLMOS_QUANT", "off")
    quant.kernels.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="llmos.drivers"):
            m = LlamaModel.load(path, dtype="a8")
            m13 = LlamaModel.load(path, dtype="a13")
    finally:
        monkeypatch.delenv("LLMOS_QUANT")
        quant.kernels.cache_clear()
    assert not m.quantized and "dtype a8: quantized weights are for the quantized CPU path" in caplog.text
    assert not m13.quantized and "dtype a13: quantized weights are for the quantized CPU path" in caplog.text


def test_the_simde_kernels_build_for_a_cpu_without_avx512(tmp_path):
    """The 16-lane code through SIMDe is how a CPU without AVX-512 tests it (the isa fixture): every
    intrinsic it uses must exist in SIMDe or have a shim in simd_vec.h (an AVX-512 host compiles
    SIMDe's calls natively and would not notice)."""
    import shutil
    import subprocess
    if not Path("/usr/include/simde/x86/avx512.h").exists():
        pytest.skip("SIMDe headers (Debian libsimde-dev) are not installed")
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    subprocess.run([compiler, "-O1", "-march=x86-64-v3", "-DLLMOS_SIMDE_AVX512", "-ffp-contract=off", "-std=c++17",
                    "-c", str(quant.SOURCES[0]), "-o", str(tmp_path / "k.o")], check=True, timeout=600)


@pytest.mark.parametrize("march,vnni", [("alderlake", True), ("sapphirerapids", True), ("skylake-avx512", False)])
def test_the_kernels_build_for_other_cpus_and_use_vnni_where_they_have_it(tmp_path, march, vnni):
    """No CPU here has VNNI or AVX-512: the builds for CPUs that do must still compile, and the
    integer GEMM must use vpdpwssd (multiply, pairwise add and accumulate in one) where it exists."""
    import shutil
    import subprocess
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    obj = tmp_path / "k.o"
    subprocess.run([compiler, "-O1", f"-march={march}", "-ffp-contract=off", "-std=c++17", "-c",
                    str(quant.SOURCES[0]), "-o", str(obj)], check=True, timeout=300)
    dis = subprocess.run(["objdump", "-d", str(obj)], capture_output=True, text=True, check=True).stdout
    assert ("vpdpwssd" in dis) == vnni
    assert ("vpdpbusd" in dis) == vnni          # the a8 GEMM (rg_imicro8)
    assert ("zmm" in dis) == (march != "alderlake")


def test_llmos_rowgroup_off_keeps_the_file_s_block_layout(monkeypatch):
    w = random_blocks(QT.Q4_1, 16, 256)
    monkeypatch.setenv("LLMOS_ROWGROUP", "off")
    lin = quant.QLinear([(QT.Q4_1, w)], 256)
    assert lin.parts[0][0] == QT.Q4_1 and lin.parts[0][1] is w


def test_row_grouped_kernel_refuses_types_it_does_not_have():
    lib = quant.kernels()
    w = random_blocks(QT.Q5_K, 8, 256)
    assert lib.llmos_rowgroup_bytes(int(QT.Q5_K), 8, 256) == 0
    assert lib.llmos_rowgroup_pack(int(QT.Q5_K), w.ctypes.data, 8, 256, w.shape[1], w.ctypes.data) == -1
    y = torch.empty(1, 8)
    x = torch.zeros(1, 256)
    assert lib.llmos_qmatmul(quant.RG_TYPES + int(QT.Q5_K), w.ctypes.data, 8, 256, w.shape[1], x.data_ptr(), 1, 256,
                             y.data_ptr(), 8, 0, 0, None, 0.0) == -1
    assert lib.llmos_rowgroup_bytes(int(QT.Q4_1), 8, 100) == 0          # K not a whole number of blocks


def _resident_kib(addr: int) -> int:
    """Rss of the mapping holding addr, from /proc/self/smaps."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= addr < hi
        elif inside and head == "Rss:":
            return int(line.split()[1])
    raise AssertionError("no mapping holds the address")


def test_repacking_releases_the_file_s_pages_and_nothing_else(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(np.arange(1 << 22, dtype=np.uint8).tobytes())
    mapped = np.memmap(path, mode="r")
    view = np.asarray(mapped[4096:]).view(np.uint8)
    assert int(view.sum(dtype=np.int64)) > 0 and _resident_kib(view.ctypes.data) >= 4000
    quant._release_file_pages(view)
    assert _resident_kib(view.ctypes.data) < 100
    assert np.array_equal(view[:1000], np.arange(4096, 5096, dtype=np.int64).astype(np.uint8))   # read again
    anon = np.arange(1 << 22, dtype=np.uint8)       # not a file's: must stay as it is
    quant._release_file_pages(anon)
    assert np.array_equal(anon, np.arange(1 << 22, dtype=np.uint8))


def test_fused_parts_norm_swiglu_and_residual_add(isa):
    a, b = random_blocks(QT.Q4_K, 5, 256, seed=1), random_blocks(QT.Q6_K, 3, 256, seed=2)
    fused = quant.QLinear([(QT.Q4_K, a), (QT.Q6_K, b)], 256)
    parts = [quant.QLinear([(QT.Q4_K, a)], 256), quant.QLinear([(QT.Q6_K, b)], 256)]
    g = torch.Generator().manual_seed(3)      # unseeded, one draw in a few flipped a grid level past rtol
    x = torch.randn(4, 512, generator=g)
    norm = torch.rand(256, generator=g) + 0.5
    y = fused(x, norm=norm, eps=1e-5, swiglu=True)
    gate, up = x.chunk(2, dim=-1)
    h = torch.nn.functional.rms_norm(torch.nn.functional.silu(gate) * up, (256,), norm, 1e-5)
    assert torch.allclose(y, torch.cat([p(h) for p in parts], 1), rtol=1e-4, atol=1e-4)
    residual = torch.randn(4, 8, generator=g)
    expect = residual + y
    out = fused(x, norm=norm, eps=1e-5, swiglu=True, out=residual)
    assert out is residual and torch.allclose(out, expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("T", [1, 5, 70])
def test_parts_in_both_pair_orders_and_the_block_layout_run_as_one_matmul(T, isa):
    """One call for a QLinear's parts (a split-pair Q4_0, a natural-pair Q8_0, a block-layout
    Q5_K, a row-grouped Q4_K): the input's norm and grid (13-bit, or for a8 8-bit with one scale a
    32-block and, for the Q4_K, one a 256-block) are computed once, and each part's columns are the
    bits that part gives alone."""
    ws = [(QT.Q4_0, random_blocks(QT.Q4_0, 21, 256, seed=1)), (QT.Q8_0, random_blocks(QT.Q8_0, 40, 256, seed=2)),
          (QT.Q5_K, random_blocks(QT.Q5_K, 9, 256, seed=3)), (QT.Q4_K, random_blocks(QT.Q4_K, 19, 256, seed=4))]
    x, norm = torch.randn(T, 256, generator=torch.Generator().manual_seed(T)), torch.rand(256) + 0.5
    for act8 in (False, True):
        fused = quant.QLinear(ws, 256, act8=act8)
        got = fused(x, norm=norm, eps=1e-5)       # first: the kernels' buffers hold nothing of x yet
        alone = torch.cat([quant.QLinear([w], 256, act8=act8)(x, norm=norm, eps=1e-5) for w in ws], 1)
        assert torch.equal(got, alone)
        if fused.act8:          # the Q4_K columns of a shared call: x on its own 256-block scales
            wf = torch.from_numpy(dequantize(ws[3][1], QT.Q4_K).reshape(19, 256).astype(np.float64))
            xg, q4k = on_grid8(x, 256), fused(x)[:, -19:].double()
            assert torch.all((q4k - xg @ wf.T).abs() <= 2e-6 * (xg.abs() @ wf.abs().T) + 1e-6)


def test_a_part_without_a_kernel_fails_the_matmul_before_any_output():
    lib = quant.kernels()
    good = random_blocks(QT.Q8_0, 4, 64, seed=1)
    parts = (quant.QPart * 2)(quant.QPart(int(QT.Q8_0), good.ctypes.data, 4, good.shape[1], 0),
                              quant.QPart(99, good.ctypes.data, 4, good.shape[1], 4))
    x, y = torch.randn(3, 64), torch.full((3, 8), 7.0)
    assert lib.llmos_qmatmul_parts(parts, 2, 64, x.data_ptr(), 3, 64, y.data_ptr(), 8, 0, 0, None, 0.0, 0) == -1
    parts[1].type = int(QT.Q4_K)                          # K = 64 is not a whole Q4_K block
    assert lib.llmos_qmatmul_parts(parts, 2, 64, x.data_ptr(), 3, 64, y.data_ptr(), 8, 0, 0, None, 0.0, 0) == -2
    assert torch.equal(y, torch.full((3, 8), 7.0))


def test_swiglu_of_extreme_gates_stays_finite_and_exact():
    """The kernel's vectorised SiLU (drivers/simd_exp.h) clamps e^-g: gates of +-100 and +-1e30
    give g (or 0) times up, never inf or NaN; ordinary gates match torch's silu closely."""
    w = random_blocks(QT.Q8_0, 4, 32, seed=3)
    lin, ref = quant.QLinear([(QT.Q8_0, w)], 32), quant.QLinear([(QT.Q8_0, w)], 32)
    gate = torch.tensor([100.0, -100.0, 1e30, -1e30, 88.5, -88.5, 0.0, -0.0] * 3 + [1.5, -2.0] * 4)
    up = torch.linspace(-1, 1, 32)
    y = lin(torch.cat([gate, up]).unsqueeze(0), swiglu=True)
    h = torch.nn.functional.silu(gate.double()) * up.double()
    assert torch.isfinite(y).all()
    assert torch.allclose(y.double(), ref(h.float().unsqueeze(0)).double(), rtol=1e-5, atol=1e-4)


def test_bad_weights_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="no quantized kernel"):
        quant.QLinear([(int(QT.F16), np.zeros((2, 64), np.uint8))], 32)
    lin = quant.QLinear([(QT.Q4_K, random_blocks(QT.Q4_K, 2, 256))], 256)
    with pytest.raises(ValueError, match="features"):
        lin(torch.zeros(1, 128))
    odd = quant.QLinear([(QT.Q4_K, random_blocks(QT.Q4_K, 2, 256))], 96)   # K not whole blocks
    with pytest.raises(ValueError, match="quantized matmul failed"):
        odd(torch.zeros(1, 96))
    with pytest.raises(ValueError, match="ids inside"):
        lin.rows(torch.tensor([2]))


def test_rope_kernel_equals_torch_rotate_half():
    T, heads, D = 5, 3, 16
    x = torch.randn(T, heads * D + 7)
    pos = torch.tensor([0, 4, 9, 1, 30])
    ang = torch.outer(torch.arange(64, dtype=torch.float64), 1.0 / 10000 ** (torch.arange(0, D // 2) / (D // 2)))
    cos, sin = (torch.cat([f(ang)] * 2, -1).float() for f in (torch.cos, torch.sin))
    v = x[:, :heads * D].view(T, heads, D)
    c, s = cos[pos].unsqueeze(1), sin[pos].unsqueeze(1)
    want = v * c + torch.cat([-v[..., D // 2:], v[..., :D // 2]], -1) * s
    got = x.clone()
    quant.rope_(got, heads, D, pos, cos, sin)
    assert torch.equal(got[:, :heads * D].view(T, heads, D), want)
    assert torch.equal(got[:, heads * D:], x[:, heads * D:])


@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q4_1, QT.Q8_0, QT.Q5_1])
def test_quantized_model_tracks_fp32_and_keeps_weights_quantized(tmp_path, qtype, isa):
    """On the 13-bit grid ('a13') the logits are within 0.1 % of fp32's."""
    path = tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=qtype)
    ref, qm = LlamaModel.load(path, dtype="fp32"), LlamaModel.load(path, dtype="a13")
    assert qm.quantized and not ref.quantized
    assert isinstance(qm.layers[0].wqkv, quant.QLinear) and len(qm.layers[0].wqkv.parts) == 1
    assert qm.weight_bytes() < ref.weight_bytes() / 3
    grouped = not isa.startswith("scalar")        # the format names the layout in use
    assert qm.weight_format().endswith(f"kernels (row-grouped: {qtype.name})" if grouped else "kernels")
    ids = list(range(10, 40))
    a = ref.forward([SeqInput(ids, 0, list(range(8)))], ref.new_kv(8, 4))[0]
    b = qm.forward([SeqInput(ids, 0, list(range(8)))], qm.new_kv(8, 4))[0]
    assert (a - b).abs().max() < 1e-3 * a.abs().max()


def test_thread_pool_runs_each_task_once_and_returns_after_the_last(tmp_path):
    """300k back-to-back jobs on two threads: no task runs twice and no job returns before its
    last task has run. (A worker that read the last job's generation, then the next job's task
    count, once claimed a task before that job was published: a few in 100k jobs ran twice, and
    their jobs returned early, while a kernel still read the caller's finished stack frame.)"""
    out = pool_stress(tmp_path, "300000")
    assert out[:2] == [0, 0], out


def pool_stress(tmp_path, *args: str) -> list[int]:
    """tests/pool_stress.cpp built against the kernel library and run with args: its counts."""
    import shutil
    import subprocess
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    lib = Path(quant.kernels()._name)
    exe = tmp_path / "pool_stress"
    if not exe.exists():
        subprocess.run([compiler, "-O2", "-std=c++17", "-pthread", str(Path(__file__).with_name("pool_stress.cpp")),
                        str(lib), f"-Wl,-rpath,{lib.parent}", "-o", str(exe)], check=True)
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, check=True, timeout=120)
    return [int(v) for v in out.stdout.split()]


def test_only_small_pools_go_solo_when_a_worker_lags(tmp_path):
    """The contention guard: with 2 threads the caller, left waiting on a worker's slow task, runs
    the next jobs alone; a pool of 8 never does (it would idle 7 threads for one lagging worker)."""
    early, wrong, solo = pool_stress(tmp_path, "40", "2", "3000")
    assert (early, wrong) == (0, 0) and solo > 0
    early, wrong, solo = pool_stress(tmp_path, "40", "8", "3000")
    assert (early, wrong, solo) == (0, 0, 0)


def test_logits_go_into_the_caller_s_buffer_where_the_head_is_quantized(tmp_path, monkeypatch):
    """forward(logits_out=buf): a quantized head writes the logits into buf's start (the same
    values as a new tensor); too small a buffer, or a float head, gets a new tensor. The runner
    keeps one buffer step after step, grown to the step's rows, none past LOGITS_KEEP_BYTES."""
    from llmos.drivers import runner as runner_mod
    from llmos.drivers.runner import Batch, ModelRunner
    m = LlamaModel.load(tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=QT.Q8_0))
    V = m.config.vocab_size
    seqs = [SeqInput([3, 7, 11], 0, [1]), SeqInput([4, 8], 0, [2])]
    want = m.forward(seqs, m.new_kv(4, 4))
    buf = torch.full((3 * V,), float("nan"))
    got = m.forward(seqs, m.new_kv(4, 4), logits_out=buf)
    assert torch.equal(got, want) and got.data_ptr() == buf.data_ptr() and torch.isnan(buf[2 * V:]).all()
    small = torch.empty(2 * V - 1)
    got = m.forward(seqs, m.new_kv(4, 4), logits_out=small)
    assert torch.equal(got, want) and got.data_ptr() != small.data_ptr()
    f32 = LlamaModel.load(tinymodel.build_tiny_model(tmp_path / "f.gguf"), dtype="fp32")
    assert f32.forward(seqs, f32.new_kv(4, 4), logits_out=buf).data_ptr() != buf.data_ptr()

    r = ModelRunner(m, m.new_kv(8, 4))
    logits_row = (SamplingParams(temperature=0, logprobs=True), None, None, None)    # a row that reads its logits
    one = Batch([SeqInput([3, 7, 11], 0, [1])], [logits_row])
    two = Batch([SeqInput([5], 3, [1]), SeqInput([4, 8], 0, [2])], [logits_row] * 2)
    assert r.run(one).tokens[0] == int(want[0].argmax())
    first = r._logits.data_ptr()
    assert r._logits.numel() == V and r.run(two).tokens[1] == int(want[1].argmax())
    assert r._logits.numel() == 2 * V and r._logits.data_ptr() != first      # grown to two rows
    grown = r._logits.data_ptr()
    r.run(Batch([SeqInput([6], 4, [1])], [logits_row]))
    assert r._logits.data_ptr() == grown                                    # kept, not shrunk
    monkeypatch.setattr(runner_mod, "LOGITS_KEEP_BYTES", 4 * V)
    assert r._logits_buffer(two.seqs) is None and r._logits_buffer(one.seqs) is not None
    lin = m.lm_head
    with pytest.raises(ValueError, match="exclusive"):
        lin(torch.zeros(1, lin.in_features), out=torch.zeros(1, V), into=torch.zeros(1, V))
    with pytest.raises(ValueError, match="contiguous fp32 tensors of the output's shape"):
        lin(torch.zeros(1, lin.in_features), into=torch.zeros(2, V))


def test_a_greedy_step_takes_the_head_s_argmax_instead_of_logits(tmp_path, monkeypatch):
    """A step whose rows all just take their logits' argmax (greedy; no logprobs, bias, penalty or
    grammar) asks the model for tokens (forward(greedy=True)): a quantized head computes them
    without writing logits (QLinear.argmax), and they are the logits path's tokens. A step with
    one row that needs more takes the logits for all."""
    from llmos.drivers.runner import Batch, ModelRunner
    m = LlamaModel.load(tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=QT.Q8_0))
    calls = []
    argmax = quant.QLinear.argmax
    monkeypatch.setattr(quant.QLinear, "argmax", lambda self, *a, **k: calls.append(1) or argmax(self, *a, **k))
    seqs = [SeqInput([3, 7, 11], 0, [1]), SeqInput([4, 8], 0, [2]), SeqInput(list(range(20, 32)), 0, [3, 4, 5])]
    greedy, reads = SamplingParams(temperature=0), SamplingParams(temperature=0, logprobs=True)
    runs = {}
    for name, rows in {"greedy": [greedy] * 3, "logits": [reads] * 3, "mixed": [greedy, reads, greedy]}.items():
        before = len(calls)
        runs[name] = ModelRunner(m, m.new_kv(8, 4)).run(Batch(seqs, [(p, None, None, None) for p in rows]))
        assert (len(calls) > before) == (name == "greedy")
    assert runs["greedy"].tokens == runs["logits"].tokens == runs["mixed"].tokens and None not in runs["greedy"].tokens
    assert runs["greedy"].logprobs == [None] * 3 and None not in runs["logits"].logprobs
    f32 = LlamaModel.load(tinymodel.build_tiny_model(tmp_path / "f.gguf"), dtype="fp32")
    tokens = f32.forward(seqs, f32.new_kv(8, 4), greedy=True)          # a float head: its logits' argmax
    assert tokens.tolist() == f32.forward(seqs, f32.new_kv(8, 4)).argmax(dim=-1).tolist()


ARGMAX_TYPES = [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.Q6_K]


@pytest.mark.parametrize("qtype", ARGMAX_TYPES, ids=lambda q: q.name)
def test_a_matmul_s_argmax_is_torch_s_pick_without_the_outputs(qtype, isa):
    """QLinear.argmax is argmax_rows of the outputs (torch.argmax's pick) in every path (the GEMV,
    a few tokens, the GEMM, a8, a second 256-token chunk), over two parts (the second's columns
    offset): equal outputs go to the lower column (columns 7 and 900 repeat column 5; token 0 is
    row 5's own values), an all-zero token's outputs (all +0) to column 0, a NaN above every value (NaN
    scales in columns 300 and 700: 300 for every token; in column 995 of 1000 alone, a partial
    group's: 995), a token holding inf, all NaN on the grid: 0. The kernel computes it without
    outputs where every part is row-grouped; the block layout (Q5_K) and the scalar build return
    -3 and take the outputs, then their argmax."""
    w1, w2 = random_blocks(qtype, 600, 256, seed=1), random_blocks(qtype, 424, 256, seed=2)
    blocks = w1[5].reshape(256 // GGML_QUANT_SIZES[qtype][0], -1)
    for off in HALF_FIELDS[qtype]:                  # row 5's scales 25x the others': its own values win
        blocks[:, off:off + 2] = np.array([0.5], np.float16).view(np.uint8)
    w1[7] = w2[300] = w1[5]                         # a tie inside a task's group, and across the parts
    x = torch.randn(262, 256, generator=torch.Generator().manual_seed(5))
    x[0] = torch.from_numpy(dequantize(w1[5:6], qtype).reshape(256).astype(np.float32))
    x[1] = 0
    nan_scales = random_blocks(qtype, 1000, 256, seed=3).reshape(1000, 256 // GGML_QUANT_SIZES[qtype][0], -1)
    for off in HALF_FIELDS[qtype][:1]:
        nan_scales[[300, 700], :, off:off + 2] = np.array([np.nan], np.float16).view(np.uint8)
    nan_scales = nan_scales.reshape(1000, -1)
    tail_nan = random_blocks(qtype, 1000, 256, seed=4).reshape(1000, 256 // GGML_QUANT_SIZES[qtype][0], -1)
    tail_nan[995, :, HALF_FIELDS[qtype][0]:HALF_FIELDS[qtype][0] + 2] = np.array([np.nan], np.float16).view(np.uint8)
    tail_nan = tail_nan.reshape(1000, -1)          # its only NaN in the last, partial group's rows
    in_kernel = grid_of(qtype, isa) is on_grid     # row-grouped on a vector build: no outputs written
    for act8 in (False, True):
        lin = quant.QLinear([(qtype, w1), (qtype, w2)], 256, act8=act8)
        with_nan = quant.QLinear([(qtype, nan_scales)], 256, act8=act8)
        for T in (1, 3, 5, 70, 262):
            got = lin.argmax(x[:T])
            assert got.dtype == torch.int64 and torch.equal(got, quant.argmax_rows(lin(x[:T]))), (act8, T)
            direct = torch.full((T,), -1, dtype=torch.int64)
            lin._set_args(x[:T], 0, None, 0.0, None, 0)
            assert (lin._argmax(direct.data_ptr()) == 0) == in_kernel and (not in_kernel or torch.equal(direct, got))
            assert quant.QLinear([(qtype, tail_nan)], 256, act8=act8).argmax(x[:T]).tolist() == [995] * T
            assert got[0] == 5 and (T < 2 or got[1] == 0 and not torch.signbit(lin(x[1:2])).any())
            assert with_nan.argmax(x[:T]).tolist() == [300] * T
        inf = x[:6].clone()
        inf[2, 17] = float("inf")
        got = with_nan.argmax(inf)
        assert torch.equal(got, quant.argmax_rows(with_nan(inf))) and got[[0, 1, 3, 4, 5]].tolist() == [300] * 5
        assert got[2] == 0 or grid_of(qtype, isa) is not on_grid     # off the grid: inf's own products
    assert quant.QLinear([(qtype, w1)], 256).argmax(x[:0]).shape == (0,)


def test_quantized_model_is_batch_invariant(tmp_path, isa):
    path = tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=QT.Q4_1)
    m = LlamaModel.load(path)
    prompts = [list(range(10, 30)), list(range(50, 57)), [7, 8, 9]]
    kv = m.new_kv(64, 4)
    tables = [list(range(1 + 10 * i, 11 + 10 * i)) for i in range(3)]
    together = m.forward([SeqInput(p, 0, t) for p, t in zip(prompts, tables)], kv)
    for i, (p, t) in enumerate(zip(prompts, tables)):
        assert torch.equal(m.forward([SeqInput(p, 0, t)], kv)[0], together[i])


def test_fp16_kv_pool_halves_the_bytes_and_tracks_fp32_kv(tmp_path, monkeypatch):
    """The quantized CPU path keeps K and V in fp16 (F16C), read and written by the C kernels (on the
    13-bit grid, whose matmuls do not magnify the difference as 8-bit rounding may)."""
    path = tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=QT.Q8_0)
    m = LlamaModel.load(path, dtype="a13")
    monkeypatch.setenv("LLMOS_KV_DTYPE", "fp32")
    m32 = LlamaModel.load(path, dtype="a13")
    assert m.kv_dtype == torch.float16 and m32.kv_dtype == torch.float32
    assert m.new_kv(8, 4).k.dtype == torch.float16
    assert m.kv_bytes_per_token() * 2 == m32.kv_bytes_per_token()
    ids = list(range(10, 40))
    kv, kv32 = m.new_kv(16, 4), m32.new_kv(16, 4)
    a = m.forward([SeqInput(ids, 0, list(range(1, 9)))], kv)[0]
    b = m32.forward([SeqInput(ids, 0, list(range(1, 9)))], kv32)[0]
    assert not torch.equal(a, b) and (a - b).abs().max() < 1e-2 * b.abs().max()
    k16 = kv.k[:, 1:9].reshape(kv.k.shape[0], -1, *kv.k.shape[3:])[:, :len(ids)]
    k32 = kv32.k[:, 1:9].reshape(kv32.k.shape[0], -1, *kv32.k.shape[3:])[:, :len(ids)]
    assert torch.equal(k16[0], k32[0].half())           # layer 0 (same input): fp32 K rounded to nearest
    assert not torch.equal(k16[-1], k32[-1].half())     # later layers saw fp16 attention
    a2 = m.forward([SeqInput([5], len(ids), list(range(1, 9)))], kv)[0]     # a decode step reads fp16
    b2 = m32.forward([SeqInput([5], len(ids), list(range(1, 9)))], kv32)[0]
    assert (a2 - b2).abs().max() < 1e-2 * b2.abs().max()


@pytest.mark.parametrize("arch,qtype", [("llama", QT.Q4_1), ("llama", QT.Q8_0), ("gemma3", QT.Q8_0)])
def test_fused_layers_equal_the_python_loop_bit_for_bit(tmp_path, arch, qtype, isa):
    """drivers/fused.py runs each layer in one C call: same kernels, same order, same bits. Gemma 3:
    per-head q/k norms, post norms, GEGLU, sliding-window layers (window 8 < the 20-token prompt)
    with their own RoPE table, and global layers."""
    if arch == "llama":
        path = tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=qtype)
    else:
        path = tinyarch.build_arch_model(tmp_path / "g.gguf", "gemma3", n_layers=6, head_dim=32,
                                         sliding_window=8, qtype=qtype)
    m = LlamaModel.load(path)
    assert type(m).__name__ == {"llama": "LlamaModel", "gemma3": "Gemma3Model"}[arch]
    assert m._fused_layers() is not None
    prompts, tables = [list(range(10, 30)), [7, 8, 9]], [list(range(1, 9)), list(range(9, 17))]

    def run():
        kv = m.new_kv(32, 4)
        first = m.forward([SeqInput(p, 0, t) for p, t in zip(prompts, tables)], kv)
        step = m.forward([SeqInput([5], len(p), t) for p, t in zip(prompts, tables)], kv)
        return first, step, kv.k.clone(), kv.v.clone()

    fused = run()
    m._fused = None                                    # the Python loop over the same kernels
    plain = run()
    assert all(torch.equal(a, b) for a, b in zip(fused, plain))


def test_fused_layers_are_off_for_a_matmul_without_kernel_and_by_env(tmp_path, monkeypatch):
    path = tinymodel.build_tiny_model(tmp_path / "f16.gguf", qtype=QT.F16)
    assert LlamaModel.load(path)._fused_layers() is None        # F16 matrices are torch Linear
    q = tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=QT.Q8_0)
    monkeypatch.setenv("LLMOS_FUSED", "off")
    assert LlamaModel.load(q)._fused_layers() is None


def test_count_ops_sees_the_fused_layers_and_each_matmul(tmp_path, monkeypatch):
    from llmos.benchmarks.forward import count_ops
    path = tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=QT.Q8_0)
    m = LlamaModel.load(path)
    n = len(m.layers)
    assert count_ops(m)[1] == n + 2                   # a call per layer, the embedding rows, the output
    monkeypatch.setenv("LLMOS_FUSED", "off")
    ops, calls = count_ops(LlamaModel.load(path))
    assert calls == 7 * n + 2 and ops > count_ops(m)[0]   # 4 matmuls, rope, K/V store, attention


def test_a_failing_fused_layer_is_an_error_not_a_wrong_answer(tmp_path):
    m = LlamaModel.load(tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=QT.Q8_0))
    m._fused_layers().blocks[1][0].qkv.parts[0].type = 99       # no kernel: llmos_qmatmul says -1
    with pytest.raises(ValueError, match=r"fused layer 1 failed \(-1\)"):
        m.forward([SeqInput([1, 2, 3], 0, [1])], m.new_kv(4, 4))


def test_type_without_kernel_is_dequantised_once_and_logged(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("LLMOS_KV_DTYPE", "fp32")          # the weights' path alone, compared exactly
    path = tinymodel.build_tiny_model(tmp_path / "f16.gguf", qtype=QT.F16)
    with caplog.at_level(logging.INFO, logger="llmos.drivers"):
        m = LlamaModel.load(path)
    assert m.quantized and isinstance(m.layers[0].wqkv, Linear)
    assert "F16 has no quantized kernel; dequantised once to fp32" in caplog.text
    ref = LlamaModel.load(path, dtype="fp32")
    ids = list(range(3, 20))
    a = ref.forward([SeqInput(ids, 0, [1, 2, 3, 4, 5])], ref.new_kv(8, 4))
    b = m.forward([SeqInput(ids, 0, [1, 2, 3, 4, 5])], m.new_kv(8, 4))
    assert torch.allclose(a, b, atol=1e-5)


def test_model_bigger_than_memory_is_refused_with_sizes(tmp_path):
    path = tinymodel.build_tiny_model(tmp_path / "q.gguf", qtype=QT.Q8_0)
    with pytest.raises(ModelFileError, match=r"too big for this machine: its weights need [\d.]+ MiB "
                                             r"in memory, 0\.0 MiB available"):
        LlamaModel.load(path, memory_available=1000)
    fits = LlamaModel.load(path, memory_available=10 ** 9)
    assert fits.weight_bytes() < 10 ** 9


@pytest.mark.parametrize("kv", ["fp32", "fp16"])
@pytest.mark.parametrize("window", [None, 5, 19])
@pytest.mark.parametrize("D,bs", [(16, 4), (64, 16), (24, 8), (128, 8)])   # vector paths, scalar tails
# 3, 5, 4 and 6 query heads a KV head: passes of 3; 4 + 1; 4; 4 + 2 (AVX2's 16 registers: 3 + 2, 3 + 1, 3 + 3)
@pytest.mark.parametrize("H,KVH", [(6, 2), (5, 1), (4, 1), (6, 1)])
def test_flat_paged_attention_equals_torch_paged_attention(window, D, bs, kv, H, KVH):
    """Both task shapes (a task per token for many tokens, per token and KV head for few) and
    both pool types match torch's attention; the last tokens' outputs are the same bit for bit
    batched or in fewer tasks."""
    from llmos.drivers.attention import (build_flat_metadata, build_metadata, paged_attention,
                                         paged_attention_flat)
    g = torch.Generator().manual_seed(4)
    k_cache, v_cache = torch.randn(40, bs, KVH, D, generator=g), torch.randn(40, bs, KVH, D, generator=g)
    spans = [(0, 9, [3, 7, 1]), (40, 1, [9, 2, 11, 30, 12, 13, 14, 15, 16, 17, 18]), (5, 3, [20, 21]),
             (7, 1, [5, 6]), (21, 11, [22, 23, 24, 25, 26, 27, 28, 29, 31])]
    order = [1, 3, 2, 0, 4]                               # as forward lays out the flat batch
    T = sum(n for _, n, _ in spans)
    qkv = torch.randn(T, (H + 2 * KVH) * D, generator=g)
    q = qkv[:, :H * D]
    want = paged_attention(q.reshape(T, H, D), k_cache, v_cache,
                           build_metadata(spans, order, bs, torch.device("cpu"), window=window), 0.3)
    if kv == "fp16":
        k_cache, v_cache = k_cache.half(), v_cache.half()
        want = paged_attention(q.reshape(T, H, D), k_cache.float(), v_cache.float(),
                               build_metadata(spans, order, bs, torch.device("cpu"), window=window), 0.3)
    got = paged_attention_flat(quant.kernels(), qkv, H, D, k_cache, v_cache,
                               build_flat_metadata(spans, order, bs), 0.3, window)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    for n in (1, 2, 3, 4, 6, 11):                         # the last n tokens: fewer tasks
        few = paged_attention_flat(quant.kernels(), qkv[T - n:], H, D, k_cache, v_cache,
                                   build_flat_metadata([(32 - n, n, spans[4][2])], [0], bs), 0.3, window)
        assert torch.equal(few, got[T - n:])
    with pytest.raises(ValueError, match="25 query rows, 24 tokens"):
        paged_attention_flat(quant.kernels(), qkv, H, D, k_cache, v_cache,
                             build_flat_metadata(spans[:-1] + [(21, 10, spans[-1][2])], order, bs), 0.3)


def test_fused_parts_keep_each_part_s_output_columns():
    """A fused QKV may mix quant types (one part each): every part writes its own columns."""
    from llmos.drivers.fused import _qlin
    a, b = np.zeros((4, 18 * 20), np.uint8), np.zeros((6, 18 * 34), np.uint8)
    lin = _qlin(quant.QLinear([(3, a), (8, b)], 576), [])
    assert [(lin.parts[i].type % quant.RG_TYPES, lin.parts[i].N, lin.parts[i].col)
            for i in range(lin.n_parts)] == [(3, 4, 0), (8, 6, 4)]
    assert (lin.n_parts, lin.K, lin.out) == (2, 576, 10)


def test_importing_llmos_makes_openmp_wait_passively_unless_the_user_chose(tmp_path):
    """llmos/__init__.py: torch's spinning OpenMP workers would take the cores from the kernels'
    pool. A user's own OMP_WAIT_POLICY wins, and user_environ() hands other engines (llama.cpp in
    the benchmarks) the environment as the user set it."""
    import subprocess
    import sys
    code = ("import os, llmos; e = llmos.user_environ(); "
            "print(os.environ['OMP_WAIT_POLICY'], e.get('OMP_WAIT_POLICY', '-'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "-"]
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, OMP_WAIT_POLICY="active"),
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["active", "active"]


def test_llama_cpp_comparison_failing_is_one_clear_error(tmp_path):
    """bench forward --vs llama.cpp measures in a child process; its failure (no llama-cpp-python,
    or a file it cannot load) is one line naming the cause, not a hang or a traceback."""
    from llmos.benchmarks.llamacpp import measure
    with pytest.raises(RuntimeError, match="llama.cpp run failed: "):
        measure(str(tmp_path / "missing.gguf"), 1, 64, [1], 4, 1, 0)


def test_geglu_input_matches_torch_gelu_tanh_and_stays_finite():
    """QLinear(geglu=True): gelu_tanh(gate) * up in C (Gemma 3's FFN), for ordinary and extreme gates."""
    w = random_blocks(QT.Q8_0, 4, 32, seed=5)
    lin = quant.QLinear([(QT.Q8_0, w)], 32)
    g = torch.Generator().manual_seed(5)
    up = torch.randn(32, generator=g)
    for gate in (torch.randn(32, generator=g) * 3, torch.tensor([60.0, -60.0, 1e30, -1e30, 0.0, -0.0, 9.0, -9.0] * 4)):
        y = lin(torch.cat([gate, up]).unsqueeze(0), geglu=True)
        h = torch.nn.functional.gelu(gate.double(), approximate="tanh") * up.double()
        want = lin(h.float().unsqueeze(0))
        assert torch.isfinite(y).all()
        assert torch.allclose(y, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    fp32 = Linear(torch.randn(4, 32, generator=g))       # the float path's GEGLU: the same formula
    x = torch.cat([gate[:20], torch.randn(12, generator=g), up]).unsqueeze(0)
    assert torch.allclose(fp32(x, geglu=True), fp32(torch.nn.functional.gelu(x[:, :32], approximate="tanh") * x[:, 32:]))


def test_rms_norm_kernel_in_place_by_groups_and_added_into_a_stream():
    g = torch.Generator().manual_seed(6)
    T, H, D = 3, 4, 16
    x = torch.randn(T, 7 + H * D, generator=g)
    w = torch.rand(D, generator=g) + 0.5
    want = torch.nn.functional.rms_norm(x[:, 7:].reshape(T, H, D), (D,), w, 1e-6).reshape(T, H * D)
    y = x.clone()
    quant.rms_norm_(y, H, w, 1e-6, offset=7)
    assert torch.allclose(y[:, 7:], want, atol=1e-5) and torch.equal(y[:, :7], x[:, :7])
    stream, src = torch.randn(T, D, generator=g), torch.randn(T, D, generator=g)
    expect = stream + torch.nn.functional.rms_norm(src, (D,), w, 1e-6)
    before = src.clone()
    quant.rms_norm_(src, 1, w, 1e-6, add_to=stream)
    assert torch.allclose(stream, expect, atol=1e-5) and torch.equal(src, before)


def test_the_kernels_built_for_this_cpu_use_its_widest_vectors():
    """Dispatch at start-up: -march=native on an AVX-512F+BW CPU builds the 16-lane path, on an AVX2 +
    FMA CPU the 8-lane one (drivers/simd_vec.h), with VNNI where the CPU has it and AMX's tiles
    where it has those too (drivers/amx_tiles.h; unless the OS refuses them, which the name says);
    the ISA names it in uname, the bench and the log."""
    from llmos.drivers.cpu import cpu_features
    f = cpu_features()
    wide = f["avx512f"] and f["avx512bw"] and f["fma"]
    want = "avx512f" if wide else "avx2-fma" if f["avx2"] and f["fma"] else "scalar"
    vnni = f["avx512_vnni"] if wide else f["avx_vnni"] and want != "scalar"     # the integer GEMM's vpdpwssd
    want += "+vnni" if vnni else ""
    if wide and vnni and f["amx_int8"]:
        assert quant.kernel_isa() in (want + "+amx", want + " (AMX refused by the OS)")
    else:
        assert quant.kernel_isa() == want


def test_an_unknown_llmos_quant_value_is_named_and_this_cpu_s_kernels_build(monkeypatch, caplog):
    monkeypatch.setenv("LLMOS_QUANT", "avx1024")
    quant.kernels.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="llmos.drivers"):
            lib = quant.kernels()
        assert lib is not None and lib.llmos_quant_isa().decode() == quant.kernel_isa()
        assert "LLMOS_QUANT=avx1024 is not one of off, avx512-simde, scalar, avx2" in caplog.text
    finally:
        quant.kernels.cache_clear()


def test_llmos_quant_avx2_builds_the_8_lane_kernels_on_any_avx2_cpu(monkeypatch):
    """On an AVX-512 CPU, LLMOS_QUANT=avx2 runs the AVX2 kernels instead (A/B, fallback)."""
    from llmos.drivers.cpu import cpu_features
    if not (cpu_features()["avx2"] and cpu_features()["fma"]):
        pytest.skip("no AVX2 here")
    monkeypatch.setenv("LLMOS_QUANT", "avx2")
    quant.kernels.cache_clear()
    try:
        assert quant.kernel_isa() in ("avx2-fma", "avx2-fma+vnni")
    finally:
        quant.kernels.cache_clear()


def test_bench_matmul_prints_a_rate_per_type_and_token_count(capfd):
    """`llmos bench matmul` runs the real kernels (a child process per thread count) and refuses a
    K-quant with a K that is not a whole super-block."""
    from llmos.benchmarks.matmul import main
    assert main(["matmul", "--shape", "40x256", "--tokens", "1,3", "--threads", "1", "--types", "Q4_1,Q5_K"]) == 0
    rows = [line.split() for line in capfd.readouterr().out.splitlines() if "GFLOP/s" in line]
    assert sorted((r[-6], r[-5]) for r in rows) == [("1", "Q4_1"), ("1", "Q5_K"), ("3", "Q4_1"), ("3", "Q5_K")]
    assert all(float(r[-2]) > 0 for r in rows)
    assert main(["matmul", "--shape", "40x256", "--tokens", "8", "--threads", "1", "--types", "Q8_0", "--a8"]) == 0
    rows = [line for line in capfd.readouterr().out.splitlines() if "GFLOP/s" in line]
    assert sorted(" a8 " in r for r in rows) == ([False, True] if quant.act8_supported() else [False])
    with pytest.raises(SystemExit):
        main(["matmul", "--shape", "40x96", "--types", "Q4_K"])
