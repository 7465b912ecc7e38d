"""Running the app under uvicorn with bounds on what slow or hostile clients can hold: a connection must finish
a request's headers within --header_timeout_s (uvicorn has no such timeout of its own: a client dripping
header bytes would keep its connection forever), and at most --max_connections connections are served at
once (beyond that uvicorn answers 503)."""
from __future__ import annotations

import asyncio

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol


def guarded_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers take over header_timeout_s (from
    the connection's start, or from the end of its previous response)."""

    class HeaderTimeout(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._waiting_for = self.cycle
            self._header_timer = self.loop.call_later(header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self.cycle is self._waiting_for and not self.transport.is_closing():
                self.transport.close()  # no new request has begun: its headers never came

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not self._waiting_for:  # a request's headers were read
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start a pipelined request at once: then no timer
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeout


def run(app: ASGIApp, host: str, port: int, header_timeout_s: float, max_connections: int) -> None:
    uvicorn.run(app, host=host, port=port, http=guarded_protocol(header_timeout_s),
                limit_concurrency=max_connections, timeout_keep_alive=5)
