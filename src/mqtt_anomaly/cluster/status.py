"""What ``mqtt-anomaly cluster status`` shows: workers, partitions, owners, lag, hand-offs.

Read from the cluster's own records (no worker is asked): the ``workers`` bucket (live
workers), the ``owners`` bucket (each partition's owner, renewed every quarter lease with its
position, the readings still pending in its consumer and the hand-offs so far) and the
streams' state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
import nats.js.errors

from ..errors import ConfigError
from .setup import connect

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

    from ..clusterconf import ClusterSettings

__all__ = ["ClusterStatus", "PartitionStatus", "read_status"]


@dataclass(slots=True)
class PartitionStatus:
    partition: int
    owner: str = ""
    epoch: int = 0
    seq: int = 0
    checkpoint_seq: int = 0
    lag: int | None = None
    scored: int = 0
    handoffs: int = 0


@dataclass(slots=True)
class ClusterStatus:
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    partitions: list[PartitionStatus] = field(default_factory=list)
    readings: int = 0
    last_seq: int = 0
    alerts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "partitions": [_pdict(p) for p in self.partitions],
            "readings": self.readings,
            "last_seq": self.last_seq,
            "alerts": self.alerts,
        }


def _pdict(p: PartitionStatus) -> dict[str, Any]:
    return {k: getattr(p, k) for k in PartitionStatus.__slots__}


async def _value(kv: KeyValue, key: str) -> dict[str, Any] | None:
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    try:
        value = msgspec.json.decode(entry.value or b"")
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


async def read_status(cs: ClusterSettings) -> ClusterStatus:
    """The cluster's state now; ConfigError when no server answers or no worker ever ran."""
    nc = await connect(cs, "mqtt-anomaly-status", timeout=5.0)
    try:
        return await collect(nc.jetstream(timeout=5.0), cs)
    except (nats.errors.Error, TimeoutError) as exc:
        raise ConfigError(f"cluster: status not read ({exc!r})") from exc
    finally:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await nc.close()


async def collect(js: JetStreamContext, cs: ClusterSettings) -> ClusterStatus:
    """:func:`read_status` on a connection of the caller's (a worker's HTTP endpoint)."""
    try:
        owners = await js.key_value(cs.owners_bucket)
        workers = await js.key_value(cs.workers_bucket)
    except nats.js.errors.BucketNotFoundError:
        raise ConfigError(
            f"cluster: no bucket {cs.owners_bucket}: no worker has joined yet"
        ) from None
    status = ClusterStatus()
    with contextlib.suppress(nats.js.errors.NoKeysError):
        for key in sorted(await workers.keys()):
            status.workers[key] = await _value(workers, key) or {}
    for p in range(cs.partitions):
        rec = await _value(owners, f"p{p}") or {}
        status.partitions.append(
            PartitionStatus(
                p,
                owner=str(rec.get("worker", "")),
                epoch=int(rec.get("epoch", 0)),
                seq=int(rec.get("seq", 0)),
                checkpoint_seq=int(rec.get("checkpoint_seq", 0)),
                lag=int(rec["pending"]) if "pending" in rec else None,
                scored=int(rec.get("scored", 0)),
                handoffs=int(rec.get("handoffs", 0)),
            )
        )
    with contextlib.suppress(nats.js.errors.NotFoundError):
        si = await js.stream_info(cs.stream)
        status.readings = si.state.messages
        status.last_seq = si.state.last_seq
    with contextlib.suppress(nats.js.errors.NotFoundError):
        status.alerts = (await js.stream_info(cs.alerts_stream)).state.messages
    return status
