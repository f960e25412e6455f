"""``mqtt-anomaly bench``: the detector service on a real broker, against a counting baseline.

- :mod:`.command` — the CLI command; :mod:`.runner` — :func:`~.runner.run_bench`, the library
  entry point; :mod:`.report` — targets and tables;
- :mod:`.throughput`, :mod:`.latency`, :mod:`.memory`, :mod:`.httpcompare` — the measurements;
- :mod:`.loadgen` (publisher), :mod:`.consumers` (baseline and service), :mod:`.children`
  (processes), :mod:`.broker` (private Mosquitto);
- :mod:`.rawmqtt` — raw-socket MQTT 3.1.1 clients for the load generator and the baseline
  (packets from :mod:`mqtt_anomaly.transport.codec`);
  :mod:`.sysinfo` — CPU, RSS and TCP counters from the kernel; :mod:`.profile` — py-spy.

See ``docs/benchmarks.md`` for the method and the figures.
"""
