"""``mqtt-anomaly bench``: a smoke-sized run end to end, the counting subscriber's parser, and
user mistakes. No timing assertions: the figures depend on the machine."""

from __future__ import annotations

import json
import socket
import threading

import pytest
import typer
from typer.testing import CliRunner

from mqtt_anomaly.bench.broker import mosquitto_binary
from mqtt_anomaly.bench.command import bench
from mqtt_anomaly.bench.rawmqtt import count_messages
from mqtt_anomaly.transport import codec

app = typer.Typer()
app.command("bench")(bench)


@app.callback()
def _root() -> None:
    """Test app: ``bench`` as a subcommand, as in the real CLI."""


runner = CliRunner()

THROUGHPUT_FIELDS = {
    "qos",
    "readings",
    "offered_rate",
    "sensors",
    "baseline_rates",
    "service_rates",
    "baseline_median",
    "service_median",
    "ratio",
    "service_end_to_end_median",
    "publisher_median",
    "service_cpu_s_per_10k",
    "service_one_core_rate",
    "baseline_cpu_s_per_10k",
    "broker_cpu_s_per_10k",
    "publisher_cpu_s_per_10k",
    "service_rss_mib",
    "service_readings_per_batch",
    "profile",
    "lost",
    "store_written",
    "store_dropped",
    "dead_letters",
    "trials",
}
LATENCY_FIELDS = {
    "qos",
    "rate",
    "achieved_rate",
    "seconds",
    "spike_every",
    "spikes",
    "samples",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "service_p50_ms",
    "service_p99_ms",
    "service_p999_ms",
    "service_max_ms",
    "service_cpu_percent",
    "service_cpu_s_per_10k",
    "service_readings_per_batch",
    "method",
    "profile",
}
TRIAL_FIELDS = {
    "kind",
    "count",
    "lost",
    "rate",
    "end_to_end_rate",
    "publisher_rate",
    "cpu_s_per_10k",
    "rss_mib",
    "broker_cpu_s_per_10k",
    "publisher_cpu_s_per_10k",
    "profile",
}
MEMORY_FIELDS = {
    "sizes",
    "rss_bytes_per_sensor",
    "rss_bytes_per_sensor_aged",
    "aged_us_per_reading",
    "detector_state_bytes_per_sensor",
    "detector_arrays_bytes_per_sensor",
    "alert_book_bytes_per_sensor",
    "dedup_window_bytes_per_sensor_aged",
    "cost_growth",
    "base_rss_mib",
    "detectors",
}
SIDE_FIELDS = {
    "readings",
    "bytes_per_reading",
    "sensor_bytes_per_reading",
    "detector_bytes_per_reading",
    "segments_per_reading",
    "bytes_with_headers_per_reading",
    "spikes",
    "detected",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
}


@pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed")
def test_quick_json_run_has_every_field() -> None:
    result = runner.invoke(app, ["bench", "--quick", "--json", "--compare-http"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)

    assert set(data) >= {
        "version",
        "machine",
        "config",
        "throughput",
        "latency",
        "memory",
        "delivery",
        "http_comparison",
        "targets",
        "load_average",
        "duration_s",
    }
    assert set(data["machine"]) == {"nproc", "cpu_model", "python", "platform", "mosquitto"}
    assert [t["qos"] for t in data["throughput"]] == [1, 0]
    for t in data["throughput"]:
        assert set(t) >= THROUGHPUT_FIELDS
        assert t["lost"] == 0
        assert t["baseline_median"] > 0 and t["service_median"] > 0 and t["ratio"] > 0
        assert [x["kind"] for x in t["trials"]] == ["baseline", "service"]
        assert all(set(x) >= TRIAL_FIELDS for x in t["trials"])
    assert [lat["qos"] for lat in data["latency"]] == [1, 0]
    for lat in data["latency"]:
        assert set(lat) >= LATENCY_FIELDS
        assert lat["spikes"] > 0 and lat["samples"] > 0 and lat["p99_ms"] is not None
    d = data["delivery"]
    assert d["lost"] == 0
    assert d["tracked_median"] > 0 and d["untracked_median"] > 0 and d["ratio"] > 0
    assert len(d["trials"]) == 2
    mem = data["memory"]
    assert set(mem) >= MEMORY_FIELDS
    assert [r["sensors"] for r in mem["sizes"]] == [1000, 5000]
    assert mem["detectors"] == ["threshold", "zscore", "stuck"]
    cmp_ = data["http_comparison"]
    for side in ("mqtt", "http"):
        assert set(cmp_[side]) >= SIDE_FIELDS
        assert cmp_[side]["readings"] > 0 and cmp_[side]["bytes_per_reading"] > 0
        assert cmp_[side]["detected"] > 0
    assert {"bytes_ratio_http_to_mqtt", "latency_p50_ratio_http_to_mqtt"} <= set(cmp_)
    assert {g["name"] for g in data["targets"]} >= {
        "throughput ratio to baseline, QoS 1",
        "detector state per sensor (bytes)",
    }


def test_counting_subscriber_parses_any_packet_size_and_acks_qos1() -> None:
    sizes = [0, 10, 120, 200, 20_000, 3]
    packets = [
        codec.publish("t/x", b"p" * size, qos=i % 2, packet_id=100 + i)
        for i, size in enumerate(sizes)
    ]
    stream = b"".join(packets) + codec.puback(9)  # not a PUBLISH: not counted
    ours, theirs = socket.socketpair()
    received = bytearray()

    def peer() -> None:
        for k in range(0, len(stream), 7):  # dribble: packets split across reads
            theirs.sendall(stream[k : k + 7])
        while len(received) < 4 * 3:
            received.extend(theirs.recv(100))

    t = threading.Thread(target=peer)
    t.start()
    res = count_messages(ours, len(sizes), idle=5.0)
    t.join(5)
    ours.close()
    theirs.close()
    assert res.count == len(sizes)
    acks, rest = codec.split(received)
    assert rest == b"" and len(received) == 12
    assert [(a.kind, codec.decode_ack(a.body).packet_id) for a in acks] == [
        (codec.PUBACK, 100 + i) for i in (1, 3, 5)
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--qos", "2"], "--qos"),
        (["--store", "mysql://x"], "--store"),
        (["--sensors", "0"], "--sensors"),
        (["--only", "disk"], "--only"),
        (["--broker", "http://x"], "--broker"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
