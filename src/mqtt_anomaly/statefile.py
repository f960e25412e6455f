"""The saved-state file: a versioned, checksummed, **data-only** container.

The service saves :meth:`Pipeline.state_dict() <mqtt_anomaly.pipeline.Pipeline.state_dict>`
in ``<state_dir>/detector-state.mqas`` with :func:`dump` and reads it back with :func:`load`.
Loading never constructs an object of a class named by the file: it reads a JSON tree and
raw numpy buffers of whitelisted numeric dtypes, nothing else. A file anyone could write
therefore can, at worst, hold wrong numbers, never run code.

What can be saved (:func:`encode`): nested ``dict`` with ``str`` keys whose leaves are
``None``, ``bool``, ``int``, ``float`` (NaN and infinities included), ``str``, ``bytes``, numpy
arrays of a numeric or boolean dtype, numpy scalars of those, and lists of any of these. Lists
of ints, floats or bools are stored as one array; lists of non-negative ints wider than 64 bits
(the dedup windows: 1,024-bit ints) as one ``uint8`` array of ``(n, width)`` little-endian rows;
lists of str inline in the JSON; lists of bytes as one ``uint8`` array and an ``int64`` array of
offsets. Anything else (tuples, sets, objects, object arrays, non-``str`` keys) is refused with
:class:`StateFileError`. A list comes back as a list, an array as an array (writable, sharing
the file's buffer), bytes as bytes.

Layout (format version 1; all integers little-endian)::

    offset 0   8 bytes   magic  b"MQASTATE"
           8   4 bytes   uint32 format version (1)
          12   8 bytes   uint64 length H of the manifest
          20   H bytes   manifest: UTF-8 JSON, padded with spaces so the data starts at a
                         multiple of 64
               ...       array data, each array C-ordered, starting at a multiple of 64
                         (zero padding between arrays)
    end - 32  32 bytes   SHA-256 of every byte before it

The manifest is ``{"format": "mqtt-anomaly-state", "version": 1, "package": "<version of
mqtt-anomaly that wrote it>", "created": "<UTC, ISO 8601>", "arrays": [[dtype, shape,
offset, nbytes], ...], "tree": NODE}``; offsets count from the start of the data. A NODE is a
JSON scalar (``null``, ``true``/``false``, an int that fits 64 bits, a finite float, a string)
or an object with one tag: ``{"$d": {key: NODE}}`` a dict, ``{"$l": [NODE, ...]}`` a list,
``{"$s": [str, ...]}`` a list of str, ``{"$a": i}`` array ``i``, ``{"$al": i}`` array ``i`` as a
list, ``{"$big": i}`` rows of array ``i`` as a list of ints, ``{"$b": i}`` bytes, ``{"$bl": [i,
j]}`` a list of bytes (data ``i``, offsets ``j``), ``{"$f": "nan" | "inf" | "-inf"}``, ``{"$i":
"<decimal>"}`` an int wider than 64 bits.

:func:`load` refuses, with one :class:`StateFileError` whose message is one line: a file that
does not start with the magic (a pickle, say), a checksum that does not match (a flipped byte,
a truncated file), another format version, a manifest that is not the JSON above, a dtype not
in the whitelist, arrays whose shape, size or offset do not fit the data, and any tag it does
not know.

Also here: :func:`write_atomic` and :func:`fsync_dir` (the atomic file write of state files,
model manifests and the model registry index), :func:`prepare_dir` (the state directory 0700,
checked writable), the state key (:func:`load_or_create_key`, 32 random bytes, 0600) and
HMAC-SHA256 signing of opaque blobs (:func:`sign`, :func:`verify`), and :func:`move_aside` for a
file that cannot be loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import os
import secrets
import stat
import struct
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from numpy.typing import NDArray

from . import __version__
from .errors import StateFileError

__all__ = [
    "FORMAT",
    "KEY_FILE",
    "VERSION",
    "StateFileError",
    "decode",
    "dump",
    "encode",
    "fsync_dir",
    "load",
    "load_or_create_key",
    "move_aside",
    "prepare_dir",
    "sign",
    "verify",
    "write_atomic",
]

log = logging.getLogger(__name__)

FORMAT = "mqtt-anomaly-state"
VERSION = 1
MAGIC = b"MQASTATE"
KEY_FILE = "state.key"
KEY_BYTES = 32
_PREFIX = struct.Struct("<8sIQ")
_DIGEST = 32
_ALIGN = 64
_MAX_DIMS = 8
_MAX_DEPTH = 64
_INT64 = (-(1 << 63), (1 << 63) - 1)
# the only dtypes a file may hold: numbers and booleans, little-endian (native here)
_DTYPES = {
    np.dtype(t).str: np.dtype(t)
    for t in (
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
    )
}
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# ---- encoding ------------------------------------------------------------------------
class _Encoder:
    def __init__(self) -> None:
        self.arrays: list[NDArray[Any]] = []

    def add(self, a: NDArray[Any]) -> int:
        if a.dtype.str not in _DTYPES:
            if a.dtype.kind in "biuf" and a.dtype.newbyteorder("<").str in _DTYPES:
                a = a.astype(a.dtype.newbyteorder("<"))
            else:
                raise StateFileError(f"arrays of dtype {a.dtype} cannot be saved")
        if a.ndim > _MAX_DIMS:
            raise StateFileError(f"arrays of {a.ndim} dimensions cannot be saved")
        self.arrays.append(np.ascontiguousarray(a))
        return len(self.arrays) - 1

    def node(self, x: Any, where: str, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise StateFileError(f"{where}: nested too deeply")
        t = type(x)
        if t is str or t is bool or x is None:
            return x
        if t is int:
            return x if _INT64[0] <= x <= _INT64[1] else {"$i": str(x)}
        if t is float:
            return x if math.isfinite(x) else {"$f": repr(x)}
        if t is dict:
            out = {}
            for k, v in x.items():
                if type(k) is not str:
                    raise StateFileError(f"{where}: key {k!r} is not a str")
                out[k] = self.node(v, f"{where}.{k}", depth + 1)
            return {"$d": out}
        if t is list:
            return self._list(x, where, depth)
        if isinstance(x, np.ndarray):
            return {"$a": self.add(x)}
        if t is bytes:
            return {"$b": self.add(np.frombuffer(x, dtype=np.uint8))}
        if isinstance(x, np.bool_):
            return bool(x)
        if isinstance(x, np.integer):
            return self.node(int(x), where, depth)
        if isinstance(x, np.floating | float):
            return self.node(float(x), where, depth)
        raise StateFileError(f"{where}: a {t.__name__} cannot be saved (data only)")

    def _list(self, x: list[Any], where: str, depth: int) -> Any:
        kinds = set(map(type, x))
        if not x or len(kinds) != 1:
            return {"$l": [self.node(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(x)]}
        (kind,) = kinds
        if kind is str:
            return {"$s": x}
        if kind is float:
            return {"$al": self.add(np.array(x, dtype=np.float64))}
        if kind is bool:
            return {"$al": self.add(np.array(x, dtype=np.bool_))}
        if kind is int:
            try:
                return {"$al": self.add(np.array(x, dtype=np.int64))}
            except OverflowError:
                return self._bigints(x, where)
        if kind is bytes:
            ends = np.cumsum(np.fromiter(map(len, x), dtype=np.int64, count=len(x)))
            data = np.frombuffer(b"".join(x), dtype=np.uint8)
            return {"$bl": [self.add(data), self.add(ends)]}
        return {"$l": [self.node(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(x)]}

    def _bigints(self, x: list[int], where: str) -> Any:
        if min(x) < 0:
            raise StateFileError(f"{where}: negative ints wider than 64 bits cannot be saved")
        width = max(1, (max(x).bit_length() + 7) // 8)
        packed = b"".join([v.to_bytes(width, "little") for v in x])  # 2x map(int.to_bytes)
        rows = np.frombuffer(packed, dtype=np.uint8).reshape(len(x), width)
        return {"$big": self.add(rows)}


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def encode(tree: Mapping[str, Any]) -> list[bytes | memoryview]:
    """The file's bytes for ``tree``, in pieces (the last one the SHA-256 of the others).

    Raises :class:`StateFileError` for anything that is not data (see the module docstring).
    """
    if type(tree) is not dict:
        raise StateFileError("the saved state must be a dict")
    enc = _Encoder()
    root = enc.node(tree, "state")
    table: list[tuple[str, list[int], int, int]] = []
    offset = 0
    for a in enc.arrays:
        offset = _aligned(offset)
        table.append((a.dtype.str, list(a.shape), offset, a.nbytes))
        offset += a.nbytes
    manifest = msgspec.json.encode(
        {
            "format": FORMAT,
            "version": VERSION,
            "package": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "arrays": table,
            "tree": root,
        }
    )
    size = _aligned(_PREFIX.size + len(manifest)) - _PREFIX.size
    manifest += b" " * (size - len(manifest))
    pieces: list[bytes | memoryview] = [_PREFIX.pack(MAGIC, VERSION, size), manifest]
    at = 0
    for a, (_, _, off, nbytes) in zip(enc.arrays, table, strict=True):
        if off > at:
            pieces.append(bytes(off - at))
        if nbytes:
            pieces.append(a.reshape(-1).view(np.uint8).data)
        at = off + nbytes
    digest = hashlib.sha256()
    for p in pieces:
        digest.update(p)
    pieces.append(digest.digest())
    return pieces


# ---- decoding ------------------------------------------------------------------------
def _fail(message: str) -> StateFileError:
    return StateFileError(" ".join(message.split()))


class _Decoder:
    def __init__(self, arrays: list[NDArray[Any]]) -> None:
        self.arrays = arrays

    def array(self, i: Any) -> NDArray[Any]:
        if type(i) is not int or not 0 <= i < len(self.arrays):
            raise _fail(f"array reference {i!r} out of range")
        return self.arrays[i]

    def node(self, x: Any, depth: int = 0) -> Any:
        t = type(x)
        if x is None or t is str or t is bool or t is int or t is float:
            return x
        if depth > _MAX_DEPTH:
            raise _fail("tree nested too deeply")
        if t is not dict or len(x) != 1:
            raise _fail(f"unexpected {t.__name__} in the tree")
        ((tag, v),) = x.items()
        if tag == "$d":
            if type(v) is not dict:
                raise _fail("a dict node is not an object")
            return {k: self.node(n, depth + 1) for k, n in v.items()}
        if tag == "$l":
            if type(v) is not list:
                raise _fail("a list node is not an array")
            return [self.node(n, depth + 1) for n in v]
        if tag == "$s":
            if type(v) is not list or (v and set(map(type, v)) != {str}):
                raise _fail("a str list holds something else")
            return v
        if tag == "$a":
            return self.array(v)
        if tag == "$al":
            a = self.array(v)
            if a.ndim != 1:
                raise _fail("a list array is not one-dimensional")
            return a.tolist()
        if tag == "$big":
            rows = self.array(v)
            if rows.dtype != np.uint8 or rows.ndim != 2:
                raise _fail("big ints are not uint8 rows")
            width = rows.shape[1]
            raw = rows.tobytes()
            return [int.from_bytes(raw[i : i + width], "little") for i in range(0, len(raw), width)]
        if tag == "$b":
            data = self.array(v)
            if data.dtype != np.uint8 or data.ndim != 1:
                raise _fail("bytes are not a uint8 array")
            return data.tobytes()
        if tag == "$bl":
            if type(v) is not list or len(v) != 2:
                raise _fail("a bytes list node is not [data, offsets]")
            data, ends = self.array(v[0]), self.array(v[1])
            if data.dtype != np.uint8 or ends.dtype != np.int64 or data.ndim != 1 or ends.ndim != 1:
                raise _fail("a bytes list is not uint8 data and int64 offsets")
            bounds = [0, *ends.tolist()]
            if any(b > e for b, e in pairwise(bounds)) or bounds[-1] != len(data):
                raise _fail("the offsets of a bytes list do not fit its data")
            raw = data.tobytes()
            return [raw[b:e] for b, e in pairwise(bounds)]
        if tag == "$f":
            if v not in _NONFINITE:
                raise _fail(f"unknown float {v!r}")
            return _NONFINITE[v]
        if tag == "$i":
            if type(v) is not str or not v.lstrip("-").isdigit() or len(v) > 4000:
                raise _fail("a big int is not a decimal string")
            return int(v)
        raise _fail(f"unknown tag {tag!r} in the tree")


def decode(data: bytes | bytearray) -> dict[str, Any]:
    """The tree stored in ``data`` (a whole file); :class:`StateFileError` if it is not one.

    Arrays are views of ``data``: pass a ``bytearray`` for writable arrays.
    """
    view = memoryview(data)
    if len(view) < _PREFIX.size + _DIGEST or bytes(view[:8]) != MAGIC:
        raise _fail("not a mqtt-anomaly state file (no MQASTATE header)")
    body = view[:-_DIGEST]
    if not hmac.compare_digest(hashlib.sha256(body).digest(), bytes(view[-_DIGEST:])):
        raise _fail("checksum mismatch: the file is truncated or damaged")
    _, version, size = _PREFIX.unpack_from(view)
    if version != VERSION:
        raise _fail(f"state format version {version} is not supported (this reads {VERSION})")
    start = _PREFIX.size + size
    if start > len(body):
        raise _fail("manifest longer than the file")
    try:
        manifest = msgspec.json.decode(body[_PREFIX.size : start])
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _fail(f"manifest is not JSON: {exc}") from exc
    if type(manifest) is not dict or manifest.get("format") != FORMAT:
        raise _fail("manifest does not name the mqtt-anomaly-state format")
    if manifest.get("version") != VERSION:
        raise _fail(f"manifest version {manifest.get('version')!r} is not {VERSION}")
    arrays = _arrays(manifest.get("arrays"), data, start, len(body))
    try:
        tree = _Decoder(arrays).node(manifest.get("tree"))
    except RecursionError as exc:
        raise _fail("tree nested too deeply") from exc
    if type(tree) is not dict:
        raise _fail("the saved state is not a dict")
    return tree


def _arrays(table: Any, data: bytes | bytearray, start: int, end: int) -> list[NDArray[Any]]:
    if type(table) is not list:
        raise _fail("manifest has no array table")
    out = []
    at = 0
    for entry in table:
        if type(entry) is not list or len(entry) != 4:
            raise _fail("an array entry is not [dtype, shape, offset, nbytes]")
        dtype_s, shape, offset, nbytes = entry
        dtype = _DTYPES.get(dtype_s) if type(dtype_s) is str else None
        if dtype is None:
            raise _fail(f"array dtype {dtype_s!r} is not allowed")
        if (
            type(shape) is not list
            or len(shape) > _MAX_DIMS
            or any(type(d) is not int or d < 0 for d in shape)
        ):
            raise _fail(f"array shape {shape!r} is not a list of sizes")
        count = math.prod(shape)
        if type(offset) is not int or offset != _aligned(at) or nbytes != count * dtype.itemsize:
            raise _fail("an array's offset or size does not fit the table")
        if start + offset + nbytes > end:
            raise _fail("an array runs past the end of the file")
        a = np.frombuffer(data, dtype=dtype, count=count, offset=start + offset)
        out.append(a.reshape(shape))
        at = offset + nbytes
    if start + at != end:
        raise _fail("the data does not end with the last array")
    return out


# ---- files ---------------------------------------------------------------------------
def dump(path: Path, tree: Mapping[str, Any], *, sync: bool = True) -> None:
    """Write ``tree`` to ``path`` (mode 0600) via a temporary file and an atomic rename;
    ``sync``: to the disk (file and directory) before returning.

    Raises :class:`StateFileError` for a tree that is not data, OSError for I/O.
    """
    write_atomic(path, encode(tree), mode=0o600, sync=sync)


def write_atomic(
    path: Path,
    pieces: Iterable[bytes | memoryview],
    *,
    mode: int = 0o600,
    sync: bool = True,
    tmp: Path | None = None,
) -> None:
    """Write ``pieces`` to ``path`` (``mode``) via the temporary file ``tmp`` (default
    ``<name>.tmp`` beside it) and an atomic rename; ``sync``: file and directory fsynced
    before returning. A crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp") if tmp is None else tmp
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # an older temporary file keeps its mode otherwise
        with os.fdopen(fd, "wb", closefd=False) as fh:
            fh.writelines(pieces)
            fh.flush()
            if sync:
                os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync:
        fsync_dir(path.parent)


def load(path: Path) -> dict[str, Any]:
    """Read the tree :func:`dump` wrote. FileNotFoundError when there is no file; any other
    problem (unreadable, not a state file, damaged, malformed) is :class:`StateFileError`."""
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = bytearray(size)
            got = fh.readinto(data)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _fail(f"cannot read: {exc.strerror or exc}") from exc
    if got != size:
        raise _fail("the file changed while it was read")
    return decode(data)


def fsync_dir(path: Path) -> None:
    """fsync the directory ``path`` (where the file system allows it): a rename in it is on
    the disk."""
    with contextlib.suppress(OSError):  # not every file system lets a directory be synced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def prepare_dir(path: Path) -> None:
    """Create the state directory (0700) or tighten one we own that others can access, and
    check that files can be written in it. :class:`StateFileError` (one line) if not."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except OSError as exc:
        raise _fail(f"state dir {path}: cannot create it: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise _fail(f"state dir {path} is not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        if st.st_uid == os.geteuid():
            try:
                path.chmod(0o700)
                log.warning("state dir %s was mode %04o: tightened to 0700", path, mode)
            except OSError as exc:
                log.warning(
                    "state dir %s is mode %04o and cannot be tightened: %s", path, mode, exc
                )
        else:
            log.warning("state dir %s is mode %04o and owned by uid %d", path, mode, st.st_uid)
    probe = path / f".write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise _fail(f"state dir {path} is not writable: {exc.strerror or exc}") from exc


def utc_stamp() -> str:
    """The time now in UTC as ``20261204T183012Z``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def move_aside(path: Path, label: str) -> Path:
    """Rename ``path`` to ``<name>.<label>-<UTC time>`` (never over an existing file)."""
    base = path.with_name(f"{path.name}.{label}-{utc_stamp()}")
    target = base
    n = 1
    while target.exists():
        target = base.with_name(f"{base.name}-{n}")
        n += 1
    path.rename(target)
    return target


def load_or_create_key(state_dir: Path) -> bytes:
    """The service's state key (``state_dir/state.key``, 32 random bytes, mode 0600),
    created at the first start; a key file of another size is moved aside and replaced."""
    path = state_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _new_key(path)
    except OSError as exc:
        raise _fail(f"state key {path}: cannot read it: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        key = os.read(fd, KEY_BYTES + 1)
        if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
            os.fchmod(fd, 0o600)
            log.warning("state key %s was readable by others: mode set to 0600", path)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        aside = move_aside(path, "invalid")
        log.warning("state key %s is not %d bytes: moved to %s, new key", path, KEY_BYTES, aside)
        return _new_key(path)
    return key


def _new_key(path: Path) -> bytes:
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _fail(f"state key {path}: cannot create it: {exc.strerror or exc}") from exc
    return key


# ---- signed blobs --------------------------------------------------------------------
def sign(key: bytes, blob: bytes) -> bytes:
    """``blob`` prefixed with its HMAC-SHA256 under ``key``."""
    return hmac.digest(key, blob, "sha256") + blob


def verify(key: bytes, signed: bytes) -> bytes:
    """The blob :func:`sign` wrapped, after checking its HMAC; :class:`StateFileError` if the
    signature does not match (another key, or altered)."""
    if type(signed) is not bytes or len(signed) < _DIGEST:
        raise _fail("signed blob too short")
    blob = signed[_DIGEST:]
    if not hmac.compare_digest(hmac.digest(key, blob, "sha256"), signed[:_DIGEST]):
        raise _fail("signature does not match the state key")
    return blob


def verify_all(key: bytes, signed: Iterable[bytes]) -> list[bytes]:
    """:func:`verify` every blob (all or none)."""
    return [verify(key, s) for s in signed]
