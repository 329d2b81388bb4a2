"""Ollama's API: /api/generate, /api/chat (NDJSON streams whose last object has done, done_reason
and the durations in nanoseconds), /api/tags, /api/ps, /api/show, /api/version, /api/embed.

Options map onto the kernel's sampling: num_predict (-1/-2 or absent: the rest of the context),
temperature (default 0.8), top_k (40), top_p (0.9), seed, stop; others (num_ctx, num_thread...)
describe Ollama's runner and are ignored, as Ollama ignores unknown ones. ``format``, ``tools``,
``images`` and ``context`` need kernel features it does not have: 501 with a reason. /api/embed
goes to the kernel's encoder model (syscall EMBED) where the kernel has one, else 501.
Model names: the served model, with or without the ``:latest`` tag.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .app import Gateway
from .body import Body, read_json
from .errors import ApiError
from .generation import Generation, finish_reason
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
                         "capabilities": ["completion"],
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
    for name in ("format", "tools", "images", "context", "suffix"):
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
    return p


def _messages(b: Body) -> list[dict]:
    out = []
    for i, m in enumerate(b.get("messages", "array", required=True)):
        mb = Body(m, f"messages[{i}].")
        if m.get("images") or m.get("tool_calls"):
            raise ApiError(501, f"messages[{i}]: images and tool calls are not supported by this llmos kernel")
        out.append({"role": mb.get("role", "string", required=True,
                                   choices=("system", "user", "assistant", "tool")),
                    "content": mb.get("content", "string", "")})
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
            return None, u, stream
    else:
        text = b.get("prompt", "string", "")
        if not text:
            return None, u, stream
        system = b.get("system", "string")
        if b.get("raw", "boolean", False):
            prompt = text
        else:
            prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    params = sampling(b, u)
    g = Generation(await gw.client(who), gw.kernels, who.user)
    await g.start([prompt], params, 1, command=f"ollama {kind}")
    return g, u, stream


def _final(g: Generation, name: str) -> dict:
    end = g.ended or time.perf_counter()
    c = g.choices[0]
    first = c.first_at or end
    ns = 1_000_000_000
    return {"done": True, "done_reason": finish_reason(c), "total_duration": int((end - g.started) * ns),
            "load_duration": 0, "prompt_eval_count": g.prompt_tokens,
            "prompt_eval_duration": int((first - g.started) * ns), "eval_count": c.tokens,
            "eval_duration": int((end - first) * ns)}


def _frame(kind: str, name: str, text: str) -> dict:
    if kind == "chat":
        return {"model": name, "created_at": now(), "message": {"role": "assistant", "content": text}, "done": False}
    return {"model": name, "created_at": now(), "response": text, "done": False}


async def _answer(request: Request, kind: str):
    g, u, stream = await _run(request, kind)
    name = f"{u['model']}:latest"
    if g is None:          # an empty prompt loads the model in Ollama: it is always loaded here
        return JSONResponse({**_frame(kind, name, ""), "done": True, "done_reason": "load"})
    if stream:
        return Stream(_lines(kind, name, g), g, "application/x-ndjson")
    choices = await collect(request, g)
    if choices[0].reason == "error":
        raise ApiError(500, f"process {choices[0].pid} failed: {choices[0].message}")
    return JSONResponse({**_frame(kind, name, choices[0].text), **_final(g, name)})


async def _lines(kind: str, name: str, g: Generation):
    try:
        async for ev in g.events():
            if ev.done:
                if ev.choice.reason == "error":
                    raise ApiError(500, f"process {ev.choice.pid} failed: {ev.choice.message}")
                continue
            yield ndjson(_frame(kind, name, ev.text))
    except ApiError as e:
        yield ndjson(e.ollama())
        return
    yield ndjson({**_frame(kind, name, ""), **_final(g, name)})


async def generate(request: Request):
    return await _answer(request, "generate")


async def chat(request: Request):
    return await _answer(request, "chat")
