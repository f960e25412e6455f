"""Connect to the NATS servers and make sure the streams and buckets exist.

Every worker runs :func:`ensure` at start; creating what already exists with the same
configuration is a no-op for the server, so workers starting together do not conflict.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType, StreamConfig

import nats

from ..console import RateLimitedLog
from ..errors import ConfigError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

    from ..clusterconf import ClusterSettings

log = logging.getLogger(__name__)
__all__ = ["Buckets", "connect", "ensure"]

STREAM_IN_USE = 10058  # JSStreamNameExistErr: exists with another configuration


async def connect(cs: ClusterSettings, name: str, *, timeout: float = 10.0) -> Client:
    """A connection to the servers (reconnecting for ever once up); ConfigError when none
    answers within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            # the first connection: no reconnecting (the client would retry for ever), the
            # next one is made so once a server answered
            probe = await asyncio.wait_for(
                nats.connect(
                    servers=cs.servers,
                    name=name,
                    connect_timeout=2,
                    allow_reconnect=False,
                    error_cb=_quiet,
                ),
                max(0.5, deadline - time.monotonic()),
            )
            await probe.close()
            return await nats.connect(
                servers=cs.servers,
                name=name,
                connect_timeout=2,
                reconnect_time_wait=0.25,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                ping_interval=2,
                max_outstanding_pings=2,
                error_cb=_logged,
                disconnected_cb=_disconnected,
                reconnected_cb=_reconnected,
            )
        except (OSError, nats.errors.Error) as exc:  # TimeoutError is an OSError
            if time.monotonic() > deadline:
                why = str(exc) or type(exc).__name__
                raise ConfigError(f"cluster.urls: no NATS server answers ({why})") from exc
            await asyncio.sleep(0.25)


_rl = RateLimitedLog(log, period=10.0)


async def _quiet(exc: Exception) -> None:
    """A server that does not answer the first connection: the caller says so, once."""


async def _logged(exc: Exception) -> None:
    _rl.warning("error", "NATS: %s", str(exc) or type(exc).__name__)


async def _disconnected() -> None:
    _rl.warning("down", "NATS: disconnected, reconnecting")


async def _reconnected() -> None:
    log.info("NATS: reconnected")


class Buckets:
    """The three key-value buckets of a cluster."""

    def __init__(self, owners: KeyValue, workers: KeyValue, checkpoints: KeyValue) -> None:
        self.owners = owners
        self.workers = workers
        self.checkpoints = checkpoints


async def ensure(js: JetStreamContext, cs: ClusterSettings, *, timeout: float = 30.0) -> Buckets:
    """Create (or find) the readings and alerts streams and the buckets, retrying while the
    cluster elects its leaders (``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await _ensure(js, cs)
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
            if time.monotonic() > deadline:
                raise ConfigError(f"cluster: JetStream does not answer ({exc!r})") from exc
            await asyncio.sleep(0.25)


async def _stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != STREAM_IN_USE:
            raise
        log.debug("stream %s exists with another configuration: kept", config.name)


async def _ensure(js: JetStreamContext, cs: ClusterSettings) -> Buckets:
    await _stream(
        js,
        StreamConfig(
            name=cs.stream,
            subjects=[f"{cs.subject}.*.>"],
            num_replicas=cs.replicas,
            storage=StorageType.FILE,
            max_age=cs.max_age,
            duplicate_window=cs.dedup_window,
        ),
    )
    await _stream(
        js,
        StreamConfig(
            name=cs.alerts_stream,
            subjects=[f"{cs.alerts_subject}.>"],
            num_replicas=cs.replicas,
            storage=StorageType.FILE,
            max_age=cs.max_age,
            duplicate_window=cs.dedup_window,
        ),
    )
    owners = await _bucket(js, cs.owners_bucket, cs.replicas, cs.lease_ttl)
    workers = await _bucket(js, cs.workers_bucket, cs.replicas, cs.lease_ttl)
    checkpoints = await _bucket(js, cs.checkpoints_bucket, cs.replicas, None)
    return Buckets(owners, workers, checkpoints)


async def _bucket(js: JetStreamContext, name: str, replicas: int, ttl: float | None) -> KeyValue:
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            KeyValueConfig(bucket=name, history=1, ttl=ttl, replicas=replicas)
        )
    except nats.js.errors.BadRequestError as exc:  # created meanwhile by another worker
        if exc.err_code != STREAM_IN_USE:
            raise
        return await js.key_value(name)
