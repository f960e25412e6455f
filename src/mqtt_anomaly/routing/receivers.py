"""Receivers: how one :class:`~.router.Notice` is sent, per ``[receivers.NAME]`` type.

Each sender runs in its receiver's courier thread (:mod:`.outbox`) and takes the notice as the
JSON bytes the outbox holds; it raises :class:`~.outbox.DeliveryError` when the receiver did
not take it (``permanent`` when retrying cannot help).

- ``webhook``: the notice as JSON (``POST url``), with ``Idempotency-Key: <notice key>`` and,
  when a ``secret`` is set, ``X-Mqtt-Anomaly-Signature: sha256=<hex HMAC-SHA256 of the body>``.
- ``alertmanager``: Prometheus Alertmanager's v2 API, ``POST url/api/v2/alerts``: one alert per
  routed alert with its labels (``alertname`` = detector, ``sensor``, ``severity``, ``route``,
  ``group``, the sensor's tags), annotations (``summary``, ``description``, ``value``,
  ``alert_id``), ``startsAt``, and ``endsAt``: the clear time once resolved, else
  ``valid_until`` (twice the route's repeat interval: alerts expire if the service stops).
- ``slack``, ``teams``: an incoming webhook's message (Slack ``text``; a Teams
  ``MessageCard``).
- ``email``: one message per notice over SMTP (``smtp_tls`` none, starttls or ssl; login with
  ``username`` and ``password`` when set); its ``Message-ID`` is made from the notice key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import msgspec

from ..routeconf import ReceiverSettings
from .outbox import DeliveryError, Sender
from .router import Notice

__all__ = ["SIGNATURE_HEADER", "make_sender", "sign"]

SIGNATURE_HEADER = "X-Mqtt-Anomaly-Signature"
_decode = msgspec.json.Decoder(Notice).decode


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> None:
    req = urllib.request.Request(url, data=body, method="POST", headers=dict(headers))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
        raise DeliveryError(f"HTTP {exc.code} from {url}", permanent=permanent) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{url}: {reason}") from exc


def _lines(n: Notice) -> list[str]:
    out = []
    for a in n.alerts:
        value = "" if a.value is None else f" value {a.value:g}"
        esc = " (escalated)" if a.escalated else ""
        out.append(f"- {a.status} {a.severity}{esc}: {a.sensor_id} {a.detector}{value} {a.message}")
    if n.truncated:
        out.append(f"- … and {n.firing + n.resolved - len(n.alerts)} more")
    return out


class _Http:
    def __init__(self, cfg: ReceiverSettings, name: str) -> None:
        self.cfg = cfg
        self.name = name

    def _send_json(self, url: str, payload: Any, extra: Mapping[str, str] = {}) -> None:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", **extra, **self.cfg.headers}
        _post(url, body, headers, self.cfg.timeout)


class WebhookSender(_Http):
    def __init__(self, cfg: ReceiverSettings, name: str) -> None:
        super().__init__(cfg, name)
        self.secret = cfg.secret_key(name)

    def send(self, body: bytes) -> None:
        notice = _decode(body)
        headers = {"Content-Type": "application/json", "Idempotency-Key": notice.key}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        _post(self.cfg.url, body, {**headers, **self.cfg.headers}, self.cfg.timeout)


class AlertmanagerSender(_Http):
    def send(self, body: bytes) -> None:
        n = _decode(body)
        alerts = []
        for a in n.alerts:
            item: dict[str, Any] = {
                "labels": a.labels,
                "annotations": {
                    "summary": f"{a.detector} on {a.sensor_id}",
                    "description": a.message,
                    "value": "" if a.value is None else f"{a.value:g}",
                    "alert_id": a.id,
                },
                "startsAt": _iso(a.starts_at),
                "endsAt": _iso(a.ends_at if a.ends_at is not None else n.valid_until),
            }
            alerts.append(item)
        self._send_json(f"{self.cfg.url}/api/v2/alerts", alerts)


class SlackSender(_Http):
    def send(self, body: bytes) -> None:
        n = _decode(body)
        self._send_json(self.cfg.url, {"text": "\n".join([f"*{n.summary}*", *_lines(n)])})


class TeamsSender(_Http):
    def send(self, body: bytes) -> None:
        n = _decode(body)
        colour = (
            "2EB67D"
            if n.status == "resolved"
            else "E01E5A"
            if n.severity == "critical"
            else "ECB22E"
        )
        card = {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": n.summary,
            "themeColor": colour,
            "title": n.summary,
            "text": "\n\n".join(_lines(n)),
        }
        self._send_json(self.cfg.url, card)


class EmailSender:
    def __init__(self, cfg: ReceiverSettings, name: str) -> None:
        self.cfg = cfg
        self.password = cfg.smtp_password(name)

    def send(self, body: bytes) -> None:
        n = _decode(body)
        cfg = self.cfg
        msg = EmailMessage()
        msg["Subject"] = n.summary
        msg["From"] = cfg.sender
        msg["To"] = ", ".join(cfg.to)
        msg["Message-ID"] = f"<{n.key}@mqtt-anomaly>"
        msg["Date"] = datetime.fromtimestamp(n.ts, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
        msg.set_content("\n".join([n.summary, "", *_lines(n), ""]))
        try:
            smtp: smtplib.SMTP
            if cfg.smtp_tls == "ssl":
                context = ssl.create_default_context()
                smtp = smtplib.SMTP_SSL(
                    cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout, context=context
                )
            else:
                smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout)
            with smtp:
                if cfg.smtp_tls == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if cfg.username and self.password is not None:
                    smtp.login(cfg.username, self.password)
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"SMTP refused the recipients: {exc}", permanent=True) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP {cfg.smtp_host}:{cfg.smtp_port}: {exc}") from exc


def make_sender(name: str, cfg: ReceiverSettings) -> Sender:
    """The sender of a ``[receivers.NAME]`` entry."""
    kinds: dict[str, type[WebhookSender | AlertmanagerSender | SlackSender | TeamsSender]] = {
        "webhook": WebhookSender,
        "alertmanager": AlertmanagerSender,
        "slack": SlackSender,
        "teams": TeamsSender,
    }
    if cfg.type == "email":
        return EmailSender(cfg, name)
    return kinds[cfg.type](cfg, name)
