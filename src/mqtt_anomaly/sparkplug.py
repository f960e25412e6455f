"""A Sparkplug B host application (Eclipse Sparkplug 3.0): topics, births, deaths, aliases and
sequence numbers turned into readings and sensor states. No I/O.

An edge node publishes on ``spBv1.0/{group}/{kind}/{node}[/{device}]``. Its NBIRTH and each
device's DBIRTH name every metric, with an alias the later NDATA/DDATA messages use instead of
the name; every message of the node but NDEATH carries ``seq`` (0–255, +1 per message, NBIRTH
at 0); NBIRTH and NDEATH carry the node's ``bdSeq``. Here a device is an asset and each of its
numeric metrics a sensor, ``{group}/{node}/{device}/{metric}`` (a node's own metrics:
``{group}/{node}/{metric}``):

>>> host = SparkplugHost()
>>> t = 1700000000.0
>>> birth = node_birth(bdseq=3, metrics=[("Temp", 1, DOUBLE, 21.5, "C")], ts=t)
>>> m = host.handle("spBv1.0/plant/NBIRTH/edge-1", birth, t)
>>> [b.sensor for b in m.born], m.values
(['plant/edge-1/Temp'], [('plant/edge-1/Temp', 1700000000.0, 21.5, 'C')])
>>> m = host.handle("spBv1.0/plant/NDATA/edge-1", data(seq=1, metrics=[(1, DOUBLE, 22.0)], ts=t), t)
>>> m.values
[('plant/edge-1/Temp', 1700000000.0, 22.0, 'C')]
>>> m = host.handle("spBv1.0/plant/NDATA/edge-1", data(seq=5, metrics=[(1, DOUBLE, 23.0)], ts=t), t)
>>> m.gap, m.values[0][2]
(('plant/edge-1', 3), 23.0)
>>> m = host.handle("spBv1.0/plant/NDEATH/edge-1", node_death(bdseq=3), t)
>>> m.offline
['plant/edge-1/Temp']

What the pipeline does with a :class:`Message` is its business (readings placed, sensors
marked offline, a data-loss alert, a rebirth request published); this module only keeps the
host's view of every node, as the specification describes it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from google.protobuf.message import DecodeError

from ._proto.sparkplug_b_pb2 import Payload
from .errors import PayloadError
from .messages import MAX_TS_SKEW_S

NAMESPACE: Final = "spBv1.0"
REBIRTH_METRIC: Final = "Node Control/Rebirth"
BDSEQ_METRIC: Final = "bdSeq"
# Sparkplug data types (specification 3.0, 6.4.16)
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN = 9, 10, 11
_NUMERIC: Final = frozenset(range(1, 12))
# signed values travel as two's complement in the unsigned field: 32 bits (int), 64 (long)
_SIGNED_BITS: Final = {INT8: 32, INT16: 32, INT32: 32, INT64: 64}
_UNIT_KEYS: Final = ("engUnit", "engUnits", "unit", "units")
_LOW_KEYS: Final = ("engLow", "low", "min")
_HIGH_KEYS: Final = ("engHigh", "high", "max")
_FORBIDDEN: Final = frozenset("+#\x00")
_MAX_ID: Final = 256


@dataclass(frozen=True, slots=True)
class Born:
    """A sensor a birth certificate declared: its id, tags, unit and range (NaN: none)."""

    sensor: str
    tags: dict[str, str]
    unit: str
    low: float
    high: float


@dataclass(slots=True)
class Message:
    """What one Sparkplug message means for the pipeline."""

    values: list[tuple[str, float, float, str]] = field(default_factory=list)
    """``(sensor, ts, value, unit)`` of every numeric metric value in it."""
    born: list[Born] = field(default_factory=list)
    online: list[str] = field(default_factory=list)  # sensors (re)born
    offline: list[str] = field(default_factory=list)  # sensors of a node or device now dead
    why_offline: str = ""
    gap: tuple[str, int] | None = None  # (node id, messages lost) for a seq gap
    loss_started: bool = False  # the gap is the node's first since its birth
    gap_closed: str = ""  # the node id whose birth ended its data loss
    rebirth: tuple[str, bytes] | None = None  # the NCMD to publish: (topic, payload)
    error: PayloadError | None = None  # the message, or part of it, could not be read


@dataclass(slots=True)
class SparkplugCounters:
    births: int = 0
    deaths: int = 0
    stale_deaths: int = 0  # NDEATH with another bdSeq than the birth's: an old session's
    seq_gaps: int = 0
    lost: int = 0  # messages missing in the gaps
    duplicates: int = 0  # the same seq again (a redelivery)
    unknown_aliases: int = 0
    rebirths_requested: int = 0


# a metric the birth declared: (sensor id, unit, sign bits: 0, or 32/64 for a signed integer)
_Known = tuple[str, str, int]
# a topic: (message type, (group, node), device), or why it is not one ("": ignored)
_Route = tuple[str, tuple[str, str], str] | str


@dataclass(slots=True, eq=False)
class _Node:
    group: str
    node: str
    bdseq: int = -1
    seq: int = -1
    born: bool = False
    aliases: dict[int, _Known] = field(default_factory=dict)
    names: dict[tuple[str, str], _Known] = field(default_factory=dict)  # (device, name)
    devices: dict[str, list[str]] = field(default_factory=dict)  # device ("": node) → sensors
    dead: set[str] = field(default_factory=set)  # devices dead since their birth
    next_rebirth: float = -math.inf
    losing: bool = False  # a data-loss alert is open

    @property
    def id(self) -> str:
        return f"{self.group}/{self.node}"


class SparkplugHost:
    """The host application's view of every edge node (see the module docstring).

    ``rebirth``: request a rebirth (NCMD) for a message of a node not born, an unknown alias
    or a seq gap, at most once per ``rebirth_interval`` seconds per node."""

    def __init__(
        self,
        *,
        rebirth: bool = True,
        rebirth_interval: float = 5.0,
        max_nodes: int = 100_000,
    ) -> None:
        self.rebirth = rebirth
        self.rebirth_interval = rebirth_interval
        self.max_nodes = max_nodes
        self.nodes: dict[tuple[str, str], _Node] = {}
        self.counters = SparkplugCounters()
        self._routes: dict[str, _Route] = {}  # topic → what it is, for the topics seen

    def handle(self, topic: str, payload: bytes, received_at: float) -> Message:
        """One message on ``spBv1.0/...``; never raises (errors are in ``Message.error``)."""
        m = Message()
        route = self._routes.get(topic)
        if route is None:
            route = _route(topic)
            if len(self._routes) >= 8 * self.max_nodes:
                self._routes.clear()  # bounded whatever topics come
            self._routes[topic] = route
        if isinstance(route, str):
            if route:
                m.error = PayloadError("unexpected_topic", route)
            return m
        kind, key, device = route
        try:
            p = Payload.FromString(payload)
        except DecodeError as exc:
            m.error = PayloadError("not_sparkplug", str(exc)[:120])
            return m
        node = self.nodes.get(key)
        if node is None:
            if len(self.nodes) >= self.max_nodes:
                m.error = PayloadError("sensor_limit", f"{self.max_nodes} Sparkplug nodes known")
                return m
            node = self.nodes[key] = _Node(*key)
        if kind == "NDEATH":
            self._node_death(node, p, m)
            return m
        if kind == "NBIRTH":
            self._node_birth(node, p, received_at, m)
            return m
        if not node.born:
            m.error = PayloadError("not_born", f"{kind} from a node without NBIRTH")
            self._ask_rebirth(node, received_at, m)
            return m
        if not self._sequence(node, p, received_at, m):
            return m
        if kind == "DBIRTH":
            self._device_birth(node, device, p, received_at, m)
        elif kind == "DDEATH":
            sensors = node.devices.get(device, [])
            node.dead.add(device)
            self.counters.deaths += 1
            m.offline.extend(sensors)
            m.why_offline = f"Sparkplug device {node.id}/{device} dead (DDEATH)"
        else:
            if device and (device in node.dead or device not in node.devices):
                m.error = PayloadError("not_born", f"DDATA from device {device!r} without DBIRTH")
                self._ask_rebirth(node, received_at, m)
                return m
            self._data(node, device, p.timestamp, p.metrics, received_at, m)
        return m

    # ---- births and deaths ---------------------------------------------------------
    def _node_birth(self, node: _Node, p: Payload, received_at: float, m: Message) -> None:
        self.counters.births += 1
        bdseq = -1
        metrics = []
        for metric in p.metrics:
            if metric.name == BDSEQ_METRIC:
                bdseq = _int(metric)
            else:
                metrics.append(metric)
        node.bdseq = bdseq
        node.seq = p.seq if p.HasField("seq") else 0
        node.born = True
        node.aliases.clear()
        node.names.clear()
        node.dead.clear()
        node.devices.clear()
        if node.losing:
            node.losing = False
            m.gap_closed = node.id
        self._declare(node, "", metrics, p.timestamp, received_at, m)
        m.online.extend(node.devices.get("", ()))

    def _device_birth(
        self, node: _Node, device: str, p: Payload, received_at: float, m: Message
    ) -> None:
        self.counters.births += 1
        node.devices.pop(device, None)
        for key in [k for k in node.names if k[0] == device]:
            del node.names[key]
        node.dead.discard(device)
        self._declare(node, device, p.metrics, p.timestamp, received_at, m)
        m.online.extend(node.devices.get(device, ()))

    def _declare(
        self,
        node: _Node,
        device: str,
        metrics: Iterable[Payload.Metric],
        ts: int,
        received_at: float,
        m: Message,
    ) -> None:
        """The metrics of a birth: aliases and names learned, their values read."""
        sensors = node.devices.setdefault(device, [])
        prefix = f"{node.id}/{device}/" if device else f"{node.id}/"
        asset = prefix[:-1]  # unique: two nodes may well name their devices alike
        for metric in metrics:
            name = metric.name
            if not name or metric.datatype not in _NUMERIC or name.startswith("Node Control/"):
                continue
            sid = prefix + name
            if len(sid) > _MAX_ID or _FORBIDDEN.intersection(sid) or not sid.isprintable():
                m.error = PayloadError("invalid_field", f"metric name {name[:64]!r}")
                continue
            unit, low, high = (
                _properties(metric.properties)
                if metric.HasField("properties")
                else ("", math.nan, math.nan)
            )
            known: _Known = (sid, unit, _SIGNED_BITS.get(metric.datatype, 0))
            node.names[(device, name)] = known
            if metric.HasField("alias"):
                node.aliases[metric.alias] = known
            sensors.append(sid)
            tags = {"site": node.group, "line": node.node, "asset": asset, "quantity": name}
            m.born.append(Born(sid, tags, unit, low, high))
        self._data(node, device, ts, metrics, received_at, m)

    def _node_death(self, node: _Node, p: Payload, m: Message) -> None:
        bdseq = next((_int(x) for x in p.metrics if x.name == BDSEQ_METRIC), -1)
        if not node.born or (bdseq != -1 and node.bdseq not in (-1, bdseq)):
            # the will of an earlier session, delivered after the node was born again
            self.counters.stale_deaths += 1
            return
        self.counters.deaths += 1
        node.born = False
        m.offline.extend(s for sensors in node.devices.values() for s in sensors)
        m.why_offline = f"Sparkplug node {node.id} dead (NDEATH, bdSeq {bdseq})"

    # ---- data ----------------------------------------------------------------------
    def _sequence(self, node: _Node, p: Payload, received_at: float, m: Message) -> bool:
        """Check the node's seq: False for a repeat (dropped); a gap is counted and noted."""
        if not p.HasField("seq"):
            return True
        seq = p.seq & 0xFF
        expected = (node.seq + 1) & 0xFF
        if seq == node.seq:
            self.counters.duplicates += 1
            return False
        if seq != expected and node.seq >= 0:
            lost = (seq - expected) & 0xFF
            self.counters.seq_gaps += 1
            self.counters.lost += lost
            m.gap = (node.id, lost)
            m.loss_started = not node.losing
            node.losing = True
            self._ask_rebirth(node, received_at, m)
        node.seq = seq
        return True

    def _data(
        self,
        node: _Node,
        device: str,
        ts_ms: int,
        metrics: Iterable[Payload.Metric],
        received_at: float,
        m: Message,
    ) -> None:
        aliases, names = node.aliases, node.names
        default_ts = ts_ms / 1000.0 if ts_ms else received_at
        if not abs(default_ts - received_at) < MAX_TS_SKEW_S:
            m.error = PayloadError("bad_timestamp", f"payload timestamp {ts_ms} ms")
            return
        values = m.values
        isfinite, numeric = math.isfinite, _NUMERIC_FIELDS
        for metric in metrics:
            name = metric.name
            known = names.get((device, name)) if name else aliases.get(metric.alias)
            if known is None:
                if name == BDSEQ_METRIC or name.startswith("Node Control/"):
                    continue
                self.counters.unknown_aliases += 1
                what = f"metric {name[:64]!r}" if name else f"alias {metric.alias}"
                m.error = PayloadError("unknown_alias", f"{what} not in the birth of {node.id}")
                self._ask_rebirth(node, received_at, m)
                continue
            kind = metric.WhichOneof("value")  # None: a null value
            if kind not in numeric or metric.is_historical:
                continue
            sid, unit, bits = known
            v = float(getattr(metric, kind))
            if bits and v >= _HALF[bits]:  # two's complement in an unsigned field
                v -= _FULL[bits]
            elif not isfinite(v):
                m.error = PayloadError("non_finite", f"{sid}: {v}")
                continue
            ts_metric = metric.timestamp
            if ts_metric:
                ts = ts_metric / 1000.0
                if not abs(ts - received_at) < MAX_TS_SKEW_S:
                    m.error = PayloadError("bad_timestamp", f"{sid}: {ts_metric} ms")
                    continue
                values.append((sid, ts, v, unit))
            else:
                values.append((sid, default_ts, v, unit))

    def _ask_rebirth(self, node: _Node, now: float, m: Message) -> None:
        if not self.rebirth or now < node.next_rebirth:
            return
        node.next_rebirth = now + self.rebirth_interval
        self.counters.rebirths_requested += 1
        m.rebirth = (f"{NAMESPACE}/{node.group}/NCMD/{node.node}", rebirth_request(now))


_KINDS: Final = frozenset(("NBIRTH", "NDEATH", "NDATA", "DBIRTH", "DDEATH", "DDATA"))
_NUMERIC_FIELDS: Final = frozenset(
    ("int_value", "long_value", "float_value", "double_value", "boolean_value")
)
_HALF: Final = {32: 2.0**31, 64: 2.0**63}
_FULL: Final = {32: 2.0**32, 64: 2.0**64}


def _route(topic: str) -> _Route:
    """What a topic in the namespace is (see :data:`_Route`)."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == NAMESPACE and parts[1] == "STATE":
        return ""  # a host application's state
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
        return "not a Sparkplug B topic"
    if not all(p and not _FORBIDDEN.intersection(p) for p in parts):
        return "not a Sparkplug B topic"
    _, group, kind, node_id, *rest = parts
    device = rest[0] if rest else ""
    if kind in ("NCMD", "DCMD"):  # commands to the node (our rebirth requests among them)
        return ""
    if kind not in _KINDS or (kind[0] == "D") != bool(device):
        return f"Sparkplug message type {kind!r}"
    return (kind, (group, node_id), device)


def _int(metric: Payload.Metric) -> int:
    kind = metric.WhichOneof("value")
    return int(getattr(metric, kind)) if kind in ("int_value", "long_value") else -1


def _properties(props: Payload.PropertySet) -> tuple[str, float, float]:
    """Unit, low and high from a metric's properties (``engUnit``, ``engLow``, ``engHigh``)."""
    unit, low, high = "", math.nan, math.nan
    for key, value in zip(props.keys, props.values, strict=False):
        kind = value.WhichOneof("value")
        if kind is None:
            continue
        got = getattr(value, kind)
        if key in _UNIT_KEYS and kind == "string_value":
            unit = str(got)[:32]
        elif kind in ("int_value", "long_value", "float_value", "double_value"):
            if key in _LOW_KEYS:
                low = float(got)
            elif key in _HIGH_KEYS:
                high = float(got)
    return unit, low, high


# ---- payloads an edge node sends (the simulator's and the tests') and the host's NCMD ------
def _metric(
    out: Payload.Metric, name: str, alias: int | None, datatype: int, value: float | None
) -> None:
    if name:
        out.name = name
    if alias is not None:
        out.alias = alias
    out.datatype = datatype
    if value is None:
        out.is_null = True
    elif datatype == BOOLEAN:
        out.boolean_value = bool(value)
    elif datatype == FLOAT:
        out.float_value = float(value)
    elif datatype == DOUBLE:
        out.double_value = float(value)
    elif datatype in (INT64, UINT64):
        out.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    else:
        out.int_value = int(value) & 0xFFFFFFFF


def node_birth(
    *,
    bdseq: int,
    seq: int = 0,
    metrics: Sequence[tuple[str, int, int, float | None, str]] = (),
    ts: float | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> bytes:
    """An NBIRTH payload: ``metrics`` are ``(name, alias, datatype, value, unit)`` (value
    None: a null value), ``ranges`` name → (low, high); :func:`device_birth` for a DBIRTH."""
    p = _birth(metrics, ts, seq, ranges)
    _metric(p.metrics.add(), BDSEQ_METRIC, None, UINT64, bdseq)
    _metric(p.metrics.add(), REBIRTH_METRIC, None, BOOLEAN, False)
    return p.SerializeToString()


def device_birth(
    *,
    seq: int,
    metrics: Sequence[tuple[str, int, int, float | None, str]],
    ts: float | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> bytes:
    return _birth(metrics, ts, seq, ranges).SerializeToString()


def _birth(
    metrics: Sequence[tuple[str, int, int, float | None, str]],
    ts: float | None,
    seq: int,
    ranges: dict[str, tuple[float, float]] | None,
) -> Payload:
    p = Payload(timestamp=_ms(ts), seq=seq)
    for name, alias, datatype, value, unit in metrics:
        metric = p.metrics.add()
        _metric(metric, name, alias, datatype, value)
        if unit:
            metric.properties.keys.append("engUnit")
            metric.properties.values.add(type=12, string_value=unit)
        if ranges and name in ranges:
            low, high = ranges[name]
            metric.properties.keys.extend(("engLow", "engHigh"))
            metric.properties.values.add(type=DOUBLE, double_value=low)
            metric.properties.values.add(type=DOUBLE, double_value=high)
    return p


def data(*, seq: int, metrics: Sequence[tuple[int, int, float]], ts: float | None = None) -> bytes:
    """An NDATA/DDATA payload: ``metrics`` are ``(alias, datatype, value)``."""
    p = Payload(timestamp=_ms(ts), seq=seq)
    for alias, datatype, value in metrics:
        _metric(p.metrics.add(), "", alias, datatype, value)
    return p.SerializeToString()


def node_death(*, bdseq: int) -> bytes:
    p = Payload()
    _metric(p.metrics.add(), BDSEQ_METRIC, None, UINT64, bdseq)
    return p.SerializeToString()


def device_death(*, seq: int, ts: float | None = None) -> bytes:
    return Payload(timestamp=_ms(ts), seq=seq).SerializeToString()


def rebirth_request(now: float) -> bytes:
    """The NCMD payload asking an edge node to publish its births again."""
    p = Payload(timestamp=_ms(now))
    _metric(p.metrics.add(), REBIRTH_METRIC, None, BOOLEAN, True)
    return p.SerializeToString()


def is_rebirth_request(payload: bytes) -> bool:
    """Whether an NCMD payload asks for a rebirth (what an edge node checks)."""
    try:
        p = Payload.FromString(payload)
    except DecodeError:
        return False
    return any(m.name == REBIRTH_METRIC and m.boolean_value for m in p.metrics)


def state_topic(host_id: str) -> str:
    """The host application's STATE topic (specification 3.0: ``spBv1.0/STATE/{host_id}``)."""
    return f"{NAMESPACE}/STATE/{host_id}"


def state_payload(online: bool, ts: float) -> bytes:
    """The STATE payload: ``{"online": …, "timestamp": ms}`` (the birth and its will carry the
    same timestamp)."""
    return b'{"online":%s,"timestamp":%d}' % (b"true" if online else b"false", _ms(ts))


def _ms(ts: float | None) -> int:
    return round((time.time() if ts is None else ts) * 1000)
