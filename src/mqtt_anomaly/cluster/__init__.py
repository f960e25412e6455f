"""Scale-out: detector workers sharing the partitions of a NATS JetStream readings stream.

- :mod:`.setup`: connecting, and the streams and key-value buckets every worker expects.
- :mod:`.worker`: :class:`~.worker.ClusterWorker` (``mqtt-anomaly detect --cluster``):
  ownership leases, one :class:`~.worker.PartitionRunner` per owned partition (its own
  :class:`~mqtt_anomaly.pipeline.Pipeline`, checkpoints, alerts to the ALERTS stream).
- :mod:`.status`: what ``mqtt-anomaly cluster status`` prints.

Design and failure modes: ``docs/architecture.md#scale-out-on-nats-jetstream``.
"""
