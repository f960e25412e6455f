"""Response and request bodies of the REST API (they make its OpenAPI description)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Health = Literal["ok", "anomalous", "offline", "silent"]
MAX_NAME_LENGTH = 64  # a detector's name
MIN_TS, MAX_TS = -1e11, 1e11  # bounds of a time given to the API (epoch s, ±3,000 years)
MAX_SHELVE = 7 * 86400  # the longest shelving (s)


class Sensor(BaseModel):
    """A sensor's current state."""

    sensor_id: str
    health: Health
    last_value: float | None = Field(description="Latest scored reading's value")
    last_ts: float | None = Field(description="Latest scored reading's timestamp (epoch s)")
    last_seen: float | None = Field(description="When the service last received a reading")
    interval: float = Field(description="Learned seconds between readings")
    active_alerts: list[str] = Field(description="Detectors with an active alert")
    unit: str | None = Field(None, description="Unit named by an MQTT 5 user property")


class SensorPage(BaseModel):
    """One page of the fleet, with the fleet's counts by health."""

    total: int = Field(description="Sensors matching the filter")
    offset: int
    items: list[Sensor]
    counts: dict[str, int] = Field(description="All sensors by health")


class Band(BaseModel):
    """The range the detectors expect next (None where no detector bounds it)."""

    low: float | None
    high: float | None
    threshold: float | None


class SensorDetail(Sensor):
    """One sensor with its expected band."""

    band: Band


class Bucket(BaseModel):
    """Readings of one time bucket (a single reading when not downsampled)."""

    ts: float
    min: float
    max: float
    mean: float
    count: int
    seq: int | None


class ReadingsHistory(BaseModel):
    """A sensor's readings over a time range."""

    sensor_id: str
    start: float | None
    end: float | None
    rows: int = Field(description="Readings read from the store")
    truncated: bool = Field(description="True when the store held more than max_rows readings")
    buckets: list[Bucket]


class AlertEvent(BaseModel):
    """An alert raised or cleared."""

    sensor_id: str
    detector: str
    severity: Literal["warning", "critical"]
    state: Literal["raised", "cleared"]
    value: float | None
    score: float | None
    threshold: float | None
    expected_low: float | None
    expected_high: float | None
    reading_ts: float | None
    alert_ts: float
    message: str
    suppressed: str = Field(
        "", description="Why the alert reached nobody (maintenance, gate); empty: it was not"
    )
    asset_id: str = ""
    contributions: dict[str, float] | None = None
    id: str = Field(
        "", description="The alert's identity (feedback: POST /api/alerts/{id}/feedback)"
    )


class MaintenanceWindow(BaseModel):
    """A maintenance window: which sensors, when (one-off or recurring), and where it is from."""

    id: str
    reason: str
    sensors: list[str]
    assets: list[str]
    groups: list[str]
    tags: dict[str, str]
    start: str | None = Field(description="One-off: opens (ISO 8601)")
    end: str | None = Field(description="One-off: closes (ISO 8601)")
    days: list[str] = Field(description="Recurring: mon … sun (empty: every day)")
    at: str | None = Field(description="Recurring: local time it opens")
    duration: float = Field(description="Recurring: seconds it stays open")
    timezone: str
    source: Literal["config", "api"]
    open: bool = Field(description="Open now")


class Asset(BaseModel):
    """An asset: a group of sensors scored together, its lifecycle and latest explanation."""

    id: str
    phase: Literal["incomplete", "commissioning", "monitoring"]
    sensors: list[str]
    names: list[str]
    rows: int
    alarm: bool
    score: float | None
    contributions: dict[str, float]


class AssetSeries(BaseModel):
    """One sensor's downsampled history in an asset's chart."""

    sensor_id: str
    name: str
    buckets: list[Bucket]


class AssetReadings(BaseModel):
    """Every sensor of an asset, to chart them together."""

    asset_id: str
    series: list[AssetSeries]


class ActiveAlert(BaseModel):
    """An active alert and what operators did with it."""

    sensor_id: str
    detector: str
    severity: str
    raised_at: float | None
    value: float | None
    message: str
    acknowledged: bool
    acknowledged_at: float | None
    shelved: bool
    shelved_until: float | None


class Shelve(BaseModel):
    """How long to shelve an alert (hidden from the active list's unshelved view)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seconds: float = Field(
        gt=0, le=MAX_SHELVE, allow_inf_nan=False, description="Shelved until now + seconds"
    )


class Probe(BaseModel):
    """A liveness or readiness answer."""

    status: Literal["ok", "unavailable"]
    connected: bool
    subscribed: bool
    assets: dict[str, int] = {}
    """How many assets are in each phase (``commissioning``, ``monitoring``, ``incomplete``)."""
