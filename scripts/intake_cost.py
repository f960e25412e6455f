"""What the service's receive loop costs per PUBLISH: `LeanClient._parse` on one read's bytes.

    .venv/bin/python scripts/intake_cost.py [MESSAGES] [PASSES]

Builds one network read of MESSAGES (default 1,000) QoS 1 PUBLISH packets of JSON readings
and times `_parse` on it (best of PASSES, default 200, CPU time), for MQTT 3.1.1, MQTT 5
without properties (an empty property block, what Mosquitto forwards from a publisher that
sets none), MQTT 5 with other user properties only, and MQTT 5 with `unit` and `asset` user
properties read (``broker.unit_property`` and ``broker.asset_property``) into a pipeline.
The pipeline knows the 500 sensors (as a running service does), the batch goes to a handler
that only counts. To compare two trees, run it with each on
PYTHONPATH, alternately.
"""

from __future__ import annotations

import sys
import time

import msgspec

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.pipeline import Pipeline
from mqtt_anomaly.transport import codec
from mqtt_anomaly.transport.lean import LeanClient


class _NoTransport:
    transport = None


def packets(n: int, level: int, props: list[tuple[str, str]]) -> bytes:
    block = codec.encode_properties([(codec.USER_PROPERTY, kv) for kv in props])
    out = []
    for i in range(n):
        sid = f"S{i % 500:04d}"
        payload = msgspec.json.encode({"value": 20.5, "ts": 1.7e9 + i, "seq": i})
        out.append(
            codec.publish(
                f"factory/{sid}/temperature",
                payload,
                qos=1,
                packet_id=i % 65535 + 1,
                level=level,
                properties=block if level == codec.MQTT_5 else b"",
            )
        )
    return b"".join(out)


def timed(client: LeanClient, data: bytes, passes: int) -> float:
    proto = _NoTransport()
    best = float("inf")
    for _ in range(passes):
        started = time.process_time()
        client._parse(data, proto)  # type: ignore[arg-type]
        best = min(best, time.process_time() - started)
    return best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    passes = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    got = [0]

    def count(batch: list[tuple[str, bytes, float]]) -> None:
        got[0] += len(batch)

    cases = [
        ("MQTT 3.1.1", "3.1.1", []),
        ("MQTT 5, no properties", "5", []),
        ("MQTT 5, other user properties", "5", [("site", "north")]),
        ("MQTT 5, unit and asset", "5", [("unit", "bar"), ("asset", "pump-7")]),
    ]
    for name, protocol, props in cases:
        settings = load_settings(None, {"broker": {"protocol": protocol}})
        client = LeanClient(settings.broker, "cost", on_batch=count)
        pipeline = Pipeline(settings)
        if hasattr(client, "on_properties"):
            client.on_properties = pipeline.note_properties
        pipeline.process(  # the sensors known, their topics cached: a running service
            [(f"factory/S{i:04d}/temperature", b"20.5", 1.7e9) for i in range(500)]
        )
        level = codec.MQTT_5 if protocol == "5" else codec.MQTT_311
        data = packets(n, level, props)
        best = timed(client, data, passes)
        print(f"{name:>30}: {best / n * 1e6:.3f} µs per PUBLISH ({len(data) // n} bytes)")
    assert got[0] == len(cases) * n * passes


if __name__ == "__main__":
    main()
