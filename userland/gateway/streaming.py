"""Answers that outlive a client: streamed bodies (SSE, NDJSON) and collected ones, both ending the
request's processes the moment the client goes away.

Streaming: Starlette's StreamingResponse (ASGI http spec 2.3, as uvicorn speaks it) listens for
http.disconnect beside the body and cancels the body's iteration; ``Stream`` then closes the body
generator and aborts the Generation (SIGKILL + reap, shielded from that cancellation).
Collected: ``collect()`` races the Generation against the client's http.disconnect.
"""

from __future__ import annotations

import asyncio
import json

import anyio
from starlette.responses import StreamingResponse

from .generation import Generation


class ClientGone(Exception):
    """The client disconnected before the answer was complete (its processes were killed)."""


class Stream(StreamingResponse):
    def __init__(self, body, generation: Generation, media_type: str):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(body, media_type=media_type, headers=headers)
        self.generation = generation

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
                await self.generation.abort()       # a no-op when every process was reaped


def sse(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"


def ndjson(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"


async def collect(request, g: Generation):
    """Run g to the end (its choices with their whole texts) unless the client leaves first."""
    async def gone():
        while (await request.receive())["type"] != "http.disconnect":
            pass
    work, watch = asyncio.ensure_future(g.run()), asyncio.ensure_future(gone())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
            await g.abort()
    if work.cancelled():
        raise ClientGone()
    try:
        return work.result()
    except BaseException:
        await g.abort()
        raise
