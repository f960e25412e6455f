"""``evaluate sim``: the live pipeline scored on the simulator's labels."""

from __future__ import annotations

from mqtt_anomaly.config import load_settings
from mqtt_anomaly.evaluate.sim import run_sim_evaluation

from .mosquitto import Mosquitto


async def test_simulated_faults_are_scored(mosquitto: Mosquitto) -> None:
    report = await run_sim_evaluation(
        load_settings(),
        broker_url=mosquitto.url,
        sensors=60,
        interval=0.1,
        duration=30,
        warmup=5,
        seed=4,
        rate_scale=60,
    )
    kinds = {k.kind: k for k in report.by_kind}
    assert report.faults >= 3 and report.alerts > 0
    assert report.detected >= 1 and 0 < report.precision <= 1
    if "spike" in kinds:  # a 98.2 °C reading always crosses the threshold at once
        assert kinds["spike"].recall == 1.0 and kinds["spike"].delay_p50 == 0.0
    assert report.detected == sum(k.detected for k in report.by_kind)
