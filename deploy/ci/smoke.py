"""Smoke test of the compose stack, run as the ``smoke`` service of compose.smoke.yaml.

Subscribes to the alerts topic on the stack's broker and waits for an alert for the sensor
the simulator injects spikes into; then checks that the detector's ``/metrics`` refuses a
request without the token and, with it, counts at least one alert. Everything is retried
until the stack answers (health checks do not gate the start), within ``SMOKE_TIMEOUT``
seconds. Exit status 0 on success, 1 with the reason on failure.

Settings (environment): SMOKE_BROKER (host:port), SMOKE_HTTP (base URL of the detector),
SMOKE_TOKEN_FILE, SMOKE_SENSOR, SMOKE_ALERTS_TOPIC, SMOKE_TIMEOUT.
Only the standard library and gmqtt, which the image has as a dependency of mqtt-anomaly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv311

BROKER = os.environ.get("SMOKE_BROKER", "mosquitto:1883")
HTTP = os.environ.get("SMOKE_HTTP", "http://detector:8080").rstrip("/")
TOKEN_FILE = os.environ.get("SMOKE_TOKEN_FILE", "/run/secrets/http_token")
SENSOR = os.environ.get("SMOKE_SENSOR", "SENSOR-01")
ALERTS_TOPIC = os.environ.get("SMOKE_ALERTS_TOPIC", "factory/+/alerts")
TIMEOUT = float(os.environ.get("SMOKE_TIMEOUT", "90"))
ALERTS_METRIC = "mqtt_anomaly_alerts_total"

START = time.monotonic()
DEADLINE = START + TIMEOUT


class SmokeError(Exception):
    pass


def say(msg: str) -> None:
    print(f"smoke [{time.monotonic() - START:5.1f}s] {msg}", flush=True)


def remaining() -> float:
    return DEADLINE - time.monotonic()


async def connect() -> Any:
    host, _, port = BROKER.rpartition(":")
    last = ""
    while remaining() > 0:
        client = gmqtt.Client(f"smoke-{uuid.uuid4().hex[:8]}", clean_session=True)
        client.set_config({"reconnect_retries": 0})
        try:
            await asyncio.wait_for(
                client.connect(host, int(port), version=MQTTv311, keepalive=30),
                timeout=min(5.0, max(remaining(), 0.1)),
            )
        except Exception as exc:  # refused, unknown host, timeout, protocol error
            last = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                await client.disconnect()
            await asyncio.sleep(1)
            continue
        say(f"connected to the broker {BROKER}")
        return client
    raise SmokeError(f"broker {BROKER} did not accept a connection ({last or 'no answer'})")


async def wait_for_alert(client: Any) -> dict[str, Any]:
    got: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    def on_message(_c: object, topic: str, payload: bytes, _qos: int, _props: object) -> int:
        try:
            alert = json.loads(payload)
        except ValueError:
            say(f"not JSON on {topic}: {payload[:120]!r}")
            return 0
        sensor = alert.get("sensor_id") if isinstance(alert, dict) else None
        seen.append(f"{sensor}/{alert.get('detector') if isinstance(alert, dict) else '?'}")
        if sensor == SENSOR and not got.done():
            got.set_result(alert)
        return 0

    client.on_message = on_message
    client.subscribe(ALERTS_TOPIC, qos=1)
    say(f"subscribed to {ALERTS_TOPIC}, waiting for an alert for {SENSOR}")
    try:
        return await asyncio.wait_for(got, timeout=max(remaining(), 0.1))
    except TimeoutError:
        others = ", ".join(seen[-10:]) or "none"
        raise SmokeError(
            f"no alert for {SENSOR} on {ALERTS_TOPIC} within {TIMEOUT:.0f} s "
            f"(alerts seen: {others})"
        ) from None


def http_get(path: str, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(HTTP + path)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def alerts_counted(metrics: str) -> tuple[float, list[str]]:
    lines = [ln for ln in metrics.splitlines() if ln.startswith(ALERTS_METRIC)]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines), lines


def check_metrics() -> None:
    with open(TOKEN_FILE) as fh:
        token = fh.readline().strip()
    if not token:
        raise SmokeError(f"{TOKEN_FILE} is empty")
    last = ""
    while remaining() > 0:
        try:
            status, _ = http_get("/metrics", None)
            if status != 401:
                raise SmokeError(f"GET {HTTP}/metrics without the token: {status}, not 401")
            status, body = http_get("/metrics", token)
            if status != 200:
                raise SmokeError(f"GET {HTTP}/metrics with the token: {status}: {body[:200]}")
            total, lines = alerts_counted(body)
            if total > 0:
                say(f"/metrics counts {total:g} alert events:")
                for line in lines:
                    say(f"  {line}")
                return
            last = f"{ALERTS_METRIC} is {total:g}"
        except (OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1)
    raise SmokeError(f"{HTTP}/metrics: no alert counted within {TIMEOUT:.0f} s ({last})")


async def main() -> int:
    say(f"broker {BROKER}, detector {HTTP}, sensor {SENSOR}, timeout {TIMEOUT:.0f} s")
    try:
        client = await connect()
        try:
            alert = await wait_for_alert(client)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout=5)
        say(
            f"alert: {alert.get('sensor_id')} {alert.get('detector')} {alert.get('severity')} "
            f"{alert.get('state')} value={alert.get('value')}"
        )
        await asyncio.to_thread(check_metrics)
    except SmokeError as exc:
        say(f"FAILED: {exc}")
        return 1
    say("passed")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
