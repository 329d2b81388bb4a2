"""Who is calling, as the operating system or a CURVE key says it — never as the client says it.

Local socket (ipc): libzmq reads SO_PEERCRED of every accepted connection and hands it to the
ZAP handler as the peer address ``<host>:<uid>:<gid>:<pid>`` (stream_engine, ZMQ_HAVE_SO_PEERCRED).
The handler below (pyzmq's Authenticator, served by a thread of its own on the kernel's context) answers with a
User-Id ``ipc:<uid>:<gid>:<pid>``, which libzmq attaches to every message of that connection;
the server reads it back (``frame.get("User-Id")``) and turns it into an Identity. Nothing the
client sends can change it: the hello `user` argument is ignored.

TCP: CURVE only (encrypted, the client proves its public key). An authorized-keys file maps keys
to users (``<z85 public key> <user> [admin]`` per line, lines starting with ``#`` are comments). A peer with no key, a
wrong key or an unknown key is refused in the handshake, before it can send a single frame.

Roles: root, the kernel's owner (the uid it runs as) and members of the admin group (default
``llmos-admin``) are admins; everyone else may touch only their own processes.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth.base import Authenticator as ZapAuthenticator

log = logging.getLogger("llmos.kernel")

ZAP_DOMAIN = "llmos"
ADMIN_GROUP = "llmos-admin"


class CredError(Exception):
    """A credentials file that cannot be trusted or read: one line naming the file and the problem."""


@dataclass(frozen=True)
class Identity:
    user: str              # the name processes are owned by (a Unix user name, or a CURVE key's user)
    uid: int | None        # None for CURVE peers (no local account)
    pid: int | None        # the peer process (ipc only)
    admin: bool
    via: str               # "ipc" | "curve"


class Roles:
    """Who is an admin: root, the kernel's owner, members of the admin group, admin CURVE keys."""

    def __init__(self, owner_uid: int | None = None, admin_group: str = ADMIN_GROUP):
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self.admin_group = admin_group

    def identity(self, user_id: str, curve_admins: frozenset[str] = frozenset()) -> Identity | None:
        """The Identity for a User-Id set by the Authenticator, or None if it is not one of ours."""
        kind, _, rest = user_id.partition(":")
        if kind == "ipc":
            try:
                uid, gid, pid = (int(x) for x in rest.split(":"))
            except ValueError:
                return None
            name = user_name(uid)
            return Identity(name, uid, pid, self._is_admin_uid(uid, name, gid), "ipc")
        if kind == "curve" and rest:
            return Identity(rest, None, None, rest in curve_admins, "curve")
        return None

    def _is_admin_uid(self, uid: int, name: str, gid: int) -> bool:
        if uid in (0, self.owner_uid):
            return True
        try:
            g = grp.getgrnam(self.admin_group)
        except KeyError:
            return False
        return name in g.gr_mem or gid == g.gr_gid


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def peer_address_cred(address: str) -> tuple[int, int, int] | None:
    """(uid, gid, pid) from libzmq's ipc peer address ``host:uid:gid:pid``; None for TCP peers."""
    parts = address.rsplit(":", 3)
    if len(parts) != 4:
        return None
    try:
        return int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        return None


def check_private(path: Path, what: str) -> None:
    """A file that grants access must belong to us or root and be writable by nobody else."""
    try:
        st = path.stat()
    except OSError as e:
        raise CredError(f"{path}: cannot read the {what}: {e.strerror}") from None
    if st.st_uid not in (0, os.getuid()):
        raise CredError(f"{path}: the {what} belongs to uid {st.st_uid}, not to the kernel's user")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CredError(f"{path}: the {what} is writable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                        f"chmod go-w it")


def load_authorized_keys(path: Path) -> tuple[dict[bytes, str], frozenset[str]]:
    """{public key (z85 bytes): user}, admin users. CredError names the file, line and problem."""
    check_private(path, "authorized-keys file")
    keys: dict[bytes, str] = {}
    admins: set[str] = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):        # z85 keys may hold '#': whole-line comments only
            continue
        fields = line.split()
        if len(fields) not in (2, 3) or len(fields[0]) != 40 or (len(fields) == 3 and fields[2] != "admin"):
            raise CredError(f"{path}:{n}: expected '<40-char z85 public key> <user> [admin]'")
        try:
            zmq.utils.z85.decode(fields[0])
        except Exception:
            raise CredError(f"{path}:{n}: not a z85 key") from None
        keys[fields[0].encode()] = fields[1]
        if len(fields) == 3:
            admins.add(fields[1])
    return keys, frozenset(admins)


def load_secret_key(path: Path) -> tuple[bytes, bytes]:
    """The kernel's CURVE keypair from a zmq.auth certificate file (mode 0600 enforced)."""
    check_private(path, "CURVE secret key")
    if path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        raise CredError(f"{path}: the CURVE secret key is readable by others; chmod 600 it")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except Exception as e:
        raise CredError(f"{path}: not a CURVE certificate: {e}") from None
    if secret is None:
        raise CredError(f"{path}: holds no secret key")
    return public, secret


class Authenticator(ZapAuthenticator):
    """The ZAP handler: ipc peers get their SO_PEERCRED as User-Id; TCP peers must prove a CURVE
    key listed in the authorized keys. Runs in its own thread; never blocks the kernel's loop.

    The thread waits with zmq_poll (level-triggered), not pyzmq's ThreadAuthenticator, whose
    asyncio poller over a plain socket's edge-triggered fd could miss a request: that handshake
    and every later one then hung, and the kernel never heard from new clients (a stress test of
    client connections hit it within a few hundred)."""

    POLL_MS = 100            # how often the thread looks at its stop flag

    def __init__(self, context: zmq.Context, keys: dict[bytes, str] | None = None):
        super().__init__(context)
        self.keys = dict(keys or {})
        self.denied = 0          # handshakes refused (for logs and tests)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        super().start()          # binds the ZAP socket; only the thread below touches it from now
        self.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)
        self._thread = threading.Thread(target=self._serve, name="llmos-zap", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        loop, poller = asyncio.new_event_loop(), zmq.Poller()
        poller.register(self.zap_socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if poller.poll(self.POLL_MS):
                    loop.run_until_complete(self.handle_zap_message(self.zap_socket.recv_multipart()))
        finally:
            loop.close()

    def stop(self) -> None:
        """Stop the thread, then close the ZAP socket (idempotent)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        super().stop()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def callback(self, domain: str, key: bytes) -> bool:       # the CURVE credentials provider
        ok = key in self.keys
        if not ok:
            self.denied += 1
            log.warning("audit: CURVE key %s refused (not in authorized keys)", key.decode()[:12])
        return ok

    def curve_user_id(self, client_public_key: bytes) -> str:
        return "curve:" + self.keys[zmq.utils.z85.encode(client_public_key)]

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) < 6:
            await super().handle_zap_message(msg)
            return
        cred = peer_address_cred(msg[3].decode("utf-8", "replace"))
        if cred is not None:            # a local peer: the OS vouches for it, whatever the mechanism
            self._send_zap_reply(msg[1], b"200", b"OK", "ipc:%d:%d:%d" % cred)
        elif msg[5] == b"NULL":         # NULL over TCP: no identity at all
            self.denied += 1
            log.warning("audit: unauthenticated TCP peer %s refused (CURVE required)",
                        msg[3][:64].decode("utf-8", "replace"))
            self._send_zap_reply(msg[1], b"400", b"CURVE required")
        else:
            await super().handle_zap_message(msg)


def new_kernel_keys(directory: Path) -> Path:
    """Create the kernel's CURVE certificate (kernel.key public, kernel.key_secret mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    public, secret = zmq.auth.create_certificates(str(directory), "kernel")
    os.chmod(secret, 0o600)
    return Path(secret)
