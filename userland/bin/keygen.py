"""llmos keygen: make this user's CURVE keypair for TCP kernels and print the line to authorize it."""

from __future__ import annotations

import argparse
import getpass

import zmq.auth

from .. import curve


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llmos keygen", description=__doc__)
    ap.add_argument("--force", action="store_true", help="replace an existing keypair")
    ap.add_argument("--user", default=getpass.getuser(), help="the user name to print (default: you)")
    args = ap.parse_args(argv)
    path = curve.keygen(force=args.force)
    public, _ = zmq.auth.load_certificate(str(path))
    print(f"# your keypair: {path}; on the kernel's machine add this line to its authorized_keys:")
    print(f"{public.decode()} {args.user}")
    return 0
