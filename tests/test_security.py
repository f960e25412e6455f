"""TLS, client certificates, passwords and the ACL, against a real Mosquitto running the
configuration that ``mqtt-anomaly certs`` generates (on a free port, in a tmp directory)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from typer.testing import CliRunner

from mqtt_anomaly.certs import DETECTOR_ID, SIMULATOR_ID, Bundle, build_bundle, certs
from mqtt_anomaly.config import BrokerSettings, Settings, load_settings, settings_as_toml
from mqtt_anomaly.errors import BrokerError
from mqtt_anomaly.pki import issue, make_ca, mosquitto_hash, write_cert, write_key
from mqtt_anomaly.transport.client import MqttClient
from mqtt_anomaly.transport.lean import LeanClient

from .helpers import eventually, reading_payload
from .mosquitto import Mosquitto, free_port
from .test_service import Running

SENSORS = ["SENSOR-01", "SENSOR-02"]


def start_broker(bundle_dir: Path, workdir: Path, **kwargs: Any) -> tuple[Bundle, Mosquitto]:
    port = free_port()
    bundle = build_bundle(bundle_dir, SENSORS, port=port, bind="127.0.0.1", **kwargs)
    broker = Mosquitto(
        workdir, port=port, plaintext=False, extra_config=bundle.mosquitto_conf.read_text()
    )
    return bundle, broker.start()


@pytest.fixture(scope="module")
def cert_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Bundle, Mosquitto]]:
    root = tmp_path_factory.mktemp("tls-cert")
    bundle, broker = start_broker(root / "certs", root / "mosquitto")
    try:
        yield bundle, broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def password_broker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Bundle, Mosquitto]]:
    """Password mode with hashes written by our own PBKDF2 code, not mosquitto_passwd."""
    root = tmp_path_factory.mktemp("tls-password")
    bundle, broker = start_broker(
        root / "certs", root / "mosquitto", auth="password", use_passwd_tool=False
    )
    assert bundle.hashed_with == "pbkdf2"
    try:
        yield bundle, broker
    finally:
        broker.stop()


def tls(bundle: Bundle, broker: Mosquitto, identity: str | None, **kw: Any) -> BrokerSettings:
    """Settings for a client of the generated broker, verification on (ca_file, hostname)."""
    fields: dict[str, Any] = {
        "url": f"mqtts://localhost:{broker.port}",
        "ca_file": bundle.ca_cert,
        "reconnect_delay": 0.1,
        "keepalive": 5,
    }
    if identity is not None:
        fields |= {"cert_file": bundle.cert(identity), "key_file": bundle.key(identity)}
    return BrokerSettings(**(fields | kw))


def detector_settings(bundle: Bundle, tmp_path: Path) -> Settings:
    """The detector's generated ``detector.toml``, with a tmp state dir and no store."""
    return load_settings(
        bundle.client_configs[DETECTOR_ID],
        {"store": {"url": "none://"}, "service": {"state_dir": tmp_path / "state"}},
    )


async def refused(settings: BrokerSettings, kind: str) -> str:
    """Connect with the simulator's client (gmqtt) or the service's; return the error text."""
    client: MqttClient | LeanClient
    if kind == "gmqtt":
        client = MqttClient(settings, f"refused-{kind}")
    else:
        client = LeanClient(settings, f"refused-{kind}", on_batch=lambda _b: None)
    with pytest.raises(BrokerError) as info:
        # retry on, no deadline: a refusal must end the attempt by itself, not loop
        await asyncio.wait_for(client.connect(), 10)
    await client.disconnect()
    message = str(info.value)
    assert "\n" not in message and len(message) < 200
    return message


# ---- the generated files -----------------------------------------------------------------
def test_generated_configuration(cert_broker: tuple[Bundle, Mosquitto]) -> None:
    bundle, _ = cert_broker
    conf = bundle.mosquitto_conf.read_text().splitlines()
    assert [ln for ln in conf if ln.startswith("listener")] == [f"listener {bundle.port} 127.0.0.1"]
    for line in ("require_certificate true", "use_identity_as_username true"):
        assert line in conf
    assert "allow_anonymous false" in conf
    acl = bundle.acl.read_text().splitlines()
    assert "pattern write factory/%u/temperature" in acl
    assert "topic read factory/+/temperature" in acl
    assert "topic write mqtt-anomaly/deadletter" in acl
    assert "topic write mqtt-anomaly/floods" in acl and "topic read mqtt-anomaly/floods" in acl
    keys = [bundle.directory / "ca.key", bundle.directory / "broker.key"]
    assert bundle.client_certs, "no client certificate generated"
    keys += [bundle.key(i) for i in bundle.client_certs]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    broker_cert = x509.load_pem_x509_certificate((bundle.directory / "broker.crt").read_bytes())
    san = broker_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    sensor = x509.load_pem_x509_certificate(bundle.cert("SENSOR-02").read_bytes())
    cn = sensor.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert cn == "SENSOR-02"


def test_certs_command_prints_the_commands(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(certs)
    out = tmp_path / "out"
    args = ["--out", str(out), "-n", "3", "--hostname", "broker.example", "--port", "9883"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"mosquitto -c {out.resolve()}/mosquitto.conf" in result.output
    assert f"mqtt-anomaly detect --config {out.resolve()}/detector.toml" in result.output
    assert (out / "clients" / "SENSOR-03.crt").exists()
    assert 'url = "mqtts://broker.example:9883"' in (out / "detector.toml").read_text()
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "--force" in again.output  # never overwrites a CA silently


def test_mosquitto_hash_format() -> None:
    h = mosquitto_hash("secret", salt=b"0123456789ab")
    assert h.startswith("$7$101$MDEyMzQ1Njc4OWFi$")
    assert len(h.rsplit("$", 1)[1]) == 88  # base64 of a 64-byte PBKDF2-SHA512 digest


# ---- valid clients ---------------------------------------------------------------------
async def test_detector_and_sensor_connect_and_acl_stops_forgery(
    cert_broker: tuple[Bundle, Mosquitto], tmp_path: Path
) -> None:
    bundle, broker = cert_broker
    async with Running(detector_settings(bundle, tmp_path)) as run:
        sensor = MqttClient(tls(bundle, broker, "SENSOR-01"), "sim-SENSOR-01")
        await sensor.connect(timeout=10)
        try:
            # the forgery first, then the genuine reading on the same connection: once the
            # detector has the genuine one, the broker has long dealt with the forgery
            sensor.publish("factory/SENSOR-02/temperature", reading_payload("SENSOR-02", 99.0, 1))
            sensor.publish("factory/SENSOR-01/temperature", reading_payload("SENSOR-01", 24.5, 1))
            await eventually(lambda: ("SENSOR-01", 1) in run.processed, what="genuine reading")
            assert await sensor.drain(5)
        finally:
            await sensor.disconnect()
        assert "SENSOR-02" not in run.service.pipeline.sensor_ids
        assert run.processed == [("SENSOR-01", 1)]


async def test_simulated_fleet_over_tls(
    cert_broker: tuple[Bundle, Mosquitto], tmp_path: Path
) -> None:
    from mqtt_anomaly.simulate import Fleet

    bundle, _ = cert_broker
    fleet_settings = load_settings(
        bundle.client_configs[SIMULATOR_ID], {"simulator": {"seed": 1, "interval": 0.05}}
    )
    async with Running(detector_settings(bundle, tmp_path)) as run:
        async with Fleet(fleet_settings) as fleet:
            await fleet.run(count=3)
        await eventually(lambda: len(run.processed) >= 6, what="readings of both sensors")
        assert set(run.service.pipeline.sensor_ids) == set(SENSORS)


# ---- refusals --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rogue_credentials(
    cert_broker: tuple[Bundle, Mosquitto], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Path]]:
    """A certificate from another CA, and an expired one from the right CA (both CN of a
    real sensor)."""
    bundle, _ = cert_broker
    root = tmp_path_factory.mktemp("rogue")
    other_key, other_ca = make_ca("another CA")
    ca_key = load_pem_private_key((bundle.directory / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(bundle.ca_cert.read_bytes())
    now = dt.datetime.now(dt.UTC)
    made = {
        "other-ca": issue(other_key, other_ca, "SENSOR-01"),
        "expired": issue(
            ca_key,  # type: ignore[arg-type]
            ca_cert,
            "SENSOR-01",
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
        ),
    }
    paths = {}
    for name, (key, cert) in made.items():
        write_key(root / f"{name}.key", key)
        write_cert(root / f"{name}.crt", cert)
        paths[name] = (root / f"{name}.crt", root / f"{name}.key")
    return paths


@pytest.mark.parametrize("kind", ["gmqtt", "lean"])
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no-cert", ("requires a client certificate", "closed the connection")),
        ("other-ca", ("does not trust the CA", "closed the connection")),
        ("expired", ("expired", "closed the connection")),
    ],
)
async def test_bad_client_certificate_refused(
    cert_broker: tuple[Bundle, Mosquitto],
    rogue_credentials: dict[str, tuple[Path, Path]],
    kind: str,
    case: str,
    expected: tuple[str, ...],
) -> None:
    bundle, broker = cert_broker
    files = {}
    if case != "no-cert":
        files = dict(zip(("cert_file", "key_file"), rogue_credentials[case], strict=True))
    message = await refused(tls(bundle, broker, None, **files), kind)
    assert message.startswith(f"TLS with localhost:{broker.port} failed: ")
    assert any(e in message for e in expected), message


@pytest.mark.parametrize("kind", ["gmqtt", "lean"])
async def test_broker_not_from_our_ca_refused(
    cert_broker: tuple[Bundle, Mosquitto], tmp_path: Path, kind: str
) -> None:
    bundle, broker = cert_broker
    _, other_ca = make_ca("not the broker's CA")
    write_cert(tmp_path / "other-ca.crt", other_ca)
    settings = tls(bundle, broker, "SENSOR-01", ca_file=tmp_path / "other-ca.crt")
    message = await refused(settings, kind)
    assert "cannot verify the broker's certificate" in message


@pytest.mark.parametrize("kind", ["gmqtt", "lean"])
async def test_plaintext_port_closed(cert_broker: tuple[Bundle, Mosquitto], kind: str) -> None:
    _, broker = cert_broker
    message = await refused(BrokerSettings(url=broker.url, reconnect_delay=0.1), kind)
    assert "before accepting it" in message and "mqtts://" in message


async def test_tls_insecure_connects_with_a_warning(
    cert_broker: tuple[Bundle, Mosquitto], caplog: pytest.LogCaptureFixture
) -> None:
    bundle, broker = cert_broker
    settings = tls(bundle, broker, "SENSOR-01", ca_file=None, tls_insecure=True)
    client = MqttClient(settings, "insecure-client")
    with caplog.at_level(logging.WARNING):
        await client.connect(timeout=10)
    await client.disconnect()
    assert any("verification" in r.getMessage() and "OFF" in r.getMessage() for r in caplog.records)


# ---- passwords -------------------------------------------------------------------------
def password_settings(bundle: Bundle, broker: Mosquitto, user: str, **kw: Any) -> BrokerSettings:
    return BrokerSettings(
        url=f"mqtts://127.0.0.1:{broker.port}",
        ca_file=bundle.ca_cert,
        username=user,
        reconnect_delay=0.1,
        **kw,
    )


async def test_password_file_login_and_acl(
    password_broker: tuple[Bundle, Mosquitto], tmp_path: Path
) -> None:
    bundle, broker = password_broker
    async with Running(detector_settings(bundle, tmp_path)) as run:
        settings = password_settings(
            bundle, broker, "SENSOR-02", password_file=bundle.passwords["SENSOR-02"]
        )
        sensor = MqttClient(settings, "sim-SENSOR-02")
        await sensor.connect(timeout=10)
        sensor.publish("factory/SENSOR-01/temperature", reading_payload("SENSOR-01", 99.0, 1))
        sensor.publish("factory/SENSOR-02/temperature", reading_payload("SENSOR-02", 24.5, 1))
        await eventually(lambda: ("SENSOR-02", 1) in run.processed, what="genuine reading")
        await sensor.disconnect()
        assert run.processed == [("SENSOR-02", 1)]


@pytest.mark.parametrize("kind", ["gmqtt", "lean"])
async def test_wrong_password_refused(password_broker: tuple[Bundle, Mosquitto], kind: str) -> None:
    bundle, broker = password_broker
    settings = password_settings(bundle, broker, "SENSOR-01", password="not-the-password")
    message = await refused(settings, kind)
    assert message == f"broker 127.0.0.1:{broker.port} refused refused-{kind}: not authorised"


async def test_password_from_environment_never_shown(
    password_broker: tuple[Bundle, Mosquitto], monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, broker = password_broker
    secret = bundle.passwords[DETECTOR_ID].read_text().strip()
    monkeypatch.setenv("MQTT_ANOMALY_BROKER__PASSWORD", secret)
    monkeypatch.setenv("MQTT_ANOMALY_BROKER__USERNAME", DETECTOR_ID)
    settings = load_settings(
        None,
        {"broker": {"url": f"mqtts://localhost:{broker.port}", "ca_file": bundle.ca_cert}},
    )
    shown = settings_as_toml(settings) + repr(settings) + str(settings.broker)
    assert secret not in shown
    assert 'password = "**********"' in settings_as_toml(settings)
    client = LeanClient(settings.broker, "env-password", on_batch=lambda _b: None)
    await client.connect(timeout=10)
    await client.disconnect()


async def test_mosquitto_passwd_hashes_accepted(tmp_path: Path) -> None:
    import shutil

    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not installed")
    bundle, broker = start_broker(tmp_path / "certs", tmp_path / "mosquitto", auth="password")
    try:
        assert bundle.hashed_with == "mosquitto_passwd"
        assert "$7$" in (bundle.password_file or Path()).read_text()
        settings = password_settings(
            bundle, broker, "SENSOR-01", password_file=bundle.passwords["SENSOR-01"]
        )
        client = MqttClient(settings, "tool-hashed")
        await client.connect(timeout=10)
        await client.disconnect()
    finally:
        broker.stop()
