"""The alert outbox: an alert is written down before it is published, and never published twice.

After a ``kill -9`` the service processes again what its last checkpoint did not cover (the
intake journal, :mod:`.journal`), which raises the same alerts with the same ids
(:func:`.messages.alert_id`). The outbox keeps the ids of the alerts published since that
checkpoint, so a re-raised alert is not sent again; and it keeps each alert's payload until
the broker acknowledged it, so one published but not acknowledged before the crash is sent
again at the next start (it may not have reached the broker).

Files: ``state/outbox/<segment>.mqao``, JSON lines: ``{"run": R}`` first (the process that
wrote it: serials are numbered per process), then ``{"id", "topic", "payload", "serial"}`` per
alert, written in one ``write`` per batch **before** the alerts are handed to the connection,
and ``{"acked": S}`` whenever the broker has acknowledged every QoS 1 publish of the run up to
serial ``S``. Segments rotate with the journal's at every checkpoint and are deleted once a
saved checkpoint covers them.

The limit (QoS 1): an alert the broker received and acknowledged in the instant before the
kill, its acknowledgement not yet read, is sent once more at the next start. Its id is the
same, so a consumer can still drop it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import msgspec

from ._lifecycle import Closing
from .transport.base import Transport
from .transport.lean import LeanClient

__all__ = ["Outbox"]

log = logging.getLogger(__name__)
SUFFIX: Final = ".mqao"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob(f"*{SUFFIX}"):
        stem = path.name[: -len(SUFFIX)]
        if stem.isdigit():
            found.append((int(stem), path))
    return sorted(found)


def _lines(path: Path) -> Iterable[dict[str, Any]]:
    """The records of a segment; a line cut short (the tail of a power loss) ends it."""
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            record = _decode(line)
        except msgspec.DecodeError:
            return
        if isinstance(record, dict):
            yield record


class Outbox(Closing):
    """Alert ids published since the last checkpoint, and the payloads not yet acknowledged.

    ``transport``: the connection alerts go out on (QoS 1); its serials
    (:meth:`~.transport.base.Transport.outgoing_mark`) tell which were acknowledged.
    """

    def __init__(
        self, directory: Path, transport: Transport, *, fsync: bool = False, qos: int = 1
    ) -> None:
        self.directory = directory
        self.transport = transport
        self.fsync = fsync
        self.qos = qos
        self._lean: LeanClient | None = None
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = _segments(directory)
        self.segment = existing[-1][0] + 1 if existing else 1
        self.run = self.segment
        self._ids: dict[int, set[str]] = {self.segment: set()}  # by segment
        self._fd = self._open(self.segment)
        self._last_serial = 0  # serial of our last alert
        self._logged_ack = 0  # acknowledged mark last written
        self.published = 0
        self.suppressed = 0
        """Alerts not sent again: their id had been published already."""
        self.resent = 0
        """Alerts of an earlier run sent again: not acknowledged before it ended."""

    def _open(self, segment: int) -> int:
        path = self.directory / f"{segment:012d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(fd, _encode({"run": self.run}) + b"\n")
        return fd

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        if self.fsync:
            os.fdatasync(self._fd)

    # ---- start ------------------------------------------------------------------------
    def recover(self, first: int) -> int:
        """At start, before the journal is processed again: load the ids of the segments from
        ``first`` on (the saved checkpoint does not cover them), delete the older ones, and
        send again the alerts no run saw acknowledged (once each): under the packet id they
        had (QoS 2, see :meth:`attach`), else as new messages. Returns how many."""
        self.unneeded(first)
        runs: dict[int, int] = {}  # run -> its highest acknowledged mark, in any segment
        entries: dict[str, dict[str, Any]] = {}  # id -> its latest record, in order
        by_serial: dict[tuple[int, int], dict[str, Any]] = {}
        holder: dict[int, dict[str, Any]] = {}  # packet id -> the alert last sent under it
        for number, path in _segments(self.directory):
            if number >= self.segment:
                break
            ids: set[str] = set()
            self._ids[number] = ids
            run = -number  # a segment without its header line: nothing of it acknowledged
            for record in _lines(path):
                if "run" in record:
                    run = int(record["run"])
                    runs.setdefault(run, 0)
                elif "acked" in record:
                    runs[run] = max(runs.get(run, 0), int(record["acked"]))
                elif "id" in record:
                    alert_id = str(record["id"])
                    ids.add(alert_id)
                    record["run"] = run
                    entries[alert_id] = by_serial[run, int(record["serial"])] = record
                elif "pid" in record:
                    entry = by_serial.get((run, int(record["serial"])))
                    pid = int(record["pid"])
                    before = holder.get(pid)
                    if before is not None and before is not entry:
                        before["done"] = True  # a packet id is taken again once completed
                    if entry is not None:
                        entry["pid"], entry["rec"] = pid, False
                        holder[pid] = entry
                elif "rec" in record and (entry := holder.get(int(record["rec"]))) is not None:
                    entry["rec"] = True
        fresh: list[tuple[str, str, bytes, bytes]] = []
        resumed = 0
        for alert_id, e in entries.items():
            if e.get("done") or int(e["serial"]) <= runs.get(e["run"], 0):
                continue
            topic, payload = str(e["topic"]), str(e["payload"]).encode()
            if self._lean is not None and "pid" in e:
                pid, rec = int(e["pid"]), bool(e["rec"])
                serial = self._lean.resume_qos2(pid, topic, payload, released=rec)
                self._log(alert_id, topic, payload, serial, pid, rec)
                resumed += 1
            else:
                fresh.append((alert_id, topic, payload, b""))
        if fresh:
            self._send(fresh)
        n = resumed + len(fresh)
        if n:
            self.resent += n
            log.info(
                "%d alerts not acknowledged before the restart: %d resumed under their packet "
                "id, %d sent again",
                n,
                resumed,
                len(fresh),
            )
        return n

    def _log(
        self, alert_id: str, topic: str, payload: bytes, serial: int, pid: int, rec: bool
    ) -> None:
        lines = [
            self._entry(alert_id, topic, payload, serial),
            _encode({"pid": pid, "serial": serial}),
        ]
        if rec:
            lines.append(_encode({"rec": pid}))
        self._write(b"\n".join(lines) + b"\n")
        self._ids[self.segment].add(alert_id)
        self._last_serial = max(self._last_serial, serial)

    @staticmethod
    def _entry(alert_id: str, topic: str, payload: bytes, serial: int) -> bytes:
        return _encode(
            {"id": alert_id, "topic": topic, "payload": payload.decode(), "serial": serial}
        )

    def attach(self, lean: LeanClient) -> None:
        """Keep the packet state of QoS 2 alerts on ``lean``: the packet id of each before it
        is written, the PUBRECs before their PUBRELs; :meth:`recover` hands them back to it."""
        self._lean = lean
        lean.on_qos2_sent = self._sent
        lean.on_qos2_received = self._received

    def _sent(self, serial: int, pid: int) -> None:
        self._write(_encode({"pid": pid, "serial": serial}) + b"\n")

    def _received(self, pids: list[int]) -> None:
        self._write(b"".join(_encode({"rec": pid}) + b"\n" for pid in pids))

    # ---- sending ------------------------------------------------------------------------
    def send(self, items: Iterable[tuple[str, str, bytes, bytes]]) -> None:
        """Publish ``(id, topic, payload, MQTT 5 properties)``, each unless its id was published
        already; written down first."""
        seen = self._seen
        fresh = []
        for item in items:
            if item[0] and seen(item[0]):
                self.suppressed += 1
            else:
                fresh.append(item)
        if fresh:
            self._send(fresh)

    def _seen(self, alert_id: str) -> bool:
        return any(alert_id in ids for ids in self._ids.values())

    def _send(self, items: list[tuple[str, str, bytes, bytes]]) -> None:
        transport = self.transport
        serial = transport.outgoing_mark()
        lines = []
        ids = self._ids[self.segment]
        for alert_id, topic, payload, _ in items:
            serial += 1
            lines.append(self._entry(alert_id, topic, payload, serial))
            ids.add(alert_id)
        self._write(b"\n".join(lines) + b"\n")
        publish, qos = transport.publish, self.qos
        for _, topic, payload, props in items:
            publish(topic, payload, qos=qos, properties=props)
        self._last_serial = serial
        self.published += len(items)

    def note_acks(self, low: int) -> None:
        """The broker acknowledged every QoS 1 publish of this run up to serial ``low``:
        write it down if it covers an alert not yet marked."""
        if low > self._logged_ack and self._last_serial > self._logged_ack:
            self._write(_encode({"acked": low}) + b"\n")
            self._logged_ack = low

    # ---- checkpoints --------------------------------------------------------------------
    def rotate(self) -> int:
        """Start a new segment (with the journal's, at a checkpoint); returns its number."""
        self.note_acks(self.transport.acknowledged_mark())
        old = self._fd
        self.segment += 1
        self._ids[self.segment] = set()
        self._fd = self._open(self.segment)
        os.close(old)
        return self.segment

    def unneeded(self, first: int) -> None:
        """Delete the segments before ``first`` and forget their ids (a saved checkpoint
        covers the readings that raised them: they cannot be raised again)."""
        for number, path in _segments(self.directory):
            if number >= first:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for number in [n for n in self._ids if n < first]:
            del self._ids[number]

    def close(self) -> None:
        if self._fd >= 0:
            self.note_acks(self.transport.acknowledged_mark())
            os.close(self._fd)
            self._fd = -1
