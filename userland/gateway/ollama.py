"""Ollama's API: /api/generate, /api/chat (NDJSON streams whose last object has done, done_reason
and the durations in nanoseconds), /api/tags, /api/ps, /api/show, /api/version, /api/embed.

Options map onto the kernel's sampling: num_predict (-1/-2 or absent: the rest of the context),
temperature (default 0.8), top_k (40), top_p (0.9), seed, stop, min_p, repeat_penalty,
repeat_last_n (0: off), presence_penalty, frequency_penalty (penalties only when given: Ollama's
default repeat_penalty 1.1 is not applied), and llama.cpp's logit_bias ({"id": bias}, an llmos
extension here); others (num_ctx, num_thread...) describe Ollama's
runner and are ignored, as Ollama ignores unknown ones. ``logprobs``/``top_logprobs`` come from
the kernel (each chunk's tokens). ``format`` ("json" or a schema) and ``tools`` go through the
kernel's grammars (tools.py; a call comes back as message.tool_calls, arguments an object, in
the last chunk when streaming). ``images``, ``context`` and ``suffix`` need kernel features it
does not have: 501. /api/embed goes to the kernel's encoder model (syscall EMBED) where the
kernel has one, else 501.
Model names: the served model, with or without the ``:latest`` tag.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import logprobs, tools
from .app import Gateway
from .body import Body, read_json
from .errors import ApiError
from .generation import Generation, finish_reason
from .params import logit_bias
from .streaming import Stream, collect, ndjson

VERSION = "0.6.0"     # the Ollama API version this gateway follows


def routes() -> list[Route]:
    return [Route("/api/generate", generate, methods=["POST"]), Route("/api/chat", chat, methods=["POST"]),
            Route("/api/tags", tags), Route("/api/ps", ps), Route("/api/show", show, methods=["POST"]),
            Route("/api/version", version), Route("/api/embed", embed, methods=["POST"]),
            Route("/api/embeddings", embed, methods=["POST"])]


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _details(u: dict) -> dict:
    path = u.get("model_path", "")
    quant = path.rsplit(".", 2)[-2] if path.count(".") >= 2 else u.get("dtype", "")
    cfg = u.get("model_config", {})
    return {"parent_model": "", "format": "gguf", "family": cfg.get("arch", "llama"),
            "families": [cfg.get("arch", "llama")], "parameter_size": "", "quantization_level": quant}


def _entry(u: dict, started: float) -> dict:
    name = f"{u['model']}:latest"
    path = u.get("model_path", "")
    try:
        import os
        size = os.path.getsize(path)
    except OSError:
        size = 0
    return {"name": name, "model": name, "modified_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
            "size": size, "digest": hashlib.sha256(path.encode()).hexdigest(), "details": _details(u)}


async def tags(request: Request) -> JSONResponse:
    gw: Gateway = request.app.state.gw
    u = await gw.uname(gw.who(request))
    return JSONResponse({"models": [_entry(u, gw.started)]})


async def ps(request: Request) -> JSONResponse:
    gw: Gateway = request.app.state.gw
    u = await gw.uname(gw.who(request))
    e = _entry(u, gw.started)
    far = dt.datetime(2318, 1, 1, tzinfo=dt.timezone.utc).isoformat()     # resident: never unloaded
    gpu = u.get("device", "cpu") != "cpu"
    return JSONResponse({"models": [{**e, "expires_at": far, "size_vram": e["size"] if gpu else 0,
                                     "context_length": u.get("max_context")}]})


async def show(request: Request) -> JSONResponse:
    gw: Gateway = request.app.state.gw
    who = gw.who(request)
    b = await read_json(request, gw.max_body)
    u = await gw.model(who, b.get("model", "string") or b.get("name", "string", required=True))
    cfg = u.get("model_config", {})
    info = {f"{cfg.get('arch', 'llama')}.{k}": v for k, v in cfg.items() if isinstance(v, (int, float, str))}
    return JSONResponse({"modelfile": f"FROM {u.get('model_path', '')}\n", "parameters": "",
                         "template": "", "details": _details(u), "model_info": info,
                         "capabilities": ["completion", "tools"],
                         "modified_at": dt.datetime.fromtimestamp(gw.started, dt.timezone.utc).isoformat()})


async def version(request: Request) -> JSONResponse:
    return JSONResponse({"version": VERSION})


async def embed(request: Request) -> JSONResponse:
    """/api/embed {model, input: str | [str]} -> {embeddings}; /api/embeddings {model, prompt} ->
    {embedding}: the kernel's encoder model (syscall EMBED), whatever `model` names."""
    gw: Gateway = request.app.state.gw
    who = gw.who(request)
    b = await read_json(request, gw.max_body)
    name = b.get("model", "string", required=True)
    legacy = request.url.path.endswith("/embeddings")
    texts = b.get("prompt", "string", required=True) if legacy else b.data.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "'input' must be a string or an array of strings")
    t0 = time.perf_counter()
    vectors = await gw.embed(who, texts)
    if legacy:
        return JSONResponse({"embedding": vectors[0]})
    return JSONResponse({"model": name, "embeddings": vectors, "load_duration": 0,
                         "total_duration": int((time.perf_counter() - t0) * 1e9), "prompt_eval_count": 0})


def sampling(b: Body, u: dict) -> dict:
    for name in ("images", "context", "suffix"):
        if b.data.get(name):
            raise ApiError(501, f"'{name}' is not supported by this llmos kernel")
    o = b.sub("options")
    n = o.get("num_predict", "integer", -1, lo=-2)
    p = {"max_tokens": n if n > 0 else (u.get("max_context") or 256),
         "temperature": o.get("temperature", "number", 0.8, lo=0),
         "top_k": o.get("top_k", "integer", 40, lo=0),
         "top_p": o.get("top_p", "number", 0.9, lo=0, hi=1)}
    if n == 0:
        raise ApiError(400, "'options.num_predict' must not be 0", param="options.num_predict")
    seed = o.get("seed", "integer", lo=0)
    if seed is not None:
        p["seed"] = seed
    stop = o.stop()
    if stop:
        p["stop"] = stop
    if p["top_p"] == 0:
        p["top_p"] = 1e-6
    last_n = o.get("repeat_last_n", "integer", lo=-1, hi=1 << 16)
    extra = {"min_p": o.get("min_p", "number", lo=0, hi=0.999),
             "repetition_penalty": o.get("repeat_penalty", "number", lo=0.01, hi=10),
             "presence_penalty": o.get("presence_penalty", "number", lo=-2, hi=2),
             "frequency_penalty": o.get("frequency_penalty", "number", lo=-2, hi=2),
             "penalty_last_n": (u.get("max_context") or 4096) if last_n == -1 else last_n or None}
    p.update({k: v for k, v in extra.items() if v is not None})
    bias = logit_bias(o)
    if bias:
        p["logit_bias"] = bias
    if last_n == 0:                         # Ollama: 0 turns the penalties off
        for k in ("repetition_penalty", "presence_penalty", "frequency_penalty"):
            p.pop(k, None)
    if b.get("logprobs", "boolean", False):
        p.update(logprobs=True, top_logprobs=b.get("top_logprobs", "integer", 0, lo=0, hi=20))
    return p


def _messages(b: Body) -> list[dict]:
    out = []
    for i, m in enumerate(b.get("messages", "array", required=True)):
        mb = Body(m, f"messages[{i}].")
        if m.get("images"):
            raise ApiError(501, f"messages[{i}]: images are not supported by this llmos kernel")
        content = mb.get("content", "string", "")
        if m.get("tool_calls"):
            content = (content + "\n" + tools.history_call(m["tool_calls"], f"messages[{i}]")).lstrip()
        out.append({"role": mb.get("role", "string", required=True,
                                   choices=("system", "user", "assistant", "tool")), "content": content})
    return out


async def _run(request: Request, kind: str):
    gw: Gateway = request.app.state.gw
    who = gw.who(request)
    b = await read_json(request, gw.max_body)
    u = await gw.model(who, b.get("model", "string", required=True))
    stream = b.get("stream", "boolean", True)
    if kind == "chat":
        prompt = _messages(b)
        if not prompt:
            return None, u, stream, None
    else:
        text = b.get("prompt", "string", "")
        if not text:
            return None, u, stream, None
        system = b.get("system", "string")
        if b.get("raw", "boolean", False):
            prompt = text
        else:
            prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    params = sampling(b, u)
    answer = tools.ollama_format(b)
    fns = b.get("tools", "array") if kind == "chat" else None
    t = tools.Tools(tools.functions(fns), "auto", answer) if fns else None
    if t is not None:
        prompt = tools.with_tools(prompt, t)
    params.update(tools.constraint(t, answer))
    g = Generation(await gw.client(who), gw.kernels, who.user)
    await g.start([prompt], params, 1, command=f"ollama {kind}")
    return g, u, stream, t


def _final(g: Generation, name: str) -> dict:
    end = g.ended or time.perf_counter()
    c = g.choices[0]
    first = c.first_at or end
    ns = 1_000_000_000
    return {"done": True, "done_reason": finish_reason(c), "total_duration": int((end - g.started) * ns),
            "load_duration": 0, "prompt_eval_count": g.prompt_tokens,
            "prompt_eval_duration": int((first - g.started) * ns), "eval_count": c.tokens,
            "eval_duration": int((end - first) * ns)}


def _frame(kind: str, name: str, text: str, entries: list | None = None, call=None) -> dict:
    extra = {"logprobs": logprobs.ollama(entries)} if entries else {}
    if kind == "chat":
        message = {"role": "assistant", "content": text}
        if call is not None:
            message["tool_calls"] = [{"function": {"name": call[0], "arguments": call[1]}}]
        return {"model": name, "created_at": now(), "message": message, "done": False, **extra}
    return {"model": name, "created_at": now(), "response": text, "done": False, **extra}


async def _answer(request: Request, kind: str):
    g, u, stream, t = await _run(request, kind)
    name = f"{u['model']}:latest"
    if g is None:          # an empty prompt loads the model in Ollama: it is always loaded here
        return JSONResponse({**_frame(kind, name, ""), "done": True, "done_reason": "load"})
    if stream:
        return Stream(_lines(kind, name, g, t), g, "application/x-ndjson")
    choices = await collect(request, g)
    c = choices[0]
    if c.reason == "error":
        raise ApiError(500, f"process {c.pid} failed: {c.message}")
    call = tools.parse(c.text, t)
    return JSONResponse({**_frame(kind, name, "" if call else c.text, c.logprobs, call), **_final(g, name)})


async def _lines(kind: str, name: str, g: Generation, t):
    """NDJSON frames; with tools, text that starts a call is held back and sent as tool_calls
    (or, if it does not turn out to be one, as content) in the last chunk."""
    cs, held = (tools.CallStream(t) if t is not None else None), ""
    try:
        async for ev in g.events():
            if ev.done:
                if ev.choice.reason == "error":
                    raise ApiError(500, f"process {ev.choice.pid} failed: {ev.choice.message}")
                continue
            text = ev.text
            if cs is not None:
                held += ev.text
                text = "".join(d.get("content", "") for d in cs.feed(ev.text))
                held = "" if cs.mode == "text" else held
            if text or ev.logprobs:
                yield ndjson(_frame(kind, name, text, ev.logprobs))
    except ApiError as e:
        yield ndjson(e.ollama())
        return
    call = tools.parse(held, t) if held else None
    yield ndjson({**_frame(kind, name, "" if call or not held else held, None, call), **_final(g, name)})


async def generate(request: Request):
    return await _answer(request, "generate")


async def chat(request: Request):
    return await _answer(request, "chat")
