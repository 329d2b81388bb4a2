"""The kernel's per-token log-probabilities (read replies of a process spawned with ``logprobs``)
in OpenAI's and Ollama's shapes.

A kernel entry is ``[id, bytes, logprob, [[id, bytes, logprob], ...]]`` (kernel/abi.py READ): the
bytes the token decodes to mid-text and its top alternatives, best first. A token's string is
its bytes decoded as UTF-8 (a token holding part of a character shows U+FFFD there; its
``bytes`` are exact). logprobs are of the model's own distribution (before temperature,
penalties and logit_bias; after a grammar's mask), as vLLM reports them.
"""

from __future__ import annotations


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _one(tid: int, b: bytes, lp: float) -> dict:
    return {"token": _text(b), "bytes": list(b), "logprob": lp}


def chat(entries: list) -> dict:
    """OpenAI chat's ``choices[i].logprobs``: {content: [{token, bytes, logprob, top_logprobs}]}."""
    return {"content": [{**_one(t, b, lp), "top_logprobs": [_one(*alt) for alt in top]}
                        for t, b, lp, top in entries], "refusal": None}


def completion(entries: list, offset: int) -> dict:
    """OpenAI legacy completions' ``choices[i].logprobs`` (tokens, token_logprobs, top_logprobs as
    {token: logprob}, text_offset); offset: where the first token's text starts in the answer."""
    tokens, lps, tops, offsets = [], [], [], []
    for _, b, lp, top in entries:
        tokens.append(_text(b))
        lps.append(lp)
        tops.append({_text(ab): alp for _, ab, alp in top})
        offsets.append(offset)
        offset += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def ollama(entries: list) -> list[dict]:
    """Ollama's ``logprobs``: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]."""
    return [{**_one(t, b, lp), "top_logprobs": [_one(*alt) for alt in top]} for t, b, lp, top in entries]
