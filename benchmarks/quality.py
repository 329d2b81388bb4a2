"""`llmos bench quality`: what the matmuls' input grid does to a model's answers.

The quantized path (drivers/quant.py) rounds each matmul input to a 13-bit grid; llama.cpp rounds
it to 8 bits (its Q8 activations: each 32-block as integers in [-127, 127] times amax / 127, a
256-block for the K-quants; --bits rounds every input in 32-blocks), whose
integer products run at twice the rate. This prints, for the fp32 reference path, the default path
(dtype 'auto': 'a8', or 'a13' for a catalog model whose tokens need 13 bits), the other of
'a8' (quantized weights, llama.cpp's 8-bit activations, where the CPU has vpdpbusd) and 'a13', and
the fp32 path with its matmul inputs rounded to b bits (--bits), the greedy tokens against the
independent reference recorded for the model (tests/fixtures/<model>_reference.json) and the
perplexity of a fixed text. The default path must match the reference and stay within 1 % of
fp32's perplexity (tests/test_smollm2.py, tests/test_gemma3.py). Runs on the CPU, where the
default path is the quantized one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from llmos.drivers.linear import Linear, prepare

TEXT = ("The history of the city begins with a small fishing village on the northern bank of the "
        "river. Over the centuries, merchants built warehouses along the water, and the village grew "
        "into a busy port. In the nineteenth century the railway arrived, bringing factories, new "
        "neighbourhoods and a university. Today the old warehouses hold museums, cafes and small "
        "shops, and visitors walk along the river to watch the boats come in at sunset.")
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def greedy(model, prompt: list[int], n: int) -> list[int]:
    """n greedy token ids after prompt, straight through the driver (no kernel)."""
    from llmos.drivers.llama import SeqInput
    blocks = -(-(len(prompt) + n) // 16)
    kv, table = model.new_kv(blocks, 16), list(range(blocks))
    out, ids, pos = [], prompt, 0
    for _ in range(n):
        logits = model.forward([SeqInput(ids, pos, table)], kv)
        pos += len(ids)
        ids = [int(logits[0].argmax())]
        out.append(ids[0])
    return out


def perplexity(model, ids: list[int]) -> float:
    """exp(mean NLL) of ids[1:]. Two forwards: a prefill of the text, then one step with a
    one-token sequence per position p (same blocks; it rewrites p's K/V with the values the
    prefill wrote, as both paths are batch-invariant) whose logits predict ids[p + 1]."""
    from llmos.drivers.llama import SeqInput
    blocks = -(-len(ids) // 16)
    kv, table = model.new_kv(blocks + 1, 16), list(range(1, blocks + 1))
    model.forward([SeqInput(ids, 0, table, want_logits=False)], kv)
    logits = model.forward([SeqInput([ids[p]], p, table) for p in range(len(ids) - 1)], kv)
    targets = torch.tensor(ids[1:], device=logits.device)[:, None]
    nll = -torch.log_softmax(logits.double(), -1).gather(1, targets).mean()
    return float(torch.exp(nll))


def round_to_grid(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x with each 32-block (last dim a multiple of 32) as integers in [-(2^(bits-1) - 1),
    2^(bits-1) - 1] times the block's amax / (2^(bits-1) - 1): llama.cpp's Q8 activations at 8."""
    top = 2 ** (bits - 1) - 1
    blocks = x.float().reshape(-1, 32)
    scale = blocks.abs().amax(1, keepdim=True) / top
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return ((blocks / scale).round() * scale).reshape(x.shape).to(x.dtype)


class GridLinear:
    """A float Linear whose input, after its own gate and norm, is rounded to `bits` first."""

    def __init__(self, inner: Linear, bits: int):
        self.inner, self.bits = inner, bits

    def __call__(self, x, norm=None, eps=0.0, swiglu=False, out=None, geglu=False):
        return self.inner(round_to_grid(prepare(x, norm, eps, swiglu, geglu), self.bits), out=out)


MATRICES = ("wqkv", "wo", "w_gate_up", "w_down")


def set_grid(model, bits: int | None) -> None:
    """Rounds every matmul input of a float model to `bits` (None: exact again). In place."""
    def swap(m):
        inner = m.inner if isinstance(m, GridLinear) else m
        if not isinstance(inner, Linear):
            raise ValueError("--bits needs a float model (dtype fp32)")
        return inner if bits is None else GridLinear(inner, bits)
    for layer in model.layers:
        for name in MATRICES:
            setattr(layer, name, swap(getattr(layer, name)))
    model.lm_head = swap(model.lm_head)


def read_reference(path: Path) -> dict:
    """A recorded reference: JSON with the prompt's ids and the greedy ids after it. ValueError or
    OSError (the file) with a message naming what is wrong."""
    try:
        ref = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not (isinstance(ref, dict) and all(isinstance(ref.get(k), list) and ref[k]
                                          and all(isinstance(i, int) for i in ref[k])
                                          for k in ("prompt_ids", "greedy_ids"))):
        raise ValueError(f"{path}: a reference needs non-empty integer lists prompt_ids and greedy_ids")
    return ref


def measure(model, reference: dict | None, ids: list[int]) -> dict:
    row = {"perplexity": perplexity(model, ids)}
    if reference is not None:
        want = reference["greedy_ids"]
        got = greedy(model, reference["prompt_ids"], len(want))
        row["reference_tokens"] = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
        row["of"], row["first_tokens"] = len(want), got[:4]
    return row


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos bench quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="a catalog name or a GGUF path")
    ap.add_argument("--bits", default="8,9,13", help="comma-separated input grids for the fp32 path")
    ap.add_argument("--reference", help="a recorded reference, JSON with prompt_ids and greedy_ids "
                                        "(default: the repo's for a catalog model, where present)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv[1:])
    try:
        bits = [int(b) for b in args.bits.split(",") if b]
        if any(not 2 <= b <= 24 for b in bits):
            raise ValueError
    except ValueError:
        print(f"llmos bench quality: --bits {args.bits!r}: comma-separated integers from 2 to 24",
              file=sys.stderr)
        return 2
    from llmos.drivers.catalog import resolve
    from llmos.drivers.gguf import ModelFileError
    from llmos.drivers.llama import LlamaModel
    ref_path = Path(args.reference) if args.reference else FIXTURES / f"{args.model}_reference.json"
    try:
        reference = read_reference(ref_path) if args.reference or ref_path.is_file() else None
        path = resolve(args.model, pull_missing=True)
        model = LlamaModel.load(str(path), device="cpu")
    except (ModelFileError, ValueError, OSError) as e:
        print(f"llmos bench quality: {e}", file=sys.stderr)
        return 1
    rows = {}
    ids = model.tokenizer.encode(TEXT)
    rows["default path"] = measure(model, reference, ids)
    default_format, other = model.weight_format(), "a13" if model.act8 else "a8"   # the other activations
    del model
    model = LlamaModel.load(str(path), dtype=other, device="cpu")
    if model.quantized and model.act8 == (other == "a8"):      # a8 where the CPU has vpdpbusd
        rows[other] = measure(model, reference, ids)
    del model
    model = LlamaModel.load(str(path), dtype="fp32", device="cpu")
    rows["fp32"] = measure(model, reference, ids)
    for b in bits:
        set_grid(model, b)
        rows[f"fp32, inputs on {b} bits"] = measure(model, reference, ids)
    base = rows["fp32"]["perplexity"]
    for row in rows.values():
        row["perplexity_vs_fp32"] = row["perplexity"] / base - 1
    if args.json:
        print(json.dumps({"model": str(path), "reference": str(ref_path) if reference else None,
                          "default_path": default_format, "rows": rows}))
        return 0
    print(f"model {path}  reference {ref_path if reference else 'none'}  text {len(ids)} tokens")
    print(f"default path: {default_format}")
    print(f"{'path':<28} {'reference tokens':>17} {'perplexity':>11} {'vs fp32':>8}  first tokens")
    for name, row in rows.items():
        match = f"{row['reference_tokens']}/{row['of']}" if reference else "-"
        print(f"{name:<28} {match:>17} {row['perplexity']:>11.4f} {row['perplexity_vs_fp32']:>+8.2%}  "
              f"{row.get('first_tokens', '')}")
    return 0
