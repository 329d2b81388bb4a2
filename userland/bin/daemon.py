"""`llmos serve [--daemon] ...` and `llmos stop`: start and stop the kernel daemon.

A userland program: the kernel (kernel/main.py) only boots and serves in the foreground. Without
--daemon, `serve` becomes that kernel (exec). With --daemon it starts the same command detached
(new session, log appended to <runtime dir>/kernel.log) and returns once the kernel answers
hello; if the kernel exits during boot, it prints only this boot's part of the log (the log is
never rotated). On a terminal the boot's log lines are shown as they come, so a first model
download shows its progress. `stop` asks the kernel to shut down (its processes get SIGTERM,
parked calls are answered), falls back to SIGTERM when it does not answer, and waits for it to exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmos.kernel import abi

KERNEL = [sys.executable, "-m", "llmos.kernel.main", "serve"]


def main(argv: list[str]) -> int:
    """argv[0] is 'serve' or 'stop' (the CLI dispatches both names here)."""
    if argv[:1] == ["stop"]:
        return stop(argv[1:])
    return serve(argv[1:])


def serve(rest: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos serve", add_help=False)
    ap.add_argument("--daemon", action="store_true")
    ap.add_argument("--ready-timeout", type=float, default=300.0)
    ap.add_argument("--socket")
    ap.add_argument("--http", metavar="HOST:PORT")     # also start `llmos gateway` beside the kernel
    ours, kernel_args = ap.parse_known_args(rest)
    kernel_args += ["--socket", ours.socket] if ours.socket else []
    gateway = None
    if ours.http:
        from .gateway import beside_kernel
        try:
            gateway = beside_kernel(ours.http, abi.ensure_runtime_dir() / "gateway.log")
        except ValueError as e:
            print(f"llmos serve: {e}", file=sys.stderr)
            return 2
    if not ours.daemon:
        if any(a in ("-h", "--help") for a in kernel_args):
            print(HELP, end="")
        sys.stdout.flush()
        os.execv(sys.executable, KERNEL + kernel_args)
    status = start(kernel_args, ours.ready_timeout, ours.socket)
    if status and gateway is not None:
        gateway.terminate()                 # no kernel came up for it
    return status


HELP = """llmos serve --daemon [--ready-timeout S] [kernel options]: start the kernel in the background and
return once it answers (log: <runtime dir>/kernel.log). --http HOST:PORT also starts the gateway
(OpenAI/Ollama HTTP, /metrics, dashboard; log: <runtime dir>/gateway.log), which exits with the
kernel. The kernel's options follow.

"""


def kernel_pid(rt: Path) -> int | None:
    """The pid in the runtime dir's pid file if that process is alive."""
    try:
        pid = int(abi.pid_path(rt).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    import psutil
    try:
        return pid if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE else None
    except psutil.NoSuchProcess:
        return None


def start(kernel_args: list[str], timeout: float = 300.0, socket: str | None = None,
          show_log: bool | None = None, ready_to=None) -> int:
    """Start a kernel detached; 0 once it answers (said on ready_to, default stdout), 1 (with this
    boot's log, on stderr) if it does not."""
    from llmos.userland.lib import Client
    rt = abi.ensure_runtime_dir()
    running = kernel_pid(rt)
    if running:
        print(f"llmos serve: a kernel is already running (pid {running}); stop it with: llmos stop",
              file=sys.stderr)
        return 1
    show_log = sys.stderr.isatty() if show_log is None else show_log
    endpoint = abi.ipc_endpoint(Path(socket)) if socket else None
    logf = abi.log_path(rt)
    env = dict(os.environ, LLMOS_RUNTIME_DIR=str(rt))
    with open(logf, "ab") as out:
        boot_starts = out.tell()                    # this boot's part of the log begins here
        child = subprocess.Popen(KERNEL + kernel_args, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=out, start_new_session=True)
    shown = boot_starts
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if show_log:
            shown = _echo(logf, shown)
        if child.poll() is not None:
            tail = this_boot(logf, boot_starts)[-20:]
            print(f"llmos serve: the kernel exited with status {child.returncode} during boot; "
                  f"log {logf}:\n  " + "\n  ".join(tail), file=sys.stderr)
            return 1
        if abi.pid_path(rt).exists():
            try:
                with Client(endpoint, connect_timeout=1.0, client="llmos-serve") as c:
                    info = c.uname()
                print(f"llmos: kernel running (pid {child.pid}), model {info.get('model')}, "
                      f"socket {c.endpoint}, log {logf}", file=ready_to or sys.stdout)
                return 0
            except OSError:
                pass
        time.sleep(0.1)
    child.terminate()
    print(f"llmos serve: the kernel did not answer within {timeout:g} s (log: {logf})", file=sys.stderr)
    return 1


def this_boot(logf: Path, offset: int) -> list[str]:
    """The log's lines written since offset (this boot's)."""
    with open(logf, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").splitlines()


def _echo(logf: Path, offset: int) -> int:
    """Copy complete log lines after offset to stderr; returns the new offset."""
    with open(logf, "rb") as f:
        f.seek(offset)
        data = f.read()
    done = data.rfind(b"\n") + 1
    if done:
        sys.stderr.write("".join(f"  {line}\n" for line in data[:done].decode(errors="replace").splitlines()))
        sys.stderr.flush()
    return offset + done


def stop(argv: list[str]) -> int:
    """`llmos stop [--timeout S]`: shut the kernel down and wait for it to exit."""
    ap = argparse.ArgumentParser(prog="llmos stop", description="stop the running llmos kernel")
    ap.add_argument("--timeout", type=float, default=30.0, metavar="S")
    args = ap.parse_args(argv)
    from llmos.userland.lib import Client
    pid = kernel_pid(abi.runtime_dir())
    try:
        with Client(connect_timeout=2.0, client="llmos-stop") as c:
            pid = c.info.get("kernel_pid", pid)
            c.shutdown()
    except OSError as e:
        if pid is None:
            print(f"llmos stop: {e.strerror or e}", file=sys.stderr)
            return 1
        print(f"llmos stop: the kernel (pid {pid}) does not answer ({e.strerror or e}); sending SIGTERM",
              file=sys.stderr)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    import psutil
    deadline = time.monotonic() + args.timeout
    while pid is not None and time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        if pid is not None:
            print(f"llmos stop: the kernel (pid {pid}) is still running after {args.timeout:g} s",
                  file=sys.stderr)
            return 1
        return 0
    print(f"llmos: kernel (pid {pid}) stopped")
    return 0
