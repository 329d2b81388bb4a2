"""Constrained decoding: a grammar is part of a process, its matcher state part of each turn.

The engine is llguidance (a Rust Earley parser + lexer over the token trie, a 3 MB wheel with
no dependencies). Measured against xgrammar on SmolLM2's 49k vocabulary (2 shared cores, JSON
schema, one run each): vocabulary build ~0.5-1.5 s vs ~0.07 s (once per boot, lazily), grammar
compile ~1-3 ms vs ~20 ms, batched mask fill at 64 rows ~140 us/row vs ~200 us/row; xgrammar
needs transformers, pydantic, triton and tvm-ffi at import time. llguidance also copies a
matcher (fork) and takes Lark, GBNF, regexes and JSON schemas natively.

Contracts
  * Constraint is the wire form, checked at the boundary (SamplingParams.from_dict): exactly one
    of json_schema (a map, or its JSON text), regex (str), grammar (Lark or GBNF text) or choice
    (a list of strings); its size is bounded. It is frozen and hashable (the compile cache key).
  * GrammarCompiler(tokenizer).compile(constraint) -> Grammar, or GrammarError (a ValueError)
    naming the problem (the kernel answers EINVAL). Compiled grammars are cached (LRU).
  * Grammar.matcher(tokens=()) -> Matcher at the start of a turn, after feeding `tokens` (a
    process rebuilt from its tokens: checkpoint/restore). Matcher.copy() is an independent copy
    (fork). A Matcher is used by one thread at a time: the engine's owner thread.
  * fill_masks(matchers) -> int32 bitmasks [n, ceil(V/32)] for one step, computed for the whole
    batch at once by llguidance's thread pool (the GIL released); apply_masks(logits, masks,
    params) sets the disallowed logits of those rows to -inf (drivers/runner.py's mask hook),
    skipping greedy rows whose best token is allowed anyway.
  * Matcher.consume(tok) -> False when the grammar rejects tok (it cannot, after a mask); then
    .error says why. .forced() lists the tokens the grammar allows as the only continuation
    (fed without sampling). .stopped: the grammar is complete and allows nothing more.
Limit: with a sentencepiece dummy-prefix vocabulary the text of a turn's first token loses its
leading space (drivers/tokenizer.py StreamDecoder); a grammar that allows leading whitespace may
then see it stripped from the text.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

KINDS = ("json_schema", "regex", "grammar", "choice")
MAX_GRAMMAR_CHARS = 1 << 16          # a schema's JSON, a regex or a grammar text
MAX_CHOICES = 1024
CACHE_SIZE = 64                      # compiled grammars kept


class GrammarError(ValueError):
    """A constraint that is malformed or does not compile; the message names the problem."""


@dataclass(frozen=True)
class Constraint:
    kind: str                        # one of KINDS
    text: str                        # the schema as compact JSON, the regex, the grammar text,
                                     # or the choices as a JSON list

    @classmethod
    def from_wire(cls, kind: str, value) -> "Constraint":
        """Check one wire value (type, size) and return its canonical form; GrammarError if bad."""
        if kind == "json_schema":
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError as e:
                    raise GrammarError(f"json_schema is not valid JSON: {e}") from None
            if not isinstance(value, (dict, bool)):
                raise GrammarError(f"json_schema must be a map (a JSON schema), not {type(value).__name__}")
            text = json.dumps(value, separators=(",", ":"))   # key order kept: it is the output's
        elif kind in ("regex", "grammar"):
            if not isinstance(value, str) or not value:
                raise GrammarError(f"{kind} must be a non-empty string")
            text = value
        elif kind == "choice":
            if not isinstance(value, (list, tuple)) or not value or len(value) > MAX_CHOICES:
                raise GrammarError(f"choice must be a list of 1..{MAX_CHOICES} strings")
            if not all(isinstance(c, str) and c for c in value):
                raise GrammarError("each choice must be a non-empty string")
            text = json.dumps(list(value))
        else:
            raise GrammarError(f"unknown grammar kind {kind!r} (known: {', '.join(KINDS)})")
        if len(text) > MAX_GRAMMAR_CHARS:
            raise GrammarError(f"{kind} of {len(text)} chars exceeds {MAX_GRAMMAR_CHARS}")
        return cls(kind, text)

    def definition(self) -> str:
        """llguidance's grammar definition of this constraint."""
        from llguidance import LLMatcher

        if self.kind == "json_schema":
            # compact JSON, no free whitespace: the model cannot pad its way to max_tokens
            return LLMatcher.grammar_from_json_schema(self.text, defaults={"whitespace_flexible": False})
        if self.kind == "regex":
            return LLMatcher.grammar_from_regex(self.text)
        if self.kind == "choice":
            return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in json.loads(self.text)))
        from llguidance.gbnf_to_lark import any_to_lark
        try:
            return LLMatcher.grammar_from_lark(any_to_lark(self.text))
        except GrammarError:
            raise
        except Exception as e:  # noqa: BLE001 - the GBNF converter raises assorted errors
            raise GrammarError(f"grammar: {e}"[:400]) from None


class Matcher:
    """One turn's parse state (an llguidance LLMatcher)."""
    __slots__ = ("_m", "vocab")

    def __init__(self, m, vocab: int):
        self._m, self.vocab = m, vocab              # vocab: the vocabulary's size (mask width)

    def consume(self, tok: int) -> bool:
        return self._m.consume_token(tok)

    def forced(self) -> list[int]:
        """Tokens that are the only continuation the grammar allows (possibly none)."""
        return self._m.compute_ff_tokens()

    @property
    def stopped(self) -> bool:
        return self._m.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._m.is_accepting()

    @property
    def error(self) -> str:
        return _first_lines(self._m.get_error()) if self._m.is_error() else ""

    def copy(self) -> "Matcher":
        return Matcher(self._m.deep_copy(), self.vocab)


class Grammar:
    """A compiled constraint: a template matcher that each turn copies."""

    def __init__(self, constraint: Constraint, template, vocab: int, seconds: float):
        self.constraint, self._template, self.vocab, self.compile_s = constraint, template, vocab, seconds

    def matcher(self, tokens=()) -> Matcher:
        m = Matcher(self._template.deep_copy(), self.vocab)
        for t in tokens:
            if not m.consume(t):
                raise GrammarError(f"token {t} does not fit the grammar: {m.error}")
        return m


class GrammarCompiler:
    """Compiles constraints against one vocabulary (built on first use, ~1 s for 49k tokens)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._lltok = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[Constraint, Grammar] = OrderedDict()

    def vocabulary(self):
        """llguidance's LLTokenizer for this vocabulary: the bytes of every token, the special
        ones (never produced by grammar text) and the end-of-turn ones (allowed once accepted)."""
        with self._lock:
            if self._lltok is None:
                import llguidance

                tok = self.tokenizer
                stops = sorted(tok.stop_ids)
                pieces = [tok.token_bytes(i) for i in range(tok.vocab_size)]
                specials = [i for i in range(tok.vocab_size) if tok.is_special(i)]
                encode = _exact_encoder(tok, pieces, specials)

                class Wrapped:
                    eos_token_id, bos_token_id = stops[0], tok.bos_id
                    tokens, special_token_ids = pieces, specials

                    def __call__(self, s):
                        return encode(s.encode() if isinstance(s, str) else s)

                self._lltok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(Wrapped()), eos_token=stops)
            return self._lltok

    def compile(self, constraint: Constraint) -> Grammar:
        import time

        from llguidance import LLMatcher, LLParserLimits

        g = self._cache.get(constraint)
        if g is not None:
            self._cache.move_to_end(constraint)
            return g
        lltok = self.vocabulary()
        t0 = time.perf_counter()
        try:
            definition = constraint.definition()
        except GrammarError:
            raise
        except ValueError as e:
            raise GrammarError(f"{constraint.kind}: {e}"[:400]) from None
        m = LLMatcher(lltok, definition, log_level=0, limits=LLParserLimits(verbose_errors=False))
        if m.is_error():
            raise GrammarError(f"{constraint.kind}: {_first_lines(m.get_error())}")
        g = Grammar(constraint, m, self.tokenizer.vocab_size, time.perf_counter() - t0)
        self._cache[constraint] = g
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return g


def _exact_encoder(tok, pieces: list[bytes], specials: list[int]):
    """bytes -> ids whose pieces concatenate to exactly those bytes (llguidance tokenizes forced
    text with it): the model's own encoder, unless it adds a sentencepiece dummy-prefix space;
    then greedy longest match over the pieces (not always the encoder's split, always exact)."""
    if b"".join(pieces[i] for i in tok.encode("a", add_bos=False, special=False)) == b"a":
        return lambda data: tok.encode(data.decode("utf-8", "replace"), add_bos=False, special=False)
    skip = set(specials)
    index = {p: i for i, p in reversed(list(enumerate(pieces))) if p and i not in skip}
    longest = max(map(len, index))

    def greedy(data: bytes) -> list[int]:
        ids, i = [], 0
        while i < len(data):
            for n in range(min(longest, len(data) - i), 0, -1):
                t = index.get(data[i:i + n])
                if t is not None:
                    ids.append(t)
                    i += n
                    break
            else:
                raise ValueError(f"byte {data[i]:#x} has no token in this vocabulary")
        return ids
    return greedy


def _first_lines(msg: str, limit: int = 400) -> str:
    """An llguidance message without its state dump."""
    return msg.split("\n<state>")[0].strip()[:limit]


_executor = None


def fill_masks(matchers: list[Matcher]) -> torch.Tensor:
    """Bitmasks [n, ceil(V/32)] int32 of the tokens each matcher allows next (bit t%32 of word
    t//32), computed in parallel with the GIL released."""
    global _executor
    from llguidance import LLExecutor

    if _executor is None:
        _executor = LLExecutor(num_threads=min(os.cpu_count() or 1, 8))
    n = len(matchers)
    out = torch.zeros((n, (matchers[0].vocab + 31) // 32), dtype=torch.int32)
    _executor.unsafe_compute_mask_ptr([(m._m, i) for i, m in enumerate(matchers)], out.data_ptr(),
                                      out.shape[1] * 4, n)
    return out


def apply_masks(logits: torch.Tensor, masks: list, params: list | None = None) -> torch.Tensor:
    """Set the logits that row i's mask (a [W] int32 bitmask, or None: unconstrained) forbids to
    -inf. Returns logits (modified in place where masked).
    params (the rows' SamplingParams): a greedy row with no logit_bias, penalties or logprobs
    whose unmasked best token its grammar allows is left as it is: greedy sampling then picks
    that same token, so the pass over its vocabulary is skipped (exact; llama.cpp also checks the
    sampled token first). Only the others are masked, with one unpack of the bitmask."""
    rows = [i for i, m in enumerate(masks) if m is not None]
    if rows and params is not None:
        lazy = [i for i in rows if _plain_greedy(params[i])]
        if lazy:
            best = logits.argmax(dim=-1).tolist()          # what sample() picks for a greedy row
            fine = {i for i in lazy if _allows(masks[i], best[i])}
            rows = [i for i in rows if i not in fine]
    if not rows:
        return logits
    bm = torch.stack([masks[i] for i in rows])
    v = logits.shape[1]
    bits = min(v, bm.shape[1] * 32)
    banned = torch.from_numpy(np.unpackbits((~bm).numpy().view(np.uint8), axis=1, count=bits,
                                            bitorder="little").view(np.bool_))
    if bits < v:                    # logits wider than the vocabulary (a padded output head)
        banned = torch.cat([banned, banned.new_ones(len(rows), v - bits)], dim=1)
    banned = banned.to(logits.device)
    with torch.inference_mode():    # the forward's logits are inference tensors: update in place
        if len(rows) == logits.shape[0]:
            return logits.masked_fill_(banned, float("-inf"))
        idx = torch.tensor(rows, device=logits.device)
        sub = logits.index_select(0, idx).masked_fill_(banned, float("-inf"))
        return logits.index_copy_(0, idx, sub)


def _plain_greedy(p) -> bool:
    return p.temperature == 0 and not (p.logit_bias or p.penalized or p.logprobs)


def _allows(mask: torch.Tensor, tok: int) -> bool:
    """Bit tok of a [W] int32 bitmask."""
    return tok < mask.shape[0] * 32 and (int(mask[tok >> 5]) >> (tok & 31)) & 1 == 1
