"""Sampling: turn a step's logits into tokens, and cut generated text at stop strings.
(Over 300 lines: the parameters, their validation and the batched sampling they drive are one contract.)

Contracts
- ``SamplingParams`` is frozen and checked once, at spawn (``validate()`` / ``from_dict()``);
  ``sample()`` trusts it, because it runs on every decode step.
- ``sample(logits [S, V], params, generators, histories)`` returns one token per row. First the
  penalties of rows that ask for them, against that row's history (its last ``penalty_last_n``
  context tokens): repetition (a seen token's logit divided by the penalty when positive,
  multiplied when negative, as llama.cpp and Hugging Face do), presence (minus the penalty once)
  and frequency (minus the penalty per occurrence), as OpenAI defines them. Rows with
  temperature 0 are then greedy (argmax): with no penalty, exact greedy. The others go:
  temperature -> top-k -> top-p (nucleus, on the top-k-renormalised distribution) -> min-p (keep
  tokens with at least min_p times the best one's probability) -> one draw with *that row's
  own* ``torch.Generator``.
- Same seed, same tokens, whatever else is in the batch: the filters are row-wise operations that
  compare exact values (a top-k/top-p cut is a value threshold, so ties never depend on the
  batch), the nucleus mass is summed in float64, and each row's draw consumes exactly V
  uniforms from its own generator (the exponential race / Gumbel-max trick:
  argmax(x - log E), E ~ Exp(1), is a sample from softmax(x)). A generator of ``None`` draws
  from torch's default generator (unseeded rows). On CPU this holds bit for bit; on CUDA the
  float64 nucleus sum may round differently for a one-row batch (another scan kernel), which
  can move a top-p cut only when the mass lands within ~1e-16 of top_p.
- ``logprobs`` (log-softmax of the chosen token under the *unmodified* logits: before logit_bias,
  penalties and temperature, after a grammar's mask) and ``top_logprobs`` (the k most likely
  tokens and their logprobs, same distribution, best first) are computed only for the rows that
  ask, batched over those rows; other rows get None and cost nothing.
- ``logit_bias`` (token id -> -100..100, OpenAI's) is added to a row's logits before anything else;
  -100 bans a token, 100 all but forces it.
- A greedy-only batch costs one argmax over [S, V] and one ``.tolist()``.
- ``StopMatcher`` streams text and stops at the stop string that *ends* first (ties: the longer
  one), which makes the result independent of how the text was chunked. Text that could still
  be the start of a stop string is held back; text after a stop is dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import torch

MAX_STOPS = 16
MAX_STOP_CHARS = 256
MAX_TOP_LOGPROBS = 20       # as OpenAI: top_logprobs 0..20
MAX_LOGIT_BIAS = 1024       # entries of logit_bias
SEED_LIMIT = 2**63


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0        # 0 = greedy
    top_k: int = 0                  # 0 = off
    top_p: float = 1.0              # 1 = off
    seed: int | None = None         # None = not reproducible
    stop: tuple[str, ...] = ()      # stop strings; the text is cut before the first one
    logprobs: bool = False          # report log p(chosen token) under the unmodified logits
    top_logprobs: int = 0           # 0..20: also the k most likely tokens (needs logprobs)
    logit_bias: tuple = ()          # ((token id, bias -100..100), ...); wire: a map id -> bias
    ignore_eos: bool = False        # keep generating after eos / end-of-turn tokens
    repetition_penalty: float = 1.0 # 1 = off; > 1 discourages tokens of the recent context
    presence_penalty: float = 0.0   # 0 = off; -2..2, subtracted once from seen tokens' logits
    frequency_penalty: float = 0.0  # 0 = off; -2..2, subtracted per occurrence
    penalty_last_n: int = 64        # how many recent context tokens the penalties look at
    min_p: float = 0.0              # 0 = off; keep tokens with p >= min_p * p(best)
    constraint: object = None       # drivers.grammar.Constraint: every turn's output matches it
                                    # (wire keys json_schema, regex, grammar, choice)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @functools.cached_property
    def argmax_only(self) -> bool:
        """True when sample() gives this row its logits' argmax and nothing else: greedy, no
        logprobs, no bias, no penalty (a grammar's mask is the caller's to check)."""
        return self.greedy and not self.logprobs and not self.logit_bias and not self.penalized

    @functools.cached_property       # read for every process on every step (the instance is frozen)
    def penalized(self) -> bool:
        """True when a penalty needs the row's recent tokens."""
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0

    def validate(self) -> SamplingParams:
        """Raise ValueError naming the first bad field; return self when all are fine."""
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not _is_real(self.temperature) or not self.temperature >= 0 or math.isinf(self.temperature):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if not _is_real(self.repetition_penalty) or not 0 < self.repetition_penalty <= 10:
            raise ValueError(f"repetition_penalty must be a number in (0, 10] (1 = off), got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not _is_real(v) or not -2 <= v <= 2:
                raise ValueError(f"{name} must be a number in [-2, 2] (0 = off), got {v!r}")
        if not _is_int(self.penalty_last_n) or not 1 <= self.penalty_last_n <= 1 << 16:
            raise ValueError(f"penalty_last_n must be an integer in [1, 65536], got {self.penalty_last_n!r}")
        if not _is_real(self.min_p) or not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be a number in [0, 1) (0 = off), got {self.min_p!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < SEED_LIMIT):
            raise ValueError(f"seed must be None or an integer in [0, 2**63), got {self.seed!r}")
        if not isinstance(self.stop, tuple):
            raise ValueError(f"stop must be a tuple of strings, got {type(self.stop).__name__}")
        if len(self.stop) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"each stop string must be a non-empty string, got {s!r}")
            if len(s) > MAX_STOP_CHARS:
                raise ValueError(f"stop strings are at most {MAX_STOP_CHARS} characters, got {len(s)}")
        for name in ("logprobs", "ignore_eos"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not _is_int(self.top_logprobs) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if not isinstance(self.logit_bias, tuple) or len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias must map at most {MAX_LOGIT_BIAS} token ids to biases")
        for pair in self.logit_bias:
            tok, bias = pair if isinstance(pair, tuple) and len(pair) == 2 else (None, None)
            if not _is_int(tok) or tok < 0 or not _is_real(bias) or not -100 <= bias <= 100:
                raise ValueError(f"logit_bias maps token ids >= 0 to numbers in [-100, 100], got {pair!r}"[:200])
        if self.constraint is not None:
            from .grammar import Constraint
            if not isinstance(self.constraint, Constraint):
                raise ValueError("constraint must be a drivers.grammar.Constraint")
            if self.stop or self.ignore_eos:     # the grammar decides where the output ends
                raise ValueError(f"{self.constraint.kind} cannot be combined with stop or ignore_eos")
        return self

    @classmethod
    def from_dict(cls, d: Mapping) -> SamplingParams:
        """Build validated params from a wire dict (msgpack): unknown keys are an error,
        ``stop`` may be a list or a single string."""
        if not isinstance(d, Mapping):
            raise ValueError(f"sampling parameters must be a map, got {type(d).__name__}")
        from .grammar import KINDS, Constraint
        known = {f.name for f in dataclasses.fields(cls)} - {"constraint"} | set(KINDS)
        for key in d:
            if key not in known:
                raise ValueError(f"unknown sampling parameter {key!r} (known: {', '.join(sorted(known))})")
        kw = dict(d)
        kinds = [k for k in KINDS if k in kw]
        if len(kinds) > 1:
            raise ValueError(f"at most one of {', '.join(KINDS)}, got {', '.join(kinds)}")
        if kinds:
            kw["constraint"] = Constraint.from_wire(kinds[0], kw.pop(kinds[0]))
        if isinstance(kw.get("logit_bias"), (Mapping, list)):
            kw["logit_bias"] = _bias_pairs(kw["logit_bias"])
        if isinstance(kw.get("stop"), str):
            kw["stop"] = (kw["stop"],)
        elif isinstance(kw.get("stop"), list):
            kw["stop"] = tuple(kw["stop"])
        return cls(**kw).validate()


def _bias_pairs(v) -> tuple:
    """logit_bias off the wire: a map {id: bias} (ids as ints or decimal strings, as OpenAI's JSON
    has them; msgpack maps want string keys) or a list of [id, bias] pairs -> sorted pairs."""
    out = []
    for item in (v.items() if isinstance(v, Mapping) else v):
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError(f"logit_bias: each entry is a token id and a bias, got {item!r}"[:200])
        tok, bias = item
        out.append((int(tok) if isinstance(tok, str) and tok.isdigit() else tok, bias))
    return tuple(sorted(out, key=repr))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


class SampleResult(NamedTuple):
    tokens: list[int]
    logprobs: list[float | None] | None   # per row: a float where the row asked; None if none did
    top: list | None = None               # per row: [(id, logprob), ...] best first where it asked


def make_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (None: fresh OS entropy, not reproducible).
    To fork a process's random stream: ``g2 = make_generator(0, dev); g2.set_state(g.get_state())``."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def sample(logits: torch.Tensor, params: Sequence[SamplingParams],
           generators: Sequence[torch.Generator | None],
           histories: Sequence[Sequence[int] | None] | None = None) -> SampleResult:
    """One token per row of ``logits`` [S, V]; see the module docstring for the contract.
    histories: per row, its recent context tokens (needed by rows with penalties)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [S, V], got shape {tuple(logits.shape)}")
    n = logits.shape[0]
    if len(params) != n or len(generators) != n:
        raise ValueError(f"{n} logit rows but {len(params)} params and {len(generators)} generators")
    sampled = [i for i, p in enumerate(params) if p.temperature != 0]
    want_lp = [i for i, p in enumerate(params) if p.logprobs]
    raw = logits
    biased = [i for i, p in enumerate(params) if p.logit_bias]
    if biased:
        logits = _bias(logits.float(), biased, params)
    penalized = [i for i, p in enumerate(params) if p.penalized and histories and histories[i]]
    if penalized:
        logits = _penalize(logits.float(), penalized, params, histories)
    tokens = _argmax(logits)
    if sampled:
        rows = torch.tensor(sampled, device=logits.device)
        tokens[rows] = _draw(logits[rows].float(), [params[i] for i in sampled],
                             [generators[i] for i in sampled])
    if not want_lp:
        return SampleResult(tokens.tolist(), None)
    return SampleResult(tokens.tolist(), *_logprobs(raw, tokens, want_lp, params))


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits.argmax(dim=-1); on the CPU in the kernels' C (drivers/quant.py's argmax_rows: a 64 x
    262144 batch took torch ~7 ms a step on 2 cores)."""
    if logits.device.type != "cpu":
        return logits.argmax(dim=-1)
    from .quant import argmax_rows
    return argmax_rows(logits)


def _logprobs(raw: torch.Tensor, tokens: torch.Tensor, rows: list[int],
              params: Sequence[SamplingParams]) -> tuple[list, list]:
    """(per row logprob of its token, per row top [(id, logprob)]): None for rows not listed.
    One log-softmax and one top-k over the listed rows only."""
    n = raw.shape[0]
    idx = torch.tensor(rows, device=raw.device)
    lsm = torch.log_softmax(raw[idx].float(), dim=-1)
    chosen = lsm.gather(1, tokens[idx][:, None]).squeeze(1).tolist()
    lps: list = [None] * n
    tops: list = [None] * n
    k = max(params[i].top_logprobs for i in rows)
    if k:
        vals, ids = torch.topk(lsm, min(k, lsm.shape[1]), dim=-1)
        vals, ids = vals.tolist(), ids.tolist()
    for j, i in enumerate(rows):
        lps[i] = chosen[j]
        ki = params[i].top_logprobs
        if ki:
            tops[i] = list(zip(ids[j][:ki], vals[j][:ki]))
    return lps, tops


def _bias(x: torch.Tensor, rows: list[int], params: Sequence[SamplingParams]) -> torch.Tensor:
    """x (a float32 copy of the logits) with each listed row's logit_bias added."""
    x = x.clone()
    for i in rows:
        ids = torch.tensor([t for t, _ in params[i].logit_bias], device=x.device)
        x[i, ids] += torch.tensor([b for _, b in params[i].logit_bias], dtype=x.dtype, device=x.device)
    return x


def _draw(x: torch.Tensor, params: list[SamplingParams],
          generators: list[torch.Generator | None]) -> torch.Tensor:
    """Sample one token per row of x [n, V] (float32; every row has temperature > 0)."""
    vocab = x.shape[1]
    dev = x.device
    temps = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=dev)
    x = (x - x.amax(dim=-1, keepdim=True)) / temps[:, None]  # max is 0: no overflow for tiny T

    ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    if any(ks):
        kth = torch.topk(x, max(ks), dim=-1, sorted=True).values
        col = torch.tensor([k - 1 if k else 0 for k in ks], device=dev)
        on = torch.tensor([k > 0 for k in ks], device=dev)[:, None]
        x = x.masked_fill(on & (x < kth.gather(1, col[:, None])), float("-inf"))

    if any(p.top_p < 1 for p in params):
        x = x.masked_fill(x < _nucleus_threshold(x, [p.top_p for p in params]), float("-inf"))

    if any(p.min_p > 0 for p in params):      # the best is at 0: keep x >= log(min_p)
        floor = torch.tensor([math.log(p.min_p) if p.min_p > 0 else float("-inf") for p in params],
                             dtype=torch.float32, device=dev)[:, None]
        x = x.masked_fill(x < floor, float("-inf"))

    # Gumbel-max: argmax(x - log E), E = -log U ~ Exp(1). U in [0, 1): U = 0 gives E = inf,
    # a token that loses, never a NaN. Each row draws exactly V uniforms from its generator.
    u = torch.empty_like(x)
    for i, g in enumerate(generators):
        u[i].uniform_(generator=g)
    return (x - u.log_().neg_().log_()).argmax(dim=-1)


def _penalize(x: torch.Tensor, rows: list[int], params: Sequence[SamplingParams],
              histories: Sequence[Sequence[int] | None]) -> torch.Tensor:
    """x (a float32 copy of the logits) with each listed row's penalties applied, row by row:
    exact per-row operations, so a row's result never depends on the rest of the batch."""
    x = x.clone()
    for i in rows:
        p, recent = params[i], histories[i][-params[i].penalty_last_n:]
        ids, counts = torch.unique(torch.tensor(recent, device=x.device), return_counts=True)
        row = x[i]
        seen = row[ids]
        if p.repetition_penalty != 1:
            r = p.repetition_penalty
            seen = torch.where(seen > 0, seen / r, seen * r)
        seen = seen - p.presence_penalty - p.frequency_penalty * counts.to(seen.dtype)
        row[ids] = seen
    return x


NUCLEUS_PREFIX = 256  # look for the nucleus among the best 256 tokens first; a full sort if not


def _nucleus_threshold(x: torch.Tensor, top_p: list[float]) -> torch.Tensor:
    """Per row, the smallest logit kept by top-p ([n, 1]; -inf where top_p is 1): keep the
    fewest best tokens whose probability mass reaches top_p. The mass ahead of each token is
    exp(value - logsumexp(row)) summed in float64 over the sorted values, which are exactly the
    same whether they come from a prefix or a full sort, so the cut never depends on the path."""
    vocab = x.shape[1]
    p = torch.tensor(top_p, dtype=torch.float64, device=x.device)[:, None]
    lse = torch.logsumexp(x, dim=-1, keepdim=True).double()
    m = min(vocab, NUCLEUS_PREFIX)
    while True:
        vals = torch.topk(x, m, dim=-1, sorted=True).values
        probs = (vals.double() - lse).exp()
        inside = torch.cumsum(probs, dim=-1) - probs < p  # mass strictly ahead < top_p
        if m == vocab or not bool((inside[:, -1:] & (p < 1)).any()):
            break
        m = vocab  # some nucleus reaches past the prefix
    thr = vals.gather(1, inside.sum(dim=-1, keepdim=True) - 1)  # the first token is always inside
    return torch.where(p < 1, thr, torch.tensor(float("-inf"), device=x.device))


class StopMatcher:
    """Streams text, holding back what may be the start of a stop string.

    ``feed(chunk) -> (emit, stopped)``: ``emit`` is text that can no longer be part of a stop
    string; on a match it is the text before the stop string, ``stopped`` is True, ``matched``
    names the stop string and the rest of the text is dropped. ``flush()`` returns what is
    held back at the end of the generation. Feeding after a stop is a programming error.
    """

    def __init__(self, stops: Sequence[str] = ()):
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError("stop strings must be non-empty strings")
        self.stops = tuple(stops)
        self.matched: str | None = None
        self._held = ""
        self._firsts = frozenset(s[0] for s in self.stops)
        self._longest = max((len(s) for s in self.stops), default=0)

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def feed(self, chunk: str) -> tuple[str, bool]:
        if self.matched is not None:
            raise RuntimeError(f"StopMatcher.feed after stop string {self.matched!r} matched")
        if not self.stops:
            return chunk, False
        buf = self._held + chunk
        best = None  # (end, -len, start, stop): earliest end, then the longest
        for s in self.stops:
            i = buf.find(s)
            if i >= 0:
                cand = (i + len(s), -len(s), i, s)
                if best is None or cand < best:
                    best = cand
        if best is not None:
            self.matched, self._held = best[3], ""
            return buf[:best[2]], True
        cut = len(buf)
        for j in range(max(0, len(buf) - self._longest + 1), len(buf)):
            if buf[j] in self._firsts and any(s.startswith(buf[j:]) for s in self.stops):
                cut = j
                break
        self._held = buf[cut:]
        return buf[:cut], False

    def flush(self) -> str:
        """Text held back so far (it did not turn into a stop string); clears it."""
        held, self._held = self._held, ""
        return held
