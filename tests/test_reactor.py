"""homeserver/reactor.py: the lean epoll reactor still isolates a failing protocol (its
connection is dropped and the error logged) and serves the others, without wrapping each
ready socket in a logging context."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import socket, sys
    from homeserver.reactor import LeanEPollReactor, install
    install()
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.python import log
    assert isinstance(reactor, LeanEPollReactor)
    # Count the per-socket logging contexts that the lean loop exists to skip.
    wrapped = []
    original = log.callWithLogger
    log.callWithLogger = lambda *a, **k: (wrapped.append(1), original(*a, **k))[1]
    errors = []
    log.addObserver(lambda e: e.get("isError") and errors.append(e))

    class Echo(Protocol):
        def dataReceived(self, data):
            if data == b"boom":
                raise RuntimeError("protocol bug")
            self.transport.write(data)

    port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)

    def check():
        bad = socket.create_connection(address, timeout=5)
        good = socket.create_connection(address, timeout=5)
        bad.sendall(b"boom")
        closed = bad.recv(10) == b""
        good.sendall(b"ping")
        echoed = good.recv(10)
        print("closed", closed, "echoed", echoed.decode(), "logged", len(errors), "wrapped", len(wrapped))
        reactor.stop()

    reactor.callInThread(check)
    reactor.run()
    """
)


def test_a_failing_protocol_is_dropped_and_logged_while_others_are_served() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["closed", "True", "echoed", "ping", "logged", "1", "wrapped", "0"]
