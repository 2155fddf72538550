"""The daemon's log file: capped at start, read back as masked lines."""
from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

MAX_BYTES = 10 * 1024 * 1024  # rotated to .1 at the next start beyond this


def rotate(path: Path, max_bytes: int = MAX_BYTES) -> None:
    """Keep the log bounded: past ``max_bytes`` it becomes ``<name>.1``."""
    try:
        if path.stat().st_size > max_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def read_since(path: Path, offset: int) -> str:
    """The text appended to ``path`` after byte ``offset``."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def tail(path: Path, lines: int, offset: int = 0, end: int | None = None) -> list[str]:
    """The last ``lines`` lines between byte ``offset`` and ``end``, without line ends."""
    if lines <= 0:
        return []
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read() if end is None else fh.read(max(0, end - offset))
    except FileNotFoundError:
        return []
    return [
        raw.decode("utf-8", errors="replace").rstrip("\r")
        for raw in deque(data.splitlines(), maxlen=lines)
    ]


def follow(
    path: Path, stop: Callable[[], bool], offset: int | None = None, poll: float = 0.25
) -> Iterator[str]:
    """Lines appended to ``path`` after byte ``offset`` (default: its end), until ``stop()``."""
    offset = size(path) if offset is None else offset
    pending = b""
    while not stop():
        current = size(path)
        if current < offset:  # rotated or truncated: start over
            offset = 0
        if current > offset:
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            offset += len(chunk)
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                yield raw.decode("utf-8", errors="replace").rstrip("\r")
        else:
            time.sleep(poll)
