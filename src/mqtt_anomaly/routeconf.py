"""Alert routing settings: ``[[routes]]`` and ``[receivers.NAME]`` in the TOML file.

A **route** picks alert events by severity, detector, sensor / asset / group glob patterns and
tags, and sends them to one or more **receivers**, grouped (one message per incident, not per
sensor), repeated while the incident lasts and escalated from warning to critical when held.
Routes are tried in order; the first that matches takes the alert unless it says
``continue = true``. Everything is checked when the settings load: a route naming an unknown
receiver, a bad pattern or a receiver without its URL stops the command with one line naming
the key (``routes.0.receivers: unknown receiver 'pager'``). See ``docs/alerting.md``.

>>> r = Route(receivers=("ops",), severity=("critical",), sensors=("line-1-*",))
>>> r.matches("line-1-T07", "threshold", "critical", {}, "factory")
True
>>> r.matches("line-2-T07", "threshold", "critical", {}, "factory")
False
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .errors import ConfigError

__all__ = [
    "GROUP_LABELS",
    "ReceiverSettings",
    "Route",
    "Selector",
    "SelectorIndex",
    "check_routes",
    "read_secret",
]

GROUP_LABELS = ("route", "sensor", "detector", "severity", "asset", "group")
"""Labels a route may group by (``group_by``), besides ``tag:NAME`` for any tag."""
ReceiverType = Literal["webhook", "alertmanager", "email", "slack", "teams"]


def read_secret(value: SecretStr | None, file: Path | None, key: str) -> str | None:
    """``value``, else the first line of ``file`` (named ``key`` in the error), else None."""
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        try:
            return file.read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError(f"{key}: cannot read: {exc}") from exc
    return None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _globs(v: tuple[str, ...]) -> tuple[str, ...]:
    for p in v:
        if not p or "\x00" in p:
            raise ValueError(f"an empty or invalid pattern: {p!r}")
        try:
            re.compile(fnmatch.translate(p))
        except re.error as exc:  # pragma: no cover - fnmatch escapes nearly everything
            raise ValueError(f"bad pattern {p!r}: {exc}") from exc
    return v


class Selector(_Model):
    """Which sensors something applies to: every field left empty matches anything; several
    values in one field are alternatives; the fields together must all match."""

    sensors: tuple[str, ...] = ()
    """Glob patterns on the sensor id (``line-1-*``)."""
    assets: tuple[str, ...] = ()
    """Glob patterns on the sensor's ``asset`` tag (mapped sensors)."""
    groups: tuple[str, ...] = ()
    """Glob patterns on the sensor's group (``alerts.group_pattern``, as for floods)."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Tag name → glob pattern its value must match (``{ site = "berlin" }``)."""

    @field_validator("sensors", "assets", "groups")
    @classmethod
    def _check_globs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _globs(v)

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, v: dict[str, str]) -> dict[str, str]:
        _globs(tuple(v.values()))
        return v

    @cached_property
    def _patterns(self) -> dict[str, re.Pattern[str] | None]:
        out = {"sensor": _rx(self.sensors), "asset": _rx(self.assets), "group": _rx(self.groups)}
        out.update({f"tag:{k}": _rx((p,)) for k, p in self.tags.items()})
        return out

    def selects(self, sensor: str, tags: Mapping[str, str], group: str) -> bool:
        """True when ``sensor`` (with its tags and group) is one of these."""
        values = {"sensor": sensor, "asset": tags.get("asset"), "group": group}
        for key, rx in self._patterns.items():
            if rx is None:
                continue
            value = tags.get(key[4:]) if key.startswith("tag:") else values[key]
            if value is None or rx.fullmatch(value) is None:
                return False
        return True


TagsOf = Callable[[str], Mapping[str, str] | None]
S = TypeVar("S", bound=Selector)


class SelectorIndex(Generic[S]):
    """Which of ``items`` select a sensor, remembered per sensor id (at most a million)."""

    def __init__(
        self,
        items: Sequence[S] = (),
        *,
        tags_of: TagsOf = lambda _sid: None,
        group_of: Callable[[str], str] = lambda _sid: "",
    ) -> None:
        self.items = tuple(items)
        self.tags_of = tags_of
        self.group_of = group_of
        self._of: dict[str, tuple[int, ...]] = {}

    def reset(self, items: Sequence[S]) -> None:
        """New items: every sensor is looked at again."""
        self.items = tuple(items)
        self._of.clear()

    def of(self, sensor: str) -> tuple[int, ...]:
        """The indices of the items that select ``sensor``."""
        found = self._of.get(sensor)
        if found is None:
            tags = self.tags_of(sensor) or {}
            group = self.group_of(sensor)
            found = tuple(i for i, x in enumerate(self.items) if x.selects(sensor, tags, group))
            if len(self._of) < 1_000_000:
                self._of[sensor] = found
        return found


def _rx(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)) if patterns else None


class Route(Selector):
    """One ``[[routes]]`` entry: a :class:`Selector` of sensors, and which of their alerts
    (severity, detector) go to which receivers, how grouped."""

    name: str = ""
    receivers: tuple[str, ...]
    severity: tuple[Literal["warning", "critical"], ...] = ()
    detectors: tuple[str, ...] = ()
    """Glob patterns on the detector's name."""
    group_by: tuple[str, ...] = ("route", "detector", "group")
    group_wait: float = Field(10.0, ge=0, le=86_400)
    """Seconds a new incident gathers alerts before its first message."""
    group_interval: float = Field(60.0, gt=0, le=86_400)
    """Seconds at least between two messages of one incident that changed."""
    repeat_interval: float = Field(3600.0, gt=0, le=30 * 86_400)
    """Seconds after which an unchanged, still firing incident is sent again."""
    escalate_after: float = Field(0.0, ge=0, le=30 * 86_400)
    """A warning still active after this many seconds becomes critical (0: never)."""
    max_alerts: int = Field(100, ge=1, le=100_000)
    """Alerts listed in one message at most (the counts always cover all): a flood of 70,000
    silent sensors is one message of 100 alerts and the totals."""
    continue_: bool = Field(False, alias="continue")
    """Also try the routes after this one when it matches."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("receivers")
    @classmethod
    def _check_receivers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("a route sends to at least one receiver")
        return v

    @field_validator("detectors")
    @classmethod
    def _check_detectors(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _globs(v)

    @field_validator("group_by")
    @classmethod
    def _check_group_by(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for label in v:
            if label not in GROUP_LABELS and not (label.startswith("tag:") and label[4:]):
                raise ValueError(
                    f"cannot group by {label!r}: one of {', '.join(GROUP_LABELS)} or tag:NAME"
                )
        return v

    @cached_property
    def _detector_rx(self) -> re.Pattern[str] | None:
        return _rx(self.detectors)

    def matches(
        self,
        sensor: str,
        detector: str,
        severity: str,
        tags: Mapping[str, str],
        group: str,
    ) -> bool:
        """True when an alert of ``sensor`` with these properties is this route's."""
        if self.severity and severity not in self.severity:
            return False
        rx = self._detector_rx
        if rx is not None and rx.fullmatch(detector) is None:
            return False
        return self.selects(sensor, tags, group)


class ReceiverSettings(_Model):
    """One ``[receivers.NAME]`` entry: where a route's messages go."""

    type: ReceiverType
    url: str = ""
    """webhook, slack, teams: the URL posted to; alertmanager: its base URL
    (``http://alertmanager:9093``)."""
    secret: SecretStr | None = None
    """webhook: the HMAC-SHA256 key of the ``X-Mqtt-Anomaly-Signature`` header."""
    secret_file: Path | None = None
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    timeout: float = Field(10.0, gt=0, le=300)
    max_queue: int = Field(10_000, ge=1, le=10_000_000)
    """Messages kept (on disk, under the state dir) while the receiver is down; beyond, the
    oldest are dropped and counted."""
    retry_initial: float = Field(1.0, gt=0, le=3600)
    retry_max: float = Field(300.0, gt=0, le=86_400)
    # email
    smtp_host: str = ""
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_tls: Literal["none", "starttls", "ssl"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    sender: str = ""
    to: tuple[str, ...] = ()

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if v and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"must be an http:// or https:// URL, got {v!r}")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _check_type(self) -> ReceiverSettings:
        if self.type == "email":
            if not self.smtp_host:
                raise ValueError("an email receiver needs smtp_host")
            if not self.sender or not self.to:
                raise ValueError("an email receiver needs sender and to")
        elif not self.url:
            raise ValueError(f"a {self.type} receiver needs url")
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must be at least retry_initial")
        return self

    def secret_key(self, name: str) -> str | None:
        return read_secret(self.secret, self.secret_file, f"receivers.{name}.secret_file")

    def smtp_password(self, name: str) -> str | None:
        return read_secret(self.password, self.password_file, f"receivers.{name}.password_file")


def check_routes(routes: tuple[Route, ...], receivers: Mapping[str, ReceiverSettings]) -> None:
    """Raise ValueError naming ``routes.N.receivers`` for a receiver that is not declared."""
    for i, route in enumerate(routes):
        for name in route.receivers:
            if name not in receivers:
                raise ValueError(f"routes.{i}.receivers: unknown receiver {name!r}")
    for name in receivers:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise ValueError(f"receivers.{name}: a name of 1-64 of A-Z a-z 0-9 _ . -")
