"""llmos limits: per-user and per-group limits and usage; `llmos limits set SCOPE KEY=N ...` (admins).

SCOPE is default, user:NAME or group:NAME; KEY is max_procs, max_kv_blocks, tokens_per_min,
max_context or nice_min; KEY=- removes a limit.
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import lib


def _changes(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"llmos limits: expected KEY=N, got {pair!r}")
        try:
            out[key] = None if value == "-" else int(value)
        except ValueError:
            raise SystemExit(f"llmos limits: {key} wants an integer, got {value!r}") from None
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos limits", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print the raw answer as JSON")
    sub = ap.add_subparsers(dest="cmd")
    st = sub.add_parser("set", help="set a scope's limits (admins)")
    st.add_argument("scope")
    st.add_argument("pairs", nargs="+", metavar="KEY=N")
    args = ap.parse_args(argv)
    try:
        with lib.Client() as k:
            out = k.limits(args.scope, _changes(args.pairs)) if args.cmd == "set" else k.limits()
    except OSError as e:
        print(f"llmos limits: {e.strerror or e}", file=sys.stderr)
        return 1
    if args.json or args.cmd == "set":
        print(json.dumps(out, indent=None if args.cmd == "set" else 2))
        return 0
    print(f"{'SCOPE':<24} LIMITS")
    for scope, rule in out["rules"].items():
        print(f"{scope:<24} " + (" ".join(f"{k}={v}" for k, v in sorted(rule.items())) or "-"))
    if out["usage"]:
        print(f"\n{'USER':<20} {'PROCS':>6} {'KV BLOCKS':>10} {'TOKENS/MIN':>11}  THROTTLED  SCOPES")
        for user, u in out["usage"].items():
            print(f"{user:<20} {u['max_procs']:>6} {u['max_kv_blocks']:>10} {u['tokens_per_min']:>11}  "
                  f"{'yes' if u['throttled'] else 'no':<9}  {','.join(u['scopes'])}")
    return 0
