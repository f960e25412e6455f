"""The HTTP side bound beyond loopback: a token is required, and HTTPS is available."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from mqtt_anomaly import pki
from mqtt_anomaly.config import load_settings
from mqtt_anomaly.errors import ConfigError
from mqtt_anomaly.service import DetectorService
from mqtt_anomaly.web import HttpSettings, parse_listen, serve_http
from mqtt_anomaly.web.auth import TokenAuth

from .mosquitto import Mosquitto, free_port, stop_process, wait_for_port

TOKEN = "s3cret-token"


def test_binding_beyond_loopback_needs_a_token() -> None:
    with pytest.raises(ConfigError, match=r"^http: .*needs an access token"):
        load_settings(None, {"http": {"listen": "0.0.0.0:8080"}})
    ok = load_settings(None, {"http": {"listen": "0.0.0.0:8080", "token": TOKEN}})
    assert ok.http.secret_token() == TOKEN
    assert load_settings(None, {"http": {"listen": "8080"}}).http.address == ("127.0.0.1", 8080)


@asynccontextmanager
async def served(broker: Mosquitto, tmp_path: Path, http: HttpSettings) -> AsyncIterator[int]:
    settings = load_settings(
        None,
        {
            "broker": {"url": broker.url, "client_id": "detector-auth"},
            "store": {"url": "none://"},
            "service": {"state_dir": tmp_path / "state"},
        },
    )
    service = DetectorService(settings, console=False)
    stop = asyncio.Event()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    tasks = [
        asyncio.create_task(service.run(stop)),
        asyncio.create_task(serve_http(service, http, stop, started=started)),
    ]
    try:
        yield await asyncio.wait_for(started, 15)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_token_required_except_for_probes(mosquitto: Mosquitto, tmp_path: Path) -> None:
    http = HttpSettings(listen="127.0.0.1:0", token=TOKEN)
    async with served(mosquitto, tmp_path, http) as port, httpx.AsyncClient() as client:
        base = f"http://127.0.0.1:{port}"
        denied = await client.get(f"{base}/api/sensors")
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"].startswith("Basic")
        assert (await client.get(f"{base}/")).status_code == 401  # the dashboard too
        assert (await client.get(f"{base}/metrics")).status_code == 401
        bad = {"Authorization": "Bearer wrong"}
        assert (await client.get(f"{base}/api/sensors", headers=bad)).status_code == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.get(f"{base}/api/sensors", headers=bearer)).status_code == 200
        basic = base64.b64encode(f"operator:{TOKEN}".encode()).decode()
        ok = await client.get(f"{base}/metrics", headers={"Authorization": f"Basic {basic}"})
        assert ok.status_code == 200
        assert (await client.get(f"{base}/healthz")).status_code == 200


async def test_https(mosquitto: Mosquitto, tmp_path: Path) -> None:
    ca_key, ca = pki.make_ca()
    key, cert = pki.issue(ca_key, ca, "dashboard", server_names=["127.0.0.1", "localhost"])
    pki.write_cert(tmp_path / "ca.crt", ca)
    pki.write_cert(tmp_path / "http.crt", cert)
    pki.write_key(tmp_path / "http.key", key)
    http = HttpSettings(
        listen="127.0.0.1:0",
        token=TOKEN,
        cert_file=tmp_path / "http.crt",
        key_file=tmp_path / "http.key",
    )
    async with served(mosquitto, tmp_path, http) as port:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        trust = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        async with httpx.AsyncClient(verify=trust) as client:
            res = await client.get(f"https://127.0.0.1:{port}/api/sensors", headers=bearer)
            assert res.status_code == 200
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{port}/api/sensors", headers=bearer)


# ---- a blank token is never "no token" -----------------------------------------------------
LONG_TOKEN = "0123456789abcdef0123456789abcdef"


def detect_cli(
    tmp_path: Path, listen: str, env: dict[str, str], *extra: str
) -> subprocess.Popen[str]:
    """``mqtt-anomaly detect --http LISTEN`` in a subprocess, with only ``env``'s settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MQTT_ANOMALY_")}
    return subprocess.Popen(
        [sys.executable, "-m", "mqtt_anomaly", "detect", "--http", listen, *extra],
        env={**clean, **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def refused_at_start(tmp_path: Path, listen: str, env: dict[str, str]) -> str:
    """Run the CLI, expect exit 2 before serving; returns its one stderr line."""
    nobody = f"mqtt://127.0.0.1:{free_port()}"  # never reached: refused before connecting
    state = str(tmp_path / "state")
    proc = detect_cli(
        tmp_path, listen, env, "--broker", nobody, "--store", "none://", "--state-dir", state
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    host, port = parse_listen(listen)
    with socket.socket() as s:  # nothing was left listening
        assert s.connect_ex((host, port)) != 0
    return lines[0]


def test_blank_env_token_on_every_interface_is_a_start_error(tmp_path: Path) -> None:
    line = refused_at_start(tmp_path, f"0.0.0.0:{free_port()}", {"MQTT_ANOMALY_HTTP__TOKEN": ""})
    assert line.startswith("error: http.token: ") and "blank" in line


def test_whitespace_token_is_a_start_error_on_loopback_too(tmp_path: Path) -> None:
    line = refused_at_start(
        tmp_path, f"127.0.0.1:{free_port()}", {"MQTT_ANOMALY_HTTP__TOKEN": " \t "}
    )
    assert line.startswith("error: http.token: ")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("\n" + LONG_TOKEN + "\n", "blank first line"),  # the token must be on the first line
        ("   \n", "blank first line"),
        ("", "is empty"),
        (None, "cannot read"),  # no such file
    ],
)
def test_blank_or_unreadable_token_file_is_a_start_error(
    tmp_path: Path, content: str | None, why: str
) -> None:
    path = tmp_path / "http-token"
    if content is not None:
        path.write_text(content)
    line = refused_at_start(
        tmp_path, f"0.0.0.0:{free_port()}", {"MQTT_ANOMALY_HTTP__TOKEN_FILE": str(path)}
    )
    assert line.startswith("error: http.token_file: ") and why in line, line


def test_blank_token_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[http]\nlisten = "127.0.0.1:8080"\ntoken = ""\n')
    with pytest.raises(ConfigError, match=r"^http\.token: is empty or blank"):
        load_settings(config)
    good = tmp_path / "token"
    good.write_text(LONG_TOKEN + "\nignored\n")
    config.write_text(f'[http]\nlisten = "0.0.0.0:8080"\ntoken_file = "{good}"\n')
    assert load_settings(config).http.secret_token() == LONG_TOKEN


def test_token_from_the_environment_loses_its_trailing_newline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MQTT_ANOMALY_HTTP__TOKEN", LONG_TOKEN + "\n")  # "$(cat file)" style
    monkeypatch.setenv("MQTT_ANOMALY_HTTP__LISTEN", "0.0.0.0:8080")
    assert load_settings(None).http.secret_token() == LONG_TOKEN


def test_token_file_emptied_after_loading_is_refused_when_serving(tmp_path: Path) -> None:
    path = tmp_path / "http-token"
    path.write_text(LONG_TOKEN)
    http = HttpSettings(listen="0.0.0.0:0", token_file=path)
    path.write_text("\n")
    with pytest.raises(ConfigError, match=r"^http\.token_file: .*blank first line"):
        http.secret_token()


def test_short_token_warns_once_and_is_still_required(mosquitto: Mosquitto, tmp_path: Path) -> None:
    port = free_port()
    proc = detect_cli(
        tmp_path,
        f"127.0.0.1:{port}",
        {"MQTT_ANOMALY_HTTP__TOKEN": "short-token"},
        "--broker",
        mosquitto.url,
        "--store",
        "none://",
        "--state-dir",
        str(tmp_path / "state"),
    )
    try:
        wait_for_port(port, 30, proc)  # type: ignore[arg-type]
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/sensors", timeout=10).status_code == 401
        bearer = {"Authorization": "Bearer short-token"}
        assert httpx.get(f"{base}/api/sensors", headers=bearer, timeout=10).status_code == 200
    finally:
        stop_process(proc)  # type: ignore[arg-type]
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    warnings = [line for line in err.splitlines() if "http.token" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "11 characters" in warnings[0]
    assert "short-token" not in err  # the token itself is never logged
    assert "Traceback" not in err


async def test_loopback_with_a_token_requires_it(mosquitto: Mosquitto, tmp_path: Path) -> None:
    http = HttpSettings(listen="127.0.0.1:0", token=LONG_TOKEN)
    async with served(mosquitto, tmp_path, http) as port, httpx.AsyncClient() as client:
        base = f"http://127.0.0.1:{port}"
        for path in ("/api/sensors", "/api/alerts", "/api/events", "/metrics", "/openapi.json"):
            assert (await client.get(f"{base}{path}")).status_code == 401, path
        assert (await client.get(f"{base}/readyz")).status_code in (200, 503)


async def test_websocket_without_the_token_never_reaches_the_application() -> None:
    reached: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["type"])

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    auth = TokenAuth(app, LONG_TOKEN)
    scope: dict[str, Any] = {"type": "websocket", "path": "/api/events", "headers": []}
    await auth(scope, receive, send)  # type: ignore[arg-type]
    assert reached == [] and sent == [{"type": "websocket.close", "code": 1008}]
    scope["headers"] = [(b"authorization", f"Bearer {LONG_TOKEN}".encode())]
    await auth(scope, receive, send)  # type: ignore[arg-type]
    assert reached == ["websocket"]
