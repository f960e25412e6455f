"""Configuration: one frozen settings object.

Precedence, lowest first: built-in defaults < TOML file (``--config``) < environment variables
(``MQTT_ANOMALY_<SECTION>__<KEY>``, e.g. ``MQTT_ANOMALY_BROKER__URL``) < command-line flags.
A bad value raises :class:`~mqtt_anomaly.errors.ConfigError` whose message names the key.

>>> s = load_settings(overrides={"broker": {"url": "mqtt://example.org:1884"}})
>>> (s.broker.host, s.broker.port, s.broker.tls)
('example.org', 1884, False)
"""

from __future__ import annotations

import re
import tomllib
from contextvars import ContextVar
from datetime import date
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .clusterconf import ClusterSettings
from .errors import ConfigError
from .gates import Gate, gate_names_unique
from .maintenance import Window, zone
from .mapping import TopicMap, compile_rule
from .routeconf import ReceiverSettings, Route, check_routes
from .routeconf import read_secret as _secret
from .topics import validate_filter, validate_template
from .web.settings import HttpSettings

ENV_PREFIX = "MQTT_ANOMALY_"
_SUBKEY = "\x1f"  # a validation message naming a key below its location: _SUBKEY "key: why"
_config_file: ContextVar[Path | None] = ContextVar("_config_file", default=None)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerSettings(_Section):
    """Where the MQTT broker is and how to talk to it."""

    url: str = "mqtt://localhost:1883"
    client_id: str | None = None
    keepalive: int = Field(10, ge=1, le=65535)
    qos: Literal[0, 1, 2] = 1
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    reconnect_delay: float = Field(0.5, gt=0, le=60)
    max_inflight: int = Field(1000, ge=1, le=65535)
    """QoS 1 publishes (alerts, health, dead letters) on the wire and not yet acknowledged by
    the broker; the rest wait in order in a local queue."""
    max_inflight_qos2: int = Field(20, ge=1, le=65535)
    """Of those, QoS 2 publishes (alerts with ``alerts.qos = 2``) at most: Mosquitto's
    ``max_inflight_messages`` (20 by default) bounds the QoS 2 messages it takes from us at once."""
    max_queued: int = Field(100_000, ge=1)
    """Past this many publishes waiting for the window the service stops taking readings
    (the broker keeps them) until the queue is back under half."""
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    """The MQTT version of the service's connection (``docs/plant.md#mqtt-5``)."""
    session_expiry: int = Field(86_400, ge=0, le=0xFFFFFFFF)
    """MQTT 5: seconds the broker keeps our session (and queues readings) after we are gone."""
    message_expiry: int = Field(0, ge=0, le=0xFFFFFFFF)
    """MQTT 5: seconds the broker keeps an alert for a subscriber that is away (0: no limit)."""
    unit_property: str = Field("unit", max_length=64)
    """MQTT 5: the user property of an incoming reading that names its sensor's unit
    (``docs/plant.md#mqtt-5``; empty: not read)."""
    asset_property: str = Field("asset", max_length=64)
    """MQTT 5: the user property of an incoming reading that names its sensor's asset
    (empty: not read)."""

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if "://" not in v:
            v = f"mqtt://{v}"
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"scheme must be mqtt:// or mqtts://, got {parts.scheme}://")
        if not parts.hostname:
            raise ValueError("no host in broker URL")
        if parts.username or parts.password:
            raise ValueError(
                "no credentials in the URL: use broker.username and "
                "MQTT_ANOMALY_BROKER__PASSWORD or broker.password_file"
            )
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in broker URL: {exc}") from exc
        if port is not None and not 0 < port < 65536:
            raise ValueError("port out of range")
        return v

    @model_validator(mode="after")
    def _check_properties(self) -> BrokerSettings:
        if self.unit_property and self.unit_property == self.asset_property:
            raise ValueError(f"{_SUBKEY}asset_property: the same name as unit_property")
        return self

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "localhost"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def secret_password(self) -> str | None:
        """The password from ``password`` or the first line of ``password_file``."""
        return _secret(self.password, self.password_file, "broker.password_file")


class TopicSettings(_Section):
    """The topic scheme; every template holds one ``{sensor_id}`` level."""

    readings: str = "factory/{sensor_id}/temperature"
    status: str = "factory/{sensor_id}/status"
    alerts: str = "factory/{sensor_id}/alerts"
    health: str = "factory/{sensor_id}/health"
    deadletter: str = "mqtt-anomaly/deadletter"
    floods: str = "mqtt-anomaly/floods"
    """Aggregated alerts of alert floods (QoS 1, not retained); see ``docs/alerting.md``."""
    subscribe: tuple[str, ...] = ()

    @field_validator("readings", "status", "alerts", "health")
    @classmethod
    def _check_template(cls, v: str) -> str:
        try:
            return validate_template(v, key="template")
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("template: ")) from exc

    @field_validator("floods")
    @classmethod
    def _check_topic(cls, v: str) -> str:
        if not v or "+" in v or "#" in v or "\x00" in v:
            raise ValueError(f"a publish topic, without wildcards: {v!r}")
        return v

    @field_validator("subscribe")
    @classmethod
    def _check_filters(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for f in v:
            try:
                validate_filter(f, key="filter")
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix("filter: ")) from exc
        return v

    @property
    def filters(self) -> tuple[str, ...]:
        """Topic filters to subscribe: ``subscribe`` or readings + status wildcards."""
        if self.subscribe:
            return self.subscribe
        return (
            self.readings.replace("{sensor_id}", "+"),
            self.status.replace("{sensor_id}", "+"),
        )


class FaultRates(_Section):
    """Injected faults per sensor per hour, by kind."""

    spike: float = Field(2.0, ge=0)
    level_shift: float = Field(0.5, ge=0)
    drift: float = Field(0.5, ge=0)
    stuck: float = Field(0.5, ge=0)
    noise_burst: float = Field(0.5, ge=0)
    dropout: float = Field(0.25, ge=0)
    crash: float = Field(0.0, ge=0)


class SimulatorSettings(_Section):
    """The virtual sensor fleet."""

    sensors: int = Field(5, ge=1, le=1_000_000)
    id_format: str = "SENSOR-{n:02d}"
    interval: float = Field(1.0, gt=0, le=3600)
    unit: str = "C"
    seed: int | None = None
    faults: FaultRates = FaultRates()
    buffer_size: int = Field(100_000, ge=0)
    labels_file: Path | None = None
    client_id_prefix: str = "sim-"

    @field_validator("id_format")
    @classmethod
    def _check_id_format(cls, v: str) -> str:
        try:
            v.format(n=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"must format with {{n}}: {exc}") from exc
        return v


class DetectorSettings(_Section):
    """Which detectors run, and their parameters.

    ``params`` holds per-detector keyword arguments, e.g. ``[detector.params.zscore]``
    ``alpha = 0.02``; each detector documents its own.
    """

    detectors: tuple[str, ...] = ("threshold", "zscore", "stuck")
    threshold: float = 90.0
    threshold_clear: float | None = None
    interval: float = Field(1.0, gt=0)
    silence_factor: float = Field(5.0, gt=1)
    debounce: int = Field(1, ge=1)
    clear_after: int = Field(3, ge=1)
    params: dict[str, dict[str, float | int | bool | str]] = Field(default_factory=dict)
    timezone: str = "UTC"
    """The plant's time zone (IANA name): the seasonal detector's bins are in local time."""
    holidays: tuple[date, ...] = ()
    """Dates the seasonal detector treats as the weekday ``holiday_as``."""
    holiday_as: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "sun"

    @field_validator("timezone")
    @classmethod
    def _check_zone(cls, v: str) -> str:
        zone(v)
        return v

    @model_validator(mode="after")
    def _check_clear(self) -> DetectorSettings:
        if self.threshold_clear is not None and self.threshold_clear >= self.threshold:
            raise ValueError("threshold_clear must be below threshold")
        return self

    @property
    def clear_threshold(self) -> float:
        """The value below which a threshold alert clears (2 units under the threshold)."""
        return self.threshold - 2.0 if self.threshold_clear is None else self.threshold_clear


class AlertSettings(_Section):
    """What reaches the operator: alert floods aggregated, console lines bounded."""

    flood_threshold: int = Field(50, ge=0)
    """Alert events of one detector from one group within ``flood_window`` that make a flood
    (0: no flood handling)."""
    flood_window: float = Field(60.0, gt=0, le=86_400)
    flood_update_interval: float = Field(5.0, gt=0, le=3600)
    """Seconds between two ``updated`` events of a flood whose counts change."""
    group_pattern: str | None = None
    """A regular expression on the sensor id with a named group ``group`` that refines the
    readings topic prefix, e.g. ``^(?P<group>line-\\d+)-``."""
    console_rate: float = Field(20.0, gt=0)
    """Alert lines per second on the console at most (outside floods); then one line with
    how many were not shown."""
    qos: Literal[1, 2] = 2
    """QoS of the alerts on the alert topic. 2: with ``service.ack_after = "journaled"`` the
    packet state of every alert in flight is kept in the outbox and resumed after a crash on
    the persistent session, so the broker never takes an alert twice."""

    @field_validator("group_pattern")
    @classmethod
    def _check_pattern(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        try:
            compiled = re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        if "group" not in compiled.groupindex:
            raise ValueError("needs a named group 'group', e.g. ^(?P<group>line-\\d+)-")
        return v


class StoreSettings(_Section):
    """Where history is kept."""

    url: str = "sqlite:///mqtt-anomaly.db"
    readings: bool = True
    retention_days: float = Field(7.0, gt=0)
    batch_size: int = Field(2000, ge=1)
    flush_interval: float = Field(0.5, gt=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if scheme not in ("sqlite", "none", "postgresql", "postgres"):
            raise ValueError("must be sqlite:///PATH, postgresql://USER@HOST/DB or none://")
        return v


_KAFKA_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
# librdkafka settings the Kafka sink owns: they carry its delivery guarantee or its callbacks
KAFKA_RESERVED_OPTIONS = frozenset(
    {
        "bootstrap.servers",
        "metadata.broker.list",
        "enable.idempotence",
        "acks",
        "request.required.acks",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "transactional.id",
        "statistics.interval.ms",
        "error_cb",
        "stats_cb",
        "throttle_cb",
        "on_delivery",
        "dr_cb",
        "dr_msg_cb",
        "logger",
    }
)


def is_secret_key(key: str) -> bool:
    """True for a setting name that holds a secret (``sasl.password``, ``ssl.key.password``)."""
    k = key.lower()
    return (
        "password" in k
        or "secret" in k
        or k.endswith(".pem")
        or "token" in k
        or k == "authorization"
    )


class KafkaSettings(_Section):
    """The Kafka bridge: readings, alerts and health also go to Kafka topics (off when ``url``
    is empty). See ``docs/kafka.md``."""

    url: str = ""
    readings_topic: str = "mqtt-anomaly.readings"
    alerts_topic: str = "mqtt-anomaly.alerts"
    health_topic: str = "mqtt-anomaly.health"
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    linger_ms: float = Field(5.0, ge=0, le=900_000)
    batch_bytes: int = Field(1_000_000, ge=1, le=2_147_483_647)
    max_buffered: int = Field(200_000, ge=1, le=10_000_000)
    client_id: str = "mqtt-anomaly"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    options: dict[str, str | int | float | bool] = Field(default_factory=dict, repr=False)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        v = v.strip()
        if not v:
            return v
        scheme, sep, rest = v.partition("://")
        if not sep or scheme not in ("kafka", "kafka+ssl"):
            raise ValueError("must be kafka://HOST:PORT[,HOST:PORT...] or kafka+ssl://...")
        rest = rest.rstrip("/")
        if "@" in rest:
            raise ValueError(
                "no credentials in the URL: use kafka.sasl_username and "
                "MQTT_ANOMALY_KAFKA__SASL_PASSWORD or kafka.sasl_password_file"
            )
        if "/" in rest or "?" in rest or "#" in rest:
            raise ValueError("a Kafka URL has no path or query: kafka://HOST:PORT[,HOST:PORT...]")
        for part in rest.split(","):
            parts = urlsplit(f"//{part.strip()}")
            if not parts.hostname:
                raise ValueError(f"no host in {part.strip()!r}")
            try:
                port = parts.port
            except ValueError as exc:
                raise ValueError(f"bad port in {part.strip()!r}: {exc}") from exc
            if port is not None and not 0 < port < 65536:
                raise ValueError(f"port out of range in {part.strip()!r}")
        return v

    @field_validator("readings_topic", "alerts_topic", "health_topic")
    @classmethod
    def _check_topic(cls, v: str) -> str:
        if v and (len(v) > 249 or v in (".", "..") or not set(v) <= _KAFKA_TOPIC_CHARS):
            raise ValueError("a Kafka topic name is 1-249 of A-Z a-z 0-9 . _ - (empty: off)")
        return v

    @field_validator("options")
    @classmethod
    def _check_options(
        cls, v: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        for key in v:
            if key in KAFKA_RESERVED_OPTIONS:
                raise ValueError(f"{key!r} is set by the Kafka sink and cannot be overridden")
        return v

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        if not self.tls:
            for name in ("ca_file", "cert_file", "key_file"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} needs a kafka+ssl:// URL")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.sasl_mechanism is not None:
            if not self.sasl_username:
                raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs sasl_username")
            if self.sasl_password is None and self.sasl_password_file is None:
                raise ValueError(
                    f"sasl_mechanism {self.sasl_mechanism} needs "
                    "MQTT_ANOMALY_KAFKA__SASL_PASSWORD or kafka.sasl_password_file"
                )
        elif self.sasl_username or self.sasl_password or self.sasl_password_file:
            raise ValueError("SASL credentials without sasl_mechanism (PLAIN, SCRAM-SHA-256/512)")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @property
    def tls(self) -> bool:
        return self.url.startswith("kafka+ssl://")

    @property
    def bootstrap_servers(self) -> str:
        """``host:port,host:port`` (port 9092 when the URL names none)."""
        rest = self.url.partition("://")[2].rstrip("/")
        servers = []
        for part in rest.split(","):
            parts = urlsplit(f"//{part.strip()}")
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            servers.append(f"{host}:{parts.port or 9092}")
        return ",".join(servers)

    def secret_password(self) -> str | None:
        """The SASL password from ``sasl_password`` or the first line of ``sasl_password_file``."""
        return _secret(self.sasl_password, self.sasl_password_file, "kafka.sasl_password_file")


class MappingRule(_Section):
    """One ``[[mapping.rules]]`` entry: a topic pattern with tag levels, and where the values,
    timestamp, seq and units are in the payload (see ``docs/plant.md``)."""

    topic: str
    sensor: str = ""
    format: Literal["json", "number"] = "json"
    value: str = ""
    values: dict[str, str] = Field(default_factory=dict)
    each: str = ""
    timestamp: str = ""
    timestamp_format: Literal["auto", "s", "ms", "iso8601"] = "auto"
    seq: str = ""
    unit: str = ""
    units: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _compile(self) -> MappingRule:
        try:
            compile_rule(**self.model_dump())
        except ValueError as exc:  # "field: why", named under this rule by _describe
            raise ValueError(f"{_SUBKEY}{exc}") from None
        return self


class Override(_Section):
    """Settings of a group, an asset or a sensor that differ from ``[detector]`` (unset: the
    next level down decides). See :mod:`mqtt_anomaly.inherit`."""

    threshold: float | None = None
    threshold_clear: float | None = None
    detectors: tuple[str, ...] | None = None


class GroupOverride(Override):
    """An override for the sensors whose id matches ``pattern``: levels split at ``/``, ``+``
    one level, ``#`` the rest (MQTT topic filter rules), e.g. ``+/voltage``."""

    pattern: str

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, v: str) -> str:
        return validate_filter(v, key="pattern")


class OverrideSettings(_Section):
    """Per-group, per-asset and per-sensor settings: defaults < group (in order; a later
    group wins) < asset < sensor."""

    groups: tuple[GroupOverride, ...] = ()
    assets: dict[str, Override] = Field(default_factory=dict)
    sensors: dict[str, Override] = Field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.groups or self.assets or self.sensors)


class AssetDefinition(_Section):
    """One asset named in the configuration: its id and its sensors' ids."""

    id: str = Field(min_length=1)
    sensors: tuple[str, ...] = Field(min_length=2)


class AssetSettings(_Section):
    """Assets: groups of sensors scored together by a multivariate detector (``docs/assets.md``).

    A sensor belongs to the asset that ``define`` lists it in; else to the one its mapping
    tags name (``asset``); else to the one ``template`` finds in its id (``{asset}`` may span
    several levels: by default the parent level of the sensor id is the asset). ``template =
    ""`` leaves sensors not defined or tagged out of every asset.
    """

    template: str = "{asset}/{sensor}"
    define: tuple[AssetDefinition, ...] = ()
    method: str = "regress"
    commission_rows: int = Field(400, ge=12)
    commission_seconds: float = Field(0.0, ge=0)
    stale_after: float = Field(5.0, gt=0)
    """Seconds (of reading time) after which a sensor's latest value is missing in a row."""
    params: dict[str, float | int | bool | str] = Field(default_factory=dict)
    """Further keyword arguments of the asset detector (``lam``, ``margin``, ``alarm_k`` …)."""

    @field_validator("template")
    @classmethod
    def _check_template(cls, v: str) -> str:
        if v and (v.count("{asset}") != 1 or v.count("{sensor}") != 1):
            raise ValueError("needs one '{asset}' and one '{sensor}' (or empty: off)")
        return v

    @field_validator("method")
    @classmethod
    def _check_method(cls, v: str) -> str:
        methods = ("regress", "pca", "mewma", "pca_mewma")
        if v not in methods:
            raise ValueError(f"unknown method {v!r} (one of: {', '.join(methods)})")
        return v

    @model_validator(mode="after")
    def _check_define(self) -> AssetSettings:
        seen: dict[str, str] = {}
        for a in self.define:
            for sensor in a.sensors:
                if sensor in seen:
                    raise ValueError(
                        f"sensor {sensor!r} is in assets {seen[sensor]!r} and {a.id!r}"
                    )
                seen[sensor] = a.id
        return self


class MappingSettings(_Section):
    """Topic and payload mapping: rules tried in order before the readings template. With
    no rule (the default) messages are read as today: ``topics.readings`` and its payload."""

    rules: tuple[MappingRule, ...] = ()

    @property
    def compiled(self) -> TopicMap:
        return TopicMap(tuple(compile_rule(**r.model_dump()) for r in self.rules))


class SparkplugSettings(_Section):
    """The Sparkplug B host application (off by default; see ``docs/plant.md``)."""

    enabled: bool = False
    host_id: str = "mqtt-anomaly"
    """The host application id: its STATE topic is ``spBv1.0/STATE/{host_id}``."""
    group: str = "+"
    """The Sparkplug group to subscribe (``+``: every group)."""
    rebirth: bool = True
    """Request a rebirth (NCMD ``Node Control/Rebirth``) for an unknown alias, a message of a
    node not born, or a seq gap."""
    rebirth_interval: float = Field(5.0, ge=0)
    """Seconds between two rebirth requests to one node at most."""

    @field_validator("host_id", "group")
    @classmethod
    def _check_level(cls, v: str, info: Any) -> str:
        if not v or "/" in v or "#" in v or "\x00" in v or ("+" in v and v != "+"):
            raise ValueError(f"one topic level: {v!r}")
        if info.field_name == "host_id" and "+" in v:
            raise ValueError(f"no wildcard: {v!r}")
        return v


class DriftSettings(_Section):
    """Drift and model health per sensor (``docs/operations.md#drift-and-model-health``)."""

    warmup: int = Field(100, ge=0, le=1_000_000_000)
    """Scored readings of a sensor before its reference starts (the detectors learn)."""
    min_readings: int = Field(500, ge=50, le=1_000_000_000)
    """Scored readings counted in the reference score distribution before it is frozen."""
    window: float = Field(3600.0, ge=1, le=1e9)
    """Seconds: the recent distribution weighs a reading this old 1/e of a new one."""
    threshold: float = Field(0.25, gt=0, le=100)
    """Drift (population stability index) above which a sensor's model is stale."""
    alert_factor: float = Field(5.0, gt=1, le=1e6)
    """Stale when the recent alert rate exceeds this × the reference rate."""
    max_age: float = Field(0.0, ge=0)
    """Seconds after commissioning from which a model is stale (0: no limit)."""


class ModelSettings(_Section):
    """``[models]``: the model registry (:mod:`mqtt_anomaly.models`, docs/models.md)."""

    registry: Path | None = None
    """The registry folder; None: ``<service.state_dir>/models``."""
    metric: Literal["f1", "precision", "recall"] = "f1"
    """What ``models promote`` compares: a candidate below the current model on it is refused."""


class ServiceSettings(_Section):
    """The detector service itself."""

    state_dir: Path = Path("state")
    ack_after: Literal["journaled", "durable", "processed"] = "journaled"
    """When a reading is acknowledged to the broker: once it is written to the intake journal
    (``state/journal``; processed again after a crash, alerts sent once through the outbox),
    once the durable sinks (history store, Kafka) hold it and the detector state that saw it
    is saved, or once it was processed."""
    fsync: bool = False
    """With ``ack_after = "journaled"``: every journal and outbox write reaches the disk
    before the readings are acknowledged (power loss loses nothing acknowledged), at the cost
    of one ``fdatasync`` per network read."""
    ack_interval: float = Field(0.1, gt=0, le=60)
    """Seconds a delivery round gathers readings (sooner when the intake is quiet): longer
    means fewer state saves, more messages in flight at the broker."""
    max_payload: int = Field(4096, ge=16)
    max_sensors: int = Field(200_000, ge=1)
    """Sensors the service keeps state for (the sensor table). A message from one more is a
    dead letter (``sensor_limit``), unless a known sensor has been silent for ``evict_after``."""
    evict_after: float = Field(3600.0, gt=0)
    """Seconds without a reading or status after which a sensor may lose its slot to a new
    sensor, once the table is full: the one silent longest goes first, and everything learned
    about it is forgotten (its retained health is cleared). Not before: while every known
    sensor was heard within this time, new sensors are refused. ``inf``: never evict."""
    sensor_pattern: str = ""
    """A regular expression every sensor id must match as a whole (empty: any id). A reading
    or status of another id is a dead letter (``sensor_not_allowed``) and gets no state."""
    verbose: bool = False
    watch_config: float = Field(0.0, ge=0, le=3600)
    """Seconds between two checks of the configuration file's modification time; a change
    reloads it as SIGHUP does (0: no watch)."""

    @field_validator("sensor_pattern")
    @classmethod
    def _check_pattern(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return v


class ShadowSettings(_Section):
    """A candidate detector configuration scored beside the live one (``[shadow]``): its
    alerts go only to ``topic`` and to the store marked as shadow, never to operators."""

    enabled: bool = False
    detector: dict[str, Any] = Field(default_factory=dict)
    """Keys of ``[detector]`` the candidate changes (the rest is the live configuration's);
    ``params`` are merged per detector."""
    topic: str = "mqtt-anomaly/shadow/{sensor_id}/alerts"
    label: str = Field("candidate", min_length=1, max_length=100)
    """What the shadow alerts are marked with in the store and the report (a version)."""
    tolerance: int = Field(5, ge=0, le=100_000)
    """Two alerts of one sensor and detector agree when their readings' seqs are at most this
    far apart."""
    max_rate: float = Field(100.0, gt=0)
    """Shadow alerts published and stored per second at most (a noisy candidate must not fill
    the store's queue the live alerts need); beyond, they are counted in the agreement only."""
    model: str | None = Field(None, pattern=r"^v[1-9][0-9]{0,8}$")
    """A model version of the registry (``v3``) as the candidate: its ``[detector]``,
    ``[overrides]`` and ``[assets]``, its state by sensor id; ``detector`` must then be empty."""

    @model_validator(mode="after")
    def _one_candidate(self) -> ShadowSettings:
        if self.model is not None and self.detector:
            raise ValueError("give either model or detector, not both")
        return self

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, v: str) -> str:
        try:
            return validate_template(v, key="template")
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("template: ")) from exc


class Settings(BaseSettings):
    """The whole configuration, frozen."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    broker: BrokerSettings = BrokerSettings()
    topics: TopicSettings = TopicSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    detector: DetectorSettings = DetectorSettings()
    alerts: AlertSettings = AlertSettings()
    store: StoreSettings = StoreSettings()
    service: ServiceSettings = ServiceSettings()
    http: HttpSettings = HttpSettings()
    kafka: KafkaSettings = KafkaSettings()
    mapping: MappingSettings = MappingSettings()
    sparkplug: SparkplugSettings = SparkplugSettings()
    assets: AssetSettings = AssetSettings()
    overrides: OverrideSettings = OverrideSettings()
    drift: DriftSettings = DriftSettings()
    models: ModelSettings = ModelSettings()
    cluster: ClusterSettings = ClusterSettings()
    routes: tuple[Route, ...] = ()
    receivers: dict[str, ReceiverSettings] = Field(default_factory=dict)
    maintenance: tuple[Window, ...] = ()
    gates: tuple[Gate, ...] = ()
    shadow: ShadowSettings = ShadowSettings()

    @model_validator(mode="after")
    def _check_routes(self) -> Settings:
        try:
            check_routes(self.routes, self.receivers)
            gate_names_unique(self.gates)
        except ValueError as exc:
            raise ValueError(f"{_SUBKEY}{exc}") from None
        return self

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """What the service subscribes: ``topics.subscribe`` if set, else the mapping rules'
        filters, the readings and status wildcards, the gates' state topics and, with
        Sparkplug on, its namespace."""
        if self.topics.subscribe:
            return self.topics.subscribe
        filters = [r.filter for r in self.mapping.compiled.rules]
        filters += self.topics.filters
        filters += [g.topic for g in self.gates if g.topic]
        if self.sparkplug.enabled:
            filters.append(f"spBv1.0/{self.sparkplug.group}/#")
        return tuple(dict.fromkeys(filters))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(InitSettingsSource(settings_cls, _read_toml(path)))
        return tuple(sources)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from exc


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(root)"
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith(_SUBKEY):  # "field: why" of a key below the one located
        sub, _, msg = msg.removeprefix(_SUBKEY).partition(": ")
        key = sub if key == "(root)" else f"{key}.{sub}"
    if err["type"] == "extra_forbidden":
        msg = "unknown setting"
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{key}: {msg}{extra}"


def load_settings(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Build the effective settings; ``overrides`` (CLI flags) win over everything."""
    token = _config_file.set(config_file)
    try:
        return Settings(**_drop_none(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    finally:
        _config_file.reset(token)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            sub = _drop_none(v)
            if sub:
                out[k] = sub
        elif v is not None:
            out[k] = v
    return out


def settings_as_toml(settings: Settings) -> str:
    """The effective settings as TOML text, secrets masked."""
    lines: list[str] = []

    def emit(prefix: str, model: BaseModel) -> None:
        nested: list[tuple[str, BaseModel]] = []
        lines.append(f"[{prefix}]")
        for name, spec in type(model).model_fields.items():
            value = getattr(model, name)
            key = spec.alias or name
            if isinstance(value, BaseModel):
                nested.append((f"{prefix}.{key}", value))
            elif value is None:
                lines.append(f"# {key} = (unset)")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
        for p, m in nested:
            emit(p, m)

    for section in type(settings).model_fields:
        value = getattr(settings, section)
        if isinstance(value, BaseModel):
            emit(section, value)
        elif isinstance(value, dict):  # [receivers.NAME]
            for name, model in value.items():
                emit(f"{section}.{_toml_key(name)}", model)
        else:  # [[routes]]
            for model in value:
                emit(f"[{section}]", model)
    return "\n".join(lines).rstrip() + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return '"**********"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table; secret-looking keys masked
        items = [
            f"{_toml_key(str(k))} = "
            + ('"**********"' if is_secret_key(str(k)) else _toml_value(v))
            for k, v in value.items()
        ]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _toml_key(key: str) -> str:
    if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key):
        return key
    return _toml_value(key)
