"""Real servers for the routing receivers' tests: an HTTP server (webhooks, Slack, Teams) that
records what it is sent and answers with a status the test sets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HookServer:
    """What the server got (``requests``: the ones it answered 2xx; ``refused``: the others)."""

    url: str = ""
    status: int = 200
    requests: list[Request] = field(default_factory=list)
    refused: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: HookServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            req = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            with state.lock:
                status = state.status
                (state.requests if status < 300 else state.refused).append(req)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            return None

    return Handler


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    state = HookServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
