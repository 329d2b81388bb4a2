"""An OpenAI request's sampling fields -> the kernel's spawn params (drivers/sampler.py).

max_tokens | max_completion_tokens (default: the rest of the context), temperature (default 1,
as OpenAI), top_p, seed, stop, n (forked from one prefill), presence_penalty and
frequency_penalty (-2..2; the kernel counts a token's occurrences in the last
``penalty_last_n`` = 64 context tokens, prompt included, where OpenAI counts the answer so far),
logit_bias ({token id: -100..100}; ids past the vocabulary are the kernel's 400),
logprobs/top_logprobs (chat: a boolean and 0..20; completions: ``logprobs`` 0..20 is the number of
alternatives), and vLLM's extensions top_k, min_p, repetition_penalty and ignore_eos.
``suffix`` (completions) stays 501: the kernel has no fill-in-the-middle.
"""

from __future__ import annotations

from .app import MAX_N
from .body import Body
from .errors import ApiError

MAX_TOP_LOGPROBS = 20       # the kernel's limit (drivers/sampler.py), OpenAI's too


def logit_bias(b: Body) -> dict[str, float] | None:
    """{"token id": bias} as OpenAI sends it (the kernel's wire form too: msgpack keys are strings)."""
    v = b.get("logit_bias", "object")
    if not v:
        return None
    out = {}
    for key, bias in v.items():
        if not key.isdigit() or type(bias) not in (int, float) or not -100 <= bias <= 100:
            raise ApiError(400, "'logit_bias' maps token ids (as strings) to numbers in [-100, 100], "
                                f"got {key!r}: {bias!r}"[:200], param="logit_bias")
        out[key] = float(bias)
    return out


def logprobs(b: Body, chat: bool) -> dict:
    """The kernel's logprobs/top_logprobs from chat's (bool, 0..20) or completions' (0..20)."""
    if chat:
        want = b.get("logprobs", "boolean", False)
        top = b.get("top_logprobs", "integer", 0, lo=0, hi=MAX_TOP_LOGPROBS)
        if top and not want:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    else:
        top = b.get("logprobs", "integer", lo=0, hi=MAX_TOP_LOGPROBS)
        want = top is not None
    return {"logprobs": True, "top_logprobs": top or 0} if want else {}


def sampling(b: Body, u: dict, chat: bool = True) -> tuple[dict, int]:
    """(kernel sampling params, n) from an OpenAI request body."""
    if b.data.get("suffix"):
        raise ApiError(501, "'suffix' is not supported by this llmos kernel: it has no fill-in-the-middle",
                       param="suffix", code="unsupported_parameter")
    max_tokens = b.get("max_completion_tokens", "integer", lo=1) or b.get("max_tokens", "integer", lo=1)
    top_k = b.get("top_k", "integer", 0, lo=-1)
    p = {"max_tokens": max_tokens or u.get("max_context") or 256,
         "temperature": b.get("temperature", "number", 1.0, lo=0, hi=2),
         "top_p": b.get("top_p", "number", 1.0, lo=0, hi=1),
         "top_k": max(0, top_k),
         "ignore_eos": b.get("ignore_eos", "boolean", False)}
    optional = {"seed": b.get("seed", "integer", lo=0, hi=2**63 - 1),
                "presence_penalty": b.get("presence_penalty", "number", lo=-2, hi=2),
                "frequency_penalty": b.get("frequency_penalty", "number", lo=-2, hi=2),
                "repetition_penalty": b.get("repetition_penalty", "number", lo=0, hi=10),
                "min_p": b.get("min_p", "number", lo=0, hi=1),
                "logit_bias": logit_bias(b), "stop": b.stop()}
    p.update({k: v for k, v in optional.items() if v is not None})
    p.update(logprobs(b, chat))
    if p["top_p"] == 0:
        raise ApiError(400, "'top_p' must be greater than 0", param="top_p")
    if p.get("repetition_penalty") == 0:
        raise ApiError(400, "'repetition_penalty' must be greater than 0", param="repetition_penalty")
    if p.get("min_p") == 1:
        raise ApiError(400, "'min_p' must be below 1", param="min_p")
    return p, b.get("n", "integer", 1, lo=1, hi=MAX_N)
