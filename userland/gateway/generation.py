"""One request's processes: start them, merge their output streams, finish or kill them.

A request asks for ``n`` answers to each of its prompts; each answer is one kernel process, and
its index is ``prompt_index * n + j`` (OpenAI's choice index). With n > 1 the prompt is prefilled
once: the first process is spawned with its prompt held open (stdin), the gateway waits until the
kernel has prefilled it (state SLEEPING, polled with stat), forks it n - 1 times (the children
share its KV copy-on-write) and closes every copy's stdin, which starts each one's own answer.
(Usage then counts the open prompt's tokens plus, for chat, the template's closing text that
close() appends, as the first child reports having prefilled it.)

Contract: every process a Generation started is reaped (wait) before the request ends, normally
or not. ``abort()`` (a client that went away, an error) sends SIGKILL and reaps at once, shielded
from the cancellation that triggered it, so a disconnect leaves no process and no KV block.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import anyio

from llmos.kernel import abi

from .errors import ApiError

FINISH = {"eos": "stop", "stop": "stop", "length": "length", "signal": "abort", "error": "error"}


@dataclass
class Choice:
    index: int
    pid: int
    text: str = ""                  # everything read so far (when the caller collects)
    logprobs: list | None = None    # the kernel's logprob entries so far (when collected and asked)
    reason: str | None = None       # the kernel's exit reason once it ended
    message: str = ""               # what went wrong, for reason "error"
    tokens: int = 0                 # output tokens
    first_at: float | None = None   # perf_counter of the first text
    counts_prompt: bool = False     # its prompt's tokens go into usage (one choice per prompt)
    counts_tail: bool = False       # n > 1 on chat: the template's closing text, prefilled by each copy


@dataclass
class Event:
    choice: Choice
    text: str                       # new text ("" when the choice just ended)
    done: bool
    logprobs: list | None = None    # the kernel's entries for this text (spawned with logprobs)


class Generation:
    def __init__(self, client, kernels, user: str):
        self.k, self.kernels, self.user = client, kernels, user
        self.choices: list[Choice] = []
        self.prompt_tokens = 0
        self.started = time.perf_counter()
        self.ended: float | None = None
        self._pids: list[int] = []              # every process started, for abort()
        self._reaped: set[int] = set()
        self._tasks: list[asyncio.Task] = []

    async def start(self, prompts: list, params: dict, n: int = 1, command: str = "http") -> None:
        """Spawn n processes per prompt (text, chat messages or token ids). Kernel errors become
        ApiErrors; whatever was already started is killed then."""
        try:
            for i, prompt in enumerate(prompts):
                pids = await self._spawn(prompt, params, n, command)
                opened = n > 1 and isinstance(prompt, list) and isinstance(prompt[0], dict)
                self.choices += [Choice(i * n + j, pid, counts_prompt=j == 0, counts_tail=opened and j == 1)
                                 for j, pid in enumerate(pids)]
        except OSError as e:
            await self.abort()
            raise self.kernels.failed(self.user, e) from None
        except BaseException:
            await self.abort()
            raise

    async def _spawn(self, prompt, params: dict, n: int, command: str) -> list[int]:
        if n == 1:
            pid = await self.k.spawn(prompt, params, command=command)
            self._mine(pid)
            return [pid]
        parent = await self.k.spawn(prompt, params, command=command, stdin=True)
        self._mine(parent)
        await self._prefilled(parent)
        pids = [parent]
        for _ in range(n - 1):
            pids.append(await self.k.fork(parent))
            self._mine(pids[-1])
        for pid in pids:
            await self.k.close_stdin(pid)
        return pids

    def _mine(self, pid: int) -> None:
        self._pids.append(pid)

    async def _prefilled(self, pid: int) -> None:
        """Wait until the open prompt of pid is in the KV (the kernel puts it to sleep then)."""
        delay = 0.002
        while (await self.k.stat(pid))["state"] not in ("SLEEPING", "ZOMBIE"):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def events(self, collect: bool = False):
        """Async-iterate Events from every choice until all have ended (each choice's end is one
        Event with done=True, after its reason and token count are known)."""
        queue: asyncio.Queue = asyncio.Queue()
        self._tasks = [asyncio.ensure_future(self._pump(c, queue, collect)) for c in self.choices]
        left = len(self.choices)
        while left:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            left -= item.done
            yield item
        self.ended = time.perf_counter()

    async def _pump(self, c: Choice, queue: asyncio.Queue, collect: bool) -> None:
        try:
            while True:
                r = await self.k.read(c.pid)
                entries = r.get("logprobs")
                if r["text"] or entries:
                    if c.first_at is None:
                        c.first_at = time.perf_counter()
                    if collect:
                        c.text += r["text"]
                        if entries:
                            c.logprobs = c.logprobs or []
                            c.logprobs.extend(entries)
                    queue.put_nowait(Event(c, r["text"], False, entries))
                if r["eof"]:
                    break
            if c.counts_prompt or c.counts_tail:
                st = await self.k.stat(c.pid)
                self.prompt_tokens += st["prompt_tokens"] if c.counts_prompt else st["stats"]["prefilled"]
            status = await self.k.wait(c.pid)
            self._reaped.add(c.pid)
            c.reason, c.message, c.tokens = status["reason"], status.get("message") or "", status["tokens"]
            queue.put_nowait(Event(c, "", True))
        except OSError as e:
            queue.put_nowait(self.kernels.failed(self.user, e))
        except asyncio.CancelledError:
            raise
        except Exception as e:          # a bug here must still end the request, not hang it
            queue.put_nowait(ApiError(500, f"gateway error: {type(e).__name__}: {e}"))

    async def run(self) -> list[Choice]:
        """Collect every choice's whole text (non-streaming answers)."""
        async for _ in self.events(collect=True):
            pass
        return self.choices

    async def abort(self) -> None:
        """Kill and reap every process not yet reaped; safe to call more than once."""
        with anyio.CancelScope(shield=True):
            for t in self._tasks:
                t.cancel()
            left = [pid for pid in self._pids if pid not in self._reaped]
            for pid in left:
                try:
                    await self.k.kill(pid, abi.SIGKILL)
                except OSError:
                    pass
            for pid in left:
                try:
                    await self.k.wait(pid, 10.0)
                except OSError:
                    pass
                self._reaped.add(pid)

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def finish_reason(c: Choice) -> str:
    return FINISH.get(c.reason or "", "stop")
