"""A detector worker of a NATS JetStream cluster (``mqtt-anomaly detect --cluster``).

Readings are in one replicated stream, partition ``p`` on ``{subject}.{p}.>`` (the servers'
subject mapping puts every sensor in one partition). Each partition is owned by one worker at
a time, and the owner keeps that partition's own :class:`~mqtt_anomaly.pipeline.Pipeline`:

- **Ownership** is a record in the ``owners`` bucket (key ``p{p}``), created with
  ``create`` (fails while another worker's record exists) and renewed with a revision-checked
  ``update`` every quarter of ``lease_ttl`` (at most 1 s); the bucket's TTL deletes a record
  not renewed for ``lease_ttl``. A worker scores a partition only while its lease is
  *locally* valid: until 80 % of ``lease_ttl`` after the renewal request was sent (the
  server's expiry counts from when it stored the renewal, later), so a paused or cut-off
  worker stops scoring before another can take over. Which worker should own which
  partition: the live workers (records in the ``workers`` bucket, same TTL) sorted by id,
  partition ``p`` to worker ``p mod W``;
  a worker releases what is no longer its (checkpoint, then delete the record) and claims
  what is.
- **Checkpoints** (``checkpoints`` bucket, key ``p{p}``, the statefile format: data only)
  hold the partition's pipeline state and the stream sequence it covers. A worker taking a
  partition restores it, writes it back under its own epoch (a revision-checked update: the
  fence, any later checkpoint of the former owner fails), and consumes the partition from
  the next sequence. Every checkpoint is a revision-checked update too, and a worker whose
  update fails has lost the partition and stops.
- **Alerts** go to ``{alerts_subject}.{p}`` with ``Nats-Msg-Id`` = the alert id: the same
  alert raised again by the next owner (it scores the readings since the checkpoint again,
  from the same state) is dropped by the server within ``dedup_window``. The history store,
  when configured, gets readings and alerts as usual (its unique keys do the same); a
  checkpoint waits until the store has committed what it covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
import nats.js.errors
import numpy as np
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ..clusterconf import mqtt_topic, partition_of_subject
from ..console import RateLimitedLog
from ..errors import StateFileError
from ..messages import encode
from ..pipeline import Pipeline
from ..sinks.history import StoreSink
from ..statefile import decode as decode_state
from ..statefile import encode as encode_state
from .setup import Buckets, connect, ensure

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

    from ..clusterconf import ClusterSettings
    from ..config import Settings
    from ..messages import Alert
    from ..store.base import Store

log = logging.getLogger(__name__)
__all__ = ["ClusterWorker", "PartitionRunner", "WorkerStats", "assignment"]

VALID_SHARE = 0.8
"""A lease is used for this share of ``lease_ttl`` after its renewal was sent."""
CHECKPOINT_VERSION = 1
SILENCE_EVERY = 1.0  # seconds between two silence checks of a partition
NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)


class FencedError(Exception):
    """This worker lost a partition: another owns it now."""


class LapsedError(Exception):
    """This worker's lease of a partition ran out before it could be renewed."""


def assignment(partitions: int, workers: list[str]) -> list[str]:
    """The worker each partition should belong to: ``sorted(workers)[p % W]``."""
    alive = sorted(set(workers))
    return [alive[p % len(alive)] for p in range(partitions)]


@dataclass(slots=True)
class WorkerStats:
    """Counters of one worker (``cluster status``, logs, tests)."""

    claimed: int = 0
    released: int = 0
    fenced: int = 0
    lapsed: int = 0
    restored: int = 0
    scored: int = 0
    alerts: int = 0
    checkpoints: int = 0
    resubscribes: int = 0
    last_restore: float = 0.0


class PartitionRunner:
    """One owned partition: restore, consume in order, score, publish, checkpoint."""

    def __init__(self, worker: ClusterWorker, partition: int, lease_rev: int, valid_until: float):
        self.worker = worker
        self.p = partition
        self.key = f"p{partition}"
        self.lease_rev = lease_rev
        self.epoch = lease_rev
        """The revision that created this worker's ownership record: grows with every claim."""
        self.valid_until = valid_until
        self.since = time.time()
        self.pipeline = Pipeline(worker.settings)
        self.seq = 0  # last stream sequence scored
        self.ckpt_seq = -1  # sequence of the last checkpoint written
        self.ckpt_rev = 0
        self.pending = 0
        self.scored = 0
        self.handoffs = 0
        self.previous_owner = ""
        self.outcome = ""
        self.ready = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._consumer = ""
        self._cseq = 0
        self._next_ckpt = 0.0
        self._next_silence = 0.0
        self._store = StoreSink(worker.store) if worker.store is not None else None

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"partition-{self.p}")

    @property
    def finished(self) -> bool:
        return self._task is not None and self._task.done()

    def valid(self) -> bool:
        return self.worker.clock() < self.valid_until

    async def stop(self) -> None:
        """Stop after the batch in hand (no checkpoint: see :meth:`ClusterWorker._release`)."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    def record(self) -> bytes:
        """The ownership record's value (also what ``cluster status`` shows)."""
        return msgspec.json.encode(
            {
                "worker": self.worker.worker_id,
                "epoch": self.epoch,
                "since": self.since,
                "seq": self.seq,
                "checkpoint_seq": max(self.ckpt_seq, 0),
                "pending": self.pending,
                "scored": self.scored,
                "handoffs": self.handoffs,
                "previous_owner": self.previous_owner,
            }
        )

    async def _run(self) -> None:
        w = self.worker
        try:
            started = time.monotonic()
            await self._restore()
            await self._subscribe()
            self.ready = True
            w.stats.restored += 1
            w.stats.last_restore = time.monotonic() - started
            log.info(
                "partition %d: taken (epoch %d) from %s, resuming after seq %d, %d hand-offs "
                "(restored in %.0f ms)",
                self.p,
                self.epoch,
                self.previous_owner or "nobody",
                self.seq,
                self.handoffs,
                1000 * w.stats.last_restore,
            )
            self._next_ckpt = w.clock() + w.cs.checkpoint_interval
            self._next_silence = w.clock() + SILENCE_EVERY
            idle = 0
            while not self._stop.is_set():
                if not self.valid():
                    raise LapsedError
                msgs = await self._fetch()
                if msgs:
                    idle = 0
                    if not self.valid():  # paused while fetching: score nothing more
                        raise LapsedError
                    await self._handle(msgs)
                else:
                    idle += 1
                    if idle % 8 == 0:
                        await self._check_consumer()
                if w.clock() >= self._next_silence:
                    await self._check_silence()
                if self.seq != self.ckpt_seq and w.clock() >= self._next_ckpt:
                    await self.checkpoint()
        except FencedError as exc:
            self.outcome = f"fenced: {exc}"
            w.stats.fenced += 1
            log.warning("partition %d: %s; stopped", self.p, exc)
        except LapsedError:
            self.outcome = "lapsed"
            w.stats.lapsed += 1
            log.warning("partition %d: lease not renewed in time; stopped scoring it", self.p)
        except Exception as exc:
            self.outcome = f"error: {exc!r}"
            log.exception("partition %d: stopped", self.p)
        finally:
            await self._unsubscribe()

    # ---- state -----------------------------------------------------------------------
    async def _restore(self) -> None:
        w = self.worker
        ckpts = w.buckets.checkpoints
        tree: dict[str, Any] | None = None
        revision = 0
        entry: KeyValue.Entry | None = None
        while True:
            try:
                entry = await ckpts.get(self.key)
                break
            except nats.js.errors.KeyNotFoundError as exc:  # also deleted: the marker's revision
                marker = getattr(exc, "entry", None)
                revision = getattr(marker, "revision", 0) or 0
                break
            except NATS_ERRORS as exc:  # a leader being elected: try again while ours
                if not self.valid() or self._stop.is_set():
                    raise LapsedError from exc
                w.rl.warning("restore", "partition %d: checkpoint not read yet (%r)", self.p, exc)
                await asyncio.sleep(0.1)
        if entry is not None:
            revision = entry.revision or 0
            try:
                tree = decode_state(bytearray(entry.value or b""))
                self._load(tree)
            except StateFileError as exc:
                log.warning("partition %d: checkpoint unusable (%s): starting fresh", self.p, exc)
                tree = None
                self.pipeline = Pipeline(w.settings)
                self.seq = 0
        if tree is not None:
            self.previous_owner = str(tree.get("owner", ""))
            self.handoffs = int(tree.get("handoffs", 0)) + 1
        # the fence: from here on the former owner's checkpoints fail their revision check
        self.ckpt_rev = revision
        await self._write_checkpoint(self._tree(), first=True)

    def _load(self, tree: dict[str, Any]) -> None:
        if tree.get("version") != CHECKPOINT_VERSION or tree.get("partition") != self.p:
            raise StateFileError("not a checkpoint of this partition")
        seq = tree.get("seq")
        if type(seq) is not int or seq < 0:
            raise StateFileError("checkpoint without a stream sequence")
        state = tree.get("pipeline")
        if not isinstance(state, dict):
            raise StateFileError("checkpoint without pipeline state")
        pipeline = Pipeline(self.worker.settings)
        skipped = pipeline.load_state_dict(state)
        if skipped:
            log.warning("partition %d: relearning %s", self.p, ", ".join(skipped))
        # the last arrival of each sensor (stream time), which the pipeline's own saved state
        # leaves out (a restart's downtime is no gap): a hand-off is no restart, so the
        # arrival intervals and silence go on from it
        n = len(pipeline.sensor_ids)
        seen = tree.get("last_seen")
        if isinstance(seen, np.ndarray) and seen.shape == (n,) and seen.dtype.kind == "f":
            pipeline.last_seen[:n] = seen
        self.pipeline = pipeline
        self.seq = seq

    def _tree(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "partition": self.p,
            "seq": self.seq,
            "owner": self.worker.worker_id,
            "epoch": self.epoch,
            "handoffs": self.handoffs,
            "scored": self.scored,
            "saved_at": time.time(),
            "pipeline": self.pipeline.state_dict(),
            "last_seen": self.pipeline.last_seen[: len(self.pipeline.sensor_ids)].copy(),
        }

    async def checkpoint(self) -> None:
        """Save the partition's state and the sequence it covers (after the store holds what
        it covers); FencedError when another worker has taken the partition."""
        w = self.worker
        self._next_ckpt = w.clock() + w.cs.checkpoint_interval
        durable = self._store.durable if self._store is not None else None
        if durable is not None:
            ticket = durable.mark()
            if not await asyncio.to_thread(durable.wait_confirmed, ticket, 10.0):
                log.warning("partition %d: store not confirming: checkpoint later", self.p)
                return
        await self._write_checkpoint(self._tree())

    async def _write_checkpoint(self, tree: dict[str, Any], *, first: bool = False) -> None:
        w = self.worker
        blob = await asyncio.to_thread(lambda: b"".join(encode_state(tree)))
        if not self.valid():
            raise LapsedError
        if len(blob) > w.nc.max_payload:
            raise FencedError(  # not fenced: unable to hand over; stop before scoring more
                f"its checkpoint ({len(blob)} bytes, {len(self.pipeline.sensor_ids)} sensors) "
                f"exceeds the servers' max_payload ({w.nc.max_payload}): raise it or use "
                "more partitions"
            )
        ckpts = w.buckets.checkpoints
        while True:
            try:
                if self.ckpt_rev:
                    rev = await ckpts.update(self.key, blob, last=self.ckpt_rev)
                else:
                    rev = await ckpts.create(self.key, blob)
                break
            except nats.js.errors.KeyWrongLastSequenceError:
                if await self._mine():  # our own write whose reply was lost
                    return
                raise FencedError("its checkpoint was written by another worker") from None
            except NATS_ERRORS as exc:
                w.rl.warning("ckpt", "partition %d: checkpoint not written (%r)", self.p, exc)
                if not first:
                    return  # the next one will do
                if not self.valid() or self._stop.is_set():
                    raise LapsedError from exc
                await asyncio.sleep(0.1)
        self.ckpt_rev = rev
        self.ckpt_seq = tree["seq"]
        w.stats.checkpoints += 1

    async def _mine(self) -> bool:
        try:
            entry = await self.worker.buckets.checkpoints.get(self.key)
            tree = decode_state(bytearray(entry.value or b""))
        except (*NATS_ERRORS, StateFileError):
            return False
        if tree.get("owner") == self.worker.worker_id and tree.get("epoch") == self.epoch:
            self.ckpt_rev = entry.revision or 0
            self.ckpt_seq = int(tree.get("seq", -1))
            return True
        return False

    # ---- consuming -------------------------------------------------------------------
    async def _subscribe(self) -> None:
        """An ephemeral, in-order consumer of the partition from the sequence after ``seq``."""
        w = self.worker
        await self._unsubscribe()
        name = f"{w.worker_id}-p{self.p}-{w.nc._nuid.next().decode()}"
        config = ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.seq + 1,
            ack_policy=AckPolicy.NONE,
            filter_subject=w.cs.partition_subject(self.p),
            inactive_threshold=max(10.0, 2 * w.cs.lease_ttl),
            mem_storage=True,
            num_replicas=1,
        )
        await w.js.add_consumer(w.cs.stream, config)
        self._sub = await w.js.pull_subscribe_bind(name=name, stream=w.cs.stream)
        self._consumer = name
        self._cseq = 0

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is None:
            return
        w = self.worker
        with contextlib.suppress(*NATS_ERRORS):
            await sub.unsubscribe()
        with contextlib.suppress(*NATS_ERRORS):
            await w.js.delete_consumer(w.cs.stream, self._consumer)

    async def _resubscribe(self, why: str) -> None:
        self.worker.stats.resubscribes += 1
        log.info("partition %d: consumer renewed from seq %d (%s)", self.p, self.seq + 1, why)
        while not self._stop.is_set():
            if not self.valid():
                raise LapsedError
            try:
                await self._subscribe()
                return
            except NATS_ERRORS as exc:
                self.worker.rl.warning("sub", "partition %d: no consumer yet (%r)", self.p, exc)
                await asyncio.sleep(0.25)

    async def _fetch(self) -> list[Msg]:
        if self._sub is None:
            await self._resubscribe("none")
            if self._sub is None:
                return []
        try:
            return await self._sub.fetch(self.worker.cs.batch, timeout=0.25)
        except TimeoutError:
            return []
        except NATS_ERRORS as exc:
            await asyncio.sleep(0.1)
            await self._resubscribe(repr(exc))
            return []

    async def _check_consumer(self) -> None:
        """After a quiet while: is the consumer still there (its server may have died)?"""
        if self._sub is None:
            return
        try:
            await self._sub.consumer_info()
        except NATS_ERRORS as exc:
            await self._resubscribe(f"consumer gone: {exc!r}")

    async def _handle(self, msgs: list[Msg]) -> None:
        w = self.worker
        prefix = w.cs.subject
        batch: list[tuple[str, bytes, float]] = []
        last = self.seq
        gap = False
        for m in msgs:
            md = m.metadata
            if md.sequence.consumer != self._cseq + 1:  # a delivery lost: ask again from seq
                gap = True
                break
            self._cseq = md.sequence.consumer
            last = md.sequence.stream
            self.pending = md.num_pending
            try:
                _, original = partition_of_subject(m.subject, prefix)
            except ValueError:
                continue
            batch.append((mqtt_topic(original), m.data, md.timestamp.timestamp()))
        if batch:
            first = self.seq + 1
            t0 = time.time()
            out = self.pipeline.process(batch)
            t1 = time.time()
            if not self.valid():  # paused while scoring: drop the output (the runner ends)
                raise LapsedError
            await w.activity(self.p, self.epoch, first, last, len(batch), t0, t1)
            self.seq = last
            self.scored += len(batch)
            w.stats.scored += len(batch)
            if self._store is not None:
                self._store.write(out)
            if out.alerts:
                await self._publish(out.alerts)
        elif last != self.seq:
            self.seq = last
        if gap:
            await self._resubscribe("a gap in the deliveries")

    async def _check_silence(self) -> None:
        """Silence alerts, about once a second, once caught up with the stream (a backlog's
        old receive times are no silence); a restored sensor counts from its next reading."""
        self._next_silence = self.worker.clock() + SILENCE_EVERY
        if self.pending:
            return
        out = self.pipeline.check_silence(time.time())
        if not out.alerts:
            return
        if not self.valid():
            raise LapsedError
        if self._store is not None:
            self._store.write(out)
        await self._publish(out.alerts)

    async def _publish(self, alerts: list[Alert]) -> None:
        w = self.worker
        subject = f"{w.cs.alerts_subject}.{self.p}"
        for alert in alerts:
            payload = encode(alert)
            while True:
                try:
                    await w.js.publish(subject, payload, headers={"Nats-Msg-Id": alert.id})
                    break
                except NATS_ERRORS as exc:
                    if not self.valid():
                        raise LapsedError from exc
                    w.rl.warning("alert", "partition %d: alert not published yet (%r)", self.p, exc)
                    await asyncio.sleep(0.1)
            w.stats.alerts += 1


class ClusterWorker:
    """Join the cluster, own a fair share of the partitions, score them (module docstring).

    ``await worker.run(stop)`` until ``stop`` is set: then every partition is checkpointed
    and released, so the others take them over at once.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.cs: ClusterSettings = settings.cluster
        self.worker_id = self.cs.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.store = store
        self.clock = clock
        self.runners: dict[int, PartitionRunner] = {}
        self.stats = WorkerStats()
        self.rl = RateLimitedLog(log, period=5.0)
        self.alive: list[str] = [self.worker_id]
        self.started = time.time()
        self.ready = asyncio.Event()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._buckets: Buckets | None = None
        self._stopping = False
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def nc(self) -> Client:
        assert self._nc is not None
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None
        return self._js

    @property
    def buckets(self) -> Buckets:
        assert self._buckets is not None
        return self._buckets

    @property
    def period(self) -> float:
        """Seconds between two coordinator rounds (renewals, joins and leaves seen)."""
        return min(self.cs.lease_ttl / 4, 1.0)

    async def run(self, stop: asyncio.Event) -> None:
        self._nc = await connect(self.cs, self.worker_id)
        self._js = self._nc.jetstream(timeout=max(1.0, self.cs.lease_ttl / 4))
        try:
            self._buckets = await ensure(self._js, self.cs)
            log.info(
                "worker %s joined %s (%d partitions)",
                self.worker_id,
                ",".join(self.cs.servers),
                self.cs.partitions,
            )
            while not stop.is_set():
                await self._tick()
                self.ready.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.period)
            self._stopping = True
            for run in list(self.runners.values()):
                await self._release(run)
            with contextlib.suppress(*NATS_ERRORS):
                await self.buckets.workers.delete(self.worker_id)
            log.info("worker %s left: %d readings scored", self.worker_id, self.stats.scored)
        finally:
            for run in list(self.runners.values()):
                await run.stop()
            with contextlib.suppress(*NATS_ERRORS):
                await self._nc.drain()

    async def activity(
        self, p: int, epoch: int, first: int, last: int, n: int, t0: float, t1: float
    ) -> None:
        """A batch was scored: tell ``{prefix}.scored.{p}`` (core NATS, not kept)."""
        body = msgspec.json.encode(
            {"w": self.worker_id, "e": epoch, "a": first, "b": last, "n": n, "t0": t0, "t1": t1}
        )
        with contextlib.suppress(*NATS_ERRORS):  # buffered by the client: does not wait
            await self.nc.publish(f"{self.cs.bucket_prefix}.scored.{p}", body)

    # ---- the coordinator -------------------------------------------------------------
    async def _tick(self) -> None:
        me = self.worker_id
        b = self.buckets
        try:
            info = {"started": self.started, "partitions": sorted(self.runners)}
            await b.workers.put(me, msgspec.json.encode({**info, "scored": self.stats.scored}))
        except NATS_ERRORS as exc:
            self.rl.warning("hb", "worker record not renewed (%r)", exc)
        try:
            self.alive = sorted(set(await b.workers.keys()) | {me})
        except nats.js.errors.NoKeysError:
            self.alive = [me]
        except NATS_ERRORS as exc:
            self.rl.warning("alive", "live workers not read (%r): keeping the last list", exc)
        target = assignment(self.cs.partitions, self.alive)
        steps = []
        for p, run in list(self.runners.items()):
            if run.finished:
                steps.append(self._forget(run))
            elif target[p] != me:
                steps.append(self._release(run))
            else:
                steps.append(self._renew(run))
        await asyncio.gather(*steps)
        await asyncio.gather(
            *(
                self._claim(p)
                for p in range(self.cs.partitions)
                if target[p] == me and p not in self.runners
            )
        )

    async def _claim(self, p: int) -> None:
        sent = self.clock()
        try:
            run = PartitionRunner(self, p, 0, 0.0)
            rev = await self.buckets.owners.create(run.key, run.record())
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # another worker's record is still there
        except NATS_ERRORS as exc:
            self.rl.warning("claim", "partition %d not claimed (%r)", p, exc)
            return
        run.lease_rev = run.epoch = rev
        run.valid_until = sent + VALID_SHARE * self.cs.lease_ttl
        self.runners[p] = run
        self.stats.claimed += 1
        run.start()

    async def _renew(self, run: PartitionRunner) -> None:
        sent = self.clock()
        try:
            rev = await self.buckets.owners.update(run.key, run.record(), last=run.lease_rev)
        except nats.js.errors.KeyWrongLastSequenceError:
            log.warning("partition %d: ownership record gone or taken: stopping", run.p)
            run.valid_until = 0.0
            await run.stop()
            self.stats.fenced += 1
            self.runners.pop(run.p, None)
            return
        except NATS_ERRORS as exc:
            self.rl.warning("renew", "partition %d: lease not renewed (%r)", run.p, exc)
            return
        run.lease_rev = rev
        run.valid_until = sent + VALID_SHARE * self.cs.lease_ttl

    async def _release(self, run: PartitionRunner) -> None:
        """Hand a partition over: stop, checkpoint, delete the ownership record."""
        await run.stop()
        self.runners.pop(run.p, None)
        if run.outcome or not run.valid():
            return
        try:
            if run.ready:
                await run.checkpoint()
            await self.buckets.owners.delete(run.key, last=run.lease_rev)
        except (FencedError, LapsedError):
            return
        except NATS_ERRORS as exc:
            self.rl.warning("release", "partition %d: not released (%r)", run.p, exc)
            return
        self.stats.released += 1
        log.info("partition %d: released after seq %d", run.p, run.seq)

    async def _forget(self, run: PartitionRunner) -> None:
        """A runner that stopped on its own. Lapsed (renewals too slow): if our record is
        still there nobody took the partition, so renew it and start again from the
        checkpoint; failed: free the record for whoever should have it."""
        self.runners.pop(run.p, None)
        if run.outcome == "lapsed":
            sent = self.clock()
            try:
                rev = await self.buckets.owners.update(run.key, run.record(), last=run.lease_rev)
            except NATS_ERRORS:
                return  # gone or taken (or no answer): claim it anew when it is free
            again = PartitionRunner(self, run.p, rev, sent + VALID_SHARE * self.cs.lease_ttl)
            again.epoch = run.epoch
            self.runners[run.p] = again
            again.start()
        elif run.outcome.startswith("error") and run.valid():
            with contextlib.suppress(*NATS_ERRORS):
                await self.buckets.owners.delete(run.key, last=run.lease_rev)


async def run_worker(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """``mqtt-anomaly detect --cluster``: the store (``store.url``), then the worker, until
    ``stop`` or SIGINT/SIGTERM; the worker hands its partitions over before the store
    closes."""
    import signal

    from ..store import open_store

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from .http import worker_http

    with open_store(settings.store.url, settings.store) as store:
        worker = ClusterWorker(settings, store=store)
        async with worker_http(worker, settings.http):
            await worker.run(stop)
