"""The tests' private NATS JetStream clusters: :mod:`mqtt_anomaly.cluster.local` (3 nodes on
free loopback ports, own configuration and store dirs; never the shared server on 4222)."""

from mqtt_anomaly.cluster.local import NatsCluster, NatsNode

__all__ = ["NatsCluster", "NatsNode"]
