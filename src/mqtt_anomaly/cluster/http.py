"""A worker's HTTP endpoint (``detect --cluster --http [HOST:]PORT``).

- ``GET /``: a page with the partitions (owner, position, lag, hand-offs), refreshed every
  2 s from ``/api/cluster``.
- ``GET /api/cluster``: the whole cluster as ``mqtt-anomaly cluster status --json`` prints it
  (read from the buckets and streams) and this worker's own view (``worker``: its id, the
  live workers it sees, its counters, the partitions it owns with position, lag and epoch).
- ``GET /metrics``: Prometheus text: per owned partition ``mqtt_anomaly_cluster_partition_lag``
  / ``_seq`` / ``_checkpoint_seq`` / ``_handoffs``, and the worker's counters
  (``mqtt_anomaly_cluster_{scored,alerts,claimed,released,fenced,lapsed,checkpoints}_total``,
  ``mqtt_anomaly_cluster_partitions_owned``, ``mqtt_anomaly_cluster_workers``).
- ``GET /healthz``: 200 once the worker has joined; ``GET /readyz``: and owns partitions
  (or sees other workers that own them).

The same ``[http]`` token rules as the service's API (:class:`~mqtt_anomaly.web.auth.TokenAuth`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..errors import MqttAnomalyError
from ..web.app import served_app
from ..web.auth import TokenAuth
from ..web.guard import CatchErrors
from .status import collect

if TYPE_CHECKING:
    from ..web.settings import HttpSettings
    from .worker import ClusterWorker

log = logging.getLogger(__name__)
__all__ = ["create_app", "worker_http", "worker_view"]


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mqtt-anomaly cluster</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}
td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4}td.o,th.o{text-align:left}.lag{color:#b00}
</style></head><body>
<h1>mqtt-anomaly cluster</h1>
<p id="summary">loading…</p>
<table id="partitions"><thead><tr><th>partition</th><th class="o">owner</th><th>epoch</th>
<th>seq</th><th>checkpoint</th><th>lag</th><th>scored</th><th>hand-offs</th></tr></thead>
<tbody></tbody></table>
<script>
async function refresh() {
  try {
    const r = await fetch("api/cluster", {credentials: "same-origin"});
    const s = await r.json();
    const w = Object.keys(s.workers || {});
    document.getElementById("summary").textContent = s.error ? s.error :
      `${w.length} workers (${w.join(", ")}), ${s.readings} readings in the stream, ` +
      `${s.alerts} alerts; this worker: ${s.worker.id}`;
    const body = document.querySelector("#partitions tbody");
    body.replaceChildren(...(s.partitions || []).map(p => {
      const tr = document.createElement("tr");
      for (const [v, cls] of [[p.partition], [p.owner || "-", "o"], [p.epoch || "-"],
          [p.seq], [p.checkpoint_seq], [p.lag ?? "-", p.lag ? "lag" : ""], [p.scored],
          [p.handoffs]]) {
        const td = document.createElement("td"); td.textContent = v;
        if (cls) td.className = cls; tr.appendChild(td);
      }
      return tr;
    }));
  } catch (e) { document.getElementById("summary").textContent = String(e); }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""
"""The worker's page: the partitions table of ``/api/cluster``, refreshed every 2 s."""


def worker_view(worker: ClusterWorker) -> dict[str, Any]:
    """This worker's own view: id, live workers, counters, owned partitions."""
    st = worker.stats
    return {
        "id": worker.worker_id,
        "alive": list(worker.alive),
        "stats": {k: getattr(st, k) for k in st.__slots__},
        "partitions": {
            str(p): {
                "epoch": r.epoch,
                "seq": r.seq,
                "checkpoint_seq": max(r.ckpt_seq, 0),
                "lag": r.pending,
                "scored": r.scored,
                "handoffs": r.handoffs,
                "ready": r.ready,
            }
            for p, r in sorted(worker.runners.items())
        },
    }


class _Collector:
    def __init__(self, worker: ClusterWorker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        w = self.worker
        st = w.stats
        for name, value in (
            ("scored", st.scored),
            ("alerts", st.alerts),
            ("claimed", st.claimed),
            ("released", st.released),
            ("fenced", st.fenced),
            ("lapsed", st.lapsed),
            ("checkpoints", st.checkpoints),
        ):
            yield CounterMetricFamily(
                f"mqtt_anomaly_cluster_{name}", f"Cluster worker: {name}", value=value
            )
        yield GaugeMetricFamily(
            "mqtt_anomaly_cluster_partitions_owned",
            "Partitions this worker owns",
            value=len(w.runners),
        )
        yield GaugeMetricFamily(
            "mqtt_anomaly_cluster_workers", "Live workers this worker sees", value=len(w.alive)
        )
        for name, attr, help_ in (
            ("lag", "pending", "Readings of the partition not yet fetched"),
            ("seq", "seq", "Last stream sequence scored"),
            ("checkpoint_seq", "ckpt_seq", "Stream sequence of the last checkpoint"),
            ("handoffs", "handoffs", "Owner changes of the partition so far"),
        ):
            g = GaugeMetricFamily(f"mqtt_anomaly_cluster_partition_{name}", help_, labels=["p"])
            for p, r in sorted(w.runners.items()):
                g.add_metric([str(p)], max(getattr(r, attr), 0))
            yield g


def create_app(worker: ClusterWorker, settings: HttpSettings) -> FastAPI:
    token = settings.secret_token()
    app = FastAPI(title="mqtt-anomaly cluster worker", docs_url=None, redoc_url=None)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Collector(worker))

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok = worker.ready.is_set()
        return JSONResponse({"status": "ok" if ok else "starting"}, 200 if ok else 503)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready once joined and owning its share (or all there is to own)."""
        ok = worker.ready.is_set() and bool(worker.runners or len(worker.alive) > 1)
        return JSONResponse({"status": "ready" if ok else "not ready"}, 200 if ok else 503)

    @app.get("/api/cluster")
    async def cluster() -> JSONResponse:
        try:
            status = (await collect(worker.js, worker.cs)).as_dict()
        except (TimeoutError, MqttAnomalyError, OSError) as exc:
            status = {"error": str(exc) or repr(exc)}
        except Exception as exc:  # a NATS error: the worker's own view still answers
            status = {"error": repr(exc)}
        return JSONResponse({**status, "worker": worker_view(worker)})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain")

    if token is not None:
        app.add_middleware(TokenAuth, token=token)
    app.add_middleware(CatchErrors)
    return app


@contextlib.asynccontextmanager
async def worker_http(worker: ClusterWorker, settings: HttpSettings) -> AsyncIterator[int | None]:
    """Serve the endpoint while the block runs; yields the port (None: ``listen`` unset)."""
    if settings.address is None:
        yield None
        return
    host = settings.address[0]
    async with served_app(lambda: create_app(worker, settings), settings) as (_, bound):
        scheme = "https" if settings.cert_file and settings.key_file else "http"
        log.info("cluster API on %s://%s:%d/api/cluster", scheme, host, bound)
        yield bound
