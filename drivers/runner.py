"""The model runner: a batch (what to compute this step) → sampled tokens.

Contract:
  - run(batch) is pure compute: the model's forward over the batch's sequences (reading and
    writing only the KV slots their block tables name), then batched sampling of the rows that
    want logits. It touches nothing but the batch, the model and the KV storage, so the kernel
    may run it in a worker thread while its own thread changes processes.
  - Seeded sampling draws with a generator re-seeded per position (position_seed), so a dropped
    result, a preemption or a fork never shifts the random stream: same seed, same tokens.
  - A failing forward is isolated: the batch is re-run one sequence at a time and only the
    sequences that still fail get an error (BatchResult.errors); the others get their tokens.
  - A step can be preempted between layers: setting `interrupt` (a threading.Event; any thread)
    makes the forward stop at its next layer and run() return BatchResult(preempted=True) with
    nothing sampled, so the kernel can run a latency-sensitive process at once. The owner
    clears the event before the next run.
  - mask(logits, masks) applies per-row grammar masks (drivers/grammar.py bitmasks, filled for
    the whole batch by the engine before execute) to the rows that have one, before sampling.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch

from .grammar import apply_masks
from .llama import Preempted, SeqInput
from .sampler import SampleResult, SamplingParams, sample


def position_seed(seed: int, position: int) -> int:
    """splitmix64 of (seed, position): the seed of the draw for the token at `position`."""
    z = (seed + 0x9E3779B97F4A7C15 * (position + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


@dataclass
class Batch:
    seqs: list[SeqInput] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)     # one per seq with want_logits, in order:
    #   (SamplingParams, torch.Generator or None, the draw's seed or None, recent tokens for penalties or None)
    masks: dict[int, object] = field(default_factory=dict)   # row -> grammar bitmask [W]; absent: none

    def columns(self, rows: slice = slice(None)) -> tuple[list, list, list, list, list]:
        """(params, generators, seeds, masks, histories) of the given rows, as lists."""
        picked = self.rows[rows]
        start = rows.indices(len(self.rows))[0]
        masks = [self.masks.get(start + i) for i in range(len(picked))]
        if not picked:
            return [], [], [], masks, []
        params, generators, seeds, histories = map(list, zip(*picked))
        return params, generators, seeds, masks, histories


@dataclass
class BatchResult:
    tokens: list[int | None]                     # per seq: the sampled token, or None
    logprobs: list[float | None]
    errors: dict[int, str] = field(default_factory=dict)    # seq index -> message
    seconds: float = 0.0
    tops: list | None = None                     # per seq: [(id, logprob), ...] where top_logprobs asked
    preempted: bool = False                      # interrupted between layers: nothing sampled


# The largest logits buffer the runner keeps between steps (Gemma 3's 262144-token vocabulary at 64
# rows: 67 MB); a step needing more gets new logits that are freed after it.
LOGITS_KEEP_BYTES = 128 << 20


class ModelRunner:
    def __init__(self, model, storage):
        self.model, self.storage = model, storage
        self.interrupt = threading.Event()       # set: the running forward stops at its next layer
        self._logits = torch.empty(0)            # forward's logits_out: consumed before the next step

    def _logits_buffer(self, seqs) -> torch.Tensor | None:
        """The fp32 buffer for this step's logits (grown to the step's rows; kept up to
        LOGITS_KEEP_BYTES), or None on a GPU or past that size."""
        need = sum(s.want_logits for s in seqs) * self.model.config.vocab_size
        if self.model.device.type != "cpu" or 4 * need > LOGITS_KEEP_BYTES:
            return None
        if self._logits.numel() < need:
            self._logits = torch.empty(need)
        return self._logits

    def new_generator(self) -> torch.Generator:
        """A generator for a seeded process (seeded per draw by run)."""
        return torch.Generator(device=self.model.device)

    def run(self, batch: Batch) -> BatchResult:
        t0 = time.perf_counter()
        try:
            tokens, logprobs, tops = self._run(batch.seqs, *batch.columns())
            result = BatchResult(tokens, logprobs, tops=tops)
        except Preempted:
            n = len(batch.seqs)
            result = BatchResult([None] * n, [None] * n, preempted=True)
        except Exception as e:              # isolate the failing sequences, one at a time
            n = len(batch.seqs)
            result = BatchResult([None] * n, [None] * n, tops=[None] * n)
            row = 0
            for i, seq in enumerate(batch.seqs):
                sl = slice(row, row + seq.want_logits)
                row += seq.want_logits
                try:
                    t, lp, top = self._run([seq], *batch.columns(sl))
                    result.tokens[i], result.logprobs[i], result.tops[i] = t[0], lp[0], top[0]
                except Preempted:
                    result = BatchResult([None] * n, [None] * n, preempted=True)
                    break
                except Exception as e1:
                    result.errors[i] = f"{type(e1).__name__}: {e1}" if n > 1 else f"{type(e).__name__}: {e}"
        result.seconds = time.perf_counter() - t0
        return result

    def mask(self, logits: torch.Tensor, masks: list, params: list | None = None) -> torch.Tensor:
        """Per-row grammar masks before sampling: forbidden tokens' logits become -inf (params:
        greedy rows whose best token is allowed are skipped, drivers/grammar.py)."""
        return apply_masks(logits, masks, params) if any(m is not None for m in masks) else logits

    def _run(self, seqs, params, generators, seeds, masks, histories):
        if params and all(p.argmax_only for p in params) and all(m is None for m in masks):
            # every row's token is its logits' argmax: the model gives just that (no logits written)
            res = SampleResult(self.model.forward(seqs, self.storage, self.interrupt, greedy=True).tolist(), None)
        else:
            logits = self.model.forward(seqs, self.storage, self.interrupt, self._logits_buffer(seqs))
            for g, s in zip(generators, seeds):
                if s is not None:
                    g.manual_seed(s)
            res = sample(self.mask(logits, masks, params), params, generators, histories) if params else None
        out_t, out_lp, out_top, row = [], [], [], 0
        for seq in seqs:
            if seq.want_logits:
                out_t.append(res.tokens[row])
                out_lp.append(res.logprobs[row] if res.logprobs else None)
                out_top.append(res.top[row] if res.top else None)
                row += 1
            else:
                out_t.append(None)
                out_lp.append(None)
                out_top.append(None)
        return out_t, out_lp, out_top
