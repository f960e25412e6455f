"""Wire types and their codec: ``Reading``, ``Alert``, ``DeadLetter``.

Untrusted bytes become a :class:`Reading` through :func:`decode_reading`, which either returns a
valid reading or raises :class:`~mqtt_anomaly.errors.PayloadError` with a short reason code.
Nothing else escapes from it, whatever the input.

>>> r = decode_reading(b'{"sensor_id": "S1", "ts": 1.5, "value": 24.5, "seq": 7}', "S1", 2.0)
>>> (r.sensor_id, r.ts, r.value, r.seq)
('S1', 1.5, 24.5, 7)
>>> decode_reading(b"24.5", "S1", 2.0).ts
2.0
"""

from __future__ import annotations

import math
from typing import Final, Literal, get_args

import msgspec

from .errors import PayloadError

NO_SEQ: Final = -1

Severity = Literal["warning", "critical"]
AlertState = Literal["raised", "cleared"]
HealthState = Literal["ok", "anomalous", "offline", "silent"]
"""A sensor's health, as the pipeline derives it from its active alerts and the service
publishes it (retained) on the sensor's health topic: ``offline`` after its Last Will,
``anomalous`` while a detector's alert is active, ``silent`` while only the silence alert is."""
HEALTH_STATES: Final[tuple[HealthState, ...]] = get_args(HealthState)


class Reading(msgspec.Struct, frozen=True, gc=False):
    """One sensor reading, as published by a sensor and as processed by the service."""

    sensor_id: str
    ts: float
    value: float
    unit: str = "C"
    seq: int = NO_SEQ


class _WireReading(msgspec.Struct, gc=False):
    value: float
    sensor_id: str | None = None
    ts: float | None = None
    unit: str | None = None
    seq: int | None = None


class Alert(msgspec.Struct, frozen=True, gc=False):
    """An alert event: a detector raised or cleared an alert for a sensor."""

    sensor_id: str
    detector: str
    severity: Severity
    state: AlertState
    value: float | None
    score: float
    threshold: float | None
    expected_low: float | None
    expected_high: float | None
    reading_ts: float | None
    alert_ts: float
    message: str = ""
    id: str = ""
    """Deterministic identity (:func:`alert_id`): the same event raised again after a crash
    and a redelivery has the same id, so a consumer can drop the repeat."""
    asset_id: str = ""
    """The asset (a group of sensors scored together) of a multivariate alert; empty for a
    sensor's own alert."""
    contributions: dict[str, float] | None = None
    """Sensor id → share of the asset's index (summing to 1) at the row that raised it."""
    suppressed: str = ""
    """Why the alert reaches nobody (``maintenance: …``, ``gate: …``); empty: it is not
    suppressed. A suppressed alert is stored and shown, not routed to receivers."""
    shadow: str = ""
    """The label of the shadow candidate (``[shadow]``) that raised it; empty: the live
    configuration. A shadow alert goes to the shadow topic and the store only."""


def alert_id(sensor_id: str, detector: str, state: str, seq: int, ts: float | None) -> str:
    """The identity of an alert event, the same whenever the same reading raises it again.

    ``{sensor}:{detector}:{state}:{seq}@{ts}`` with the ``seq`` and timestamp of the reading that
    raised or cleared it (the timestamp tells two readings with one ``seq`` apart after the
    sensor restarted its counter); without a seq (a reading without one, silence, offline,
    eviction) ``{sensor}:{detector}:{state}:t{ts}``, with the reading's timestamp (silence: the
    last reading's; offline: the status message's receive time; eviction: its time).

    >>> alert_id("S1", "threshold", "raised", 45, 1700000000.5)
    'S1:threshold:raised:45@1700000000.5'
    >>> alert_id("S1", "offline", "raised", -1, 1700000001.0)
    'S1:offline:raised:t1700000001.0'
    """
    if seq >= 0:
        return f"{sensor_id}:{detector}:{state}:{seq}@{ts!r}"
    return f"{sensor_id}:{detector}:{state}:t{ts!r}"


class DeadLetter(msgspec.Struct, frozen=True):
    """A rejected message, as published on the dead-letter topic."""

    topic: str
    reason: str
    detail: str
    received_at: float
    payload: str
    payload_size: int


_decoder: Final = msgspec.json.Decoder(_WireReading)
_encoder: Final = msgspec.json.Encoder()
_NUMERIC_START: Final = frozenset(b"-+.0123456789")
MAX_TS_SKEW_S: Final = 10 * 365 * 86400.0


def encode(obj: msgspec.Struct) -> bytes:
    """JSON bytes for any wire type."""
    return _encoder.encode(obj)


def decode_reading(
    payload: bytes, topic_sensor_id: str, received_at: float, max_size: int = 4096
) -> Reading:
    """Decode and validate one reading payload.

    Accepts the JSON object form or a bare number (``24.5``). The sensor id comes from the
    topic; a payload naming another sensor is rejected. A missing ``ts`` is the receive time.
    """
    if len(payload) > max_size:
        raise PayloadError("oversized", f"{len(payload)} bytes > {max_size}")
    if not payload:
        raise PayloadError("empty")
    if payload[0] in _NUMERIC_START:
        return _bare_number(payload, topic_sensor_id, received_at)
    try:
        wire = _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise PayloadError("invalid_field", str(exc)) from exc
    except RecursionError as exc:
        raise PayloadError("not_json", "nested too deeply") from exc
    except msgspec.DecodeError as exc:
        try:  # a bare number with surrounding blanks, or inf/nan spelled out
            return _bare_number(payload, topic_sensor_id, received_at)
        except PayloadError as bare:
            if bare.reason == "non_finite":
                raise
        raise PayloadError("not_json", str(exc)) from exc
    # msgspec refuses numbers out of float range, and JSON has no NaN: value and ts are finite
    sid = wire.sensor_id
    if sid is not None and sid != topic_sensor_id:
        detail = f"payload says {sid!r}, topic says {topic_sensor_id!r}"
        raise PayloadError("sensor_mismatch", detail)
    ts = wire.ts
    if ts is None:
        ts = received_at
    elif not abs(ts - received_at) < MAX_TS_SKEW_S:
        raise PayloadError("bad_timestamp", repr(ts))
    seq = wire.seq
    if seq is None:
        seq = NO_SEQ
    elif not 0 <= seq < 2**62:
        raise PayloadError("invalid_field", f"seq out of range: {seq}")
    return Reading(topic_sensor_id, ts, wire.value, wire.unit or "C", seq)


def parse_number(payload: bytes, expected: str = "a number") -> float:
    """A payload that is one bare, finite number (``not_json`` naming what was ``expected``,
    or ``non_finite``, otherwise)."""
    try:
        value = float(payload)
    except ValueError as exc:
        raise PayloadError("not_json", f"not {expected}") from exc
    if not math.isfinite(value):
        raise PayloadError("non_finite", payload[:32].decode("ascii", "replace"))
    return value


def _bare_number(payload: bytes, sensor_id: str, received_at: float) -> Reading:
    return Reading(sensor_id, received_at, parse_number(payload, "a number or a JSON object"))


def dead_letter(topic: str, payload: bytes, exc: PayloadError, received_at: float) -> DeadLetter:
    """A dead-letter record for a rejected payload (the payload shown truncated and escaped)."""
    shown = payload[:256].decode("utf-8", "backslashreplace")
    return DeadLetter(topic, exc.reason, exc.detail[:200], received_at, shown, len(payload))
