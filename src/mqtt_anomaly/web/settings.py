"""The ``[http]`` settings section: where the REST API and the dashboard listen.

>>> parse_listen("8080")
('127.0.0.1', 8080)
>>> parse_listen("0.0.0.0:9000")
('0.0.0.0', 9000)
>>> parse_listen("[::1]:9000")
('::1', 9000)
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

DEFAULT_HOST = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (reachable from this machine only).

    >>> [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.1.2.3")]
    [True, True, True, False, False]
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or just ``PORT`` (on 127.0.0.1) → ``(host, port)``; ValueError if bad."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_HOST, text
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"expected HOST:PORT or PORT, got {text!r}") from None
    if not 0 <= port < 65536:
        raise ValueError(f"port out of range: {port}")
    return host, port


class HttpSettings(BaseModel):
    """The operator's HTTP endpoint (REST API, ``/metrics``, dashboard).

    ``listen`` is ``HOST:PORT`` or ``PORT`` (127.0.0.1); unset: no HTTP server. Bound to
    anything but loopback, a ``token`` (or ``token_file``) is required: requests then need
    ``Authorization: Bearer <token>`` or HTTP basic auth with the token as password (any user
    name); ``/healthz`` and ``/readyz`` stay open for probes. ``cert_file`` and ``key_file``
    serve HTTPS.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str | None = None
    sse_queue: int = Field(1000, ge=10)  # events buffered per dashboard before it is dropped
    sse_heartbeat: float = Field(15.0, gt=0)  # seconds between keep-alive comments
    max_points: int = Field(2000, ge=10)  # upper bound on ``buckets`` of a readings query
    alert_history: int = Field(10_000, ge=100)  # alert events kept in memory for the feed
    token: SecretStr | None = None
    token_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_listen(v)
        return v

    @model_validator(mode="after")
    def _check_exposure(self) -> HttpSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        host = self.address[0] if self.address is not None else DEFAULT_HOST
        if not is_loopback(host) and self.token is None and self.token_file is None:
            raise ValueError(
                f"listening on {host} (not loopback) needs an access token: set "
                "MQTT_ANOMALY_HTTP__TOKEN or http.token_file"
            )
        return self

    def secret_token(self) -> str | None:
        """The access token from ``token`` or the first line of ``token_file``."""
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            try:
                return self.token_file.read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise ValueError(f"http.token_file: cannot read: {exc}") from None
        return None

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)``, or None when the server is off."""
        return parse_listen(self.listen) if self.listen is not None else None
