"""The ``[cluster]`` settings: many detector workers on a NATS JetStream cluster.

No I/O here: the settings, the names every worker and the server configuration agree on (the
readings stream, its partition subjects, the buckets), and the server's subject mapping that
spreads readings over the partitions by sensor id (:func:`server_mappings`). See
``docs/architecture.md#scale-out-on-nats-jetstream``.

>>> s = ClusterSettings(urls="nats://a:4222,b:4223", partitions=4)
>>> s.servers
['nats://a:4222', 'nats://b:4223']
>>> server_mappings("factory/{sensor_id}/temperature", "factory/{sensor_id}/status", 4)
... # doctest: +NORMALIZE_WHITESPACE
{'factory.*.temperature': 'readings.{{partition(4,1)}}.factory.{{wildcard(1)}}.temperature',
 'factory.*.status': 'readings.{{partition(4,1)}}.factory.{{wildcard(1)}}.status'}
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ClusterSettings",
    "mqtt_topic",
    "partition_of_subject",
    "server_mappings",
]

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class ClusterSettings(BaseModel):
    """``[cluster]``: where the NATS servers are and how the workers share the partitions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: str = ""
    """``nats://HOST:PORT[,HOST:PORT...]``; empty: no cluster (``detect`` uses MQTT)."""
    partitions: int = Field(8, ge=1, le=1024)
    """P: readings are mapped to P partitions by sensor id; must equal the P of the servers'
    subject mapping (``mqtt-anomaly cluster mapping`` prints it)."""
    replicas: int = Field(3, ge=1, le=5)
    """Replicas of the readings and alerts streams and of the buckets."""
    stream: str = "READINGS"
    subject: str = "readings"
    """Partition ``p`` of the readings is ``{subject}.{p}.>`` (the original subject follows)."""
    alerts_stream: str = "ALERTS"
    alerts_subject: str = "alerts"
    """Alerts are published to ``{alerts_subject}.{partition}`` with ``Nats-Msg-Id`` = the
    alert's id, so the server drops a repeat within ``dedup_window``."""
    dedup_window: float = Field(120.0, gt=0)
    max_age: float = Field(7 * 86400.0, gt=0)
    """Seconds the readings stream keeps readings (a checkpoint older than this cannot be
    resumed without loss: the worker says so and resumes at the first reading kept)."""
    bucket_prefix: str = "mqa"
    """Key-value buckets ``{prefix}-owners``, ``{prefix}-workers``, ``{prefix}-checkpoints``."""
    lease_ttl: float = Field(5.0, ge=0.5, le=600)
    """Seconds an ownership record lives without renewal: a worker that stops renewing
    (killed, paused, cut off) loses its partitions this long after its last renewal."""
    checkpoint_interval: float = Field(1.0, gt=0, le=600)
    """Seconds between two checkpoints of a partition's state (and at release)."""
    batch: int = Field(500, ge=1, le=100_000)
    """Readings fetched per pull request."""
    worker_id: str = ""
    """This worker's name (unique in the cluster); empty: ``HOST-PID``."""

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, v: str) -> str:
        for url in filter(None, (u.strip() for u in v.split(","))):
            parts = urlsplit(url if "://" in url else f"nats://{url}")
            if parts.scheme not in ("nats", "tls") or not parts.hostname:
                raise ValueError(f"must be nats://HOST:PORT[,HOST:PORT...]: {url!r}")
            if parts.username or parts.password:
                raise ValueError("no credentials in the URL")
            try:
                _ = parts.port
            except ValueError as exc:
                raise ValueError(f"bad port in {url!r}") from exc
        return v

    @field_validator("stream", "alerts_stream", "bucket_prefix")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"letters, digits, - and _ only: {v!r}")
        return v

    @field_validator("subject", "alerts_subject")
    @classmethod
    def _check_subject(cls, v: str) -> str:
        if not _TOKEN.match(v):
            raise ValueError(f"a subject without wildcards: {v!r}")
        return v

    @field_validator("worker_id")
    @classmethod
    def _check_worker(cls, v: str) -> str:
        if v and not _NAME.match(v):
            raise ValueError(f"letters, digits, - and _ only: {v!r}")
        return v

    @property
    def enabled(self) -> bool:
        return bool(self.servers)

    @property
    def servers(self) -> list[str]:
        """The server URLs, each with its scheme."""
        return [
            u if "://" in u else f"nats://{u}"
            for u in (u.strip() for u in self.urls.split(","))
            if u
        ]

    def partition_subject(self, p: int) -> str:
        return f"{self.subject}.{p}.>"

    @property
    def owners_bucket(self) -> str:
        return f"{self.bucket_prefix}-owners"

    @property
    def workers_bucket(self) -> str:
        return f"{self.bucket_prefix}-workers"

    @property
    def checkpoints_bucket(self) -> str:
        return f"{self.bucket_prefix}-checkpoints"


def _nats_filter(template: str) -> tuple[str, int]:
    """A topic template as a NATS subject with ``*`` for the sensor, and that token's
    position (1-based among the wildcards: always 1)."""
    levels = template.split("/")
    if any(not level or "." in level for level in levels):
        raise ValueError(f"{template!r}: a NATS subject needs non-empty levels without '.'")
    return ".".join("*" if lv == "{sensor_id}" else lv for lv in levels), 1


def server_mappings(
    readings: str, status: str, partitions: int, subject: str = "readings"
) -> dict[str, str]:
    """The servers' ``mappings`` block: each readings and status subject (as NATS's MQTT
    listener names an MQTT topic: ``/`` becomes ``.``) to ``{subject}.{p}.{original}``, with
    ``p = partition(P, sensor id)``, NATS's deterministic hash of the sensor token."""
    out = {}
    for template in (readings, status):
        source, _ = _nats_filter(template)
        dest = ".".join("{{wildcard(1)}}" if lv == "*" else lv for lv in source.split("."))
        out[source] = f"{subject}.{{{{partition({partitions},1)}}}}.{dest}"
    return out


def partition_of_subject(subject: str, prefix: str) -> tuple[int, str]:
    """``(partition, original subject)`` of a subject of the readings stream; ValueError when
    it is not ``{prefix}.{p}.{original}``."""
    head = prefix + "."
    if not subject.startswith(head):
        raise ValueError(f"not a partition subject: {subject!r}")
    p, _, rest = subject[len(head) :].partition(".")
    if not p.isdigit() or not rest:
        raise ValueError(f"not a partition subject: {subject!r}")
    return int(p), rest


def mqtt_topic(subject: str) -> str:
    """The MQTT topic of a NATS subject (NATS's MQTT listener turns ``/`` into ``.``)."""
    return subject.replace(".", "/")


def server_config(
    *,
    name: str,
    port: int,
    cluster_port: int,
    routes: list[str],
    store_dir: str,
    mappings: dict[str, str],
    host: str = "127.0.0.1",
    http_port: int | None = None,
    mqtt_port: int | None = None,
    cluster_name: str = "mqtt-anomaly",
) -> str:
    """One node's ``nats-server`` configuration: client port, JetStream (file store in
    ``store_dir``), the cluster routes, the subject mapping, optionally monitoring and the
    MQTT listener. The tests' clusters and ``mqtt-anomaly cluster server-config`` use it."""
    lines = [
        f"server_name: {name}",
        f"listen: {host}:{port}",
        "max_payload: 8MB",  # a partition's checkpoint is one KV value (~0.5 kB per sensor)
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        "  max_memory_store: 256MB",
        "  max_file_store: 4GB",
        "}",
        "cluster {",
        f"  name: {cluster_name}",
        f"  listen: {host}:{cluster_port}",
        "  routes: [" + ", ".join(f'"{r}"' for r in routes) + "]",
        "}",
        "mappings {",
        *(f'  "{src}": "{dest}"' for src, dest in mappings.items()),
        "}",
    ]
    if http_port is not None:
        lines.append(f"http: {host}:{http_port}")
    if mqtt_port is not None:
        lines += ["mqtt {", f"  listen: {host}:{mqtt_port}", "}"]
    return "\n".join(lines) + "\n"
