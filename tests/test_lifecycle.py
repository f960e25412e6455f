"""Closing and AsyncClosing: the package's context managers."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqtt_anomaly._lifecycle import AsyncClosing, Closing
from mqtt_anomaly.simulate.labels import LabelWriter


class Door(Closing):
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class Machine(AsyncClosing):
    def __init__(self) -> None:
        self.events: list[str] = []

    async def start(self) -> None:
        self.events.append("start")

    async def _exit(self, clean: bool) -> None:
        self.events.append(f"stop clean={clean}")


def test_closing_returns_itself_and_closes_even_on_error() -> None:
    door = Door()
    with door as d:
        assert d is door and door.closed == 0
    assert door.closed == 1
    with pytest.raises(RuntimeError), door:
        raise RuntimeError("inside")
    assert door.closed == 2


async def test_async_closing_starts_then_says_whether_the_block_was_clean() -> None:
    m = Machine()
    async with m as got:
        assert got is m
    with pytest.raises(RuntimeError):
        async with m:
            raise RuntimeError("inside")
    assert m.events == ["start", "stop clean=True", "start", "stop clean=False"]


def test_a_real_closing_class_closes_its_file(tmp_path: Path) -> None:
    with LabelWriter(tmp_path / "labels.jsonl") as w:
        assert w._fh is not None
    assert w._fh is None
