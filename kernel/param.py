"""Kernel limits and the engine's configuration (xv6: param.h), validated in one place.

Every knob of the paged KV memory and of the scheduler lives in KernelConfig; the defaults are
what `llmos serve` uses unless told otherwise. validate() raises ValueError with a message that
names the field, so a bad command line fails before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

PREEMPT_MODES = ("auto", "swap", "recompute")


@dataclass
class KernelConfig:
    # --- KV memory (kernel/kvcache.py) ---
    block_size: int = 16              # tokens per KV block
    num_blocks: int | None = None     # None: as many as fit in kv_fraction of free device memory
    kv_fraction: float = 0.5          # share of free device (or host) memory for the pool
    swap_bytes: int = 4 << 30         # host memory for swapped-out KV blocks
    prefix_cache: bool = True         # share full blocks by chained hash; keep them after exit
    # --- scheduling (kernel/sched.py) ---
    max_running: int = 256            # processes in the batch at once
    max_step_tokens: int = 512        # token budget of one step (decodes + prefill chunks)
    slice_tokens: int = 64            # EEVDF request size: tokens a nice-0 process runs per turn
    preempt_mode: str = "auto"        # auto: swap or recompute, whichever is estimated cheaper
    swap_bytes_per_s: float = 8e9     # first estimate of swap bandwidth (then measured)
    prefill_tokens_per_s: float = 2e3 # first estimate of prefill speed (then measured)
    # --- processes (kernel/proc.py, kernel/engine.py) ---
    max_procs: int = 4096             # live + zombie processes in the table
    max_context: int | None = None    # None: the model's context length (capped by the pool)
    # debug builds: check the KV allocator's and the scheduler's invariants after every step and
    # poison freed KV blocks; on when $LLMOS_DEBUG=1 (tests/conftest.py sets it)
    check_invariants: bool = field(default_factory=lambda: os.environ.get("LLMOS_DEBUG") == "1")

    def validate(self) -> "KernelConfig":
        def need(ok: bool, field: str, what: str) -> None:
            if not ok:
                raise ValueError(f"kernel config: {field}={getattr(self, field)!r}: {what}")

        def is_int(name: str) -> bool:
            v = getattr(self, name)
            return isinstance(v, int) and not isinstance(v, bool)

        need(is_int("block_size") and 1 <= self.block_size <= 1024, "block_size", "must be 1..1024")
        need(self.num_blocks is None or (is_int("num_blocks") and self.num_blocks >= 1),
             "num_blocks", "must be None or a positive int")
        need(isinstance(self.kv_fraction, (int, float)) and 0 < self.kv_fraction <= 1,
             "kv_fraction", "must be in (0, 1]")
        need(is_int("swap_bytes") and self.swap_bytes >= 0, "swap_bytes", "must be >= 0")
        need(is_int("max_running") and self.max_running >= 1, "max_running", "must be >= 1")
        need(is_int("max_step_tokens") and self.max_step_tokens >= 1, "max_step_tokens", "must be >= 1")
        need(is_int("slice_tokens") and self.slice_tokens >= 1, "slice_tokens", "must be >= 1")
        need(self.preempt_mode in PREEMPT_MODES, "preempt_mode", f"must be one of {PREEMPT_MODES}")
        need(self.swap_bytes_per_s > 0, "swap_bytes_per_s", "must be > 0")
        need(self.prefill_tokens_per_s > 0, "prefill_tokens_per_s", "must be > 0")
        need(is_int("max_procs") and self.max_procs >= 1, "max_procs", "must be >= 1")
        need(self.max_context is None or (is_int("max_context") and self.max_context >= 2),
             "max_context", "must be None or >= 2")
        return self

    def replace(self, **changes) -> "KernelConfig":
        return dataclasses.replace(self, **changes).validate()

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
