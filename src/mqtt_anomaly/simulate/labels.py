"""Ground truth: every injected fault as one JSON line, so detections can be scored.

One line per fault, written when the fault is over (or when the run stops, cut at that time)::

    {"sensor_id":"SENSOR-03","kind":"level_shift","start":1767225600.25,"end":1767225660.25}

A simulated machine's fault (``simulate --assets``) is labelled for the whole asset, with the
sensors it moves; the two extra keys are left out of a sensor's line, so files written before
them and readers that ignore them keep working::

    {"sensor_id":"PUMP-02","kind":"cavitation","start":1767226500.0,"end":1767226800.0,
     "asset":"PUMP-02","sensors":["suction_pressure","discharge_pressure","flow",...]}

``start`` and ``end`` are UTC epoch seconds: the timestamps (``ts``) of the first and last
affected reading. A spike has ``start == end``. For ``dropout`` they are the times of the first
and last reading not sent; for ``crash``, the moment the connection was dropped and the moment
the sensor was back online. Lines are appended and flushed one by one, so the file can be
followed while the simulator runs.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "labels.jsonl"
>>> with LabelWriter(path) as w:
...     w.write(Label("SENSOR-01", "spike", 10.0, 10.0))
>>> read_labels(path)
[Label(sensor_id='SENSOR-01', kind='spike', start=10.0, end=10.0, asset=None, sensors=())]
>>> path.read_bytes()
b'{"sensor_id":"SENSOR-01","kind":"spike","start":10.0,"end":10.0}\\n'
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import msgspec

from .._lifecycle import Closing
from ..errors import ConfigError


class Label(msgspec.Struct, frozen=True, omit_defaults=True):
    """One injected fault: ``kind`` on ``sensor_id`` from ``start`` to ``end`` (epoch s).

    An asset's fault also names the ``asset`` (``sensor_id`` then holds the asset id too, so
    a reader that knows only sensors still reads the line) and the ``sensors`` it moves.
    """

    sensor_id: str
    kind: str
    start: float
    end: float
    asset: str | None = None
    sensors: tuple[str, ...] = ()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Label)


class LabelWriter(Closing):
    """Appends labels to a JSON Lines file; each line is flushed as it is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh: IO[bytes] | None = path.open("ab")
        except OSError as exc:
            raise ConfigError(f"labels file {path}: {exc.strerror or exc}") from exc

    def write(self, label: Label) -> None:
        if self._fh is None:
            raise ValueError("labels file is closed")
        self._fh.write(_encoder.encode(label) + b"\n")
        self._fh.flush()
        self.written += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_labels(path: Path) -> list[Label]:
    """All labels in a file, in the order written (blank lines ignored)."""
    with path.open("rb") as fh:
        return [_decoder.decode(line) for line in fh if line.strip()]
