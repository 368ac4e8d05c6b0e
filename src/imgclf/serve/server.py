"""uvicorn as imgclf serves with it: the service's connection limits, in one place for imgclf serve and the tests."""

from __future__ import annotations

import asyncio
import json
from functools import partial

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from imgclf.serve.app import ServeConfig

HEADER_BYTES = 64 * 1024  # a request line and headers larger than this get 431 (nginx allows 32 KiB)


class _Protocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a header read timeout and size cap (uvicorn has neither: a client could hold a
    connection by never finishing its headers, or fill memory with them), and requests beyond the connection cap
    handed to the app to answer (a JSON 503, counted in /metrics) instead of uvicorn's plain-text one."""

    def __init__(self, *args, header_timeout: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.waiting: asyncio.TimerHandle | None = None
        self.header_bytes: int | None = None  # of the request whose headers are being received; None: not inside any

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # a chunk after which a request's headers are still incomplete counts whole (exact unless a pipelining client
        # sent the end of the previous request in the same chunk)
        if self.header_bytes is not None and not self.transport.is_closing():
            self.header_bytes += len(data)
            if self.header_bytes > HEADER_BYTES:
                body = json.dumps({"error": f"the request headers are larger than {HEADER_BYTES // 1024} KiB; "
                                            "send smaller ones."}).encode()
                self.transport.write(STATUS_LINE[431] + b"content-type: application/json\r\nconnection: close\r\n"
                                     + b"content-length: %d\r\n\r\n" % len(body) + body)
                self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.header_bytes = 0

    def on_headers_complete(self) -> None:
        self.waiting.cancel()
        self.header_bytes = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle.response_complete:  # no pipelined request under way: the next one's headers are awaited
            self._wait_for_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self.waiting.cancel()
        super().connection_lost(exc)

    def _wait_for_headers(self) -> None:
        if self.waiting is not None:
            self.waiting.cancel()
        self.waiting = self.loop.call_later(self.header_timeout, self.transport.close)

    def _start_asgi_task(self, cycle, app) -> None:
        if app is service_unavailable:  # uvicorn's answer beyond limit_concurrency
            cycle.scope["state"]["over_capacity"] = True
            app = self.app
        super()._start_asgi_task(cycle, app)


def server_config(app: FastAPI | str, config: ServeConfig, host: str, port: int, **options) -> uvicorn.Config:
    """uvicorn's settings for an app of create_app (or the import string of a factory of one): its connection
    limits from `config`; `options` are uvicorn's own (log_level, timeout_graceful_shutdown, workers, ...)."""
    # uvicorn counts the connection asking among those open: +1 lets max_connections connections be answered
    return uvicorn.Config(app, host=host, port=port, http=partial(_Protocol, header_timeout=config.header_timeout_s),
                          limit_concurrency=config.max_connections + 1, **options)
