"""The output processor: one turn's generated tokens → the text a reader sees.

A TurnOutput detokenises a token stream incrementally (holding back split UTF-8 characters) and
cuts it at the first stop string (holding back text that may still become one). It knows
nothing of processes: the kernel keeps one per process turn, pushes each sampled token and puts
what comes back into the process's output channel. It runs on the kernel's event-loop thread.

For a process that asked for logprobs, ``logprob_entry`` turns a token's log-probabilities into
the read reply's wire form (kernel/abi.py READ): ``[id, bytes, logprob, [[id, bytes, logprob],
...]]``, the bytes being what the token decodes to mid-text (a token may hold part of a UTF-8
character, so its text alone cannot say). End-of-turn tokens, which produce no text, get none.
"""

from __future__ import annotations

from .sampler import StopMatcher


class TurnOutput:
    def __init__(self, tokenizer, stop: tuple[str, ...] = (), ignore_eos: bool = False):
        self._tokenizer = tokenizer
        self._stop_ids = frozenset() if ignore_eos else frozenset(tokenizer.stop_ids)
        self._decoder = tokenizer.stream()
        self._matcher = StopMatcher(stop)
        self._stops = bool(stop)

    @property
    def stopped(self) -> bool:
        """A stop string has matched: nothing more is emitted this turn."""
        return self._matcher.stopped

    def push(self, tok: int) -> tuple[str, str | None]:
        """(text to emit now, "eos" | "stop" | None) for the next generated token."""
        if tok in self._stop_ids:
            return "", "eos"
        text = self._decoder.push(tok)
        if not self._stops:
            return text, None
        if not text or self._matcher.stopped:
            return "", None
        emit, stopped = self._matcher.feed(text)
        return emit, "stop" if stopped else None

    def logprob_entry(self, tok: int, logprob: float | None, top, k: int) -> list | None:
        """The read reply's entry for tok (see the module docstring); None for an end-of-turn
        token. top: the sampler's [(id, logprob), ...] (k of them), or None for a token the
        grammar forced (then it alone, with p = 1, if k > 0)."""
        if tok in self._stop_ids:
            return None
        piece = self._tokenizer.token_bytes
        lp = 0.0 if logprob is None else float(logprob)
        top = top if top is not None else [(tok, lp)] if k else []
        return [tok, piece(tok), lp, [[t, piece(t), float(v)] for t, v in top]]

    def finish(self) -> tuple[str, bool]:
        """(the held-back text, True if a stop string matched in it or before): the turn ends."""
        if self._matcher.stopped:
            return "", True
        emit, stopped = self._matcher.feed(self._decoder.finish())
        return (emit if stopped else emit + self._matcher.flush()), stopped

    def replay(self, tokens) -> None:
        """Push tokens already generated, discarding the text (a fork's copy of a turn)."""
        for tok in tokens:
            self.push(tok)
