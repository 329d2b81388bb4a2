"""The dashboard: the page at / and its live feed, plus the admin actions it calls.

    GET  /                    static/index.html (plain JS + SVG, no CDN)
    GET  /dashboard/events    text/event-stream: one ``state`` event a second (ps, the KV block
                              map, the per-user counters); the page keeps the time series
    POST /dashboard/signal    {pid, signal: STOP|CONT|INT|TERM|KILL}
    POST /dashboard/nice      {pid, nice}

Actions run as the process's owner, through that user's kernel connection, and are allowed to an
admin key (or, without keys, the local user) and to a key acting on its own user's processes:
the kernel's ownership check (EPERM) then applies as for any client.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from llmos.kernel import abi
from llmos.kernel.abi import Sys

from .app import Gateway
from .body import read_json
from .errors import ApiError
from .identity import Identity

STATIC = Path(__file__).parent / "static"
TICK_S = 1.0


def routes() -> list[Route]:
    return [Route("/", page), Route("/dashboard/events", events),
            Route("/dashboard/signal", signal, methods=["POST"]),
            Route("/dashboard/nice", nice, methods=["POST"])]


async def page(request: Request) -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def state(gw: Gateway, who: Identity) -> dict:
    """One snapshot for the page: processes, memory and counters (three syscalls)."""
    procs = await gw.call(who, "ps")
    counters = await gw.call(who, "syscall", Sys.COUNTERS, True)
    u = await gw.uname(who)
    totals = {user: {k: v for k, v in row.items() if not isinstance(v, dict) or k == "finished"}
              | {h: {"sum": row[h]["sum"], "count": row[h]["count"]} for h in ("ttft", "itl", "e2e")}
              for user, row in counters["users"].items()}
    return {"model": u.get("model"), "device": u.get("device"), "you": who.user, "admin": who.admin,
            "procs": procs, "kv": counters["kv"], "blocks": counters["blocks"], "users": totals,
            "engine": counters["engine"], "prefix_cache": counters["prefix_cache"],
            "preemptions": counters["preemptions"]}


async def events(request: Request) -> StreamingResponse:
    gw: Gateway = request.app.state.gw
    who = gw.who(request)
    await state(gw, who)             # errors (no kernel) answer now, not inside the stream

    async def feed():
        while True:
            try:
                data = await state(gw, who)
                yield f"event: state\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
            except ApiError as e:
                yield f"event: failure\ndata: {json.dumps(e.openai())}\n\n"
            await asyncio.sleep(TICK_S)
    return StreamingResponse(feed(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _target(request: Request) -> tuple[Gateway, Identity, dict, int]:
    """(gateway, the identity to act as, the body, pid) after the permission check."""
    gw: Gateway = request.app.state.gw
    who = gw.who(request)
    b = await read_json(request, 4096)
    pid = b.get("pid", "integer", required=True, lo=1)
    owner = (await gw.call(who, "stat", pid))["owner"]
    if owner != who.user and not who.admin:
        raise ApiError(403, f"process {pid} belongs to {owner!r}; only an admin key may act on it")
    return gw, Identity(owner), b, pid


async def signal(request: Request) -> JSONResponse:
    gw, owner, b, pid = await _target(request)
    name = b.get("signal", "string", required=True, choices=tuple(abi.SIGNALS))
    await gw.call(owner, "kill", pid, abi.SIGNALS[name])
    return JSONResponse({"pid": pid, "signal": name})


async def nice(request: Request) -> JSONResponse:
    gw, owner, b, pid = await _target(request)
    value = b.get("nice", "integer", required=True, lo=abi.NICE_MIN, hi=abi.NICE_MAX)
    await gw.call(owner, "nice", pid, value)
    return JSONResponse({"pid": pid, "nice": value})
