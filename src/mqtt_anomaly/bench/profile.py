"""Where the service's time goes: py-spy samples of the service process, by component.

With ``--profile DIR`` each service process is recorded by ``py-spy record`` (sampling, raw
collapsed stacks in ``DIR``). :func:`breakdown` sorts the event-loop thread's samples into
the components below — the first that appears anywhere in a stack wins, so the order goes
from the most specific to the most general — and turns shares into CPU µs per reading with
the process's measured CPU per reading (a sample counts as CPU: py-spy skips idle threads,
so time spent runnable but waiting for a core is counted too). Other threads (the SQLite
writer) are reported the same way, as a share of all samples.

py-spy is not a dependency: ``pip install py-spy``. Sampling slows the service down; the
throughput of a profiled run is not a benchmark figure.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bench listener (not product code)", ("_Probe.__call__",)),
    ("decode: messages.decode_reading (msgspec)", ("decode_reading",)),
    ("detectors and alert books (numpy)", ("/detectors/", "alerting.py")),
    ("store: add_readings on the event loop", ("mqtt_anomaly/store/",)),
    (
        "pipeline: scoring glue (np.fromiter, alerts, health)",
        ("Pipeline._score", "Pipeline._alert", "_update_health"),
    ),
    ("pipeline: per-reading loop (topic, slot, seq window, rounds)", ("pipeline.py",)),
    ("service: alert and health publishes (gmqtt)", ("MqttClient.publish",)),
    ("service: _on_batch (intake)", ("_on_batch",)),
    ("service: _emit (columns for the store, sinks)", ("service.py",)),
    ("gmqtt: PUBACK, one transport.write per message", ("_send_puback",)),
    ("gmqtt: read, parse, dispatch", ("gmqtt",)),
    ("asyncio event loop", ("asyncio",)),
)
OTHER = "other"


def py_spy() -> str | None:
    """The py-spy executable (next to this Python first), or None."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def start(pid: int, out: Path, rate: int = 200) -> subprocess.Popen[bytes] | None:
    """Record ``pid`` until it exits; raw collapsed stacks with thread names in ``out``."""
    exe = py_spy()
    if exe is None:
        return None
    cmd = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
    return subprocess.Popen(
        [*cmd, "--threads", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def component(stack: str) -> str:
    for name, keys in COMPONENTS:
        if any(k in stack for k in keys):
            return name
    return OTHER


def breakdown(path: Path, cpu_us_per_reading: float) -> dict[str, Any]:
    """Shares of the event-loop thread's samples by component, and µs per reading."""
    per_thread: dict[str, Counter[str]] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, _, rest = stack.partition(";")
        name = thread.split(": ", 1)[-1]
        per_thread.setdefault(name, Counter())[component(rest)] += int(count)
    main = per_thread.get("MainThread", Counter())
    total_main = sum(main.values())
    total = sum(sum(c.values()) for c in per_thread.values())
    main_share = total_main / total if total else 0.0
    rows = [
        {
            "component": name,
            "share": round(n / total_main, 4),
            "us_per_reading": round(n / total_main * cpu_us_per_reading * main_share, 2),
        }
        for name, n in main.most_common()
    ]
    return {
        "samples": total,
        "event_loop_share": round(main_share, 4),
        "other_threads": [
            {
                "thread": t,
                "share": round(sum(c.values()) / total, 4),
                "us_per_reading": round(sum(c.values()) / total * cpu_us_per_reading, 2),
            }
            for t, c in per_thread.items()
            if t != "MainThread"
        ],
        "cpu_us_per_reading": round(cpu_us_per_reading, 2),
        "event_loop": rows,
        "file": str(path),
    }
