"""The gateway's Starlette application: state, identity, errors, and the route table.

Why Starlette and not FastAPI: the gateway's request models are OpenAI's and Ollama's, whose
errors must come back in *their* shapes (OpenAI's ``{"error": {message, type, param, code}}``
with status 400, Ollama's ``{"error": "..."}``), not FastAPI/pydantic's 422 validation bodies;
the fields are checked by hand where they are read (body.py) anyway, so FastAPI would only add
pydantic and a second validation layer to override. Starlette gives routing, streaming responses
with disconnect detection and static files; uvicorn (with httptools and uvloop) serves it.

Every route asks ``gw.who(request)`` first (except /health and the page itself), so identity is
checked in one place; an ApiError raised anywhere becomes the error shape of the route's family
(``/api/*``: Ollama's, everything else: OpenAI's).
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from llmos.kernel import abi
from llmos.kernel.abi import Sys

from .errors import ApiError
from .identity import Identity, Keys
from .kernels import Kernels

MAX_BODY = abi.MAX_FRAME_BYTES        # a bigger body could not reach the kernel in one frame
MAX_N = 16                            # answers per prompt (processes forked from one prefill)


class Gateway:
    """What every route needs: the keys, the kernel connections, the served model's facts."""

    def __init__(self, keys: Keys, kernels: Kernels, max_body: int = MAX_BODY):
        self.keys, self.kernels, self.max_body = keys, kernels, max_body
        self.started = time.time()
        self._uname: dict | None = None

    def who(self, request: Request) -> Identity:
        return self.keys.identify(request.headers.get("authorization"))

    async def client(self, who: Identity):
        return await self.kernels.get(who.user)

    async def uname(self, who: Identity) -> dict:
        """The kernel's uname (cached: the model does not change under a running kernel)."""
        if self._uname is None:
            k = await self.client(who)
            try:
                self._uname = await k.uname()
            except OSError as e:
                raise self.kernels.failed(who.user, e) from None
        return self._uname

    async def model(self, who: Identity, name) -> dict:
        """The uname of the kernel if `name` is the model it serves; 404 otherwise."""
        u = await self.uname(who)
        if name is not None and not isinstance(name, str):
            raise ApiError(400, "'model' must be a string", param="model")
        served = u.get("model", "")
        if name not in (served, f"{served}:latest", u.get("model_path")):
            raise ApiError(404, f"the model '{name}' does not exist; this kernel serves '{served}'",
                           param="model", code="model_not_found")
        return u

    async def embed(self, who: Identity, texts: list[str]) -> list[list[float]]:
        """Unit vectors of texts from the kernel's encoder model (syscall EMBED, in calls of at
        most abi.MAX_EMBED_TEXTS); 501 when this kernel has no such syscall."""
        no = getattr(Sys, "EMBED", None)
        if no is None:
            raise ApiError(501, "embeddings are not available: this llmos kernel has no embedding syscall")
        step = getattr(abi, "MAX_EMBED_TEXTS", 64)
        out = []
        for i in range(0, len(texts), step):
            out += await self.call(who, "syscall", no, texts[i:i + step])
        return out

    async def call(self, who: Identity, method: str, *args):
        """One syscall on who's connection; kernel errors become ApiErrors."""
        k = await self.client(who)
        try:
            return await getattr(k, method)(*args)
        except OSError as e:
            raise self.kernels.failed(who.user, e) from None


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    ollama = request.url.path.startswith("/api/")
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.ollama() if ollama else exc.openai(), status_code=exc.status, headers=headers)


async def not_found(request: Request, exc) -> JSONResponse:
    status = getattr(exc, "status_code", 404)
    msg = "not found" if status == 404 else getattr(exc, "detail", "error")
    return await api_error(request, ApiError(status, f"{request.method} {request.url.path}: {msg}"))


async def health(request: Request) -> JSONResponse:
    """200 when the kernel answers, else 503 (no key needed)."""
    gw: Gateway = request.app.state.gw
    await gw.call(gw.keys.local, "null")
    return JSONResponse({})


def build(keys: Keys, kernels: Kernels, max_body: int = MAX_BODY) -> Starlette:
    from . import dashboard, metrics, ollama, openai

    gw = Gateway(keys, kernels, max_body)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await kernels.close()

    routes = [Route("/health", health), *openai.routes(), *ollama.routes(), *metrics.routes(),
              *dashboard.routes(),
              Mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: api_error, 404: not_found, 405: not_found})
    app.state.gw = gw
    return app
