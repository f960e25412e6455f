"""Scale-out on a real 3-node NATS JetStream cluster (tests/nats.py), real worker processes.

Every test publishes a known stream of readings through the servers' subject mapping, runs
``mqtt-anomaly detect --cluster`` workers, does something bad to them or to the cluster, and
then checks against one uninterrupted pass of the same readings through one
:class:`~mqtt_anomaly.pipeline.Pipeline` per partition:

- each partition's final checkpoint holds exactly the state of the uninterrupted pass (every
  detector array, alert book and dedup window): each reading went into it once, in order, so
  the score sequence continued identically across hand-offs;
- the ALERTS stream holds every alert of that pass once (``Nats-Msg-Id`` dedup);
- the PostgreSQL history store holds every reading once and those alerts once;
- the scoring activity (``mqa.scored.*``) never shows two owners of one partition at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

import nats
from mqtt_anomaly.clusterconf import partition_of_subject
from mqtt_anomaly.config import load_settings
from mqtt_anomaly.messages import Alert
from mqtt_anomaly.pipeline import Pipeline
from mqtt_anomaly.statefile import decode, encode
from mqtt_anomaly.store import open_store

from .helpers import eventually, reading_payload
from .mosquitto import stop_process
from .nats import NatsCluster
from .postgres import private_database

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SENSORS = 16
PER_SENSOR = 400
TOTAL = SENSORS * PER_SENSOR
PARTITIONS = 8
TTL = 2.0
CONFIG = f"""
[detector]
detectors = ["threshold", "zscore", "stuck"]
silence_factor = 1e9

[alerts]
flood_threshold = 0

[cluster]
partitions = {PARTITIONS}
lease_ttl = {TTL}
checkpoint_interval = 0.3
batch = 50
"""


def stream(t0: float) -> list[tuple[str, bytes]]:
    """Instant after instant, every sensor; three 98.2 °C spikes per sensor."""
    rng = random.Random(7)
    spikes = {(s, rng.randrange(30, PER_SENSOR)) for s in range(SENSORS) for _ in range(3)}
    out = []
    for q in range(PER_SENSOR):
        for s in range(SENSORS):
            sid = f"S{s:02d}"
            value = 98.2 if (s, q) in spikes else 25.0 + math.sin(q / 9.0 + s) + rng.gauss(0, 0.2)
            out.append((f"factory.{sid}.temperature", reading_payload(sid, value, q, t0 + q)))
    return out


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    c = NatsCluster(tmp_path / "nats", partitions=PARTITIONS)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def store_url() -> Iterator[str]:
    with private_database("cluster") as url:
        from mqtt_anomaly.config import StoreSettings

        open_store(url, StoreSettings()).close()  # the schema, before workers race for it
        yield url


class Workers:
    """``mqtt-anomaly detect --cluster`` processes, each with its own worker id and log."""

    def __init__(self, tmp: Path, cluster: NatsCluster, store: str) -> None:
        self.tmp, self.cluster, self.store = tmp, cluster, store
        self.config = tmp / "worker.toml"
        self.config.write_text(CONFIG)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, wid: str, *extra: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "MQTT_ANOMALY_CLUSTER__WORKER_ID": wid}
        log = (self.tmp / f"{wid}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "mqtt_anomaly", "detect", "--config", str(self.config)]
            + ["--cluster", self.cluster.urls, "--store", self.store, *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.tmp,
        )
        self.procs[wid] = proc
        return proc

    def log(self, wid: str) -> str:
        return (self.tmp / f"{wid}.log").read_text()

    async def joined(self, *wids: str) -> None:
        await eventually(lambda: all("joined" in self.log(w) for w in wids), 30, f"{wids} up")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            with_cont(proc)
            stop_process(proc)


def with_cont(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)


class Activity:
    """The workers' scoring notes: (partition, note) in arrival order."""

    def __init__(self) -> None:
        self.notes: list[tuple[int, dict[str, Any]]] = []

    async def cb(self, msg: Any) -> None:
        self.notes.append((int(msg.subject.rsplit(".", 1)[1]), msgspec.json.decode(msg.data)))

    def by(self, wid: str) -> list[tuple[int, dict[str, Any]]]:
        return [(p, n) for p, n in self.notes if n["w"] == wid]

    def check_single_owner(self) -> None:
        """Per partition: the owners' scoring never overlaps in time, and a newer epoch is
        never followed by an older one (a fenced owner scores nothing more)."""
        per: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for p, n in self.notes:
            per[p].append(n)
        for p, notes in per.items():
            notes.sort(key=lambda n: n["t0"])
            newest = 0
            for before, after in pairwise(notes):
                if before["e"] != after["e"]:
                    assert before["t1"] <= after["t0"], f"partition {p}: two owners at once"
            for n in notes:
                assert n["e"] >= newest, f"partition {p}: epoch {n['e']} scored after {newest}"
                newest = n["e"]


async def publish(js: Any, messages: list[tuple[str, bytes]]) -> None:
    """Publish each reading until the stream acknowledges it, with its payload as message id
    (the stream's dedup window drops a retry's copy): a loaded machine or a stream electing a
    leader answers a publish with a timeout or 503 now and then."""
    for subject, payload in messages:
        msg_id = payload.decode()
        while True:
            try:
                await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
                break
            except (
                TimeoutError,
                nats.errors.NoRespondersError,
                nats.js.errors.NoStreamResponseError,  # no responders, as JetStream words it
                nats.js.errors.ServiceUnavailableError,
            ):
                await asyncio.sleep(0.1)


async def retrying(make: Any, timeout: float = 30.0) -> Any:
    """``await make()``, again while the cluster answers with timeouts or 503 (a node was
    killed, or a fresh cluster is still placing a stream: leaders are being elected)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await make()
        except (
            TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.NoStreamResponseError,
            nats.js.errors.ServiceUnavailableError,
        ):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def read_stream(js: Any, name: str, count: int) -> list[Any]:
    """Every message of a stream, in order (an ephemeral consumer, no acks)."""
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE)
    sub = await retrying(lambda: js.pull_subscribe(">", stream=name, config=config))
    got: list[Any] = []
    quiet = 0
    while len(got) < count and quiet < 3:  # three quiet seconds: that was all
        try:
            got += await sub.fetch(1000, timeout=1)
            quiet = 0
        except TimeoutError:
            quiet += 1
    await sub.unsubscribe()
    return got


def reference(config: Path, msgs: list[Any]) -> tuple[dict[int, Any], dict[int, int], list[str]]:
    """Per partition: the state of one uninterrupted pass, the last stream sequence; and all
    alert ids of that pass."""
    settings = load_settings(config, {})
    parts: dict[int, list[tuple[str, bytes, float, int]]] = defaultdict(list)
    for m in msgs:
        p, original = partition_of_subject(m.subject, "readings")
        md = m.metadata
        parts[p].append(
            (original.replace(".", "/"), m.data, md.timestamp.timestamp(), md.sequence.stream)
        )
    states, last, ids = {}, {}, []
    for p, rows in parts.items():
        pipeline = Pipeline(settings)
        for i in range(0, len(rows), 97):
            out = pipeline.process([(t, d, r) for t, d, r, _ in rows[i : i + 97]])
            ids += [a.id for a in out.alerts]
        states[p] = decode(bytearray(b"".join(encode(pipeline.state_dict()))))
        last[p] = rows[-1][3]
    return states, last, ids


def comparable(state: dict[str, Any]) -> dict[str, Any]:
    """A pipeline state as the comparison sees it: alert books cut to the sensors (an unused
    book is an empty array until first stepped: the silence book of a worker, checked every
    second, has its slots, the reference's not)."""
    n = len(state["sensor_ids"])
    out = dict(state)
    books = {}
    for name, book in state["books"].items():
        books[name] = {
            k: np.concatenate([v[:n], np.zeros(max(0, n - len(v)), dtype=v.dtype)])
            for k, v in book.items()
        }
    out["books"] = books
    return out


def same(a: Any, b: Any, where: str = "state") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.shape == b.shape, where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


async def checkpoints(js: Any) -> dict[int, dict[str, Any]]:
    kv = await js.key_value("mqa-checkpoints")
    out = {}
    for p in range(PARTITIONS):
        try:
            entry = await kv.get(f"p{p}")
        except nats.js.errors.KeyNotFoundError:
            continue
        out[p] = decode(bytearray(entry.value))
    return out


async def owners(js: Any) -> dict[int, str]:
    kv = await js.key_value("mqa-owners")
    out = {}
    for p in range(PARTITIONS):
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            out[p] = msgspec.json.decode((await kv.get(f"p{p}")).value)["worker"]
    return out


async def verify(
    js: Any, workers: Workers, store: str, activity: Activity
) -> dict[int, dict[str, Any]]:
    """Wait until every partition's checkpoint covers its last reading; then compare the
    checkpoints, the ALERTS stream and the store with one uninterrupted pass."""
    msgs = await read_stream(js, "READINGS", TOTAL)
    assert len(msgs) == TOTAL
    states, last, ids = reference(workers.config, msgs)
    assert len(states) == PARTITIONS  # 16 sensors fill all 8 partitions
    assert len(ids) >= SENSORS * 2  # raised and cleared spikes
    deadline = time.monotonic() + 60
    while True:
        ck = await retrying(lambda: checkpoints(js))
        if all(p in ck and ck[p]["seq"] == last[p] for p in states):
            break
        assert time.monotonic() < deadline, {p: (ck.get(p, {}).get("seq"), last[p]) for p in last}
        await asyncio.sleep(0.2)
    for p in states:
        same(comparable(states[p]), comparable(ck[p]["pipeline"]), f"partition {p}")
    alerts = await read_stream(js, "ALERTS", len(ids) + 100)
    published = [msgspec.json.decode(m.data, type=Alert).id for m in alerts]
    assert Counter(published) == Counter(ids)  # each alert once
    assert all(m.headers["Nats-Msg-Id"] == i for m, i in zip(alerts, published, strict=True))
    import psycopg

    with psycopg.connect(store, autocommit=True) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT (sensor_id, seq)) FROM readings")
        assert rows.fetchone() == (TOTAL, TOTAL)
        stored = conn.execute("SELECT count(*) FROM alerts").fetchone()
        assert stored == (len(ids),)
    activity.check_single_owner()
    return ck


async def connect(cluster: NatsCluster, activity: Activity) -> Any:
    nc = await nats.connect(servers=cluster.urls.split(","), max_reconnect_attempts=-1)
    await nc.subscribe("mqa.scored.>", cb=activity.cb)
    return nc


async def test_partition_mapping_and_mqtt_listener(cluster: NatsCluster) -> None:
    """The servers' mapping puts every reading of a sensor in one partition, for readings
    published on NATS and on NATS's MQTT listener alike; the sensors spread over all."""
    import paho.mqtt.client as mqtt

    nc = await nats.connect(servers=cluster.urls.split(","))
    js = nc.jetstream()
    from mqtt_anomaly.cluster.setup import ensure

    cs = load_settings(None, {"cluster": {"urls": cluster.urls, "partitions": PARTITIONS}}).cluster
    await ensure(js, cs)
    for q in range(3):
        for s in range(SENSORS):
            await js.publish(f"factory.S{s:02d}.temperature", reading_payload(f"S{s:02d}", 1, q))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plc-1")
    client.connect("127.0.0.1", cluster.nodes[1].mqtt_port)
    client.loop_start()
    info = client.publish("factory/S03/temperature", reading_payload("S03", 2.0, 3), qos=1)
    info.wait_for_publish(10)
    client.loop_stop()
    client.disconnect()
    msgs = await read_stream(js, "READINGS", 3 * SENSORS + 1)
    assert len(msgs) == 3 * SENSORS + 1
    seen: dict[str, set[int]] = defaultdict(set)
    for m in msgs:
        p, original = partition_of_subject(m.subject, "readings")
        seen[original.split(".")[1]].add(p)
    assert all(len(ps) == 1 for ps in seen.values())
    assert {next(iter(ps)) for ps in seen.values()} == set(range(PARTITIONS))
    assert msgs[-1].subject.endswith("factory.S03.temperature")  # the MQTT one, same partition
    await nc.close()


async def test_sigkill_worker_partitions_taken_over(
    cluster: NatsCluster, store_url: str, tmp_path: Path
) -> None:
    """SIGKILL one of two workers mid-stream: the other takes its partitions within the lease
    TTL plus a renewal period, resumes from their checkpoints, and the end state, alerts and
    store are those of an uninterrupted pass."""
    activity = Activity()
    nc = await connect(cluster, activity)
    js = nc.jetstream()
    workers = Workers(tmp_path, cluster, store_url)
    try:
        workers.start("w1")
        workers.start("w2")
        await workers.joined("w1", "w2")
        messages = stream(time.time())
        third = len(messages) // 3
        pub = asyncio.create_task(publish(js, messages[:third]))
        await eventually(lambda: activity.by("w1") and activity.by("w2"), 30, "both scoring")
        await pub
        # w1 owns the even partitions once both have joined
        await eventually(
            lambda: (
                {p for p, _ in activity.notes[-40:] if _["w"] == "w1"} <= {0, 2, 4, 6}
                and len(activity.by("w1")) > 5
            ),
            30,
            "balanced",
        )
        pub = asyncio.create_task(publish(js, messages[third:]))
        await eventually(
            lambda: {p for p, n in activity.notes[-40:] if n["w"] == "w1"} == {0, 2, 4, 6},
            30,
            "w1 scoring its partitions mid-stream",
        )
        workers.procs["w1"].kill()
        killed = time.time()
        taken = {}

        def took_over() -> bool:
            for p, n in activity.by("w2"):
                if p % 2 == 0 and n["t0"] > killed and p not in taken:
                    taken[p] = n["t0"] - killed
            return len(taken) == PARTITIONS // 2

        await eventually(took_over, 30, "w1's partitions scored by w2")
        await pub
        ck = await verify(js, workers, store_url, activity)
        takeover = max(taken.values())
        print(f"takeover after SIGKILL: {takeover:.2f} s (lease_ttl {TTL} s)")
        assert takeover < TTL + 2.5
        owners = {p: (ck[p]["owner"], ck[p]["handoffs"]) for p in ck}
        assert all(owners[p][0] == "w2" and owners[p][1] >= 1 for p in (0, 2, 4, 6)), owners
    finally:
        workers.stop_all()
        await nc.close()


async def test_node_killed_and_worker_added(
    cluster: NatsCluster, store_url: str, tmp_path: Path
) -> None:
    """One worker, then a second joins mid-stream (partitions rebalance by hand-off), then a
    NATS node is killed: work continues on the two others, nothing lost or doubled."""
    activity = Activity()
    nc = await connect(cluster, activity)
    js = nc.jetstream()
    workers = Workers(tmp_path, cluster, store_url)
    try:
        workers.start("w1")
        messages = stream(time.time())
        third = len(messages) // 3
        await workers.joined("w1")
        await publish(js, messages[:third])
        await eventually(
            lambda: len({p for p, _ in activity.by("w1")}) == PARTITIONS, 30, "w1 owns all"
        )
        workers.start("w2")
        pub = asyncio.create_task(publish(js, messages[third : 2 * third]))
        while await retrying(lambda: owners(js)) != {p: f"w{p % 2 + 1}" for p in range(PARTITIONS)}:
            await asyncio.sleep(0.1)  # polling the owners bucket until rebalanced
        await pub
        cluster.kill(cluster.nodes[0])
        await publish(js, messages[2 * third :])
        # a lease that lapsed while the node's buckets elected leaders moves partitions for a
        # while: wait for the two-worker assignment again before reading the checkpoints
        deadline = time.monotonic() + 30
        while await retrying(lambda: owners(js)) != {p: f"w{p % 2 + 1}" for p in range(PARTITIONS)}:
            assert time.monotonic() < deadline, "no rebalance after the node was killed"
            await asyncio.sleep(0.1)  # polling the owners bucket until rebalanced
        ck = await verify(js, workers, store_url, activity)
        moved = [p for p in ck if ck[p]["owner"] == "w2"]
        assert len(moved) == PARTITIONS // 2
        assert all(ck[p]["handoffs"] >= 1 for p in moved)
        assert "released after seq" in workers.log("w1")
    finally:
        workers.stop_all()
        await nc.close()


async def test_paused_worker_never_scores_beside_the_new_owner(
    cluster: NatsCluster, store_url: str, tmp_path: Path
) -> None:
    """SIGSTOP a worker (a network partition stand-in) for three lease TTLs while readings
    flow, then SIGCONT: the other took its partitions; the paused one, once running, scores
    none of them beside the new owner (its lease had lapsed, its checkpoint is fenced)."""
    activity = Activity()
    nc = await connect(cluster, activity)
    js = nc.jetstream()
    workers = Workers(tmp_path, cluster, store_url)
    try:
        workers.start("w1")
        workers.start("w2")
        await workers.joined("w1", "w2")
        messages = stream(time.time())
        third = len(messages) // 3
        pub = asyncio.create_task(publish(js, messages[:third]))
        await eventually(
            lambda: {p for p, n in activity.notes[-40:] if n["w"] == "w1"} == {0, 2, 4, 6},
            30,
            "w1 scoring its partitions",
        )
        await pub
        w1 = workers.procs["w1"]
        w1.send_signal(signal.SIGSTOP)
        stopped = time.time()
        pub = asyncio.create_task(publish(js, messages[third : 2 * third]))  # flowing on
        await eventually(
            lambda: {p for p, n in activity.by("w2") if n["t0"] > stopped} >= {0, 2, 4, 6},
            30,
            "w2 scores w1's partitions",
        )
        await asyncio.sleep(max(0.0, stopped + 3 * TTL - time.time()))  # paused 3 TTLs
        w1.send_signal(signal.SIGCONT)
        await pub
        await publish(js, messages[2 * third :])
        await verify(js, workers, store_url, activity)
        log = workers.log("w1")
        assert "lease not renewed in time" in log or "ownership record gone" in log
    finally:
        workers.stop_all()
        await nc.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqtt_anomaly", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_status_command_rest_and_metrics(
    cluster: NatsCluster, store_url: str, tmp_path: Path
) -> None:
    """``cluster status``, ``/api/cluster`` and ``/metrics`` show the owner, position and lag of
    every partition; ``cluster mapping`` prints the servers' mapping; bad input is one line."""
    import httpx

    from .mosquitto import free_port

    activity = Activity()
    nc = await connect(cluster, activity)
    js = nc.jetstream()
    workers = Workers(tmp_path, cluster, store_url)
    port = free_port()
    try:
        workers.start("w1", "--http", str(port))
        await workers.joined("w1")
        messages = stream(time.time())[: 10 * SENSORS]
        await publish(js, messages)
        await eventually(lambda: sum(n["n"] for _, n in activity.notes) == len(messages), 30)

        def settled() -> bool:
            res = cli("cluster", "status", "--cluster", cluster.urls, "--json")
            assert res.returncode == 0, res.stderr
            st = msgspec.json.decode(res.stdout)
            parts = st["partitions"]
            return all(p["owner"] == "w1" and p["lag"] == 0 for p in parts) and sum(
                p["scored"] for p in parts
            ) == len(messages)

        await eventually(settled, 30, "status shows every partition scored by w1")
        res = cli("cluster", "status", "--cluster", cluster.urls)
        assert res.returncode == 0, res.stderr
        assert f"1 workers, {PARTITIONS} partitions, {len(messages)} readings" in res.stdout
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            body = (await http.get("/api/cluster")).json()
            assert list(body["workers"]) == ["w1"]
            assert body["worker"]["id"] == "w1"
            assert sorted(body["worker"]["partitions"], key=int) == [
                str(p) for p in range(PARTITIONS)
            ]
            assert body["readings"] == len(messages)
            page = (await http.get("/")).text
            assert 'fetch("api/cluster"' in page and 'id="partitions"' in page
            metrics = (await http.get("/metrics")).text
            assert f"mqtt_anomaly_cluster_scored_total {float(len(messages))}" in metrics
            assert f"mqtt_anomaly_cluster_partitions_owned {float(PARTITIONS)}" in metrics
            assert 'mqtt_anomaly_cluster_partition_lag{p="0"} 0.0' in metrics
        await page_shows_partitions(f"http://127.0.0.1:{port}/", tmp_path)
        cfg = tmp_path / "p.toml"
        cfg.write_text(f"[cluster]\npartitions = {PARTITIONS}\n")
        res = cli("cluster", "mapping", "--config", str(cfg))
        assert res.returncode == 0
        for src, dest in cluster.mappings.items():
            assert f'"{src}": "{dest}"' in res.stdout
        res = cli("cluster", "status")
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
        res = cli("cluster", "status", "--cluster", "http://nowhere")
        assert res.returncode == 2 and "cluster.urls" in res.stderr
        assert "Traceback" not in res.stderr
        closed = f"nats://127.0.0.1:{free_port()}"  # nothing listens: one line after 10 s
        res = cli("detect", "--cluster", closed, "--store", "none://")
        assert res.returncode == 2, res.stderr
        assert res.stderr.strip().splitlines() == [
            "error: cluster.urls: no NATS server answers (TimeoutError)"
        ]
    finally:
        workers.stop_all()
        await nc.close()


async def page_shows_partitions(url: str, tmp_path: Path) -> None:
    """The worker's page in a real browser: one row per partition, owned by w1, lag 0."""
    from .test_dashboard import CHROMIUM, FLAGS

    if not Path(CHROMIUM).exists():
        return  # the browser check needs Debian's chromium; the API checks above ran
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(url)
            rows = page.locator("#partitions tbody tr")
            await rows.nth(PARTITIONS - 1).wait_for(timeout=10_000)
            cells = await page.locator("#partitions tbody tr td:nth-child(2)").all_inner_texts()
            assert cells == ["w1"] * PARTITIONS
            lags = await page.locator("#partitions tbody tr td:nth-child(6)").all_inner_texts()
            assert lags == ["0"] * PARTITIONS
            assert "1 workers (w1)" in await page.locator("#summary").inner_text()
            assert not errors
        finally:
            await context.close()


async def test_silence_alert_from_a_worker(cluster: NatsCluster, tmp_path: Path) -> None:
    """A worker that has caught up raises silence for a sensor that stopped publishing (and
    not for one that goes on), to the ALERTS stream."""
    activity = Activity()
    nc = await connect(cluster, activity)
    js = nc.jetstream()
    workers = Workers(tmp_path, cluster, "none://")
    workers.config.write_text(
        CONFIG.replace("silence_factor = 1e9", "silence_factor = 10\ninterval = 0.1")
    )
    stop = asyncio.Event()

    async def sensor(sid: str, count: int | None) -> None:
        q = 0
        while not stop.is_set() and (count is None or q < count):
            await js.publish(f"factory.{sid}.temperature", reading_payload(sid, 25 + q % 7, q))
            q += 1
            await asyncio.sleep(0.1)  # the readings' pace: what silence is measured against

    try:
        workers.start("w1")
        await workers.joined("w1")
        tasks = [asyncio.create_task(sensor("S00", 20)), asyncio.create_task(sensor("S01", None))]
        silence: list[tuple[str, str]] = []
        deadline = time.monotonic() + 30
        while not silence:
            assert time.monotonic() < deadline, "no silence alert"
            await asyncio.sleep(0.5)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                if (await js.stream_info("ALERTS")).state.messages:
                    alerts = await read_stream(js, "ALERTS", 1000)
                    silence = [
                        (a.sensor_id, a.state)
                        for a in (msgspec.json.decode(m.data, type=Alert) for m in alerts)
                        if a.detector == "silence"
                    ]
        assert silence == [("S00", "raised")]
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        workers.stop_all()
        await nc.close()


async def test_a_fenced_owner_can_neither_checkpoint_nor_renew(cluster: NatsCluster) -> None:
    """The second line of fencing, on the cluster's own revision checks: once another worker
    restored a partition (its first checkpoint write moves the revision), the former owner's
    checkpoint fails with FencedError even though its local lease still looks valid, and its
    ownership record's revision is no longer the one it holds."""
    from mqtt_anomaly.cluster.setup import connect as cluster_connect
    from mqtt_anomaly.cluster.setup import ensure
    from mqtt_anomaly.cluster.worker import ClusterWorker, FencedError, PartitionRunner

    def worker(wid: str) -> ClusterWorker:
        s = load_settings(
            None, {"cluster": {"urls": cluster.urls, "worker_id": wid, "partitions": 8}}
        )
        return ClusterWorker(s)

    a, b = worker("a"), worker("b")
    for w in (a, b):
        w._nc = await cluster_connect(w.cs, w.worker_id)
        w._js = w._nc.jetstream(timeout=5)
        w._buckets = await ensure(w._js, w.cs)
    try:
        far = time.monotonic() + 3600
        rev = await a.buckets.owners.create("p0", b"a")
        old = PartitionRunner(a, 0, rev, far)
        await old._restore()
        old.seq = 5
        await old.checkpoint()  # still the owner: accepted
        await a.buckets.owners.delete("p0")  # as if its lease had expired
        rev_b = await b.buckets.owners.create("p0", b"b")
        new = PartitionRunner(b, 0, rev_b, far)
        await new._restore()
        assert new.seq == 5 and new.previous_owner == "a" and new.handoffs == 1
        with pytest.raises(FencedError):
            await old.checkpoint()
        with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
            await a.buckets.owners.update("p0", b"a", last=old.lease_rev)
        new.seq = 9
        await new.checkpoint()
        tree = decode(bytearray((await b.buckets.checkpoints.get("p0")).value))
        assert (tree["owner"], tree["seq"], tree["epoch"]) == ("b", 9, rev_b)
    finally:
        for w in (a, b):
            await w.nc.close()
