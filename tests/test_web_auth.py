"""The HTTP side bound beyond loopback: a token is required, and HTTPS is available."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from mqtt_anomaly import pki
from mqtt_anomaly.config import load_settings
from mqtt_anomaly.errors import ConfigError
from mqtt_anomaly.service import DetectorService
from mqtt_anomaly.web import HttpSettings, serve_http

from .mosquitto import Mosquitto

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
