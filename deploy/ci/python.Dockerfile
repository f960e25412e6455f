# A stand-in for python:3.11-slim built from Debian's packages, for machines that cannot pull
# from a registry (scripts/containers builds it as localhost/python:3.11-slim when missing).
# Debian bookworm's Python is 3.11 as well; it lives in /usr/bin (linked into /usr/local/bin)
# and runs as root like the official image.
ARG DEBIAN_IMAGE=localhost/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV LANG=C.UTF-8
# Debian stable updates are what these stand-ins track: no version pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       ca-certificates python3 python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3 /usr/local/bin/python \
    && ln -s /usr/bin/pip3 /usr/local/bin/pip \
    && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
# The build machine's CA bundle: outgoing HTTPS may pass a proxy whose CA only it holds.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
