"""OpenAI's API: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings, and vLLM's
/tokenize and /detokenize.

Sampling fields map onto the kernel's (params.py: penalties, logit_bias, logprobs and vLLM's
extensions too); response_format and tools/tool_choice become the kernel's grammars (tools.py);
logprobs come from the kernel's read replies (logprobs.py). /v1/embeddings goes to the kernel's
encoder model (syscall EMBED) where the kernel has one, else 501.
"""

from __future__ import annotations

import json
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import logprobs, tools
from .app import Gateway
from .body import Body, read_json
from .errors import ApiError
from .generation import Generation, finish_reason
from .params import sampling
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
            content = ((content or "") + "\n" + tools.history_call(m["tool_calls"], f"messages[{i}]")).lstrip()
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
    params, n = sampling(b, u, chat=kind == "chat")
    answer = tools.response_schema(b)
    t = tools.openai_tools(b, answer) if kind == "chat" else None
    if kind == "chat":
        prompts = [tools.with_tools(messages(b), t)]
    else:
        prompts = await completion_prompts(b)
    params.update(tools.constraint(t, answer))
    stream, usage = stream_options(b)
    g = Generation(await gw.client(who), gw.kernels, who.user)
    await g.start(prompts, params, n, command=f"http {kind}")
    return b, u, g, stream, usage, t


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
    b, u, g, stream, usage, t = await _start(request, "chat")
    a = Answer("chat", u["model"])
    if stream:
        return Stream(_chat_chunks(a, g, usage, t), g, "text/event-stream")
    choices = await collect(request, g)
    _raise_errors(choices)
    return JSONResponse({**a.head(), "choices": [_chat_choice(c, t) for c in choices], "usage": g.usage()})


def _chat_choice(c, t) -> dict:
    call = tools.parse(c.text, t)
    message = {"role": "assistant", "content": c.text}
    if call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": tools.call_id(), "type": "function",
             "function": {"name": call[0], "arguments": json.dumps(call[1])}}]}
    return {"index": c.index, "message": message,
            "logprobs": logprobs.chat(c.logprobs) if c.logprobs is not None else None,
            "finish_reason": "tool_calls" if call is not None and c.reason == "eos" else finish_reason(c)}


async def _chat_chunks(a: Answer, g: Generation, usage: bool, t):
    head = {**a.head("chat.completion.chunk"), **({"usage": None} if usage else {})}
    calls = {c.index: tools.CallStream(t) for c in g.choices} if t is not None else {}
    for c in g.choices:
        yield sse({**head, "choices": [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]})
    try:
        async for ev in g.events():
            c = ev.choice
            if ev.done and c.reason == "error":
                raise ApiError(500, f"process {c.pid} failed: {c.message}")
            cs = calls.get(c.index)
            deltas = (cs.finish() if ev.done else cs.feed(ev.text)) if cs else [{"content": ev.text}]
            lp = logprobs.chat(ev.logprobs) if ev.logprobs else None
            if lp and not deltas:
                deltas = [{}]
            for i, delta in enumerate(deltas):
                if delta.get("content") == "" and not lp:
                    continue
                yield sse({**head, "choices": [{"index": c.index, "delta": delta,
                                                "logprobs": lp if i == 0 else None, "finish_reason": None}]})
            if ev.done:
                reason = "tool_calls" if cs and cs.called and c.reason == "eos" else finish_reason(c)
                yield sse({**head, "choices": [{"index": c.index, "delta": {}, "logprobs": None,
                                                "finish_reason": reason}]})
    except ApiError as e:
        yield sse(e.openai())
    if usage:
        yield sse({**head, "choices": [], "usage": g.usage()})
    yield "data: [DONE]\n\n"


async def completions(request: Request):
    b, u, g, stream, usage, _ = await _start(request, "completion")
    a = Answer("completion", u["model"])
    echo = b.get("echo", "boolean", False)
    n = len(g.choices) // max(1, len(await completion_prompts(b)))
    prefix = [await _echo(request, b, c.index // max(1, n)) if echo else "" for c in g.choices]
    if stream:
        return Stream(_completion_chunks(a, g, usage, prefix), g, "text/event-stream")
    choices = await collect(request, g)
    _raise_errors(choices)
    return JSONResponse({**a.head(), "choices": [
        {"index": c.index, "text": prefix[c.index] + c.text,
         "logprobs": logprobs.completion(c.logprobs, len(prefix[c.index])) if c.logprobs is not None else None,
         "finish_reason": finish_reason(c)} for c in choices], "usage": g.usage()})


async def _echo(request: Request, b: Body, i: int) -> str:
    p = (await completion_prompts(b))[i]
    if isinstance(p, str):
        return p
    gw: Gateway = request.app.state.gw
    return await gw.call(gw.who(request), "detokenize", p)


async def _completion_chunks(a: Answer, g: Generation, usage: bool, prefix: list[str]):
    head = {**a.head(), **({"usage": None} if usage else {})}
    offset: dict[int, int] = {}          # choice -> text offset of its next logprob entry
    for c in g.choices:
        if prefix[c.index]:
            yield sse({**head, "choices": [{"index": c.index, "text": prefix[c.index], "logprobs": None,
                                            "finish_reason": None}]})
    try:
        async for ev in g.events():
            if ev.done and ev.choice.reason == "error":
                raise ApiError(500, f"process {ev.choice.pid} failed: {ev.choice.message}")
            lp = None
            if ev.logprobs:
                i = ev.choice.index
                lp = logprobs.completion(ev.logprobs, offset.get(i, len(prefix[i])))
                offset[i] = lp["text_offset"][-1] + len(lp["tokens"][-1])
            yield sse({**head, "choices": [{"index": ev.choice.index, "text": ev.text, "logprobs": lp,
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
