"""kernel/cred.py at the socket level: the OS names ipc peers, CURVE keys name TCP peers, and
credential files that cannot be trusted are refused with a line naming them."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import threading

import pytest
import zmq
import zmq.auth

from llmos.kernel.cred import (Authenticator, CredError, Roles, ZAP_DOMAIN, load_authorized_keys,
                               load_secret_key, peer_address_cred)

from unixusers import ADMIN, ALICE, ensure_users, run_as


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _router(ctx, auth_keys=None, curve=None):
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    r.setsockopt(zmq.RCVTIMEO, 3000)
    if curve is not None:
        r.curve_publickey, r.curve_secretkey = curve
        r.curve_server = True
    return r


def _ask(endpoint, curve_client=None, server_key=None):
    """Connect a DEALER, send one frame, return what the kernel side saw (or None)."""
    c = zmq.Context()
    try:
        d = c.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        if curve_client is not None:
            d.curve_publickey, d.curve_secretkey = curve_client
            d.curve_serverkey = server_key
        d.connect(endpoint)
        d.send(b"hi")
    finally:
        pass
    return d, c


def test_peer_address_parsing():
    assert peer_address_cred("localhost:1000:100:4242") == (1000, 100, 4242)
    assert peer_address_cred("127.0.0.1") is None
    assert peer_address_cred("") is None


@pytest.fixture
def public_dir():
    """A socket directory other users can reach (pytest's tmp dirs are 0700 under root)."""
    d = tempfile.mkdtemp(prefix="llmos-cred-")
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _echo(r, seen, stop):
    """Answer each frame with b"ok" and record the User-Id libzmq attached to it."""
    r.setsockopt(zmq.RCVTIMEO, 100)
    while not stop.is_set():
        try:
            frame = r.recv(copy=False)
            r.recv()
        except zmq.Again:
            continue
        seen.append(frame.get("User-Id"))
        r.send_multipart([frame.bytes, b"ok"])


def _call(endpoint):
    """As a client: one frame there and back; the client's own pid."""
    c = zmq.Context()
    d = c.socket(zmq.DEALER)
    d.setsockopt(zmq.RCVTIMEO, 5000)
    d.connect(endpoint)
    d.send(b"hi")
    assert d.recv() == b"ok"
    c.destroy(linger=0)
    return os.getpid()


def test_ipc_identity_comes_from_the_os(ctx, public_dir):
    ensure_users()
    auth = Authenticator(ctx)
    auth.start()
    seen: list[str] = []
    r = _router(ctx)
    try:
        ep = f"ipc://{public_dir}/k.sock"
        r.bind(ep)
        os.chmod(f"{public_dir}/k.sock", 0o777)
        stop = threading.Event()
        t = threading.Thread(target=_echo, args=(r, seen, stop), daemon=True)
        t.start()
        try:
            child_pid = run_as(ALICE, _call, ep)
            run_as(ADMIN, _call, ep)
        finally:
            stop.set()
            t.join()
        roles = Roles(owner_uid=0)
        alice, admin = (roles.identity(u) for u in seen)
        assert alice.user == ALICE and alice.uid == pwd.getpwnam(ALICE).pw_uid
        assert alice.pid == child_pid and alice.via == "ipc" and not alice.admin
        assert admin.user == ADMIN and admin.admin                # a member of the admin group
        assert roles.identity("anonymous") is None                 # not a User-Id we issued
        assert roles.identity("ipc:x:y:z") is None
    finally:
        r.close(0)
        auth.stop()


def test_tcp_needs_a_known_curve_key(ctx, tmp_path):
    server = zmq.curve_keypair()
    good, wrong = zmq.curve_keypair(), zmq.curve_keypair()
    keys_file = tmp_path / "authorized_keys"
    keys_file.write_text(f"# users\n{good[0].decode()} carol admin\n")
    keys_file.chmod(0o600)
    keys, admins = load_authorized_keys(keys_file)
    auth = Authenticator(ctx, keys)
    auth.start()
    try:
        r = _router(ctx, curve=server)
        port = r.bind_to_random_port("tcp://127.0.0.1")
        ep = f"tcp://127.0.0.1:{port}"
        socks = [_ask(ep, good, server[0])]
        frame = r.recv(copy=False)
        assert r.recv() == b"hi"
        ident = Roles().identity(frame.get("User-Id"), admins)
        assert (ident.user, ident.via, ident.admin) == ("carol", "curve", True)
        socks += [_ask(ep, wrong, server[0]), _ask(ep)]            # a wrong key; no key at all
        r.setsockopt(zmq.RCVTIMEO, 1500)
        with pytest.raises(zmq.Again):
            r.recv()
        assert auth.denied == 1          # the wrong key; a NULL peer fails the CURVE handshake itself
        for d, c in socks:
            d.close(0)
            c.term()
    finally:
        auth.stop()


def test_credential_files_that_cannot_be_trusted(tmp_path):
    keys_file = tmp_path / "authorized_keys"
    keys_file.write_text(f"{zmq.curve_keypair()[0].decode()} dave\n")
    keys_file.chmod(0o666)
    with pytest.raises(CredError, match="writable by others"):
        load_authorized_keys(keys_file)
    keys_file.chmod(0o600)
    assert list(load_authorized_keys(keys_file)[0].values()) == ["dave"]
    keys_file.write_text("not-a-key dave\n")
    with pytest.raises(CredError, match=r"authorized_keys:1: expected"):
        load_authorized_keys(keys_file)
    with pytest.raises(CredError, match="cannot read"):
        load_authorized_keys(tmp_path / "missing")
    pub, sec = zmq.auth.create_certificates(str(tmp_path), "kernel")
    os.chmod(sec, 0o644)
    with pytest.raises(CredError, match="readable by others"):
        load_secret_key(tmp_path / "kernel.key_secret")
    os.chmod(sec, 0o600)
    assert load_secret_key(tmp_path / "kernel.key_secret")[0]
    with pytest.raises(CredError, match="holds no secret"):
        os.chmod(pub, 0o600)
        load_secret_key(tmp_path / "kernel.key")
