"""``mqtt-anomaly bench --cluster``: 1, 2 and 4 workers on a private 3-node NATS cluster.

For each worker count W, a fresh local cluster (:mod:`mqtt_anomaly.cluster.local`) gets a
backlog of ``readings`` readings of ``sensors`` sensors in P partitions; then W
``mqtt-anomaly detect --cluster --store none://`` processes start together and score it.
Measured from the workers' scoring notes (``mqa.scored.*``) and ``/proc``:

- **throughput**: readings scored per second from the first scored batch to the last;
- **CPU per reading per worker**: each worker's user+system CPU seconds over the readings it
  scored, from the resume to the end of the backlog; and the three servers' together over
  all readings (delivering to the consumers, checkpoints and leases; the backlog was
  stored before);
- **hand-off time**: at each change of a partition's owner while the backlog lasts (the first
  worker claims every partition, the others take their share as they join: a checkpoint,
  a release, a claim and a restore), the gap between the former owner's last batch and the
  new owner's first.

The scaling model: a worker is single-threaded, so with W workers on W free cores the total
is about W / (CPU per reading), until the NATS servers (3 processes here, on the same cores)
are the limit. On a machine with fewer cores than workers plus servers the measured total
cannot grow; the per-worker CPU cost is the figure that carries over.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from ..errors import ConfigError

CONFIG = """
[detector]
detectors = ["threshold", "zscore", "stuck"]
silence_factor = 1e9

[alerts]
flood_threshold = 0

[cluster]
partitions = {partitions}
lease_ttl = 30.0
checkpoint_interval = 1.0
batch = 500
"""


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _preload(urls: str, sensors: int, readings: int) -> None:
    import nats

    nc = await nats.connect(servers=urls.split(","))
    js = nc.jetstream(timeout=10)
    rng = random.Random(3)
    t0 = time.time()
    pending: list[Any] = []
    for i in range(readings):
        s, q = i % sensors, i // sensors
        sid = f"B{s:05d}"
        payload = msgspec.json.encode({"ts": t0 + q, "value": 25.0 + rng.gauss(0, 0.3), "seq": q})
        pending.append(await js.publish_async(f"factory.{sid}.temperature", payload))
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    await nc.close()


class _Notes:
    """The workers' scoring notes (``mqa.scored.*``), as they arrive."""

    def __init__(self) -> None:
        self.notes: list[tuple[int, dict[str, Any]]] = []
        self.scored = 0

    async def cb(self, msg: Any) -> None:
        note = msgspec.json.decode(msg.data)
        self.notes.append((int(msg.subject.rsplit(".", 1)[1]), note))
        self.scored += note["n"]


async def _until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise ConfigError(f"bench --cluster: no {what} after {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def _trial(workers: int, sensors: int, readings: int, partitions: int) -> dict[str, Any]:
    """One worker count: balance, a backlog scored in parallel, a graceful hand-off."""
    import nats

    from ..cluster.local import NatsCluster
    from ..cluster.setup import ensure
    from ..cluster.worker import assignment
    from ..config import load_settings

    with tempfile.TemporaryDirectory(prefix="mqa-bench-cluster-") as tmp:
        workdir = Path(tmp)
        cluster = NatsCluster(workdir / "nats", partitions=partitions)
        cluster.start()
        procs: dict[str, subprocess.Popen[bytes]] = {}
        nc = None
        try:
            config = workdir / "worker.toml"
            config.write_text(CONFIG.format(partitions=partitions))
            cs = load_settings(config, {"cluster": {"urls": cluster.urls}}).cluster
            nc = await nats.connect(servers=cluster.urls.split(","))
            js = nc.jetstream(timeout=10)
            buckets = await ensure(js, cs)
            notes = _Notes()
            await nc.subscribe("mqa.scored.>", cb=notes.cb)
            ids = [f"bench{k + 1}" for k in range(workers)]
            for wid in ids:
                command = [sys.executable, "-m", "mqtt_anomaly", "detect", "--config"]
                command += [str(config), "--cluster", cluster.urls, "--store", "none://"]
                procs[wid] = subprocess.Popen(
                    command,
                    env={**os.environ, "MQTT_ANOMALY_CLUSTER__WORKER_ID": wid},
                    stdout=subprocess.DEVNULL,
                    stderr=(workdir / f"{wid}.log").open("wb"),
                    cwd=workdir,
                )
            target = assignment(partitions, ids)

            async def balanced() -> bool:
                for p in range(partitions):
                    try:
                        entry = await buckets.owners.get(f"p{p}")
                        rec = msgspec.json.decode(entry.value or b"{}")
                    except Exception:
                        return False
                    if rec.get("worker") != target[p]:
                        return False
                return True

            await _until(balanced, 120, "balanced ownership")
            # the backlog arrives while the workers are paused (their 30 s leases outlast
            # it), so they all start on it at once
            for proc in procs.values():
                proc.send_signal(signal.SIGSTOP)
            await _preload(cluster.urls, sensors, readings)
            cpu0 = {wid: _cpu_seconds(p.pid) for wid, p in procs.items()}
            servers0 = sum(_cpu_seconds(n.proc.pid) for n in cluster.nodes if n.proc)
            before = len(notes.notes)
            resumed = time.time()
            for proc in procs.values():
                proc.send_signal(signal.SIGCONT)

            async def scored() -> bool:
                return notes.scored >= readings

            await _until(scored, max(120.0, readings / 200), "backlog scored")
            cpu = {wid: _cpu_seconds(p.pid) - cpu0[wid] for wid, p in procs.items()}
            servers = sum(_cpu_seconds(n.proc.pid) for n in cluster.nodes if n.proc) - servers0
            run = notes.notes[before:]
            per_worker: dict[str, int] = defaultdict(int)
            for _, n in run:
                per_worker[n["w"]] += n["n"]
            last = max(n["t1"] for _, n in run)
            handoff = await _handoff(js, notes, procs, ids, target) if workers > 1 else []
            return {
                "workers": workers,
                "readings": sum(per_worker.values()),
                "seconds": last - resumed,
                "readings_per_s": sum(per_worker.values()) / max(last - resumed, 1e-9),
                "cpu_us_per_reading": {
                    wid: 1e6 * cpu[wid] / max(per_worker.get(wid, 0), 1) for wid in ids
                },
                "servers_cpu_us_per_reading": 1e6 * servers / max(sum(per_worker.values()), 1),
                "scored_by": dict(per_worker),
                "handoff_ms": [round(1000 * h) for h in handoff],
            }
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGCONT)
                    p.send_signal(signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
            if nc is not None:
                await nc.close()
            cluster.stop()


async def _handoff(
    js: Any,
    notes: _Notes,
    procs: dict[str, subprocess.Popen[bytes]],
    ids: list[str],
    target: list[str],
) -> list[float]:
    """SIGTERM the first worker while a trickle of readings flows: seconds from the signal to
    each of its partitions' first batch scored by its new owner (release: checkpoint and
    delete the record; claim at the next round; restore)."""
    mine = {p for p, w in enumerate(target) if w == ids[0]}
    stop = asyncio.Event()

    async def trickle() -> None:
        q = 10**9
        while not stop.is_set():
            for s in range(64):
                payload = msgspec.json.encode({"value": 25.0, "seq": q})
                await js.publish(f"factory.B{s:05d}.temperature", payload)
            q += 1
            await asyncio.sleep(0.02)

    task = asyncio.create_task(trickle())
    try:
        seen = len(notes.notes)

        async def flowing() -> bool:
            return len(notes.notes) > seen + len(target)

        await _until(flowing, 30, "trickle scored")
        procs[ids[0]].send_signal(signal.SIGTERM)
        sent = time.time()
        taken: dict[int, float] = {}

        async def all_taken() -> bool:
            for p, n in notes.notes:
                if p in mine and n["w"] != ids[0] and n["t0"] > sent and p not in taken:
                    taken[p] = n["t0"] - sent
            return len(taken) == len(mine)

        await _until(all_taken, 60, "hand-off")
        return sorted(taken.values())
    finally:
        stop.set()
        await task


def run_cluster_bench(
    workers: tuple[int, ...] = (1, 2, 4),
    sensors: int = 256,
    readings: int = 100_000,
    partitions: int = 8,
) -> dict[str, Any]:
    """One trial per worker count (see the module docstring)."""
    trials = [asyncio.run(_trial(w, sensors, readings, partitions)) for w in workers]
    return {
        "cluster": {
            "sensors": sensors,
            "readings": readings,
            "partitions": partitions,
            "cores": os.cpu_count(),
            "trials": trials,
        }
    }


def cluster_table(result: dict[str, Any]) -> str:
    c = result["cluster"]
    lines = [
        f"cluster: a backlog of {c['readings']} readings of {c['sensors']} sensors in "
        f"{c['partitions']} partitions, 3 NATS nodes, {c['cores']} cores",
        f"{'workers':>7} {'readings/s':>11} {'CPU µs/reading, each worker':>30} "
        f"{'3 servers':>9} {'graceful hand-off ms':>22}",
    ]
    for t in c["trials"]:
        cpu = " ".join(f"{v:.0f}" for v in t["cpu_us_per_reading"].values())
        ho = " ".join(str(h) for h in t["handoff_ms"]) or "-"
        srv = f"{t['servers_cpu_us_per_reading']:.0f}"
        lines.append(f"{t['workers']:>7} {t['readings_per_s']:>11,.0f} {cpu:>30} {srv:>9} {ho:>22}")
    return "\n".join(lines)
