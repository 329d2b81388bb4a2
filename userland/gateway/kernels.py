"""One kernel connection per llmos user: hello binds a connection to one user, so requests made
for different keys go over different AsyncClients (made on first use, kept for the gateway's
life). A connection the kernel dropped is forgotten, so the next request connects again."""

from __future__ import annotations

import asyncio

from llmos.userland.lib import AsyncClient

from .errors import KERNEL_GONE, ApiError


class Kernels:
    def __init__(self, endpoint: str | None = None, token: str | None = None):
        self.endpoint, self.token = endpoint, token
        self._clients: dict[str, AsyncClient] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, user: str) -> AsyncClient:
        """The connection for user (503 when no kernel answers)."""
        c = self._clients.get(user)
        if c is not None:
            return c
        async with self._locks.setdefault(user, asyncio.Lock()):
            c = self._clients.get(user)
            if c is None:
                try:
                    c = await AsyncClient.connect(self.endpoint, token=self.token, user=user,
                                                  client="llmos-gateway")
                except OSError as e:
                    raise ApiError(503, f"the llmos kernel is not reachable: {e}") from None
                self._clients[user] = c
            return c

    def failed(self, user: str, e: OSError) -> ApiError:
        """An error from user's connection as an ApiError; a lost kernel drops the connection."""
        if e.errno in KERNEL_GONE or type(e).__name__ == "KernelNotAnswering":
            c = self._clients.pop(user, None)
            if c is not None:
                asyncio.ensure_future(c.close())
        return ApiError.from_os(e)

    async def close(self) -> None:
        for c in self._clients.values():
            await c.close()
        self._clients.clear()
