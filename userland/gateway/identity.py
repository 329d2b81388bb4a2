"""Who is calling: ``Authorization: Bearer KEY`` -> an llmos user, from the keys file.

The keys file (default ``$LLMOS_HOME/gateway.keys``, ``$LLMOS_HOME`` defaulting to
``~/.cache/llmos``) has one key per line, ``KEY USER [admin]``; ``#`` starts a comment. Like
ssh with a private key, the gateway refuses a file that others can read or write (its mode must
be 0600 or stricter) or that another user owns. A key names the llmos user its requests run as
(so the kernel's ownership checks, limits and fair share apply per key); ``admin`` may also
signal and renice other users' processes from the dashboard.

Without a keys file the gateway serves only the local user and binds loopback only
(``check_bind`` refuses anything else), so nobody on the network reaches the kernel through it.
"""

from __future__ import annotations

import getpass
import hmac
import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import ApiError


@dataclass(frozen=True)
class Identity:
    user: str
    admin: bool = False


def default_path() -> Path:
    return Path(os.environ.get("LLMOS_HOME") or Path.home() / ".cache" / "llmos") / "gateway.keys"


class Keys:
    """The loaded keys file, or none (local user only)."""

    def __init__(self, keys: dict[str, Identity] | None = None):
        self.keys = keys
        self.local = Identity(getpass.getuser(), admin=True)

    @classmethod
    def load(cls, path: Path | None, *, required: bool = False) -> "Keys":
        """Read the keys file; none at the default path means 'no keys'. ValueError names a bad
        line, PermissionError a file mode or owner that lets others in."""
        path = Path(path) if path is not None else default_path()
        if not path.exists():
            if required:
                raise FileNotFoundError(f"keys file {path} does not exist")
            return cls(None)
        st = path.stat()
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise PermissionError(f"keys file {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                                  f"others must not read it: chmod 600 {path}")
        if st.st_uid != os.getuid():
            raise PermissionError(f"keys file {path} belongs to uid {st.st_uid}, not {os.getuid()}")
        keys: dict[str, Identity] = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) not in (2, 3) or (len(words) == 3 and words[2] != "admin"):
                raise ValueError(f"{path}:{n}: expected 'KEY USER [admin]'")
            if len(words[0]) < 16:
                raise ValueError(f"{path}:{n}: a key must be at least 16 characters")
            keys[words[0]] = Identity(words[1], admin=len(words) == 3)
        if not keys:
            raise ValueError(f"keys file {path} holds no key")
        return cls(keys)

    def identify(self, authorization: str | None) -> Identity:
        """The caller's identity; 401 for a missing or unknown key when keys are configured."""
        if self.keys is None:
            return self.local
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")
        key = key.strip()
        for known, who in self.keys.items():        # constant time per comparison
            if hmac.compare_digest(known.encode(), key.encode()):
                return who
        raise ApiError(401, "invalid API key", code="invalid_api_key")


def check_bind(host: str, keys: Keys) -> None:
    """Without keys only loopback may be bound (ValueError otherwise)."""
    if keys.keys is not None:
        return
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"without a keys file the gateway binds loopback only, not {host!r} "
                         f"(create {default_path()} with 'KEY USER' lines, mode 0600)")
