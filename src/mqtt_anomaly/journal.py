"""The intake journal: every message received, appended before it is acknowledged.

With ``service.ack_after = "journaled"`` (the default) the service writes each network read's
messages to the journal in **one** ``write`` (and, with ``service.fsync``, one ``fdatasync``)
before it processes them; the broker's PUBACKs go out right after, so the broker never waits
for a delivery round and its in-flight window never fills with readings. A delivery round then
only checkpoints: it starts a new journal *segment*, copies the detector state, waits until the
durable sinks hold what came before, saves the state with the number of the first segment it
does not cover, and deletes the older segments. At start the segments the saved state does not
cover are processed again, in order, through the same pipeline: the same readings on the same
state raise the same alerts with the same ids (:mod:`.outbox` keeps them from being sent twice),
and the store's unique keys keep the readings from being stored twice.

Files: ``state/journal/<segment>.mqaj``. A segment is a sequence of frames, one per network
read: ``<length u32><crc32 u32>`` then the messages as one MessagePack array of ``[topic,
payload, received_at]`` (msgspec encodes 500 messages in 12 µs, a sixth of packing each with
``struct``). A frame that is cut short, fails its checksum or does not decode as that type (the
tail of a power loss without ``fsync``) ends the segment: the messages in it had not been
acknowledged, so the broker still has them.

Data only: a frame is decoded to exactly that type (strings, bytes, floats), never to an
object it names.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec

from ._lifecycle import Closing

__all__ = ["Journal", "JournalBatch"]

JournalBatch = list[tuple[str, bytes, float]]
_FRAME: Final = struct.Struct("<II")
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[tuple[str, bytes, float]]).decode
SUFFIX: Final = ".mqaj"


def _segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob(f"*{SUFFIX}"):
        stem = path.name[: -len(SUFFIX)]
        if stem.isdigit():
            found.append((int(stem), path))
    return sorted(found)


def encode_batch(batch: JournalBatch) -> bytes:
    """One frame holding ``batch``."""
    body = _encode(batch)
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def decode_frames(data: bytes) -> Iterator[JournalBatch]:
    """The batches of a segment's bytes, up to the first frame cut short or corrupted."""
    pos, n = 0, len(data)
    head = _FRAME.size
    while n - pos >= head:
        length, crc = _FRAME.unpack_from(data, pos)
        start, end = pos + head, pos + head + length
        body = data[start:end]
        if end > n or zlib.crc32(body) != crc:
            return
        try:
            batch = _decode(body)
        except msgspec.DecodeError:
            return
        yield batch
        pos = end


class Journal(Closing):
    """Append-only segments of received messages (see the module docstring).

    ``fsync``: every append reaches the disk before it returns (power loss loses nothing
    acknowledged); without it a ``kill -9`` loses nothing, the kernel keeps what was written.
    """

    def __init__(self, directory: Path, *, fsync: bool = False) -> None:
        self.directory = directory
        self.fsync = fsync
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = _segments(directory)
        self.segment = existing[-1][0] + 1 if existing else 1
        """The segment being written."""
        self._fd = self._open(self.segment)
        self.appended = 0  # messages written by this process
        self.bytes = 0

    def _open(self, segment: int) -> int:
        path = self.directory / f"{segment:012d}{SUFFIX}"
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, batch: JournalBatch) -> None:
        """Write one network read's messages (one ``write``; with ``fsync`` to the disk)."""
        frame = encode_batch(batch)
        view = memoryview(frame)
        while view:  # a regular file takes it whole; a short write is only resumed
            view = view[os.write(self._fd, view) :]
        if self.fsync:
            os.fdatasync(self._fd)
        self.appended += len(batch)
        self.bytes += len(frame)

    def rotate(self) -> int:
        """Start a new segment; returns its number (what a checkpoint taken now covers up to,
        exclusive)."""
        old = self._fd
        self.segment += 1
        self._fd = self._open(self.segment)
        if self.fsync:  # the new file's directory entry, then the old file's last bytes
            os.fdatasync(old)
        os.close(old)
        return self.segment

    def unneeded(self, first: int) -> None:
        """Delete the segments before ``first`` (a saved checkpoint covers them)."""
        for number, path in _segments(self.directory):
            if number >= first:
                break
            path.unlink(missing_ok=True)

    def pending(self, first: int) -> Iterator[JournalBatch]:
        """The batches of the segments from ``first`` up to (not including) the one this
        journal writes, in order: what the saved checkpoint does not cover."""
        for number, path in _segments(self.directory):
            if first <= number < self.segment:
                yield from decode_frames(path.read_bytes())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
