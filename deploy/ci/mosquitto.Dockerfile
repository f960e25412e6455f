# A stand-in for eclipse-mosquitto:2 built from Debian's mosquitto package, for machines that
# cannot pull from a registry (scripts/containers builds it as localhost/eclipse-mosquitto:2
# when missing). Same layout as the official image: configuration in /mosquitto/config,
# persistence in /mosquitto/data, an entrypoint that hands /mosquitto to the broker's user.
ARG DEBIAN_IMAGE=localhost/debian:bookworm
FROM ${DEBIAN_IMAGE}
# Debian stable updates are what these stand-ins track: no version pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /mosquitto/config /mosquitto/data /mosquitto/log \
    && printf 'listener 1883\nallow_anonymous true\nlog_dest stdout\n' \
       > /mosquitto/config/mosquitto.conf \
    && chown -R mosquitto:mosquitto /mosquitto
COPY mosquitto-entrypoint.sh /docker-entrypoint.sh
EXPOSE 1883
VOLUME ["/mosquitto/data", "/mosquitto/log"]
ENTRYPOINT ["/docker-entrypoint.sh"]
CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
