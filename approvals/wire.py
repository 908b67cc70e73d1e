"""One message to many of this Daphne's WebSockets: how a console room sends a desk event to every tab.

Sent through Channels, a message goes down the consumer, the session middleware, Daphne and autobahn,
which frames it for each socket, and Twisted writes it on the reactor's next turn, adding each socket to
epoll and taking it out again. A desk event goes to every console of a tenant at once, hundreds of tabs:
the room frames it once, and each tab's frame is written straight to its socket, or queued behind what
Twisted still holds for that socket, so frames stay in order: some 20 µs a socket instead of 60, most of it
the kernel's send (bench/README.md, realtime.py)."""

from functools import partial
from typing import Callable

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from twisted.internet.tcp import Connection


def frame(text: str) -> bytes:
    """A text message as a server frames it (unmasked, uncompressed), once for every socket."""
    return PreparedMessage(text.encode(), isBinary=False, applyMask=False, doNotCompress=True).payloadHybi


def writer(send) -> Callable[[bytes], None] | None:
    """What writes a framed message to the socket behind a consumer's `send`; None where that is not one
    of Daphne's sockets over plain TCP (a test's communicator, TLS): the consumer sends as usual then."""
    send = getattr(getattr(send, "__self__", None), "real_send", send)  # past Channels' session middleware
    protocol = send.args[0] if isinstance(send, partial) and send.args else None
    if not isinstance(protocol, WebSocketServerProtocol) or not isinstance(protocol.transport, Connection):
        return None
    return partial(_write, protocol)


def _write(protocol: WebSocketServerProtocol, data: bytes) -> None:
    if protocol.state != protocol.STATE_OPEN:
        return  # closing or closed: nothing goes after the close frame (as autobahn's own send)
    transport = protocol.transport
    if transport.TLS or transport.dataBuffer or transport._tempDataBuffer or protocol.send_queue:
        transport.write(data)  # behind what is waiting
        return
    try:
        sent = transport.socket.send(data)
    except OSError:  # full, or the peer is gone: Twisted's own write finds out and closes the connection
        sent = 0
    if sent < len(data):
        transport.write(data[sent:])
