"""Context managers for what the package opens and closes: :class:`Closing`, :class:`AsyncClosing`.

A class that has a ``close()`` (a store, a file writer, a producer) inherits :class:`Closing`
for ``with obj:``; one that starts and stops on the event loop (the service, a broker, a fleet,
a sink) inherits :class:`AsyncClosing` for ``async with obj:`` and says in :meth:`_exit` how it
stops.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """``with obj:`` returns ``obj`` and calls ``obj.close()`` on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClosing:
    """``async with obj:`` awaits ``obj.start()``, returns ``obj`` and awaits
    ``obj._exit(clean)`` on the way out (``clean``: no exception left the block)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def _exit(self, clean: bool) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._exit(exc_type is None)
