"""kernel/abi.py: numbers, framing, limits, runtime dir and token file."""

from __future__ import annotations

import errno
import os
import stat

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from llmos.kernel import abi
from llmos.kernel.abi import ProtocolError, Sys


def test_abi_is_pure_python():
    import subprocess
    import sys
    code = "import sys, llmos.kernel.abi, llmos.userland.lib; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_syscall_numbers_are_frozen():
    # Released numbers never change; new calls are appended.
    assert [(s.name, s.value) for s in Sys][:19] == [
        ("NULL", 0), ("HELLO", 1), ("SPAWN", 2), ("READ", 3), ("WRITE", 4), ("WAIT", 5), ("KILL", 6),
        ("NICE", 7), ("FORK", 8), ("PS", 9), ("STAT", 10), ("MEMINFO", 11), ("UNAME", 12),
        ("TOKENIZE", 13), ("DETOKENIZE", 14), ("MODELS", 15), ("SHUTDOWN", 16), ("CLOSE", 17),
        ("COUNTERS", 18)]


def test_signals_keep_unix_numbers():
    assert (abi.SIGINT, abi.SIGKILL, abi.SIGTERM, abi.SIGCONT, abi.SIGSTOP) == (2, 9, 15, 18, 19)
    for text, n in [("INT", 2), ("sigkill", 9), ("-TERM", 15), ("-SIGSTOP", 19), ("18", 18), (9, 9)]:
        assert abi.parse_signal(text) == n
    for bad in ["HUP", "-1", "", "7", 7, "SIG"]:
        with pytest.raises(ValueError):
            abi.parse_signal(bad)


def test_request_round_trip():
    frame = abi.encode_request(7, Sys.SPAWN, "hi", {"max_tokens": 3}, None)
    assert abi.decode_request(frame) == (7, 2, ["hi", {"max_tokens": 3}, None])
    assert abi.decode_reply(abi.encode_reply(7, 0, [1, "x"])) == (7, 0, [1, "x"])
    assert abi.decode_reply(abi.encode_reply(None, errno.EPROTO, "bad")) == (None, errno.EPROTO, "bad")


@pytest.mark.parametrize("value, err, has_id", [
    (b"\xc1", errno.EPROTO, False),                         # never-used msgpack byte
    (msgpack.packb(5), errno.EPROTO, False),                 # not a list
    (msgpack.packb([1]), errno.EPROTO, False),               # too short
    (msgpack.packb(["1", 0]), errno.EPROTO, False),          # req_id not an int
    (msgpack.packb([-1, 0]), errno.EPROTO, False),           # negative req_id
    (msgpack.packb([2**64 - 1, 0]), errno.EPROTO, False),    # req_id too big
    (msgpack.packb([True, 0]), errno.EPROTO, False),         # bool is not an int here
    (msgpack.packb([1, "hello"]), errno.ENOSYS, True),       # no dispatch by name
    (msgpack.packb([1, 0] + [0] * (abi.MAX_ARGS + 1)), errno.E2BIG, True),
    (msgpack.packb([1, 0]) + b"\x00", errno.EPROTO, False),  # trailing bytes
    (msgpack.packb([1, 0, msgpack.ExtType(5, b"x")]), errno.EPROTO, False),
    (b"\x93\x01\x00\x81\x01\x02", errno.EPROTO, False),       # int map key (strict_map_key)
    (b"\x91" * 100_000, errno.EPROTO, False),                # nesting deeper than the unpacker allows
    (b"\xda\xff\xff", errno.EPROTO, False),                  # truncated str header
])
def test_bad_requests_get_an_errno(value, err, has_id):
    with pytest.raises(ProtocolError) as ei:
        abi.decode_request(value)
    assert ei.value.errno == err
    assert (ei.value.req_id is not None) == has_id
    assert ei.value.message


def test_oversize_frame_is_e2big_before_decoding():
    frame = abi.encode_request(1, Sys.SPAWN, "x" * abi.MAX_FRAME_BYTES)
    with pytest.raises(ProtocolError) as ei:
        abi.decode_request(frame)
    assert ei.value.errno == errno.E2BIG


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_never_raises_anything_but_protocol_error(data):
    try:
        req_id, sysno, args = abi.decode_request(data)
    except ProtocolError as e:
        assert e.errno in (errno.EPROTO, errno.ENOSYS, errno.E2BIG)
    else:
        assert type(req_id) is int and type(sysno) is int and isinstance(args, list)


values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
                      | st.text(max_size=20) | st.binary(max_size=20),
                      lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4),
                      max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(values)
def test_decoder_on_arbitrary_msgpack_values(v):
    try:
        abi.decode_request(msgpack.packb(v, use_bin_type=True))
    except ProtocolError as e:
        assert e.errno in (errno.EPROTO, errno.ENOSYS, errno.E2BIG)


def test_reply_decoder_rejects_malformed():
    for frame in [b"\xc1", msgpack.packb([1, 0]), msgpack.packb([1, "0", None]), msgpack.packb(["x", 0, 1])]:
        with pytest.raises(ProtocolError):
            abi.decode_reply(frame)


def test_errors_become_the_matching_oserror_subclass():
    assert isinstance(abi.error(errno.ESRCH, "x"), ProcessLookupError)
    assert isinstance(abi.error(errno.EPERM, "x"), PermissionError)
    assert isinstance(abi.error(errno.ETIMEDOUT, "x"), TimeoutError)
    e = abi.error(errno.EINVAL, "bad nice")
    assert e.errno == errno.EINVAL and e.strerror == "bad nice"


def test_runtime_dir_resolution(tmp_path):
    assert abi.runtime_dir({"LLMOS_RUNTIME_DIR": "/a/b", "XDG_RUNTIME_DIR": "/x"}) == abi.Path("/a/b")
    assert abi.runtime_dir({"XDG_RUNTIME_DIR": "/run/user/7"}) == abi.Path("/run/user/7/llmos")
    assert abi.runtime_dir({}).name == f"llmos-{os.getuid()}"


def test_runtime_dir_is_created_0700_and_tightened(tmp_path):
    rt = abi.ensure_runtime_dir(tmp_path / "rt")
    assert stat.S_IMODE(rt.stat().st_mode) == 0o700
    os.chmod(rt, 0o755)
    abi.ensure_runtime_dir(rt)
    assert stat.S_IMODE(rt.stat().st_mode) == 0o700
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        abi.ensure_runtime_dir(tmp_path / "file")


def test_token_file_is_0600_and_fresh(tmp_path):
    rt = abi.ensure_runtime_dir(tmp_path / "rt")
    t1 = abi.write_token(rt)
    assert stat.S_IMODE(abi.token_path(rt).stat().st_mode) == 0o600
    assert abi.read_token(rt, env={}) == t1 and len(t1) == 64
    t2 = abi.write_token(rt)
    assert t2 != t1 and abi.read_token(rt, env={}) == t2
    assert abi.read_token(rt, env={"LLMOS_TOKEN": "abc"}) == "abc"
    assert sorted(p.name for p in rt.iterdir()) == ["token"]     # no temp file left behind


def test_endpoints(tmp_path):
    assert abi.kernel_endpoint(tmp_path, env={}) == f"ipc://{tmp_path}/kernel.sock"
    assert abi.kernel_endpoint(tmp_path, env={"LLMOS_KERNEL": "tcp://h:1"}) == "tcp://h:1"
    with pytest.raises(ValueError, match="LLMOS_RUNTIME_DIR"):
        abi.ipc_endpoint(tmp_path / ("x" * 120))


def test_an_oversize_or_non_utf8_frame_keeps_its_request_id():
    big = abi.encode_request(77, Sys.SPAWN, "x" * abi.MAX_FRAME_BYTES)
    bad = b"\x93\x4e\x02\xa3ab\xe9"                     # [78, 2, "ab\xe9"]: latin-1 bytes in a str
    for frame, rid, err, words in ((big, 77, errno.E2BIG, "exceeds"), (bad, 78, errno.EPROTO, "UTF-8")):
        with pytest.raises(ProtocolError) as ei:
            abi.decode_request(frame)
        assert (ei.value.req_id, ei.value.errno) == (rid, err) and words in ei.value.message
    assert abi.request_id(b"\xc1" * 40) is None and abi.request_id(msgpack.packb([-1, 0])) is None


def test_text_that_is_not_utf8_is_named_as_such_by_the_client_side_encoder():
    latin1 = "caf\xe9 au lait".encode("latin-1").decode("utf-8", "surrogateescape")
    with pytest.raises(ValueError, match=r"not UTF-8 \(byte 0xe9 at position 3\)"):
        abi.encode_request(1, Sys.SPAWN, latin1)
