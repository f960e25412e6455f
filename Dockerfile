# mqtt-anomaly detector service (also runs the simulator and the other commands).
#
#   podman build -t mqtt-anomaly .            # or: docker build -t mqtt-anomaly .
#   podman build --build-arg BASE_IMAGE=localhost/python:3.11-slim -t mqtt-anomaly .
#
# The builder makes a virtual environment with the wheel and its dependencies; the final stage
# is the same base with only that environment, a non-root user and a state volume.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
# Dependencies first, from pyproject.toml alone (with the Kafka extra): a change to the source
# rebuilds only the last layer. Every dependency ships binary wheels for CPython 3.11 (numpy,
# msgspec, psycopg[binary], confluent-kafka): no compiler is needed, here or later.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['kafka']))" > requirements.txt \
    && /opt/venv/bin/pip install -r requirements.txt
COPY src ./src
# pip compiles the bytecode, so a read-only root file system costs nothing at start.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-deps /wheels/*.whl \
    && /opt/venv/bin/pip uninstall --yes pip

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="mqtt-anomaly" \
      org.opencontainers.image.description="Real-time anomaly detection for industrial IoT sensors over MQTT" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 mqtt-anomaly \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/mqtt-anomaly --shell /usr/sbin/nologin mqtt-anomaly \
    && mkdir -p /var/lib/mqtt-anomaly/state \
    && chown -R 10001:10001 /var/lib/mqtt-anomaly
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MQTT_ANOMALY_SERVICE__STATE_DIR=/var/lib/mqtt-anomaly/state \
    MQTT_ANOMALY_STORE__URL=sqlite:////var/lib/mqtt-anomaly/mqtt-anomaly.db \
    HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
WORKDIR /var/lib/mqtt-anomaly
VOLUME ["/var/lib/mqtt-anomaly"]
USER 10001:10001
EXPOSE 8080
# /healthz needs no token. Change HEALTHCHECK_URL with the listen address; the check fails
# (as it should) when the HTTP server is off.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["mqtt-anomaly"]
# Off loopback the HTTP server needs MQTT_ANOMALY_HTTP__TOKEN or MQTT_ANOMALY_HTTP__TOKEN_FILE.
CMD ["detect", "--http", "0.0.0.0:8080"]
