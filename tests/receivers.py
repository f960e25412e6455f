"""Real servers for the routing receivers' tests: an HTTP server (webhooks, Slack, Teams) that
records what it is sent and answers with a status the test sets; a real Prometheus
Alertmanager (Debian's ``prometheus-alertmanager``) with its own configuration and port."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .mosquitto import free_port, stop_process


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


def alertmanager_binary() -> str:
    for path in ("/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"):
        if Path(path).exists():
            return path
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found is None:
        pytest.fail("alertmanager not installed: scripts/test installs prometheus-alertmanager")
    return found


@dataclass
class Alertmanager:
    """A real Prometheus Alertmanager on a free port with its own configuration, clustering
    off; its own notifications go to ``webhook`` (a :class:`HookServer` URL) when given."""

    workdir: Path
    webhook: str = ""
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Alertmanager:
        self.workdir.mkdir(parents=True, exist_ok=True)
        receiver = (
            f"  - name: hook\n    webhook_configs:\n      - url: {self.webhook}\n"
            "        send_resolved: true\n"
            if self.webhook
            else "  - name: hook\n"
        )
        (self.workdir / "alertmanager.yml").write_text(
            "route:\n"
            "  receiver: hook\n"
            "  group_by: [route, asset]\n"
            "  group_wait: 100ms\n"
            "  group_interval: 200ms\n"
            "  repeat_interval: 1h\n"
            f"receivers:\n{receiver}"
            "inhibit_rules:\n"
            "  - source_matchers: [severity=critical]\n"
            "    target_matchers: [severity=warning]\n"
            "    equal: [sensor]\n"
        )
        self.proc = subprocess.Popen(
            [
                alertmanager_binary(),
                f"--config.file={self.workdir / 'alertmanager.yml'}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=(self.workdir / "alertmanager.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / "alertmanager.log").read_text()
                raise RuntimeError(f"alertmanager did not start: {log[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)

    def api(self, path: str, body: object = None, method: str | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}/api/v2/{path}",
            data=data,
            method=method or ("POST" if data is not None else "GET"),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None


@pytest.fixture
def alertmanager(tmp_path: Path, hook_server: HookServer) -> Iterator[Alertmanager]:
    am = Alertmanager(tmp_path / "alertmanager", webhook=hook_server.url).start()
    try:
        yield am
    finally:
        am.stop()


@dataclass
class Mailbox:
    """A real SMTP server (aiosmtpd in its own thread) that keeps every message it accepts;
    with ``login``, AUTH PLAIN/LOGIN is required for that (user, password)."""

    port: int = field(default_factory=free_port)
    login: tuple[str, str] | None = None
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    controller: Any = None

    def start(self) -> Mailbox:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        box = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                box.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
                return "250 OK"

        def authenticate(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> Any:
            ok = (
                isinstance(data, LoginPassword)
                and box.login is not None
                and (data.login.decode(), data.password.decode()) == box.login
            )
            return AuthResult(success=ok, handled=False)

        kwargs: dict[str, Any] = {}
        if self.login is not None:
            kwargs = {
                "authenticator": authenticate,
                "auth_required": True,
                "auth_require_tls": False,
            }
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None
