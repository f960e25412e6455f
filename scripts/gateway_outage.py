"""A gateway outage, end to end: N sensors send two readings each, then all fall silent.

    .venv/bin/python scripts/gateway_outage.py [SENSORS]     # default 70,000

Starts a private Mosquitto (stock settings), runs `mqtt-anomaly detect` with its defaults
against it (SQLite history, a fresh state dir), publishes two QoS 1 readings per sensor with a
raw publisher, and waits until the flood alert counts every sensor. Then it stops the service
with SIGTERM and prints what an operator would have seen: the flood events, how many alerts and
health messages reached a subscriber, the console lines, the exit code and time of the stop,
the silence alerts in the store and the state file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import Observer  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402
from tests.test_floods import raw_publish  # noqa: E402

FLOODS = "mqtt-anomaly/floods"


async def outage(n: int, work: Path) -> None:
    broker = Mosquitto(work / "mosquitto").start()
    db = work / "history.db"
    cmd = [sys.executable, "-m", "mqtt_anomaly", "detect", "--broker", broker.url]
    cmd += ["--store", f"sqlite:///{db}", "--state-dir", str(work / "state")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    det = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=work, env=env)
    assert det.stdout is not None and det.stderr is not None
    out, err = det.stdout, det.stderr
    lines: list[str] = []
    errors: list[str] = []
    threading.Thread(target=lambda: lines.extend(b.decode().rstrip() for b in out)).start()
    threading.Thread(target=lambda: errors.extend(b.decode().rstrip() for b in err)).start()
    try:
        topics = [FLOODS, "factory/+/alerts", "factory/+/health"]
        async with Observer(broker.url, topics, "outage-observer") as obs:
            while not any("Listening" in line for line in lines):
                if det.poll() is not None:
                    raise SystemExit(f"detect exited with {det.returncode}: {errors[-3:]}")
                await asyncio.sleep(0.05)
            sids = [f"T{i:05d}" for i in range(n)]
            started = time.monotonic()
            for seq in range(2):
                await asyncio.to_thread(raw_publish, broker.url, sids, seq)
            last = time.monotonic()
            print(f"published {2 * n:,} readings in {last - started:.1f} s")

            def flood_events() -> list[dict[str, object]]:
                return [json.loads(m[1]) for m in obs.messages if m[0] == FLOODS]

            while not (ev := flood_events()) or ev[-1]["active"] != n:
                if time.monotonic() - last > 120:
                    print("no flood of every sensor within 120 s")
                    break
                await asyncio.sleep(0.05)
            seen = [m[3] for m in obs.messages if m[0] == FLOODS]
            if seen:
                print(f"first flood event {seen[0] - last:.1f} s after the last reading")
            for e in flood_events():
                print(f"  flood {e['state']}: {e['active']:,} active — {e['message']}")
            count = -1
            while len(obs.messages) != count:  # until the health messages have settled
                count = len(obs.messages)
                await asyncio.sleep(2)
            alerts = sum(1 for m in obs.messages if m[0].endswith("/alerts"))
            health = sum(1 for m in obs.messages if m[0].endswith("/health"))
            print(f"at a subscriber: {alerts:,} individual alerts, {health:,} health messages")
            stopping = time.monotonic()
            det.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(det.wait, 120)
            print(f"SIGTERM: exit {rc} after {time.monotonic() - stopping:.2f} s")
    finally:
        if det.poll() is None:
            det.kill()
        broker.stop()
    print(f"console: {len(lines)} lines")
    for line in lines:
        print("   ", line)
    print(f"stderr: {len(errors)} lines")
    with sqlite3.connect(db) as conn:
        query = "select count(*) from alerts where detector = 'silence'"
        (stored,) = conn.execute(query).fetchone()
    print(f"silence alerts in the store: {stored:,}")
    state = work / "state" / "detector-state.mqas"
    print(f"state file: {state.stat().st_size:,} bytes" if state.exists() else "no state file")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 70_000
    with tempfile.TemporaryDirectory(prefix="outage-") as tmp:
        asyncio.run(outage(n, Path(tmp)))


if __name__ == "__main__":
    main()
