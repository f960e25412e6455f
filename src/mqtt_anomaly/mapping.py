"""The ``[mapping]`` section: topic levels to tags, payload fields to readings. No I/O.

A rule names a topic pattern whose levels become tags, and where the values, the timestamp,
the seq and the units are in the payload:

>>> rule = compile_rule(
...     topic="plant/{site}/{line}/{asset}",
...     values={"temperature": "$.data.temp", "pressure": "$.data.p"},
...     timestamp="$.ts",
...     units={"temperature": "C", "pressure": "bar"},
... )
>>> tags = rule.match("plant/berlin/line-1/press-7")
>>> tags
{'site': 'berlin', 'line': 'line-1', 'asset': 'press-7'}
>>> msg = b'{"ts": 1700000000000, "data": {"temp": 21.5, "p": 3.25}}'
>>> values, errors = rule.decode(msg, 1700000000.5)
>>> [(rule.sensor_id(tags, q), ts, v, u) for q, ts, v, u, _ in values], errors
([('berlin/line-1/press-7/temperature', 1700000000.0, 21.5, 'C'), \
('berlin/line-1/press-7/pressure', 1700000000.0, 3.25, 'bar')], [])

Everything is checked when the configuration is read (:func:`compile_rule` raises
``ValueError`` naming what is wrong); :meth:`Rule.decode` never raises but
:class:`~mqtt_anomaly.errors.PayloadError`, whose reason goes to the dead-letter topic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec

from .errors import PayloadError
from .messages import MAX_TS_SKEW_S, NO_SEQ, parse_number
from .topics import MAX_SENSOR_ID_LENGTH

TAGS: Final = ("site", "area", "line", "asset", "sensor", "quantity")
"""The tags a topic level (or a fixed ``tags`` entry) can give, in the order a default sensor
id joins them."""
TimestampFormat = Literal["auto", "s", "ms", "iso8601"]
PathPart = str | int
Path = tuple[PathPart, ...]

_PATH_TOKEN: Final = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]|\[\"([^\"]*)\"\]")
_TAG_LEVEL: Final = re.compile(r"\{([a-z_]+)\}")
_FIELD: Final = re.compile(r"\{([a-z_]+)\}")
_MS_ABOVE: Final = 1e11  # "auto": an epoch number above this is in milliseconds (year 5138 in s)
_FORBIDDEN: Final = frozenset("+#\x00")
_generic: Final = msgspec.json.Decoder()

# one decoded value: (quantity, ts, value, unit, seq)
Value = tuple[str, float, float, str, int]


def parse_path(path: str) -> Path:
    """A JSON path (``$.a.b[0]``, ``a.b``, ``$["odd key"]``) as keys and indexes.

    >>> parse_path("$.data.values[2].v")
    ('data', 'values', 2, 'v')
    >>> parse_path('a["x.y"]')
    ('a', 'x.y')
    """
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    elif text and text[0] not in ".[":
        text = "." + text
    if not text:
        raise ValueError(f"empty JSON path {path!r}")
    parts: list[PathPart] = []
    pos = 0
    while pos < len(text):
        m = _PATH_TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"not a JSON path: {path!r} (at {text[pos:]!r})")
        name, index, quoted = m.groups()
        parts.append(int(index) if index is not None else (name if name is not None else quoted))
        pos = m.end()
    return tuple(parts)


def _get(doc: Any, path: Path) -> Any:
    """The value at ``path`` in a decoded JSON document, or None."""
    for part in path:
        if isinstance(part, str):
            if type(doc) is not dict:
                return None
            doc = doc.get(part)
        else:
            if type(doc) is not list or part >= len(doc):
                return None
            doc = doc[part]
    return doc


def _number(x: Any) -> float | None:
    """A finite number from a JSON value (numbers, numeric strings, booleans as 0/1)."""
    t = type(x)
    if t is float or t is int:
        v = float(x)
    elif t is bool:
        return 1.0 if x else 0.0
    elif t is str:
        try:
            v = float(x)
        except ValueError:
            return None
    else:
        return None
    return v if math.isfinite(v) else None


def parse_timestamp(raw: Any, fmt: TimestampFormat) -> float | None:
    """Epoch seconds from a timestamp in seconds, milliseconds or ISO 8601 (None: not one).

    >>> parse_timestamp(1700000000250, "auto"), parse_timestamp("1700000000.5", "s")
    (1700000000.25, 1700000000.5)
    >>> parse_timestamp("2023-11-14T22:13:20Z", "auto"), parse_timestamp("x", "auto")
    (1700000000.0, None)
    """
    if isinstance(raw, str) and fmt in ("auto", "iso8601"):
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            if fmt == "iso8601":
                return None
        else:
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            return dt.timestamp()
    if fmt == "iso8601" or isinstance(raw, bool):
        return None
    v = _number(raw)
    if v is None:
        return None
    if fmt == "ms" or (fmt == "auto" and abs(v) > _MS_ABOVE):
        v /= 1000.0
    return v


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """A topic pattern: literal levels, ``+`` (any level), ``{tag}`` (any level, kept as that
    tag) and a last ``#`` (any rest).

    >>> p = TopicPattern.parse("plant/{site}/+/{asset}/#")
    >>> p.filter, p.match("plant/b1/x/m7/a/b"), p.match("plant/b1/x")
    ('plant/+/+/+/#', {'site': 'b1', 'asset': 'm7'}, None)
    """

    levels: tuple[str, ...]
    tags: tuple[tuple[int, str], ...]  # (level index, tag)
    rest: bool  # a last '#'

    @classmethod
    def parse(cls, pattern: str) -> TopicPattern:
        if not pattern:
            raise ValueError("empty topic pattern")
        levels = pattern.split("/")
        rest = levels[-1] == "#"
        if rest:
            levels = levels[:-1]
        tags: list[tuple[int, str]] = []
        for i, lvl in enumerate(levels):
            m = _TAG_LEVEL.fullmatch(lvl)
            if m is not None:
                tag = m.group(1)
                if tag not in TAGS:
                    raise ValueError(
                        f"unknown tag {{{tag}}} in {pattern!r} (tags: {', '.join(TAGS)})"
                    )
                if any(t == tag for _, t in tags):
                    raise ValueError(f"tag {{{tag}}} twice in {pattern!r}")
                tags.append((i, tag))
            elif "{" in lvl or "}" in lvl:
                raise ValueError(f"a tag must fill a whole level: {pattern!r}")
            elif ("+" in lvl and lvl != "+") or "#" in lvl:
                raise ValueError(f"'+' fills a whole level and '#' is the last: {pattern!r}")
        return cls(tuple(levels), tuple(tags), rest)

    @property
    def filter(self) -> str:
        """The MQTT subscription filter that covers the pattern."""
        levels = ["+" if i in dict(self.tags) else lvl for i, lvl in enumerate(self.levels)]
        return "/".join([*levels, "#"] if self.rest else levels)

    def match(self, topic: str) -> dict[str, str] | None:
        """The tags of ``topic``, or None when it does not match."""
        got = topic.split("/")
        n = len(self.levels)
        if len(got) < n or (len(got) > n and not self.rest) or (self.rest and len(got) == n):
            return None
        tagged = dict(self.tags)
        out: dict[str, str] = {}
        for i, lvl in enumerate(self.levels):
            value = got[i]
            if i in tagged:
                if not value or _FORBIDDEN.intersection(value) or not value.isprintable():
                    return None
                out[tagged[i]] = value
            elif lvl not in ("+", value):
                return None
        return out


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """One compiled mapping rule (:func:`compile_rule`)."""

    pattern: TopicPattern
    sensor: str  # the sensor id template, of tags
    fmt: Literal["json", "number"]
    values: tuple[tuple[str, Path], ...]  # (quantity, path); quantity "" = the topic's
    each: Path | None  # an object whose numeric members are values, quantity = member name
    timestamp: Path | None
    timestamp_format: TimestampFormat
    seq: Path | None
    unit: str
    unit_path: Path | None
    units: Mapping[str, str]
    fixed: Mapping[str, str]  # fixed tags
    _names: tuple[str, ...] = field(default=())  # the tags the sensor template uses

    @property
    def filter(self) -> str:
        return self.pattern.filter

    def match(self, topic: str) -> dict[str, str] | None:
        """The tags of ``topic`` (with the rule's fixed tags), None if the rule does not apply."""
        tags = self.pattern.match(topic)
        if tags is None:
            return None
        return {**self.fixed, **tags} if self.fixed else tags

    def sensor_id(self, tags: Mapping[str, str], quantity: str) -> str | None:
        """The sensor id for one value; None when it is not a valid id."""
        if quantity:
            tags = {**tags, "quantity": quantity}
        try:
            sid = self.sensor.format_map(tags)
        except KeyError:
            return None
        if not 0 < len(sid) <= MAX_SENSOR_ID_LENGTH or "//" in sid or sid[0] == "/":
            return None
        if sid[-1] == "/" or _FORBIDDEN.intersection(sid) or not sid.isprintable():
            return None
        return sid

    def decode(self, payload: bytes, received_at: float) -> tuple[list[Value], list[str]]:
        """The values of one message, and the paths it lacked (or held no number at).

        Raises :class:`PayloadError` for a message that gives no value at all (``not_json``,
        ``missing_field``, ``invalid_field``, ``bad_timestamp``)."""
        if self.fmt == "number":
            v = parse_number(payload)
            q = self.values[0][0] if self.values else ""
            return [(q, received_at, v, self.units.get(q, self.unit), NO_SEQ)], []
        try:
            doc = _generic.decode(payload)
        except RecursionError as exc:
            raise PayloadError("not_json", "nested too deeply") from exc
        except msgspec.DecodeError as exc:
            raise PayloadError("not_json", str(exc)) from exc
        ts = received_at
        if self.timestamp is not None:
            raw = _get(doc, self.timestamp)
            if raw is None:
                raise PayloadError("missing_field", f"timestamp {_show(self.timestamp)}")
            got = parse_timestamp(raw, self.timestamp_format)
            if got is None or not abs(got - received_at) < MAX_TS_SKEW_S:
                raise PayloadError("bad_timestamp", f"{_show(self.timestamp)}: {raw!r}"[:120])
            ts = got
        seq = NO_SEQ
        if self.seq is not None:
            raw = _get(doc, self.seq)
            if raw is not None:
                if type(raw) is not int or not 0 <= raw < 2**62:
                    raise PayloadError("invalid_field", f"seq {_show(self.seq)}: {raw!r}"[:120])
                seq = raw
        unit = self.unit
        if self.unit_path is not None:
            raw = _get(doc, self.unit_path)
            if isinstance(raw, str):
                unit = raw[:32]
        units = self.units
        out: list[Value] = []
        missing: list[str] = []
        for quantity, path in self.values:
            got = _number(_get(doc, path))
            if got is None:
                missing.append(_show(path))
            else:
                out.append((quantity, ts, got, units.get(quantity, unit), seq))
        if self.each is not None:
            members = _get(doc, self.each)
            if type(members) is not dict:
                missing.append(_show(self.each))
            else:
                for quantity, raw in members.items():
                    got = _number(raw)
                    if got is None or not quantity or _FORBIDDEN.intersection(quantity):
                        missing.append(_show((*self.each, quantity)))
                    else:
                        out.append((quantity, ts, got, units.get(quantity, unit), seq))
        if not out:
            reason = "missing_field" if self.values or self.each else "invalid_field"
            raise PayloadError(reason, "no value at " + ", ".join(missing))
        return out, missing


def _show(path: Path) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def compile_rule(
    *,
    topic: str,
    sensor: str = "",
    format: Literal["json", "number"] = "json",
    value: str = "",
    values: Mapping[str, str] | None = None,
    each: str = "",
    timestamp: str = "",
    timestamp_format: TimestampFormat = "auto",
    seq: str = "",
    unit: str = "",
    units: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Rule:
    """Check and compile one rule; ``ValueError`` naming the field (``field: why``)."""
    try:
        pattern = TopicPattern.parse(topic)
    except ValueError as exc:
        raise ValueError(f"topic: {exc}") from None
    values = dict(values or {})
    units = dict(units or {})
    fixed = dict(tags or {})
    for tag, v in fixed.items():
        if tag not in TAGS:
            raise ValueError(f"tags: unknown tag {tag!r} (tags: {', '.join(TAGS)})")
        if not v or "/" in v or _FORBIDDEN.intersection(v):
            raise ValueError(f"tags.{tag}: not a topic level: {v!r}")
    topic_tags = {t for _, t in pattern.tags}
    if topic_tags & set(fixed):
        raise ValueError(f"tags: {sorted(topic_tags & set(fixed))} also come from the topic")
    sources = sum(bool(x) for x in (value, values, each))
    if format == "number":
        if sources or timestamp or seq:
            raise ValueError("format: a bare number has no value, values, each, timestamp or seq")
    elif sources == 0:
        raise ValueError("value: one of value, values or each says where the value is")
    pairs: list[tuple[str, Path]] = []
    if value:
        pairs.append(("", _path(value, "value")))
    for quantity, path in values.items():
        if not quantity or "/" in quantity or _FORBIDDEN.intersection(quantity):
            raise ValueError(f"values: {quantity!r} is not a quantity name (one topic level)")
        pairs.append((quantity, _path(path, f"values.{quantity}")))
    if (values or each) and "quantity" in topic_tags:
        raise ValueError("values: the quantity comes from the topic and from the payload")
    names: set[str] = topic_tags | set(fixed)
    if values or each:
        names.add("quantity")
    if sensor:
        used = set(_FIELD.findall(sensor))
        unknown = used - names
        if unknown:
            raise ValueError(
                f"sensor: {{{sorted(unknown)[0]}}} is not given by the topic, tags or values"
            )
        try:
            sensor.format_map(dict.fromkeys(used, "x"))
        except (ValueError, KeyError, IndexError) as exc:
            raise ValueError(f"sensor: not a template of {{tag}} fields: {exc}") from None
        if (values or each) and "quantity" not in used:
            raise ValueError("sensor: several values per message need {quantity} in the id")
    else:
        order = [t for t in TAGS if t in names]
        if not order:
            raise ValueError("sensor: no tag in the topic; give a sensor id template")
        sensor = "/".join(f"{{{t}}}" for t in order)
    for q in units:
        if values and q not in values and not each:
            raise ValueError(f"units.{q}: no such value")
    unit_path = None
    if unit.startswith("$"):
        unit_path = _path(unit, "unit")
        unit = ""
    return Rule(
        pattern=pattern,
        sensor=sensor,
        fmt=format,
        values=tuple(pairs),
        each=_path(each, "each") if each else None,
        timestamp=_path(timestamp, "timestamp") if timestamp else None,
        timestamp_format=timestamp_format,
        seq=_path(seq, "seq") if seq else None,
        unit=unit,
        unit_path=unit_path,
        units=units,
        fixed=fixed,
        _names=tuple(sorted(names)),
    )


def _path(path: str, key: str) -> Path:
    try:
        return parse_path(path)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


@dataclass(frozen=True, slots=True, eq=False)
class TopicMap:
    """The compiled rules, tried in order; the first whose topic pattern matches applies."""

    rules: tuple[Rule, ...]

    @property
    def filters(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.filter for r in self.rules))

    def match(self, topic: str) -> tuple[Rule, dict[str, str]] | None:
        for rule in self.rules:
            tags = rule.match(topic)
            if tags is not None:
                return rule, tags
        return None


def compile_rules(rules: Sequence[Mapping[str, Any]]) -> TopicMap:
    """Compile the ``[[mapping.rules]]`` tables (``ValueError``: ``rules.N.field: why``)."""
    out = []
    for i, r in enumerate(rules):
        try:
            out.append(compile_rule(**r))
        except ValueError as exc:
            raise ValueError(f"rules.{i}.{exc}") from None
    return TopicMap(tuple(out))
