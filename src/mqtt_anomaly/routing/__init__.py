"""Alerts that reach people: routes, incidents, receivers (``[[routes]]``, ``[receivers.NAME]``).

- :mod:`.router`: alert events → incidents (grouping, repeat, escalation) → notices; no I/O;
- :mod:`.receivers`: webhook (HMAC-signed, idempotency key), Prometheus Alertmanager (v2
  API), Slack, Teams, e-mail (SMTP);
- :mod:`.outbox`: per receiver a bounded queue on disk and the thread that delivers it;
- :mod:`.sink`: the :class:`~mqtt_anomaly.sinks.base.Sink` the service puts in its chain.

The settings are in :mod:`mqtt_anomaly.routeconf`; ``docs/alerting.md`` tells the whole story.
"""
