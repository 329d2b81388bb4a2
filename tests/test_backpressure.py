"""Replies are never dropped under backpressure (kernel/outbox.py, kernel/server.py's send path).

A live peer that sends requests without reading the replies fills its pipe; the kernel keeps the
refused replies in the peer's outbox and sends them, in order, once the peer reads again. Past the
outbox's limit the peer's session is ended (an audit line) and the output its waiting read replies
carried goes back to the process, unread: every character a process generates stays readable.

The server's SNDHWM and both ends' socket buffers are made small so that a few hundred replies fill
the path; the process is detached so that an ended session does not take it down.
"""

from __future__ import annotations

import errno
import logging
import time

import pytest
import zmq

from llmos.kernel import abi
from llmos.kernel.abi import Sys
from llmos.kernel.waitq import WaitQueues
from llmos.userland import lib
from kernelkit import make_engine
from test_server import ServerThread, raw_dealer, wait_until

PROMPT, TOKENS = "Once upon a time", 300


@pytest.fixture(scope="module")
def srv(model):
    waits = WaitQueues()
    engine = make_engine(model, 128, block_size=4, on_wake=waits.wake)
    s = ServerThread(engine, model, waits, lease_s=30)
    s.server.sock.setsockopt(zmq.SNDHWM, 20)       # before the loop runs: for the pipes to come
    s.server.sock.setsockopt(zmq.SNDBUF, 4096)
    with s:
        yield s


@pytest.fixture(scope="module")
def want(srv):
    with lib.Client(user="alice", client="twin") as k:
        return "".join(k.stream(k.spawn(PROMPT, max_tokens=TOKENS, ignore_eos=True)))


class Slow:
    """A DEALER that says hello and then sends without reading (its receive path is tiny)."""

    def __init__(self, srv):
        self.s = raw_dealer()
        self.s.setsockopt(zmq.RCVHWM, 5)
        self.s.setsockopt(zmq.RCVBUF, 4096)
        self.s.connect(srv.endpoint)
        self.rid, self.reads = 1, set()
        name = f"slow{id(self)}"
        self.s.send(abi.encode_request(self.rid, Sys.HELLO, srv.token, "alice", name))
        assert self.s.poll(10_000) and abi.decode_reply(self.s.recv())[1] == 0
        self.ident = srv.call(lambda: next(s.ident for s in srv.server.sessions.values() if s.client == name))

    def send(self, no, *args) -> int:
        self.rid += 1
        self.s.send(abi.encode_request(self.rid, no, *args))
        if no == Sys.READ:
            self.reads.add(self.rid)
        return self.rid

    def call(self, no, *args):
        rid = self.send(no, *args)
        while True:
            got, err, value = self.next()
            if got == rid:
                return err, value

    def next(self, timeout=10.0):
        assert self.s.poll(int(timeout * 1000)), "no reply"
        return abi.decode_reply(self.s.recv())

    def drain(self) -> tuple[str, list[int]]:
        """Every reply waiting for this peer: (the text its read replies carried, their errnos)."""
        text, errs = "", []
        while self.s.poll(500):
            rid, err, value = abi.decode_reply(self.s.recv())
            if rid in self.reads:
                errs.append(err)
                if not err:
                    text += value["text"]
        return text, errs

    def close(self):
        self.s.close(0)


def fill(srv, slow) -> None:
    """Send cheap requests until the kernel holds some of this peer's replies in its outbox."""
    for _ in range(200):
        for _ in range(50):
            slow.send(Sys.NULL)
        try:
            wait_until(lambda: srv.call(srv.server.outbox.waiting, slow.ident) > 0, timeout=0.5)
            return
        except AssertionError:
            continue
    raise AssertionError("the peer's pipe never filled")


def test_a_peer_that_does_not_read_loses_no_output(srv, want):
    slow = Slow(srv)
    try:
        fill(srv, slow)                       # replies that fill the peer's pipe
        with lib.Client(user="alice", client="spawner") as k:     # generating while the reads come
            pid = k.spawn(PROMPT, max_tokens=TOKENS, ignore_eos=True, detached=True)
        for _ in range(300):                  # reads that consume output, sent while it generates
            slow.send(Sys.READ, pid, 5.0)
            time.sleep(0.002)
        wait_until(lambda: srv.call(lambda: srv.kernel.engine.procs.get(pid).alive) is False, timeout=60,
                   what="the process to exit")
        held = srv.call(srv.server.outbox.waiting, slow.ident)
        got, errs = slow.drain()
        assert set(errs) <= {0}
        while True:                           # the rest, read the ordinary way
            err, r = slow.call(Sys.READ, pid, 5.0)
            assert err == 0
            got += r["text"]
            if r["eof"]:
                break
        assert got == want
        assert held > 0                       # replies did wait for the peer
        assert srv.call(lambda: slow.ident in srv.server.sessions)      # still a session: nothing dropped
        assert slow.call(Sys.WAIT, pid, 5.0)[0] == 0
    finally:
        slow.close()


def test_a_peer_past_its_outbox_limit_is_ended_and_its_output_read_again(srv, want, caplog):
    slow = Slow(srv)
    limit = srv.call(lambda: srv.server.outbox.max_frames)
    try:
        fill(srv, slow)
        with lib.Client(user="alice", client="spawner") as k:     # generating while the reads come
            pid = k.spawn(PROMPT, max_tokens=TOKENS, ignore_eos=True, detached=True)
        waiting = srv.call(srv.server.outbox.waiting, slow.ident)
        with caplog.at_level(logging.WARNING, logger="llmos.kernel"):
            srv.call(setattr, srv.server.outbox, "max_frames", waiting + 10)
            for _ in range(60):               # reads carrying text pile up past the limit
                slow.send(Sys.READ, pid, 5.0)
                time.sleep(0.002)
            wait_until(lambda: not srv.call(lambda: slow.ident in srv.server.sessions), timeout=30,
                       what="the session to be ended")
        assert any("replies unread; session ended" in r.getMessage() for r in caplog.records)
        srv.call(setattr, srv.server.outbox, "max_frames", limit)
        got, errs = slow.drain()              # what was already in its pipe still arrives
        assert errno.ECONNRESET in errs       # later requests are told why
        assert srv.call(lambda: srv.server.outbox.waiting(slow.ident)) == 0
        with lib.Client(user="alice", client="rescuer") as k:
            got += "".join(k.stream(pid))     # the put-back text, then the rest
            assert k.wait(pid)["reason"] == "length"
        assert got == want
    finally:
        slow.close()


def test_output_put_back_newest_first_reads_in_order():
    """Three read replies taken back (newest first) come out as they were: text, turn ends, entries."""
    from llmos.kernel.proc import OutputChannel
    ch = OutputChannel()
    for t in ("ab", "cd"):
        ch.put(t)
    ch.end_turn()
    ch.put("ef")
    taken = [ch.take()[:2]]                   # ("abcd", True)
    ch.put("gh")
    taken.append(ch.take()[:2])               # ("efgh", False)
    ch.put("ij")
    ch.end_turn()
    ch.close()
    for text, ends in reversed(taken):
        ch.unread(text, ends)
    assert ch.take() == ("abcd", True, False)
    assert ch.take() == ("efghij", True, True)
