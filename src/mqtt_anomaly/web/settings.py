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

from ..errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
MIN_TOKEN_LENGTH = 16  # shorter tokens are accepted with a warning at start
MAX_TOKEN_LINE = 4096  # characters of a token file's first line that are read


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
    except ValueError as exc:
        raise ValueError(f"expected HOST:PORT or PORT, got {text!r}") from exc
    if not 0 <= port < 65536:
        raise ValueError(f"port out of range: {port}")
    return host, port


class HttpSettings(BaseModel):
    """The operator's HTTP endpoint (REST API, ``/metrics``, dashboard).

    ``listen`` is ``HOST:PORT`` or ``PORT`` (127.0.0.1); unset: no HTTP server. Bound to
    anything but loopback, a ``token`` (or ``token_file``) is required; on loopback it is
    optional (no token: open to local users). Whenever a token is set, on any address,
    requests need ``Authorization: Bearer <token>`` or HTTP basic auth with the token as
    password (any user name); ``/healthz`` and ``/readyz`` stay open for probes. A blank
    token is an error, never "no token": an empty or whitespace ``token`` when the settings
    load, a ``token_file`` that is unreadable, empty or has a blank first line when the
    server starts (the file is read then: a configuration naming a secret mounted only
    where the service runs still loads elsewhere). ``cert_file`` and ``key_file`` serve
    HTTPS.

    Limits: at most ``max_event_clients`` event streams at once (503 beyond), and per
    client address ``rate_limit`` API requests per second with bursts of ``rate_burst``
    (429 beyond; ``rate_limit = 0`` turns it off).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str | None = None
    sse_queue: int = Field(1000, ge=10)  # events buffered per dashboard before it is dropped
    sse_heartbeat: float = Field(15.0, gt=0)  # seconds between keep-alive comments
    max_points: int = Field(2000, ge=10)  # upper bound on ``buckets`` of a readings query
    alert_history: int = Field(10_000, ge=100)  # alert events kept in memory for the feed
    max_event_clients: int = Field(32, ge=1, le=10_000)  # concurrent /api/events streams
    rate_limit: float = Field(50.0, ge=0, allow_inf_nan=False)  # API requests/s per client; 0: off
    rate_burst: int = Field(100, ge=1)  # requests a client may make at once before the rate applies
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

    @field_validator("token")
    @classmethod
    def _check_token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("is empty or blank: set a real token (or leave it unset)")
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
        """The access token from ``token`` or the first line of ``token_file``, without the
        white space around it; None: no token.

        Never an empty string: a blank token raises :class:`ConfigError`.
        """
        if self.token is not None:
            token = self.token.get_secret_value().strip()  # e.g. "$(cat file)" with its newline
            if not token:
                raise ConfigError("http.token: is empty or blank")
            return token
        if self.token_file is not None:
            return _read_token_file(self.token_file)
        return None

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)``, or None when the server is off."""
        return parse_listen(self.listen) if self.listen is not None else None


def _read_token_file(path: Path) -> str:
    """The first line of ``path``, stripped; ConfigError if unreadable, empty or blank."""
    try:
        with path.open(encoding="utf-8") as fh:
            first = fh.readline(MAX_TOKEN_LINE)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"http.token_file: cannot read {path}: {reason}") from exc
    token = first.strip()
    if not token:
        what = "is empty" if not first else "has a blank first line"
        raise ConfigError(f"http.token_file: {path} {what}: the token must be on its first line")
    return token
