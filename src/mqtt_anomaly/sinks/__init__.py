"""Sinks beyond MQTT and the history store: where the service's output also goes.

- :mod:`.kafka`: readings, alerts and health to Apache Kafka topics (``kafka.url``).
"""
