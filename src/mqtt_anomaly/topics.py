"""The topic scheme: templates with ``{sensor_id}``, wildcard filters, sensor id from a topic."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

MAX_SENSOR_ID_LENGTH = 128
_FORBIDDEN_IN_ID = frozenset("/+#\x00")


def validate_template(template: str, *, key: str) -> str:
    """Check that ``template`` names exactly one ``{sensor_id}`` level and no wildcard."""
    levels = template.split("/")
    if levels.count("{sensor_id}") != 1:
        raise ConfigError(f"{key}: needs one whole level '{{sensor_id}}': {template!r}")
    if any("+" in lvl or "#" in lvl for lvl in levels):
        raise ConfigError(f"{key}: a publish topic cannot contain wildcards: {template!r}")
    return template


def validate_filter(topic_filter: str, *, key: str) -> str:
    """Check an MQTT topic filter: '+' and '#' only as whole levels, '#' only last."""
    if not topic_filter:
        raise ConfigError(f"{key}: empty topic filter")
    levels = topic_filter.split("/")
    for i, lvl in enumerate(levels):
        if ("+" in lvl and lvl != "+") or ("#" in lvl and lvl != "#"):
            raise ConfigError(f"{key}: wildcards must fill a whole level: {topic_filter!r}")
        if lvl == "#" and i != len(levels) - 1:
            raise ConfigError(f"{key}: '#' must be the last level: {topic_filter!r}")
    return topic_filter


def valid_sensor_id(sensor_id: str) -> bool:
    """A sensor id is a non-empty topic level without wildcards or NUL, of bounded length."""
    return (
        0 < len(sensor_id) <= MAX_SENSOR_ID_LENGTH
        and not _FORBIDDEN_IN_ID.intersection(sensor_id)
        and sensor_id.isprintable()
    )


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    """A topic with one ``{sensor_id}`` level, e.g. ``factory/{sensor_id}/temperature``.

    >>> t = TopicTemplate("factory/{sensor_id}/temperature")
    >>> t.format("SENSOR-01")
    'factory/SENSOR-01/temperature'
    >>> t.wildcard
    'factory/+/temperature'
    >>> t.sensor_id("factory/SENSOR-01/temperature")
    'SENSOR-01'
    >>> t.sensor_id("factory/SENSOR-01/humidity") is None
    True
    """

    template: str

    def __post_init__(self) -> None:
        validate_template(self.template, key="topic")

    @property
    def _parts(self) -> tuple[str, str]:
        prefix, _, suffix = self.template.partition("{sensor_id}")
        return prefix, suffix

    def format(self, sensor_id: str) -> str:
        prefix, suffix = self._parts
        return f"{prefix}{sensor_id}{suffix}"

    @property
    def wildcard(self) -> str:
        return self.template.replace("{sensor_id}", "+")

    def sensor_id(self, topic: str) -> str | None:
        """The sensor id if ``topic`` matches this template, else None."""
        prefix, suffix = self._parts
        if (
            len(topic) > len(prefix) + len(suffix)
            and topic.startswith(prefix)
            and topic.endswith(suffix)
        ):
            sid = topic[len(prefix) : len(topic) - len(suffix)]
            if "/" not in sid and valid_sensor_id(sid):
                return sid
        return None
