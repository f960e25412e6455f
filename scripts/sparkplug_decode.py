"""The Sparkplug B decoder's cost per DDATA message and per value, against pysparkplug's.

    PYTHONPATH=src python scripts/sparkplug_decode.py [--metrics 4] [--messages 20000]

Ours: ``SparkplugHost.handle`` on a DDATA (topic split, protobuf decode on the upb backend,
seq check, alias lookup, values out). pysparkplug (when importable): ``DData.decode`` with the
device's birth, which resolves aliases to names as well, no topic or seq handling. Minimum of
7 passes, one process, the same payloads.
"""

from __future__ import annotations

import argparse
import time

from mqtt_anomaly.sparkplug import DOUBLE, SparkplugHost, data, device_birth, node_birth

T = time.time()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--metrics", type=int, default=4)
    ap.add_argument("--messages", type=int, default=20_000)
    a = ap.parse_args()
    names = [f"SENSOR-{j + 1:02d}" for j in range(a.metrics)]
    birth = device_birth(seq=1, metrics=[(n, j + 1, DOUBLE, 0.0, "C") for j, n in enumerate(names)])
    msgs = [
        data(seq=(k + 2) & 0xFF, metrics=[(j + 1, DOUBLE, 20.0 + k % 7) for j in range(a.metrics)])
        for k in range(a.messages)
    ]
    topic = "spBv1.0/plant/DDATA/edge-01/asset-01"

    def ours() -> float:
        host = SparkplugHost(rebirth=False)
        host.handle("spBv1.0/plant/NBIRTH/edge-01", node_birth(bdseq=0), T)
        host.handle("spBv1.0/plant/DBIRTH/edge-01/asset-01", birth, T)
        handle = host.handle
        t0 = time.process_time()
        for m in msgs:
            handle(topic, m, T)
        return time.process_time() - t0

    results = {"mqtt_anomaly.sparkplug": min(ours() for _ in range(7))}
    try:
        import pysparkplug as psp
    except ImportError:
        psp = None
    if psp is not None:
        pbirth = psp.DBirth.decode(birth)

        def theirs() -> float:
            decode = psp.DData.decode
            t0 = time.process_time()
            for m in msgs:
                decode(m, birth=pbirth)
            return time.process_time() - t0

        results[f"pysparkplug {psp.__version__ if hasattr(psp, '__version__') else ''}"] = min(
            theirs() for _ in range(7)
        )
    for name, t in results.items():
        per_msg = t / a.messages * 1e6
        print(f"{name:28s} {per_msg:7.2f} µs/message  {per_msg / a.metrics:6.2f} µs/value")


if __name__ == "__main__":
    main()
