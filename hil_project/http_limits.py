"""Request headers over Twisted's limits get a 431 that says so.

Daphne serves HTTP with Twisted, which drops the connection on a header line over 16 kB (a long
Authorization header) and answers an empty 400 when the request line and headers together pass 16 kB:
the client cannot tell what went wrong. Both answer 431 with a JSON detail instead, as every API error is
JSON. `install()` runs when the ASGI app is loaded, which Daphne does before it serves."""

import json

from twisted.web.http import HTTPChannel

_BODY = json.dumps({"detail": f"request headers too large: at most {HTTPChannel.totalHeadersSize} bytes "
                              "for the request line and headers together"}).encode()
_ANSWER = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BODY), _BODY))


def _refuse(channel: HTTPChannel, *args) -> None:
    channel.transport.write(_ANSWER)
    channel.loseConnection()


def install() -> None:
    line_received = HTTPChannel.lineReceived
    if getattr(line_received, "refuses_large_headers", False):
        return

    def checked_line_received(channel: HTTPChannel, line: bytes) -> None:
        if channel._receivedHeaderSize + len(line) > channel.totalHeadersSize:
            return _refuse(channel)
        return line_received(channel, line)

    checked_line_received.refuses_large_headers = True
    HTTPChannel.lineReceived = checked_line_received
    HTTPChannel.lineLengthExceeded = _refuse
