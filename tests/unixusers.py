"""Real Unix users for permission tests, and a way to run a function as one of them.

The tests run as root in CI: users are made with `useradd` (once, kept: creating them is
idempotent) and a function runs as a user in a forked child that drops to that uid/gid — the
child keeps the interpreter already loaded, since the venv's python may live under a home the
test user cannot enter. Without root, `need_root()` skips with the reason.
"""

from __future__ import annotations

import grp
import os
import pickle
import pwd
import subprocess
import traceback

import pytest

ALICE, BOB, ADMIN = "llmos-alice", "llmos-bob", "llmos-root2"   # ADMIN joins the admin group
ADMIN_GROUP = "llmos-admin"


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("permission tests need root to create Unix users (CI runs as root)")


def ensure_users() -> None:
    """Create the test users and the admin group if they are missing."""
    need_root()
    try:
        grp.getgrnam(ADMIN_GROUP)
    except KeyError:
        subprocess.run(["groupadd", "-f", ADMIN_GROUP], check=True)
    for name in (ALICE, BOB, ADMIN):
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    if ADMIN not in grp.getgrnam(ADMIN_GROUP).gr_mem:
        subprocess.run(["usermod", "-a", "-G", ADMIN_GROUP, ADMIN], check=True)


def run_as(user: str, fn, *args):
    """fn(*args) in a child process running as `user`; its return value (or its exception,
    re-raised here with the child's traceback)."""
    pw = pwd.getpwnam(user)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the child: drop privileges, run, report
        os.close(r)
        try:
            os.setgroups(os.getgrouplist(user, pw.pw_gid))
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            out = ("ok", fn(*args))
        except BaseException as e:                 # noqa: BLE001 - everything goes back to the parent
            out = ("err", (e, traceback.format_exc()))
        try:
            data = pickle.dumps(out)
        except Exception as e:
            data = pickle.dumps(("err", (RuntimeError(repr(e)), traceback.format_exc())))
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "err":
        exc, tb = value
        if isinstance(exc, OSError):               # errno replies keep their type for the test
            raise exc
        raise AssertionError(f"as {user}: {exc!r}\n{tb}")
    return value
