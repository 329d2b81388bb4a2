"""Helpers shared by the kernel tests: an fp32 tiny model, engines, greedy params, prompts."""

from __future__ import annotations

from llmos.drivers.sampler import SamplingParams
from llmos.kernel.engine import Engine
from llmos.kernel.param import KernelConfig


def make_engine(model, default_blocks: int, on_wake=None, **cfg) -> Engine:
    """An engine on `model` that checks the KV invariants after every step."""
    cfg.setdefault("num_blocks", default_blocks)
    cfg.setdefault("check_invariants", True)
    return Engine(model, KernelConfig(**cfg), on_wake=on_wake)


def greedy(n, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True, **kw)


def prompt(seed, n=20) -> list[int]:
    """A deterministic prompt of n token ids, different per seed."""
    return [3 + (seed * 7919 + i * 104729) % 500 for i in range(n)]
