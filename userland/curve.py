"""CURVE for clients: the kernel's public key and this user's keypair (see kernel/cred.py).

A kernel that listens on TCP encrypts every connection, its local socket included. A client finds
the kernel's public key in $LLMOS_SERVER_KEY (z85) or, on the local socket, in the runtime dir
(kernel.key). Its own keypair is $LLMOS_HOME/curve/client.key_secret (`llmos keygen` makes it; the
kernel's admin adds the public key to the kernel's authorized_keys); without one it uses a fresh
keypair, which a local kernel accepts (the OS names local peers) and a TCP kernel refuses.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth

from ..kernel import abi


def home() -> Path:
    return Path(os.environ.get("LLMOS_HOME") or Path.home() / ".cache" / "llmos")


def client_key_path() -> Path:
    return home() / "curve" / "client.key_secret"


def server_key(endpoint: str) -> bytes | None:
    """The kernel's public key for this endpoint, or None when it does not use CURVE."""
    env = os.environ.get("LLMOS_SERVER_KEY")
    if env:
        return env.strip().encode()
    if endpoint.startswith("ipc://"):
        published = abi.runtime_dir() / "kernel.key"
        try:
            return published.read_bytes().strip() or None
        except OSError:
            return None
    return None


def apply(sock: zmq.Socket, endpoint: str) -> None:
    """Make sock a CURVE client when the kernel at endpoint uses CURVE (before connect)."""
    key = server_key(endpoint)
    if key is None:
        return
    try:
        public, secret = zmq.auth.load_certificate(str(client_key_path()))
    except (OSError, ValueError):
        public, secret = zmq.curve_keypair()
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = key, public, secret


def keygen(force: bool = False) -> Path:
    """Create this user's client keypair (the secret file mode 0600); its path."""
    path = client_key_path()
    if path.exists() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in (path, path.with_suffix("")):
        old.unlink(missing_ok=True)
    zmq.auth.create_certificates(str(path.parent), "client")
    os.chmod(path, 0o600)
    return path
