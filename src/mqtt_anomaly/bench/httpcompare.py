"""MQTT push versus HTTP polling, measured on the same fleet, rate and detectors.

- **MQTT**: every sensor has its own MQTT connection and publishes QoS 1 readings to the
  broker; the detector service (the real one) is pushed each reading.
- **HTTP**: every sensor has its own keep-alive HTTP/1.1 connection and POSTs each reading
  to a small ingest server (stdlib ``http.server``, threaded; 204 No Content); a detector
  polls ``GET /readings?after=N`` every second (newline-delimited JSON back) and runs the
  same :class:`~mqtt_anomaly.pipeline.Pipeline` on what it gets.

Both runs: ``sensors`` sensors, ``per_sensor_hz`` readings per second each, a 98.2 °C spike
every ``spike_every`` readings. Measured:

- **bytes on the wire per reading**: TCP payload bytes in both directions, read from the
  kernel (``TCP_INFO``) on every sensor's socket and on the detector's socket, between the
  moment all are connected and the end (connection set-up excluded); TCP segments likewise.
  ``bytes_with_headers_per_reading`` adds 52 bytes (IPv4 + TCP with timestamps) per segment:
  an estimate for a real network, where each small message is its own segment as here.
  The MQTT detector's socket also carries the alerts and health updates the service
  publishes, which the HTTP detector does not send anywhere: MQTT's figure includes them.
- **reading → detection latency**: when the detector's pipeline produced the spike's alert
  minus the reading's ``ts`` (set by the sensor just before sending).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from dataclasses import replace
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from typing import Any

from ..messages import Reading, encode
from ..transport import codec
from .children import quiet_child, report_errors
from .latency import percentiles_ms
from .loadgen import SPIKE, Encoder, Fleet, spike_period
from .rawmqtt import host_port
from .sysinfo import TcpCounters, tcp_counters
from .throughput import Env, Step, consumer

POLL_INTERVAL = 1.0
HEADERS = 52  # IPv4 (20) + TCP with timestamps (32) per segment, for the estimate on a wire


# ---- the HTTP ingest server (its own process) ---------------------------------------------
class _Ingest(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lines: list[bytes] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Ingest

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.lines.append(body)
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:
        after = int(self.path.rpartition("after=")[2] or 0) if "after=" in self.path else 0
        with self.server.lock:
            body = b"\n".join(self.server.lines[after:])
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def http_server_main(conn: Connection, workdir: str) -> None:
    """The HTTP ingest server's process: serves until the parent sends anything."""
    quiet_child(workdir, "http-server")
    server = _Ingest()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn.send(("ready", {"port": server.server_address[1], "pid": os.getpid()}))
    with contextlib.suppress(EOFError):
        conn.recv()
    server.shutdown()
    conn.send(("result", {"readings": len(server.lines)}))


# ---- the polling detector (its own process) ------------------------------------------------
def http_poller_main(conn: Connection, workdir: str, port: int, config: str | None) -> None:
    """The polling detector's process: polls every second until the parent says stop."""
    quiet_child(workdir, "http-poller")
    report_errors(conn, "http poller", lambda: _poll(conn, port, config))


def _poll(conn: Connection, port: int, config: str | None) -> dict[str, Any]:
    from pathlib import Path

    import msgspec

    from ..config import load_settings
    from ..pipeline import Pipeline

    class SensorOnly(msgspec.Struct):
        sensor_id: str

    sensor_of = msgspec.json.Decoder(SensorOnly).decode
    settings = load_settings(Path(config) if config else None, {"store": {"url": "none://"}})
    pipeline = Pipeline(settings)
    topic = pipeline.readings_topic
    http = HTTPConnection("127.0.0.1", port, timeout=10)
    http.connect()
    assert http.sock is not None
    start = tcp_counters(http.sock)
    conn.send(("ready", {"pid": os.getpid()}))
    cursor = polls = 0
    detections: dict[tuple[str, float], float] = {}
    next_poll = time.monotonic() + POLL_INTERVAL
    while not conn.poll(max(0.0, next_poll - time.monotonic())):
        next_poll += POLL_INTERVAL
        http.request("GET", f"/readings?after={cursor}")
        body = http.getresponse().read()
        polls += 1
        if not body:
            continue
        now = time.time()
        lines = body.split(b"\n")
        cursor += len(lines)
        out = pipeline.process([(topic.format(sensor_of(p).sensor_id), p, now) for p in lines])
        wall = time.time()
        for a in out.alerts:
            if a.state == "raised" and a.reading_ts is not None:
                detections.setdefault((a.sensor_id, a.reading_ts), wall - a.reading_ts)
    tcp = tcp_counters(http.sock) - start
    http.close()
    return {
        "polls": polls,
        "processed": pipeline.counters.processed,
        "tcp": tcp,
        "detections": [(s, ts, lat) for (s, ts), lat in detections.items()],
    }


# ---- the sensors (in the publisher's process) ---------------------------------------------
class _Schedule:
    """Which reading is a spike, and when each sensor sends."""

    def __init__(self, fleet: Fleet, hz: float, seconds: float, spike_every: int) -> None:
        self.fleet = fleet
        self.period = 1.0 / hz
        self.seconds = seconds
        self.spike_every = spike_every
        self.spikes: list[tuple[str, float]] = []
        self.sent = 0
        self.values = Encoder(fleet, 0).values

    def payload(self, sensor: int, k: int) -> bytes:
        i = k * self.fleet.sensors + sensor
        sid = self.fleet.sensor_id(sensor)
        ts = time.time()
        if i % self.spike_every == self.spike_every - 1:
            value = SPIKE
            self.spikes.append((sid, ts))
        else:
            value = self.values[i % len(self.values)]
        self.sent += 1
        return encode(Reading(sid, ts, value, "C", k + 1))

    async def run(self, send: Any, t0: float) -> None:
        n = self.fleet.sensors

        async def one(s: int) -> None:
            k = 0
            due = t0 + self.period * s / n
            while due < t0 + self.seconds:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await send(s, self.payload(s, k))
                k += 1
                due += self.period

        await asyncio.gather(*(one(s) for s in range(n)))


async def _http_fleet(port: int, sched: _Schedule) -> dict[str, Any]:
    n = sched.fleet.sensors
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
    host = f"127.0.0.1:{port}"

    async def send(s: int, payload: bytes) -> None:
        reader, writer = conns[s]
        sid = sched.fleet.sensor_id(s)
        head = (
            f"POST /readings/{sid} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        header = await reader.readuntil(b"\r\n\r\n")
        for line in header.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":")[1]))

    return await _run_fleet(conns, sched, send)


async def _mqtt_fleet(url: str, sched: _Schedule) -> dict[str, Any]:
    host, port = host_port(url)
    conns = []
    for s in range(sched.fleet.sensors):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(codec.connect(f"bench-{sched.fleet.sensor_id(s)}", keepalive=60))
        await reader.readexactly(4)
        conns.append((reader, writer))
    topic = sched.fleet.readings_topic
    mids = [0] * len(conns)

    async def drain(reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass

    drains = [asyncio.create_task(drain(r)) for r, _ in conns]

    async def send(s: int, payload: bytes) -> None:
        mids[s] = mids[s] % 65535 + 1
        t = topic.replace("{sensor_id}", sched.fleet.sensor_id(s))
        conns[s][1].write(codec.publish(t, payload, qos=1, packet_id=mids[s]))

    result = await _run_fleet(conns, sched, send)
    for d in drains:
        d.cancel()
    return result


async def _run_fleet(
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], sched: _Schedule, send: Any
) -> dict[str, Any]:
    socks = [w.get_extra_info("socket") for _, w in conns]
    start = [tcp_counters(s) for s in socks]
    t0 = time.monotonic()
    await sched.run(send, t0)
    elapsed = time.monotonic() - t0
    await asyncio.sleep(0.5)  # the last acknowledgements
    tcp = sum((tcp_counters(s) - b for s, b in zip(socks, start, strict=True)), TcpCounters())
    for _, w in conns:
        w.close()
    return {"sent": sched.sent, "seconds": elapsed, "tcp": tcp, "spike_keys": sched.spikes}


def fleet_command(url_or_port: str | int, fleet: Fleet, args: tuple[Any, ...]) -> dict[str, Any]:
    """Run a sensor fleet in the publisher's process: ``args`` = (hz, seconds, spike_every)."""
    hz, seconds, spike_every = args
    sched = _Schedule(fleet, hz, seconds, spike_every)
    if isinstance(url_or_port, int):
        return asyncio.run(_http_fleet(url_or_port, sched))
    return asyncio.run(_mqtt_fleet(url_or_port, sched))


# ---- the comparison (in the parent) -------------------------------------------------------
def _summary(
    fleet_res: dict[str, Any], detector_tcp: TcpCounters, detections: Any
) -> dict[str, Any]:
    sent = max(fleet_res["sent"], 1)
    tcp = fleet_res["tcp"] + detector_tcp
    found = {(s, ts): lat for s, ts, lat in detections}
    lat = [found[k] for k in map(tuple, fleet_res["spike_keys"]) if k in found]
    return {
        "readings": fleet_res["sent"],
        "bytes_per_reading": round(tcp.payload / sent, 1),
        "sensor_bytes_per_reading": round(fleet_res["tcp"].payload / sent, 1),
        "detector_bytes_per_reading": round(detector_tcp.payload / sent, 1),
        "segments_per_reading": round(tcp.segments / sent, 2),
        "bytes_with_headers_per_reading": round((tcp.payload + HEADERS * tcp.segments) / sent, 1),
        "spikes": len(fleet_res["spike_keys"]),
        "detected": len(lat),
        **percentiles_ms(lat),
    }


def run(
    env: Env, sensors: int, hz: float, seconds: float, spikes_per_s: float, step: Step
) -> dict[str, Any]:
    """Both runs, MQTT first; the figures side by side and their ratios."""
    from .children import Child

    fleet = replace(env.fleet, sensors=sensors)
    every = spike_period(sensors * hz, spikes_per_s, sensors)
    args = (hz, seconds, every)

    step("MQTT push vs HTTP polling: MQTT")
    service = consumer(env, "service", None)
    try:
        env.publisher.send("fleet", env.url, fleet, args)
        pub = env.publisher.expect("result", seconds + 60)
        service.send("stop")
        res = service.expect("result", 60)
    finally:
        service.close()
    mqtt = _summary(pub, res["tcp"], res["detections"])

    step("MQTT push vs HTTP polling: HTTP")
    server = Child("http-server", http_server_main, env.workdir)
    try:
        port = server.expect("ready", 30)["port"]
        poller = Child("http-poller", http_poller_main, env.workdir, port, env.config)
        try:
            poller.expect("ready", 30)
            env.publisher.send("fleet", port, fleet, args)
            pub = env.publisher.expect("result", seconds + 60)
            time.sleep(POLL_INTERVAL + 0.5)  # the last poll sees the last readings
            poller.send("stop")
            polled = poller.expect("result", 30)
        finally:
            poller.close()
        server.send("stop")
        server.expect("result", 10)
    finally:
        server.close()
    http = _summary(pub, polled["tcp"], polled["detections"])
    http["polls"] = polled["polls"]
    return {
        "sensors": sensors,
        "per_sensor_hz": hz,
        "seconds": seconds,
        "poll_interval_s": POLL_INTERVAL,
        "mqtt": mqtt,
        "http": http,
        "bytes_ratio_http_to_mqtt": _ratio(http["bytes_per_reading"], mqtt["bytes_per_reading"]),
        "latency_p50_ratio_http_to_mqtt": _ratio(http["p50_ms"], mqtt["p50_ms"]),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None
