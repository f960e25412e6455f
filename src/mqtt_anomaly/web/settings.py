"""The ``[http]`` settings section: where the REST API and the dashboard listen.

>>> parse_listen("8080")
('127.0.0.1', 8080)
>>> parse_listen("0.0.0.0:9000")
('0.0.0.0', 9000)
>>> parse_listen("[::1]:9000")
('::1', 9000)
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_HOST = "127.0.0.1"


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

    ``listen`` is ``HOST:PORT`` or ``PORT`` (127.0.0.1); unset: no HTTP server.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str | None = None
    sse_queue: int = Field(1000, ge=10)  # events buffered per dashboard before it is dropped
    sse_heartbeat: float = Field(15.0, gt=0)  # seconds between keep-alive comments
    max_points: int = Field(2000, ge=10)  # upper bound on ``buckets`` of a readings query
    alert_history: int = Field(10_000, ge=100)  # alert events kept in memory for the feed

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_listen(v)
        return v

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)``, or None when the server is off."""
        return parse_listen(self.listen) if self.listen is not None else None
