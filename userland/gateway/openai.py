"""OpenAI's API: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings, and vLLM's
/tokenize and /detokenize.

Sampling fields map onto the kernel's: max_tokens | max_completion_tokens (default: the rest of
the context), temperature (default 1, as OpenAI), top_p, seed, stop, n (forked from one prefill),
and vLLM's extensions top_k and ignore_eos. Not available from this kernel, answered 501 naming
the field: logprobs/top_logprobs (read returns text, not per-token log-probabilities),
frequency/presence penalties and logit_bias (the sampler has none), response_format other than
text and tools (they need the kernel's grammars). /v1/embeddings goes to the kernel's encoder
model (syscall EMBED) where the kernel has one, else 501.
"""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .app import MAX_N, Gateway
from .body import Body, read_json
from .errors import ApiError
from .generation import Generation, finish_reason
from .streaming import Stream, collect, sse


def routes() -> list[Route]:
    return [Route("/v1/models", models), Route("/v1/models/{model:path}", model),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/tokenize", tokenize, methods=["POST"]), Route("/detokenize", detokenize, methods=["POST"])]


def _card(u: dict, created: int) -> dict:
    return {"id": u["model"], "object": "model", "created": created, "owned_by": "llmos",
            "max_model_len": u.get("max_context")}


async def models(request: Request) -> JSONResponse:
    gw: Gateway = request.app.state.gw
    u = await gw.uname(gw.who(request))
    return JSONResponse({"object": "list", "data": [_card(u, int(gw.started))]})


async def model(request: Request) -> JSONResponse:
    gw: Gateway = request.app.state.gw
    u = await gw.model(gw.who(request), request.path_params["model"])
    return JSONResponse(_card(u, int(gw.started)))


def unsupported(b: Body) -> None:
    """501 for fields this kernel cannot honour (see the module docstring)."""
    checks = [("logprobs", lambda v: v not in (None, False, 0)),
              ("top_logprobs", lambda v: v not in (None, 0)),
              ("frequency_penalty", lambda v: v not in (None, 0)),
              ("presence_penalty", lambda v: v not in (None, 0)),
              ("logit_bias", lambda v: bool(v)),
              ("suffix", lambda v: bool(v)),
              ("tools", lambda v: bool(v)),
              ("response_format", lambda v: isinstance(v, dict) and v.get("type") not in (None, "text"))]
    for name, bad in checks:
        if bad(b.data.get(name)):
            why = {"tools": "tool calls need the kernel's grammars, which it does not have yet",
                   "response_format": "structured output needs the kernel's grammars, which it does not have yet",
                   "logprobs": "the kernel's read returns text, not per-token log-probabilities",
                   "top_logprobs": "the kernel's read returns text, not per-token log-probabilities"}
            raise ApiError(501, f"'{name}' is not supported by this llmos kernel: "
                                f"{why.get(name, 'its sampler has no such parameter')}", param=name,
                           code="unsupported_parameter")


def sampling(b: Body, u: dict) -> tuple[dict, int]:
    """(kernel sampling params, n) from an OpenAI request body."""
    unsupported(b)
    max_tokens = b.get("max_completion_tokens", "integer", lo=1) or b.get("max_tokens", "integer", lo=1)
    top_k = b.get("top_k", "integer", 0, lo=-1)
    p = {"max_tokens": max_tokens or u.get("max_context") or 256,
         "temperature": b.get("temperature", "number", 1.0, lo=0, hi=2),
         "top_p": b.get("top_p", "number", 1.0, lo=0, hi=1),
         "top_k": max(0, top_k),
         "ignore_eos": b.get("ignore_eos", "boolean", False)}
    seed = b.get("seed", "integer", lo=0, hi=2**63 - 1)
    if seed is not None:
        p["seed"] = seed
    stop = b.stop()
    if stop:
        p["stop"] = stop
    if p["top_p"] == 0:
        raise ApiError(400, "'top_p' must be greater than 0", param="top_p")
    return p, b.get("n", "integer", 1, lo=1, hi=MAX_N)


def stream_options(b: Body) -> tuple[bool, bool]:
    stream = b.get("stream", "boolean", False)
    opts = b.sub("stream_options")
    if opts.data and not stream:
        raise ApiError(400, "'stream_options' is only allowed with stream: true", param="stream_options")
    return stream, opts.get("include_usage", "boolean", False)


def messages(b: Body) -> list[dict]:
    """OpenAI chat messages -> the kernel's [{role, content: str}] (text parts joined)."""
    msgs = b.get("messages", "array", required=True)
    if not msgs:
        raise ApiError(400, "'messages' must not be empty", param="messages")
    out = []
    for i, m in enumerate(msgs):
        mb = Body(m, f"messages[{i}].")
        role = mb.get("role", "string", required=True,
                      choices=("system", "developer", "user", "assistant", "tool"))
        content = m.get("content")
        if isinstance(content, list):
            parts = [Body(part, f"messages[{i}].content[{j}].") for j, part in enumerate(content)]
            for part in parts:
                if part.get("type", "string", required=True) != "text":
                    raise ApiError(400, f"messages[{i}]: only text content parts are supported",
                                   param=f"messages[{i}].content")
            content = "".join(part.get("text", "string", "") for part in parts)
        elif content is not None and not isinstance(content, str):
            raise ApiError(400, f"'messages[{i}].content' must be a string or an array of parts",
                           param=f"messages[{i}].content")
        if m.get("tool_calls"):
            raise ApiError(501, "tool calls are not supported by this llmos kernel", param=f"messages[{i}]")
        out.append({"role": "system" if role == "developer" else role, "content": content or ""})
    return out


class Answer:
    """Ids and framing shared by one response's chunks."""

    def __init__(self, kind: str, model: str):
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        self.created, self.model = int(time.time()), model
        self.object = "chat.completion" if kind == "chat" else "text_completion"

    def head(self, obj: str | None = None) -> dict:
        return {"id": self.id, "object": obj or self.object, "created": self.created, "model": self.model,
                "system_fingerprint": "llmos"}


async def _start(request: Request, kind: str):
    gw: Gateway = request.app.state.gw
    who = gw.who(request)
    b = await read_json(request, gw.max_body)
    u = await gw.model(who, b.get("model", "string", required=True))
    if kind == "chat":
        prompts = [messages(b)]
    else:
        prompts = await completion_prompts(b)
    params, n = sampling(b, u)
    stream, usage = stream_options(b)
    g = Generation(await gw.client(who), gw.kernels, who.user)
    await g.start(prompts, params, n, command=f"http {kind}")
    return b, u, g, stream, usage


async def completion_prompts(b: Body) -> list:
    """prompt: a string, an array of strings, an array of token ids, or an array of those."""
    p = b.data.get("prompt")
    if isinstance(p, str) or (isinstance(p, list) and p and all(type(i) is int for i in p)):
        return [p]
    if isinstance(p, list) and p and all(isinstance(x, str) or (isinstance(x, list) and x and
                                                               all(type(i) is int for i in x)) for x in p):
        return list(p)
    raise ApiError(400, "'prompt' must be a string, an array of strings, or token ids", param="prompt")


async def chat(request: Request):
    b, u, g, stream, usage = await _start(request, "chat")
    a = Answer("chat", u["model"])
    if stream:
        return Stream(_chat_chunks(a, g, usage), g, "text/event-stream")
    choices = await collect(request, g)
    _raise_errors(choices)
    return JSONResponse({**a.head(), "choices": [
        {"index": c.index, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
         "finish_reason": finish_reason(c)} for c in choices], "usage": g.usage()})


async def _chat_chunks(a: Answer, g: Generation, usage: bool):
    head = {**a.head("chat.completion.chunk"), **({"usage": None} if usage else {})}
    for c in g.choices:
        yield sse({**head, "choices": [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]})
    try:
        async for ev in g.events():
            if ev.done and ev.choice.reason == "error":
                raise ApiError(500, f"process {ev.choice.pid} failed: {ev.choice.message}")
            delta = {} if ev.done else {"content": ev.text}
            yield sse({**head, "choices": [{"index": ev.choice.index, "delta": delta, "logprobs": None,
                                            "finish_reason": finish_reason(ev.choice) if ev.done else None}]})
    except ApiError as e:
        yield sse(e.openai())
    if usage:
        yield sse({**head, "choices": [], "usage": g.usage()})
    yield "data: [DONE]\n\n"


async def completions(request: Request):
    b, u, g, stream, usage = await _start(request, "completion")
    a = Answer("completion", u["model"])
    echo = b.get("echo", "boolean", False)
    n = len(g.choices) // max(1, len(await completion_prompts(b)))
    prefix = [await _echo(request, b, c.index // max(1, n)) if echo else "" for c in g.choices]
    if stream:
        return Stream(_completion_chunks(a, g, usage, prefix), g, "text/event-stream")
    choices = await collect(request, g)
    _raise_errors(choices)
    return JSONResponse({**a.head(), "choices": [
        {"index": c.index, "text": prefix[c.index] + c.text, "logprobs": None,
         "finish_reason": finish_reason(c)} for c in choices], "usage": g.usage()})


async def _echo(request: Request, b: Body, i: int) -> str:
    p = (await completion_prompts(b))[i]
    if isinstance(p, str):
        return p
    gw: Gateway = request.app.state.gw
    return await gw.call(gw.who(request), "detokenize", p)


async def _completion_chunks(a: Answer, g: Generation, usage: bool, prefix: list[str]):
    head = {**a.head(), **({"usage": None} if usage else {})}
    for c in g.choices:
        if prefix[c.index]:
            yield sse({**head, "choices": [{"index": c.index, "text": prefix[c.index], "logprobs": None,
                                            "finish_reason": None}]})
    try:
        async for ev in g.events():
            if ev.done and ev.choice.reason == "error":
                raise ApiError(500, f"process {ev.choice.pid} failed: {ev.choice.message}")
            yield sse({**head, "choices": [{"index": ev.choice.index, "text": ev.text, "logprobs": None,
                                            "finish_reason": finish_reason(ev.choice) if ev.done else None}]})
    except ApiError as e:
        yield sse(e.openai())
    if usage:
        yield sse({**head, "choices": [], "usage": g.usage()})
    yield "data: [DONE]\n\n"


def _raise_errors(choices) -> None:
    for c in choices:
        if c.reason == "error":
            raise ApiError(500, f"process {c.pid} failed: {c.message}")


async def embeddings(request: Request) -> JSONResponse:
    """{input: str | [str], model, encoding_format?: float | base64} -> OpenAI's embedding list.
    The kernel's encoder model answers (whatever `model` names it); usage counts no tokens (the
    encoder's tokenizer is not the served model's)."""
    gw: Gateway = request.app.state.gw
    who = gw.who(request)
    b = await read_json(request, gw.max_body)
    name = b.get("model", "string", required=True)
    texts = b.data.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise ApiError(400, "'input' must be a non-empty string or an array of them (token ids are not "
                            "accepted: the encoder has its own vocabulary)", param="input")
    fmt = b.get("encoding_format", "string", "float", choices=("float", "base64"))
    if b.data.get("dimensions") is not None:
        raise ApiError(501, "'dimensions' is not supported: the encoder's vectors have one size", param="dimensions")
    vectors = await gw.embed(who, texts)
    data = [{"object": "embedding", "index": i, "embedding": v if fmt == "float" else _base64(v)}
            for i, v in enumerate(vectors)]
    return JSONResponse({"object": "list", "data": data, "model": name,
                         "usage": {"prompt_tokens": 0, "total_tokens": 0}})


def _base64(v: list[float]) -> str:
    import base64
    import struct
    return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()


async def tokenize(request: Request) -> JSONResponse:
    """vLLM's /tokenize: {model?, prompt | messages, add_special_tokens?} -> {count, max_model_len, tokens}."""
    gw: Gateway = request.app.state.gw
    who = gw.who(request)
    b = await read_json(request, gw.max_body)
    u = await gw.model(who, b.get("model", "string", (await gw.uname(who))["model"]))
    if "messages" in b.data:
        raise ApiError(501, "tokenizing chat messages is not supported; send 'prompt'", param="messages")
    prompt = b.get("prompt", "string", required=True)
    ids = await gw.call(who, "tokenize", prompt, True, b.get("add_special_tokens", "boolean", False))
    return JSONResponse({"count": len(ids), "max_model_len": u.get("max_context"), "tokens": ids})


async def detokenize(request: Request) -> JSONResponse:
    """vLLM's /detokenize: {model?, tokens: [ids]} -> {prompt}."""
    gw: Gateway = request.app.state.gw
    who = gw.who(request)
    b = await read_json(request, gw.max_body)
    await gw.model(who, b.get("model", "string", (await gw.uname(who))["model"]))
    ids = b.get("tokens", "array", required=True)
    if not all(type(i) is int for i in ids):
        raise ApiError(400, "'tokens' must be an array of integers", param="tokens")
    return JSONResponse({"prompt": await gw.call(who, "detokenize", ids)})
