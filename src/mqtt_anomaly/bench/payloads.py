"""The benchmark's payload workloads (``bench --payload``): what one message carries.

- ``flat`` (default): the simulator's JSON reading, one value per message on
  ``factory/{sensor_id}/temperature``;
- ``nested-json``: a gateway's message, :data:`VALUES` values per message in a nested object,
  ``{"ts": …, "n": seq, "data": {"q1": …, "q2": …}}`` on ``bench/site-1/{asset}``, read by one
  ``[[mapping.rules]]`` rule (:data:`NESTED_RULE`);
- ``sparkplug``: Sparkplug B, an edge node per source with one device of :data:`VALUES`
  metrics: NBIRTH and DBIRTH first, then DDATA by alias with ``seq`` +1, read by the host
  application (``[sparkplug] enabled``).

Source ``s`` of the fleet is a sensor (flat) or an asset / edge node of :data:`VALUES` sensors;
the counting baseline counts messages, the service readings, so the benchmark divides the
service's rate by the values per message to compare per message (:func:`values_per_message`).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ..sparkplug import DOUBLE, NAMESPACE, data, device_birth, node_birth
from ..transport import codec

PAYLOADS: Final = ("flat", "nested-json", "sparkplug")
VALUES: Final = 4
GROUP: Final = "bench"
QUANTITIES: Final = tuple(f"q{j + 1}" for j in range(VALUES))
NESTED_RULE: Final[dict[str, Any]] = {
    "topic": "bench/{site}/{asset}",
    "values": {q: f"$.data.{q}" for q in QUANTITIES},
    "timestamp": "$.ts",
    "timestamp_format": "s",
    "seq": "$.n",
    "unit": "C",
}


def values_per_message(payload: str) -> int:
    return 1 if payload == "flat" else VALUES


def service_overrides(payload: str) -> dict[str, Any]:
    """The service's configuration for the workload (on top of the user's)."""
    if payload == "nested-json":
        return {"mapping": {"rules": [NESTED_RULE]}}
    if payload == "sparkplug":
        return {"sparkplug": {"enabled": True, "rebirth": False}}
    return {}


def baseline_filters(payload: str, flat: tuple[str, ...]) -> tuple[str, ...]:
    """What the counting baseline subscribes for the workload."""
    if payload == "nested-json":
        return ("bench/+/+",)
    if payload == "sparkplug":
        return (f"{NAMESPACE}/{GROUP}/#",)
    return flat


class Messages:
    """Messages of source ``s`` for the ``nested-json`` and ``sparkplug`` workloads."""

    def __init__(self, payload: str, sources: int) -> None:
        self.payload = payload
        self.sources = sources
        if payload == "nested-json":
            self.topics = [f"bench/site-1/asset-{s + 1:05d}" for s in range(sources)]
        else:
            self.topics = [
                f"{NAMESPACE}/{GROUP}/DDATA/edge-{s + 1:05d}/asset" for s in range(sources)
            ]
        self._encode = msgspec.json.Encoder().encode

    def sensor_id(self, s: int, j: int = 0) -> str:
        """The id the service gives value ``j`` of source ``s``."""
        if self.payload == "nested-json":
            return f"site-1/asset-{s + 1:05d}/{QUANTITIES[j]}"
        return f"{GROUP}/edge-{s + 1:05d}/asset/{QUANTITIES[j]}"

    def births(self, qos: int, mid: int) -> tuple[list[bytes], int]:
        """The packets every run starts with (Sparkplug: NBIRTH and DBIRTH per node)."""
        if self.payload != "sparkplug":
            return [], mid
        out = []
        metrics = [(q, j + 1, DOUBLE, None, "C") for j, q in enumerate(QUANTITIES)]
        for s in range(self.sources):
            node = f"edge-{s + 1:05d}"
            for topic, payload in (
                (f"{NAMESPACE}/{GROUP}/NBIRTH/{node}", node_birth(bdseq=0, seq=0)),
                (f"{NAMESPACE}/{GROUP}/DBIRTH/{node}/asset", device_birth(seq=1, metrics=metrics)),
            ):
                mid = mid % 65535 + 1
                out.append(codec.publish(topic, payload, qos=qos, packet_id=mid))
        return out, mid

    def payload_of(self, s: int, seq: int, ts: float, values: list[float]) -> bytes:
        """Message ``seq`` (from 1) of source ``s``."""
        if self.payload == "nested-json":
            doc = {"ts": ts, "n": seq, "data": dict(zip(QUANTITIES, values, strict=True))}
            return self._encode(doc)
        metrics = [(j + 1, DOUBLE, v) for j, v in enumerate(values)]
        return data(seq=(seq + 1) & 0xFF, metrics=metrics, ts=ts)  # DBIRTH was seq 1
