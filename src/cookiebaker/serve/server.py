"""The HTTP server under the app: uvicorn with its h11 protocol, and the two things uvicorn does not bound: how long
a client may take to send a request's headers (slowloris) and how the refusals of malformed requests look. A
request whose headers are not complete within ``header_timeout`` seconds gets a 408 and the connection closes; a
malformed request gets a JSON 400 instead of plain text; both are counted in /metrics (route ``(connection)``).
How long a body may take is the app's to bound (``routes.body_of``), as it reads the body."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

#: The route label of refusals made before any route sees the request.
CONNECTION = "(connection)"


def _response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers and JSON refusals."""

    header_timeout: float = 10.0
    counted: Callable[[int], None] = staticmethod(lambda status: None)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._header_deadline = None

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:  # the headers are in
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # a next request on this connection has the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        log.info("a client took over %g s to send a request's headers: 408, connection closed", self.header_timeout)
        self.transport.write(_response(408, "Request Timeout",
                                       f"the request's headers did not arrive within {self.header_timeout:g} s"))
        self.transport.close()
        self.counted(408)

    def send_400_response(self, msg: str) -> None:
        log.info("a malformed HTTP request: 400, connection closed")
        try:
            self.conn.send(h11.Response(status_code=400, headers=[], reason=b"Bad Request"))
        except h11.LocalProtocolError:  # a response had begun: nothing more can be said on this connection
            self.transport.close()
            return
        self.transport.write(_response(400, "Bad Request", "malformed HTTP request (its framing or headers)"))
        self.transport.close()
        self.counted(400)


def server_config(app, host: str, port: int, header_timeout: float = 10.0, **options) -> uvicorn.Config:  # noqa: ANN001, ANN003
    """uvicorn's config for the app with the guarded protocol; refusals are counted in the app's /metrics."""
    service = getattr(getattr(app, "state", None), "service", None)

    def counted(status: int) -> None:
        if service is not None:
            service.requests_total.labels(CONNECTION, str(status)).inc()

    protocol = type("Guarded", (GuardedH11,), {"header_timeout": header_timeout, "counted": staticmethod(counted)})
    return uvicorn.Config(app, host=host, port=port, http=protocol, **options)


class Server(uvicorn.Server):
    """uvicorn's server that says where it serves once it does (after the models loaded and the port is bound)."""

    announce: Callable[[], None] = staticmethod(lambda: None)

    async def startup(self, sockets=None) -> None:  # noqa: ANN001
        await super().startup(sockets)
        if self.started:
            self.announce()
