"""`llmos gateway`: OpenAI- and Ollama-compatible HTTP, /metrics and the dashboard, in front of
the running kernel (userland/gateway/). It speaks only syscalls to the kernel.

    llmos gateway [--listen HOST:PORT] [--keys FILE] [--max-body BYTES]
    llmos serve --http HOST:PORT ...      (starts it beside the kernel: see beside_kernel)

Without a keys file ($LLMOS_HOME/gateway.keys, mode 0600) it serves the local user and binds
loopback only. Exit status 1 with one line when it cannot start (no kernel, bad keys file, a
non-loopback address without keys, the port taken).
"""

from __future__ import annotations

import argparse
import sys


def parse_listen(text: str, flag: str = "--listen") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{flag} wants HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos gateway", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:8000", metavar="HOST:PORT")
    ap.add_argument("--keys", default=None, metavar="FILE",
                    help="API keys file: 'KEY USER [admin]' lines, mode 0600 (default $LLMOS_HOME/gateway.keys)")
    ap.add_argument("--max-body", type=int, default=None, metavar="BYTES", help="largest request body")
    ap.add_argument("--log-level", default="warning", choices=("debug", "info", "warning"))
    ap.add_argument("--wait-kernel", type=float, default=0.0, metavar="S",
                    help="wait up to S seconds for the kernel to answer (when started beside it)")
    ap.add_argument("--exit-with-kernel", action="store_true", help="stop when the kernel process exits")
    args = ap.parse_args(argv[1:])

    import asyncio
    import uvicorn

    from ..gateway import app as gateway_app
    from ..gateway.identity import Keys, check_bind
    from ..gateway.kernels import Kernels
    from ..lib import Client

    try:
        host, port = parse_listen(args.listen)
        keys = Keys.load(args.keys, required=args.keys is not None)
        check_bind(host, keys)
        info = _kernel(args.wait_kernel)                   # fail now, with the hint, if no kernel runs
    except (ValueError, OSError) as e:
        print(f"llmos gateway: {e}", file=sys.stderr)
        return 1
    app = gateway_app.build(keys, Kernels(), args.max_body or gateway_app.MAX_BODY)
    who = f"{len(set(i.user for i in keys.keys.values()))} users by key" if keys.keys else "the local user only"
    print(f"llmos gateway on http://{host}:{port}/ (model {info.get('model')}; {who})", flush=True)
    config = uvicorn.Config(app, host=host, port=port, loop="uvloop", http="httptools", lifespan="on",
                            log_level=args.log_level, access_log=args.log_level == "debug",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)

    async def run():
        if args.exit_with_kernel:
            asyncio.get_running_loop().create_task(_watch(info["kernel_pid"], server))
        await server.serve()
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0 if server.started else 1


def _kernel(wait_s: float) -> dict:
    """The kernel's uname, retrying for wait_s seconds while no kernel answers yet."""
    import time

    from ..lib import Client
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with Client(client="llmos-gateway", connect_timeout=2.0) as k:
                return k.uname()
        except ConnectionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


async def _watch(kernel_pid: int, server) -> None:
    """Stop the server once the kernel process is gone (--exit-with-kernel)."""
    import asyncio
    import os
    while True:
        await asyncio.sleep(1.0)
        try:
            os.kill(kernel_pid, 0)
        except ProcessLookupError:
            server.should_exit = True
            return
        except PermissionError:
            pass


def beside_kernel(listen: str, log_path) -> "subprocess.Popen":
    """Start a gateway in the background for a kernel that is starting (`llmos serve --http`): it
    waits for the kernel to answer, serves, and exits with it. Output goes to log_path."""
    import os
    import subprocess
    parse_listen(listen, "--http")                        # ValueError now, not in the background
    with open(log_path, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "llmos.userland.bin.gateway", "--listen", listen,
                                 "--wait-kernel", "300", "--exit-with-kernel"], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, start_new_session=True, env=dict(os.environ))


if __name__ == "__main__":
    sys.exit(main(["gateway", *sys.argv[1:]]))
