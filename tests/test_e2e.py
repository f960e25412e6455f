"""The commands as users run them: separate processes, real Mosquitto, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from .helpers import Observer, eventually
from .mosquitto import Mosquitto

CLI = [sys.executable, "-m", "mqtt_anomaly"]


def test_demo_embedded_prints_alert_and_exits_zero(tmp_path: Path) -> None:
    res = subprocess.run(
        [*CLI, "demo", "--embedded", "--duration", "20", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "[INFO] Connected to Broker at 127.0.0.1:" in res.stdout
    assert "[SYSTEM] Listening for topics: factory/+/temperature" in res.stdout
    assert "[SENSOR-01] Sending: 98.2°C <-- ANOMALY INJECTED!" in res.stdout
    assert "[ALERT] 🚨 CRITICAL ANOMALY DETECTED: 98.2°C!" in res.stdout
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.iterdir()), "the demo leaves nothing behind in the working dir"


def test_detect_refuses_bad_config_in_one_line(tmp_path: Path) -> None:
    res = subprocess.run(
        [*CLI, "detect", "--broker", "mqtt://127.0.0.1:1", "--threshold", "hot"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr


async def test_simulator_sigkill_marks_sensors_offline(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    keepalive = 2
    env = {**os.environ, "MQTT_ANOMALY_BROKER__KEEPALIVE": str(keepalive)}
    detector = subprocess.Popen(
        [
            *CLI,
            "detect",
            "--broker",
            mosquitto.url,
            "--store",
            "none://",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    sim = None
    try:
        async with Observer(mosquitto.url, ["factory/+/health", "factory/+/status"]) as obs:
            sim = subprocess.Popen(
                [*CLI, "simulate", "--broker", mosquitto.url, "--sensors", "20", "--seed", "1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                cwd=tmp_path,
            )

            def online() -> set[str]:
                return {
                    t.split("/")[1]
                    for t, p, _, _ in obs.messages
                    if t.endswith("/status") and p == b"online"
                }

            await eventually(lambda: len(online()) == 20, timeout=30, what="20 sensors online")
            await asyncio.sleep(0)
            sim.kill()
            killed = time.monotonic()

            def offline_health() -> set[str]:
                return {
                    t.split("/")[1]
                    for t, p, _, _ in obs.messages
                    if t.endswith("/health") and p == b"offline"
                }

            await eventually(
                lambda: len(offline_health()) == 20,
                timeout=1.5 * keepalive + 5,
                what="all 20 sensors offline",
            )
            took = time.monotonic() - killed
            assert took <= 1.5 * keepalive, f"offline after {took:.2f}s"
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
        detector.send_signal(signal.SIGTERM)
        out, err = detector.communicate(timeout=30)
    assert detector.returncode == 0, err
    assert "[ALERT] 🔌 SENSOR-01 OFFLINE (Last Will)" in out
    assert (tmp_path / "state" / "detector-state.mqas").exists()


async def test_alerts_command_lists_stored_alerts(mosquitto: Mosquitto, tmp_path: Path) -> None:
    from .helpers import reading_payload
    from .test_service import publisher

    db = tmp_path / "history.db"
    detector = subprocess.Popen(
        [
            *CLI,
            "detect",
            "--broker",
            mosquitto.url,
            "--store",
            f"sqlite:///{db}",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        async with (
            Observer(mosquitto.url, ["factory/+/alerts"]) as obs,
            publisher(mosquitto.url) as pub,
        ):
            # the detector subscribes some time after it starts: repeat the spike (new seq
            # each time) until the first alert comes back
            seq = 0

            def alerted() -> bool:
                nonlocal seq
                if obs.on("/alerts"):
                    return True
                if seq % 40 == 0:
                    pub.publish("factory/S7/temperature", reading_payload("S7", 98.2, seq // 40))
                seq += 1
                return False

            await eventually(alerted, timeout=30, what="alert")
    finally:
        detector.send_signal(signal.SIGTERM)
        _, err = detector.communicate(timeout=30)
    assert detector.returncode == 0, err
    res = subprocess.run(
        [*CLI, "alerts", "--store", f"sqlite:///{db}", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    rows = [msgspec.json.decode(line) for line in res.stdout.splitlines() if line.strip()]
    assert any(
        r["sensor_id"] == "S7" and r["value"] == 98.2 and r["severity"] == "critical" for r in rows
    )
    table = subprocess.run(
        [*CLI, "alerts", "--store", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert table.returncode == 0, table.stderr
    assert "S7" in table.stdout and "threshold" in table.stdout
