"""Where the service's output goes: every destination is a :class:`~.base.Sink`.

In the order the service writes a batch to them:

- :mod:`.history`: readings and every alert to the history store (durable);
- :mod:`.bridge`: readings, alerts and health to Apache Kafka (``kafka.url``; durable), over
  :mod:`.kafka`;
- :mod:`.console`: the operator's lines;
- :mod:`.mqtt`: alerts (through the flood filter), flood events, retained health and dead
  letters over the service's MQTT connection;
- :mod:`.listeners`: in-process callables (the dashboard, tests).
"""
