"""What the benchmark reads from the kernel: CPU time, resident memory, TCP byte counters.

Linux only (``/proc`` and ``TCP_INFO``), no third-party dependency.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
# struct tcp_info (linux/tcp.h): u64 tcpi_bytes_acked at 120, tcpi_bytes_received at 128,
# u32 tcpi_segs_out at 136, tcpi_segs_in at 140 (kernel >= 4.2)
_TCP_INFO_LEN = 144


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process, all its threads (``/proc/PID/stat``)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process in bytes (``/proc/PID/statm``)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


class _HasSockopt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class TcpCounters:
    """TCP payload bytes sent (and acknowledged) and received on one socket; segments."""

    sent: int = 0
    received: int = 0
    segs_out: int = 0
    segs_in: int = 0

    def __add__(self, other: TcpCounters) -> TcpCounters:
        return TcpCounters(
            self.sent + other.sent,
            self.received + other.received,
            self.segs_out + other.segs_out,
            self.segs_in + other.segs_in,
        )

    def __sub__(self, other: TcpCounters) -> TcpCounters:
        return TcpCounters(
            self.sent - other.sent,
            self.received - other.received,
            self.segs_out - other.segs_out,
            self.segs_in - other.segs_in,
        )

    @property
    def payload(self) -> int:
        """TCP payload bytes, both directions."""
        return self.sent + self.received

    @property
    def segments(self) -> int:
        return self.segs_out + self.segs_in


def tcp_counters(sock: _HasSockopt) -> TcpCounters:
    """The kernel's byte and segment counters of a connected TCP socket."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    if len(info) < _TCP_INFO_LEN:
        return TcpCounters()
    acked, received = struct.unpack_from("=QQ", info, 120)
    segs_out, segs_in = struct.unpack_from("=II", info, 136)
    return TcpCounters(acked, received, segs_out, segs_in)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mosquitto_version(binary: str | None = None) -> str | None:
    """``2.0.11`` from ``mosquitto -h``, or None when it is not installed."""
    path = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(path).exists():
        return None
    try:
        proc = subprocess.run([path, "-h"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"mosquitto version (\S+)", proc.stdout + proc.stderr)
    return m.group(1) if m else None


def machine() -> dict[str, object]:
    """The machine a run was made on, for the report."""
    return {
        "nproc": os.cpu_count() or 0,
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mosquitto": mosquitto_version(),
    }
