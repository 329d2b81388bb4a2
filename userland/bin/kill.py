"""`llmos kill [-STOP|-CONT|-INT|-TERM|-KILL|-N|-s SIG] PID...` and `llmos kill -l`.

Sends a signal (default TERM) to each process, like kill(1). Exit status 1 if any failed.
"""

from __future__ import annotations

import sys

from llmos.kernel import abi
from llmos.userland import lib

USAGE = "usage: llmos kill [-STOP|-CONT|-INT|-TERM|-KILL|-s SIG] PID...   |   llmos kill -l"


def main(argv: list[str]) -> int:
    args, sig, pids = argv[1:], abi.SIGTERM, []
    try:
        while args and args[0].startswith("-") and args[0] != "--":
            opt = args.pop(0)
            if opt in ("-h", "--help"):
                print(USAGE)
                return 0
            if opt == "-l":
                print(" ".join(f"{n}={name[3:]}" for n, name in sorted(abi.SIGNAL_NAMES.items())))
                return 0
            sig = abi.parse_signal(args.pop(0) if opt == "-s" and args else opt)
        pids = [int(a) for a in args if a != "--"]
    except ValueError as e:
        print(f"llmos kill: {e}\n{USAGE}", file=sys.stderr)
        return 2
    if not pids:
        print(USAGE, file=sys.stderr)
        return 2
    status = 0
    try:
        with lib.Client(client="llmos-kill") as k:
            for pid in pids:
                try:
                    k.kill(pid, sig)
                except OSError as e:
                    print(f"llmos kill: ({pid}) - {e.strerror}", file=sys.stderr)
                    status = 1
    except OSError as e:
        print(f"llmos kill: {e.strerror or e}", file=sys.stderr)
        return 1
    return status
