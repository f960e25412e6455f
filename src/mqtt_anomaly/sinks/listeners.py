"""In-process listeners as a sink: plain callables given every batch's output, last (the
dashboard's state, metrics, the evaluator, tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import BaseSink

if TYPE_CHECKING:
    from ..pipeline import Output

Listener = Callable[["Output"], None]


class ListenerSink(BaseSink):
    """Calls every listener in :attr:`listeners` (a list its owner may append to) in order."""

    name = "listeners"

    def __init__(self, listeners: list[Listener] | None = None) -> None:
        self.listeners: list[Listener] = listeners if listeners is not None else []

    def write(self, out: Output) -> None:
        for listener in self.listeners:
            listener(out)
