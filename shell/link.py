"""The shell's link to the kernel: connections, and starting a kernel when none is running.

The main thread keeps one connection (made on first use, so `help` or a syntax error never needs
a kernel); every reader thread makes its own (zmq sockets are not thread-safe). All connections
hello as the same user, so a process spawned on one can be read, waited for or signalled on
another. When no kernel answers, the link starts one with `llmos serve --daemon` (on --model /
$LLMOS_MODEL if given, else the kernel's default model), says so on stderr, and connects again.
"""

from __future__ import annotations

import errno
import sys

from llmos.shell.runner import warn
from llmos.userland import lib


class KernelLink:
    def __init__(self, model: str | None = None, autostart: bool = True):
        self.model, self.autostart = model, autostart
        self._client: lib.Client | None = None

    def connect(self) -> lib.Client:
        """A new connection (one per thread)."""
        return lib.Client(client="llmos-sh")

    @property
    def connected(self) -> lib.Client | None:
        """The main connection if it exists, without connecting."""
        return self._client

    @property
    def client(self) -> lib.Client:
        """The main thread's connection; starts a kernel first if none is running."""
        if self._client is None:
            try:
                self._client = self.connect()
            except ConnectionRefusedError:
                if not self.autostart:
                    raise
                self.start_kernel()
                self._client = self.connect()
        return self._client

    def try_connect(self) -> lib.Client | None:
        """The main connection, or None when no kernel answers (never starts one)."""
        if self._client is None:
            try:
                self._client = self.connect()
            except OSError:
                return None
        return self._client

    def drop(self) -> None:
        """Forget the main connection (the kernel went away); the next use reconnects."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def start_kernel(self) -> None:
        """`llmos serve --daemon` (userland/bin/daemon.py), its boot log shown on a terminal (a first
        model download shows its progress); ConnectionRefusedError when it fails."""
        from llmos.userland.bin import daemon
        what = self.model or "the default model"
        warn(f"llmos: no kernel is running; starting one in the background on {what}")
        sys.stdout.flush()
        if daemon.start(["--model", self.model] if self.model else [], ready_to=sys.stderr) != 0:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "could not start a kernel (see above)")

    def own_processes(self) -> list[dict]:
        """This user's processes (for completion); [] when the kernel cannot be asked."""
        try:
            me = self.client.info.get("user")
            return [p for p in self.client.ps() if p["owner"] == me]
        except OSError:
            return []
