"""``mqtt-anomaly bench``: a smoke-sized run end to end, the counting subscriber's parser, and
user mistakes. No timing assertions: the figures depend on the machine."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mqtt_anomaly.bench.broker import Mosquitto, mosquitto_binary
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
    "baseline_end_to_end_median",
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
    "floor_spikes",
    "floor_samples",
    "floor_achieved_rate",
    "floor_p50_ms",
    "floor_p99_ms",
    "floor_p999_ms",
    "floor_max_ms",
    "floor_all_p50_ms",
    "floor_all_p99_ms",
    "over_floor_p50_ms",
    "over_floor_p99_ms",
    "over_floor_p999_ms",
    "method",
    "profile",
}
TRIAL_FIELDS = {
    "kind",
    "count",
    "lost",
    "rate",
    "end_to_end_rate",
    "end_to_end_s",
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
    assert "Nagle on" in data["config"]["broker"]  # Mosquitto's stock settings by default
    assert data["config"]["broker_nodelay"] is False
    assert [t["qos"] for t in data["throughput"]] == [1, 0]
    for t in data["throughput"]:
        assert set(t) >= THROUGHPUT_FIELDS
        assert t["lost"] == 0
        assert t["baseline_median"] > 0 and t["service_median"] > 0 and t["ratio"] > 0
        assert [x["kind"] for x in t["trials"]] == ["baseline", "service"]
        assert all(set(x) >= TRIAL_FIELDS for x in t["trials"])
        # end to end: the service's alert for the last reading (a spike) arrived, and the
        # whole run, warm-up included, took at least as long as the sustained window
        for x in t["trials"]:
            assert x["end_to_end_rate"] is not None and x["end_to_end_rate"] > 0
            assert x["end_to_end_s"] > 0
        assert t["service_end_to_end_median"] > 0 and t["baseline_end_to_end_median"] > 0
    assert [lat["qos"] for lat in data["latency"]] == [1, 0]
    for lat in data["latency"]:
        assert set(lat) >= LATENCY_FIELDS
        assert lat["spikes"] > 0 and lat["samples"] > 0 and lat["p99_ms"] is not None
        # the harness floor: every spike reading reached the plain subscriber, and the
        # differences are the alert's figures minus the floor's
        assert lat["floor_spikes"] > 0
        assert lat["floor_samples"] == lat["floor_spikes"] if lat["qos"] else lat["floor_samples"]
        assert 0 < lat["floor_p50_ms"] <= lat["floor_p99_ms"]
        assert lat["floor_all_p50_ms"] is not None
        for k in ("p50_ms", "p99_ms", "p999_ms"):
            assert lat[f"over_floor_{k}"] == pytest.approx(lat[k] - lat[f"floor_{k}"], abs=1e-3)
    d = data["delivery"]
    assert d["lost"] == 0
    assert d["tracked_median"] > 0 and d["untracked_median"] > 0 and d["ratio"] > 0
    assert len(d["trials"]) == 4
    assert list(d["modes"]) == ["processed", "durable", "journaled", "journaled+fsync"]
    assert all(m["median"] > 0 and m["cpu_s_per_10k"] > 0 for m in d["modes"].values())
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


def test_broker_nodelay_is_the_option() -> None:
    """--broker-nodelay sets set_tcp_nodelay on the private broker; the report says which."""
    args = ["bench", "--quick", "--json", "--only", "memory", "--fleet-size", "100"]
    stock = runner.invoke(app, args)
    nodelay = runner.invoke(app, [*args, "--broker-nodelay"])
    assert stock.exit_code == 0 and nodelay.exit_code == 0, stock.output + nodelay.output
    assert "Nagle on" in json.loads(stock.stdout)["config"]["broker"]
    config = json.loads(nodelay.stdout)["config"]
    assert config["broker_nodelay"] is True and "set_tcp_nodelay true" in config["broker"]
    assert runner.invoke(app, ["bench", "--broker-nagle"]).exit_code == 2


def test_private_broker_config_follows_nodelay(tmp_path: Path) -> None:
    for nodelay in (False, True):
        broker = Mosquitto(tmp_path / str(nodelay), nodelay=nodelay)
        if mosquitto_binary() is None:
            pytest.skip("mosquitto not installed")
        with broker:
            conf = (broker.workdir / "mosquitto.conf").read_text()
            with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
                pass
        assert ("set_tcp_nodelay true" in conf) is nodelay
        assert "max_inflight_messages 0\n" in conf  # no limit unless asked
    with Mosquitto(tmp_path / "stock", max_inflight=20) as broker:
        conf = (broker.workdir / "mosquitto.conf").read_text()
    assert "max_inflight_messages 20\n" in conf


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


def test_assets_section_measures_rows_and_state() -> None:
    result = runner.invoke(app, ["bench", "--quick", "--json", "--only", "assets"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    a = data["assets"]
    assert a["assets"] == 50 and a["sensors_per_asset"] == 8 and a["method"] == "regress"
    assert a["detector_rows_per_s"] > 0 and 0 < a["state_bytes_per_asset"] <= 2048
    for key in ("message_per_row", "message_per_sensor"):
        r = a[key]
        assert r["monitoring"] == 50  # every asset commissioned: timed in monitoring
        assert r["assets_rows_per_s"] > 0 and r["baseline_rows_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["assets_rows_per_s"] / r["baseline_rows_per_s"], 1e-2)
        assert r["state_file_bytes_per_asset"] > a["state_bytes_per_asset"]
    names = {g["name"] for g in data["targets"]}
    assert "saved state per asset (bytes)" in names
    assert data["throughput"] == [] and data["memory"] is None
