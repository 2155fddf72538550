"""Signals and the terminal: a stop asked for by Ctrl-C, a kill or a closed terminal,
and output to a terminal that may go away."""
from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

from .files import to_null
from .process import Posix, Windows

if TYPE_CHECKING:
    from .config import Settings


STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK") if hasattr(signal, name)
)


class Stopper:
    """Turns the first stop signal (Ctrl-C, a kill, a closed terminal) into litestream's clean stop.

    Installed before litestream starts, so a signal that arrives early is not
    lost: the child is stopped as soon as it exists. Whatever the signal,
    litestream gets the one it handles (SIGTERM; Ctrl-Break on Windows), and
    only once: a second one would abort its final sync.
    """

    def __init__(self, platform: Posix | Windows):
        self._platform = platform
        self._proc: subprocess.Popen | None = None
        self.requested = False
        self.forwarded = False

    def __call__(self, signum: int, _frame: object) -> None:
        self.requested = True
        if signum == getattr(signal, "SIGBREAK", None):
            # Ctrl-Break in a Windows console reaches every process group on it, litestream's
            # too (a new group blocks only Ctrl-C): a second one would skip its final sync.
            self.forwarded = True
        self._forward()

    def attach(self, proc: subprocess.Popen) -> None:
        self._proc = proc
        if self.requested:
            self._forward()

    def _forward(self) -> None:
        if self._proc is None or self.forwarded:
            return
        self.forwarded = True
        with contextlib.suppress(OSError):
            self._platform.interrupt(self._proc)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Stopper]:
        with handling(self):
            yield self


@contextlib.contextmanager
def handling(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for every stop signal (Ctrl-C, a kill, a closed terminal), installed
    whatever this process inherited — a shell's background job starts with SIGINT ignored,
    and Python then raises no KeyboardInterrupt — and the previous handlers put back after."""
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """The stop signals that arrive meanwhile, noted in the list yielded instead of raised."""
    asked: list[int] = []
    with handling(lambda signum, _frame: asked.append(signum)):
        yield asked


class Output:
    """The terminal, until it goes away: then litestream's output is drained to nowhere.

    A closed terminal makes every write fail; litestream must still be read
    (a full pipe would block its final sync), and the interpreter's last flush
    must not fail either, so the dead stream is pointed at the null device.
    """

    def __init__(self, out: IO[str], settings: Settings):
        self._out: IO[str] | None = out
        self.settings = settings  # what it masks

    def write(self, text: str) -> None:
        if self._out is None:
            return
        try:
            self._out.write(self.settings.mask(text))
            self._out.flush()
        except (OSError, ValueError):
            self._detach()

    def _detach(self) -> None:
        out, self._out = self._out, None
        with contextlib.suppress(OSError, ValueError, AttributeError):
            to_null(out)


