"""What every MQTT connection of ours shares, whatever speaks the protocol: TLS, refusal
messages, connecting with retry, the SUBACK check, counters.

Both the service's own connection (:mod:`.lean`) and the gmqtt wrapper the simulator uses
(:mod:`.client`) take these from here, so an operator reads the same line for the same
failure from either; this module imports no MQTT library.

- :func:`ssl_context`: the TLS context for ``mqtts://`` (verification on unless
  ``tls_insecure``), with the warnings for unsafe settings;
- :func:`tls_failure`, :func:`closed_before_connack`, :func:`refusal`: one line for a failed
  handshake, a connection closed before CONNACK, a CONNACK refusal (its return code as text,
  :data:`~.codec.CONNACK_REASONS`);
- :func:`connect_with_retry`: retry while unreachable, fail at once when refused; the pauses
  between attempts follow a :class:`~mqtt_anomaly.retry.Backoff` (:func:`fixed_retry`, the
  fixed ``broker.reconnect_delay``, unless the caller gives another);
- :func:`await_suback`: a refused subscription is a :class:`~mqtt_anomaly.errors.BrokerError`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import BrokerSettings
from ..errors import BrokerError, ConfigError
from ..retry import Backoff
from .codec import MQTT_311, SUBACK_FAILURE, connack_reason, reason_text

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ClientStats:
    """Counters of one client connection."""

    connects: int = 0
    disconnects: int = 0
    buffered: int = 0
    dropped: int = 0
    received: int = 0


def ssl_context(settings: BrokerSettings) -> ssl.SSLContext | None:
    """The TLS context for ``mqtts://`` brokers (verification on unless ``tls_insecure``).

    Warns (once per broker address) when verification is off, when TLS files are given for a
    plaintext ``mqtt://`` broker, and when a password would travel unencrypted.
    """
    if not settings.tls:
        if settings.ca_file or settings.cert_file or settings.key_file:
            _warn_once(settings, "broker %s is mqtt:// (no TLS): ca_file/cert_file/key_file unused")
        if settings.username and (settings.password or settings.password_file):
            _warn_once(settings, "broker %s is mqtt:// (no TLS): the password is sent unencrypted")
        return None
    if settings.key_file and not settings.cert_file:
        raise ConfigError("broker.key_file: set broker.cert_file too (the client certificate)")
    try:
        ctx = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
        if settings.cert_file:
            ctx.load_cert_chain(
                str(settings.cert_file), str(settings.key_file) if settings.key_file else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"broker TLS files: {exc}") from exc
    if settings.tls_insecure:
        _warn_once(
            settings,
            "TLS certificate verification of broker %s is OFF (broker.tls_insecure): "
            "anyone on the path can impersonate it",
        )
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


_warned: set[tuple[str, str]] = set()


def _warn_once(settings: BrokerSettings, msg: str) -> None:
    if (settings.address, msg) not in _warned:
        _warned.add((settings.address, msg))
        log.warning(msg, settings.address)


_TLS_ALERTS = (
    ("CERTIFICATE_REQUIRED", "the broker requires a client certificate (broker.cert_file)"),
    ("HANDSHAKE_FAILURE", "the broker refused the handshake (a client certificate missing?)"),
    ("CERTIFICATE_EXPIRED", "the broker rejected our client certificate: expired"),
    ("UNKNOWN_CA", "the broker does not trust the CA of our client certificate"),
    ("BAD_CERTIFICATE", "the broker rejected our client certificate"),
    ("CERTIFICATE_UNKNOWN", "the broker rejected our client certificate"),
    ("CERTIFICATE_REVOKED", "the broker rejected our client certificate: revoked"),
    ("WRONG_VERSION_NUMBER", "the port does not speak TLS (mqtt:// instead of mqtts://?)"),
)


def tls_failure(address: str, exc: BaseException | None) -> str:
    """One line for a failed TLS connection: what the broker or our verification objected to."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or "failed"
        return f"TLS with {address} failed: cannot verify the broker's certificate: {why}"
    reason = str(getattr(exc, "reason", "") or "")
    for code, text in _TLS_ALERTS:
        if code in reason:
            return f"TLS with {address} failed: {text}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS with {address} failed: {reason or exc}"
    return (
        f"TLS with {address} failed: the broker closed the connection before accepting us "
        "(client certificate missing, expired or from another CA?)"
    )


def closed_before_connack(settings: BrokerSettings, name: str, exc: BaseException | None) -> str:
    """The message for a connection the broker closed before its CONNACK (a refusal)."""
    if settings.tls:
        return tls_failure(settings.address, exc)
    return (
        f"broker {settings.address} closed the connection of {name} before accepting it "
        "(a TLS-only port? then use mqtts://)"
    )


def fixed_retry(settings: BrokerSettings) -> Backoff:
    """The default pauses between connection attempts: ``broker.reconnect_delay`` each time."""
    return Backoff.fixed(settings.reconnect_delay)


async def connect_with_retry(
    attempt: Callable[[], Awaitable[None]],
    settings: BrokerSettings,
    *,
    timeout: float | None,
    retry: bool,
    backoff: Backoff | None = None,
) -> None:
    """Run ``attempt`` until it succeeds, retrying while the broker is unreachable (OSError,
    TimeoutError) until ``timeout`` (None = forever); anything else, a refusal included, ends
    it at once. The pauses between attempts follow ``backoff`` (by default
    :func:`fixed_retry`), the last one shortened to end at ``timeout``. One warning for the
    whole outage; each failed attempt is a debug line with the pause before the next."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    pauses = (backoff or fixed_retry(settings)).delays()
    while True:
        try:
            await attempt()
            return
        except (TimeoutError, OSError) as exc:
            now = loop.time()
            if not retry or (deadline is not None and now >= deadline):
                raise BrokerError(f"cannot reach broker at {settings.address}: {exc}") from exc
            if not pauses.started:
                log.warning("broker %s unreachable (%s); retrying", settings.address, exc)
            pause = next(pauses)
            if deadline is not None:
                pause = min(pause, deadline - now)
            log.debug(
                "broker %s unreachable (%s); next attempt in %.3f s", settings.address, exc, pause
            )
            await asyncio.sleep(pause)


async def await_suback(
    waiter: asyncio.Future[Any], filters: Sequence[str], settings: BrokerSettings, timeout: float
) -> None:
    """Wait for a SUBACK's granted codes; a refused filter (code >= 0x80) is a BrokerError."""
    try:
        granted = await asyncio.wait_for(waiter, timeout)
    except TimeoutError as exc:
        raise BrokerError(f"no SUBACK from {settings.address} in {timeout}s") from exc
    refused = [(f, g) for f, g in zip(filters, granted, strict=False) if g >= SUBACK_FAILURE]
    if refused:
        v5 = settings.protocol == "5"
        names = [f"{f} ({reason_text(g)})" if v5 else f for f, g in refused]
        raise BrokerError(f"broker refused subscription to {', '.join(names)}")


def refusal(settings: BrokerSettings, name: str, code: int, level: int = MQTT_311) -> str:
    """The message for a CONNACK that refused us with return ``code``.

    >>> refusal(BrokerSettings(url="mqtt://b:1883"), "detector", 5)
    'broker b:1883 refused detector: not authorised'
    """
    return f"broker {settings.address} refused {name}: {connack_reason(code, level)}"
