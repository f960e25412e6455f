"""The benchmark's result: the product's targets checked, and rich tables for people."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table

THROUGHPUT_RATIO = 0.9
THROUGHPUT_RATE = 35_000
LATENCY_P99_MS = 2.0
FLOOR_P50_MS = 1.0  # alert p50 at most this much above the harness floor's
FLOOR_P99_RATIO = 2.0  # alert p99 at most this many times the floor's
STATE_BYTES = 1024
COST_GROWTH = 1.2  # "no growth": within 20 % from the smallest to the largest fleet
ASSET_ROWS = 20_000  # asset rows/s through the pipeline, 8 sensors, one core
ASSET_STATE = 2048  # bytes of saved state per asset


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The product's targets against what this run measured (those it measured)."""
    out: list[dict[str, Any]] = []

    def add(name: str, target: str, measured: float | None, met: bool | None) -> None:
        out.append({"name": name, "target": target, "measured": measured, "met": met})

    for t in result.get("throughput") or []:
        if t["qos"] == 1:
            add(
                "throughput ratio to baseline, QoS 1",
                f">= {THROUGHPUT_RATIO}",
                t["ratio"],
                t["ratio"] >= THROUGHPUT_RATIO,
            )
            add(
                "throughput, QoS 1 (readings/s)",
                f">= {THROUGHPUT_RATE:,}",
                t["service_median"],
                t["service_median"] >= THROUGHPUT_RATE,
            )
    for lat in result.get("latency") or []:
        if lat["qos"] == 1:
            p99 = lat["p99_ms"]
            add(
                f"publish→alert p99 at {lat['rate']:,.0f}/s QoS 1 (ms)",
                f"< {LATENCY_P99_MS}",
                p99,
                None if p99 is None else p99 < LATENCY_P99_MS,
            )
            over = lat.get("over_floor_p50_ms")
            add(
                f"publish→alert p50 above the harness floor at {lat['rate']:,.0f}/s QoS 1 (ms)",
                f"<= {FLOOR_P50_MS}",
                over,
                None if over is None else over <= FLOOR_P50_MS,
            )
            floor99 = lat.get("floor_p99_ms")
            ratio = round(p99 / floor99, 2) if p99 is not None and floor99 else None
            add(
                f"publish→alert p99 / harness floor p99 at {lat['rate']:,.0f}/s QoS 1",
                f"<= {FLOOR_P99_RATIO}x",
                ratio,
                None if ratio is None else ratio <= FLOOR_P99_RATIO,
            )
    a = result.get("assets")
    if a:
        rate = a["message_per_sensor"]["assets_rows_per_s"]
        add(
            "asset rows/s through the pipeline, 8 sensors, a message per sensor (one core)",
            f">= {ASSET_ROWS:,}",
            rate,
            rate >= ASSET_ROWS,
        )
        state = a["message_per_row"]["state_file_bytes_per_asset"]
        add("saved state per asset (bytes)", f"<= {ASSET_STATE:,}", state, state <= ASSET_STATE)
    mem = result.get("memory")
    if mem:
        state = mem["detector_state_bytes_per_sensor"]
        add("detector state per sensor (bytes)", f"< {STATE_BYTES}", state, state < STATE_BYTES)
        largest = mem["sizes"][-1]["sensors"]
        add(
            f"per-reading cost, {largest:,} vs {mem['sizes'][0]['sensors']:,} sensors",
            f"<= {COST_GROWTH}x",
            mem["cost_growth"],
            mem["cost_growth"] <= COST_GROWTH,
        )
    return out


def _f(value: float | None, fmt: str = ",.0f") -> str:
    return "—" if value is None else format(value, fmt)


def _met(met: bool | None) -> str:
    return "—" if met is None else ("[green]yes[/]" if met else "[red]no[/]")


def tables(result: dict[str, Any]) -> Group:
    """Everything measured, one table per section."""
    parts: list[Table] = []
    m = result["machine"]
    head = Table(box=box.SIMPLE, show_header=False, title="mqtt-anomaly bench")
    head.add_row("machine", f"{m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}")
    load = result.get("load_average")
    if load:
        head.add_row("load average", f"{load['start']:.2f} at start, {load['end']:.2f} at end")
    head.add_row("broker", str(result["config"]["broker"]))
    head.add_row("store", str(result["config"]["store"]))
    head.add_row("duration", f"{result['duration_s']:.0f} s")
    parts.append(head)

    if result.get("throughput"):
        t = Table(
            "QoS",
            "service\nr/s",
            "baseline\nr/s",
            "ratio",
            "CPU s / 10k readings: service /\nbaseline / broker / publisher",
            "end to end r/s:\nservice / baseline",
            "store\ndropped",
            title="Throughput: readings/s, sustained after warm-up and end to end (first "
            "publish → last alert; baseline: → last reading) (medians)",
            box=box.SIMPLE_HEAVY,
        )
        for r in result["throughput"]:
            cpu = " / ".join(
                _f(r[k], ".3f")
                for k in (
                    "service_cpu_s_per_10k",
                    "baseline_cpu_s_per_10k",
                    "broker_cpu_s_per_10k",
                    "publisher_cpu_s_per_10k",
                )
            )
            t.add_row(
                str(r["qos"]),
                _f(r["service_median"]),
                _f(r["baseline_median"]),
                _f(r["ratio"], ".2f"),
                cpu,
                f"{_f(r.get('service_end_to_end_median'))} / "
                f"{_f(r.get('baseline_end_to_end_median'))}",
                _f(r["store_dropped"]),
            )
        parts.append(t)

    d = result.get("delivery")
    if d:
        t = Table(
            "acknowledged after",
            "r/s",
            "CPU s / 10k",
            "ratio",
            title=f"Delivery tracking at QoS 1 (store: {d['store']}; medians)",
            box=box.SIMPLE_HEAVY,
        )
        names = {
            "durable": "durable (store confirmed, state saved)",
            "journaled": "journaled (the default)",
            "journaled+fsync": "journaled, service.fsync",
        }
        modes = d.get("modes") or {
            "processed": {
                "median": d["untracked_median"],
                "cpu_s_per_10k": d["untracked_cpu_s_per_10k"],
                "ratio": 1,
            },
            "durable": {
                "median": d["tracked_median"],
                "cpu_s_per_10k": d["tracked_cpu_s_per_10k"],
                "ratio": d["ratio"],
            },
        }
        for mode, m in modes.items():
            t.add_row(
                names.get(mode, mode),
                _f(m["median"]),
                _f(m["cpu_s_per_10k"], ".3f"),
                _f(m["ratio"], ".2f"),
            )
        parts.append(t)

    if result.get("latency"):
        t = Table(
            "QoS",
            "r/s",
            "n",
            "p50",
            "p99",
            "p99.9",
            "max",
            "detect\np50",
            "detect\np99",
            "CPU\n%",
            title="Latency (ms): publish → alert received; detect: publish → detection; "
            "floor: publish → reading received, no detector",
            box=box.SIMPLE_HEAVY,
        )
        for r in result["latency"]:
            rows = (
                ("alert", "", r["samples"]),
                ("floor", "floor_", r.get("floor_samples")),
                ("alert − floor", "over_floor_", None),
            )
            for label, prefix, n in rows:
                t.add_row(
                    f"{r['qos']} {label}",
                    _f(r["achieved_rate"]) if not prefix else "",
                    "" if n is None else str(n),
                    _f(r.get(f"{prefix}p50_ms"), ".2f"),
                    _f(r.get(f"{prefix}p99_ms"), ".2f"),
                    _f(r.get(f"{prefix}p999_ms"), ".2f"),
                    _f(r.get(f"{prefix}max_ms"), ".2f"),
                    _f(r["service_p50_ms"], ".2f") if not prefix else "",
                    _f(r["service_p99_ms"], ".2f") if not prefix else "",
                    _f(r["service_cpu_percent"], ".0f") if not prefix else "",
                )
        parts.append(t)

    mem = result.get("memory")
    if mem:
        t = Table(
            "sensors", "RSS MiB", "µs/reading (pipeline)", title="Fleet size", box=box.SIMPLE_HEAVY
        )
        for r in mem["sizes"]:
            t.add_row(_f(r["sensors"]), _f(r["rss_mib"], ".1f"), _f(r["us_per_reading"], ".2f"))
        t.add_row("aged", "", _f(mem["aged_us_per_reading"], ".2f"))
        parts.append(t)
        t = Table(box=box.SIMPLE, show_header=False, title="Memory per sensor")
        t.add_row("RSS growth per sensor (fresh)", f"{mem['rss_bytes_per_sensor']:,} B")
        t.add_row("RSS growth per sensor (aged)", f"{mem['rss_bytes_per_sensor_aged']:,} B")
        t.add_row("detector state per sensor", f"{mem['detector_state_bytes_per_sensor']:,} B")
        if "drift_state_bytes_per_sensor" in mem:
            t.add_row("drift books per sensor", f"{mem['drift_state_bytes_per_sensor']:,} B")
        t.add_row(
            "duplicate window per sensor (aged)", f"{mem['dedup_window_bytes_per_sensor_aged']:,} B"
        )
        parts.append(t)

    a = result.get("assets")
    if a:
        t = Table(
            "",
            "assets\nrows/s",
            "baseline\nrows/s",
            "ratio",
            title=f"Assets: {a['assets']} assets of {a['sensors_per_asset']} sensors, rows/s on "
            "one core (CPU time; baseline: the same messages, assets off)",
            box=box.SIMPLE_HEAVY,
        )
        t.add_row("detector (batched)", _f(a["detector_rows_per_s"]), "", "")
        for key, label in (
            ("message_per_row", "pipeline, one message a row"),
            ("message_per_sensor", "pipeline, one message a sensor"),
        ):
            r = a[key]
            t.add_row(
                label,
                _f(r["assets_rows_per_s"]),
                _f(r["baseline_rows_per_s"]),
                _f(r["ratio"], ".2f"),
            )
        parts.append(t)
        t = Table(box=box.SIMPLE, show_header=False, title="State per asset")
        t.add_row("detector arrays", f"{a['state_bytes_per_asset']:,} B")
        t.add_row(
            "saved state file (with layout)",
            f"{a['message_per_row']['state_file_bytes_per_asset']:,} B",
        )
        parts.append(t)

    cmp_ = result.get("http_comparison")
    if cmp_:
        t = Table(
            "",
            "MQTT push",
            "HTTP polling (1 s)",
            "HTTP / MQTT",
            title=f"MQTT push vs HTTP polling: {cmp_['sensors']} sensors × "
            f"{cmp_['per_sensor_hz']:g} Hz",
            box=box.SIMPLE_HEAVY,
        )
        mq, ht = cmp_["mqtt"], cmp_["http"]
        t.add_row(
            "TCP payload bytes / reading",
            _f(mq["bytes_per_reading"], ".0f"),
            _f(ht["bytes_per_reading"], ".0f"),
            _f(cmp_["bytes_ratio_http_to_mqtt"], ".2f"),
        )
        t.add_row(
            "+ 52 B IP/TCP headers per segment",
            _f(mq.get("bytes_with_headers_per_reading"), ".0f"),
            _f(ht.get("bytes_with_headers_per_reading"), ".0f"),
            "",
        )
        t.add_row(
            "TCP segments / reading",
            _f(mq["segments_per_reading"], ".2f"),
            _f(ht["segments_per_reading"], ".2f"),
            "",
        )
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
            t.add_row(
                f"reading → detection {label} ms",
                _f(mq[key], ".1f"),
                _f(ht[key], ".1f"),
                _f(cmp_["latency_p50_ratio_http_to_mqtt"], ".0f") if key == "p50_ms" else "",
            )
        parts.append(t)

    for r in [*(result.get("throughput") or []), *(result.get("latency") or [])]:
        prof = r.get("profile")
        if not prof:
            continue
        load = "flat out" if "ratio" in r else f"{r['rate']:,.0f} readings/s"
        t = Table(
            "component (event-loop thread)",
            "share",
            "CPU µs/reading",
            title=f"Profile of the service, QoS {r['qos']}, {load} (py-spy; "
            f"{prof['cpu_us_per_reading']:.1f} CPU µs per reading in all)",
            box=box.SIMPLE_HEAVY,
        )
        for row in prof["event_loop"]:
            t.add_row(
                row["component"], f"{100 * row['share']:.1f}%", f"{row['us_per_reading']:.2f}"
            )
        for th in prof["other_threads"]:
            if th["share"] >= 0.001:
                t.add_row(
                    f"other thread: {th['thread']} (share of all samples)",
                    f"{100 * th['share']:.1f}%",
                    f"{th['us_per_reading']:.2f}",
                )
        parts.append(t)

    if result.get("targets"):
        t = Table("target", "wanted", "measured", "met", title="Targets", box=box.SIMPLE_HEAVY)
        for g in result["targets"]:
            measured = g["measured"]
            text = (
                "—"
                if measured is None
                else (f"{measured:,.3g}" if isinstance(measured, float) else f"{measured:,}")
            )
            t.add_row(g["name"], g["target"], text, _met(g["met"]))
        parts.append(t)
    return Group(*parts)
