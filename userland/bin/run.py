"""`llmos run [--max-tokens N] [--temperature T] [--seed S] [--nice N] [--system S] "prompt"`

Spawns the prompt as a chat process in the running kernel and streams its answer to stdout.
Ctrl-C sends SIGINT to the process (the answer stops where it is); a second Ctrl-C sends SIGKILL.
Exit status: 0 when the answer ended normally, 130 after SIGINT, 1 on an error.
"""

from __future__ import annotations

import argparse
import sys

from llmos.kernel import abi
from llmos.userland import lib


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos run", description="run a prompt as a process and stream its answer")
    ap.add_argument("prompt", nargs="*", help="the prompt (default: read stdin)")
    ap.add_argument("--max-tokens", type=int, help="most tokens to generate (default 256)")
    ap.add_argument("--temperature", type=float, help="0 = greedy (default)")
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--nice", type=int, default=0, help="-20 (favoured) .. 19")
    ap.add_argument("--system", help="a system message before the prompt")
    ap.add_argument("--raw", action="store_true", help="send the prompt as raw text, no chat template")
    args = ap.parse_args(argv[1:])
    prompt = " ".join(args.prompt) if args.prompt else (sys.stdin.read() if not sys.stdin.isatty() else "")
    if not prompt.strip():
        ap.error("no prompt given")
    params = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", args.temperature),
                                ("top_p", args.top_p), ("top_k", args.top_k), ("seed", args.seed)) if v is not None}
    if args.raw:
        request = prompt
    else:
        request = ([{"role": "system", "content": args.system}] if args.system else []) \
            + [{"role": "user", "content": prompt}]
    try:
        with lib.Client(client="llmos-run") as k:
            pid = k.spawn(request, params, nice=args.nice, command="run " + " ".join(prompt.split())[:40])
            status = _stream(k, pid)
    except OSError as e:
        print(f"\nllmos run: {e.strerror or e}", file=sys.stderr)
        return 1
    if status["reason"] == "error":
        print(f"llmos run: process {pid} failed: {status['message']}", file=sys.stderr)
        return 1
    return 128 + status["signal"] if status["reason"] == "signal" and status["signal"] else 0


def _stream(k: lib.Client, pid: int) -> dict:
    """Print pid's output until it exits; Ctrl-C → SIGINT, twice → SIGKILL. Returns the exit status."""
    interrupts, last = 0, "\n"
    while True:
        try:
            for text in k.stream(pid):
                sys.stdout.write(text)
                sys.stdout.flush()
                last = text[-1]
            status = k.wait(pid)
            break
        except KeyboardInterrupt:
            interrupts += 1
            k.kill(pid, abi.SIGINT if interrupts == 1 else abi.SIGKILL)
    if last != "\n":
        sys.stdout.write("\n")
    return status
