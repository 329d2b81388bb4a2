"""The `llmos` command: one table from subcommand to the module that runs it.

`llmos` alone (or with a script path, or -c 'line') opens the shell. Every subcommand module exposes
`main(argv: list[str]) -> int` and owns its own argument parsing; this file only dispatches.
"""

from __future__ import annotations

import importlib
import signal
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name      module                          one-line help
    "pull":    ("llmos.userland.bin.pull",     "fetch a model into the cache (no name: list the catalog)"),
    "models":  ("llmos.userland.bin.models",   "the resident models (memory) and the cached ones"),
    "load":    ("llmos.userland.bin.load",     "load a model into the kernel now"),
    "unload":  ("llmos.userland.bin.unload",   "unload a model from the kernel (frees its memory)"),
    "bench":   ("llmos.benchmarks.cli",        "benchmarks: forward, serve, syscall, checkpoint, boot, matmul, "
                                               "quality"),
    "serve":   ("llmos.userland.bin.daemon",   "run the kernel daemon (--daemon to background it)"),
    "stop":    ("llmos.userland.bin.daemon",   "stop the running kernel"),
    "run":     ("llmos.userland.bin.run",      "run a prompt as a process and stream its answer"),
    "ps":      ("llmos.userland.bin.ps",       "list processes"),
    "kill":    ("llmos.userland.bin.kill",     "send a signal to a process"),
    "index":   ("llmos.userland.bin.index",    "the retrieval index: add, ls, rm, search"),
    "ask":     ("llmos.userland.bin.ask",      "answer a question from the index, citing file:line"),
    "stat":    ("llmos.userland.bin.stat",     "one process in detail"),
    "free":    ("llmos.userland.bin.free",     "KV blocks, swap, host and GPU memory"),
    "uname":   ("llmos.userland.bin.uname",    "the kernel: version, model, device"),
    "gateway": ("llmos.userland.bin.gateway",  "OpenAI/Ollama HTTP, /metrics and the dashboard"),
    "limits":  ("llmos.userland.bin.limits",   "per-user/group limits and usage; set them (admins)"),
    "keygen":  ("llmos.userland.bin.keygen",   "make your CURVE keypair for kernels on TCP"),
    "checkpoint": ("llmos.userland.bin.checkpoint", "save a process's state to a file (it keeps running)"),
    "hibernate": ("llmos.userland.bin.hibernate", "stop, checkpoint and free processes"),
    "restore": ("llmos.userland.bin.restore",  "bring checkpointed processes back; -l lists them"),
    "agent":   ("llmos.userland.bin.agent",    "answer a question with tools (calculator, files, search)"),
    "summarize": ("llmos.userland.bin.summarize", "summarise a file (map-reduce over forked processes)"),
    "translate": ("llmos.userland.bin.translate", "translate text (a forked process per paragraph)"),
    "sh":      ("llmos.shell.sh",              "the interactive shell (also: llmos with no command)"),
}


def usage() -> str:
    lines = ["usage: llmos [COMMAND] [ARGS...]   (no command: the interactive shell)", ""]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        name, rest = "sh", argv          # `llmos`, `llmos -c '...'`, `llmos script.llsh`
    else:
        name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main([name, *rest]) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:     # the reader of stdout left (`llmos run ... | head`): end as SIGPIPE would
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
