"""mqtt-anomaly: real-time anomaly detection for industrial IoT sensors over MQTT."""

from __future__ import annotations

__version__ = "0.1.0"
