"""The daemon's log file: written by a small pump that keeps it bounded, read back as lines.

litestream writes its log to a pipe; ``pump`` (``python -m backup.logfile``,
started beside the daemon) appends each line to the log and, past
``MAX_BYTES``, moves it to ``<name>.1`` and goes on in a new file — while the
daemon runs, without losing a line. It exits when litestream closes the pipe.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from . import ltlog
from .files import open_private

MAX_BYTES = 10 * 1024 * 1024  # past this the log becomes <name>.1: at most twice this on disk
# The strings the pump masks, as a JSON list in its environment (never in its argv,
# which any user can read): litestream logs the heartbeat URL when a ping fails.
MASK_VARIABLE = "CHORA_BACKUP_LOG_MASK"
# A follower's copy, whose change counter the pump moves after each change litestream
# applies to it (see backup.sqlitefile): readers holding it open then see the change.
TOUCH_VARIABLE = "CHORA_BACKUP_LOG_TOUCH"
# The restored file the pump puts in place as that copy once litestream follows.
RESTORED_VARIABLE = "CHORA_BACKUP_LOG_RESTORED"
# What the pump itself logs when it cannot put a follower's copy in place.
PLACE_FAILED = "chora-backup: error: the restored copy could not be put in place"


def masker(secrets: list[str]) -> Callable[[bytes], bytes]:
    """A function that replaces every secret in a log line by ``****``."""
    needles = [s.encode("utf-8") for s in sorted(set(secrets), key=len, reverse=True) if s]

    def mask(line: bytes) -> bytes:
        for needle in needles:
            line = line.replace(needle, b"****")
        return line

    return mask


def rotate(path: Path, max_bytes: int = MAX_BYTES) -> None:
    """Keep the log bounded: past ``max_bytes`` it becomes ``<name>.1``."""
    try:
        if path.stat().st_size > max_bytes:
            os.replace(path, rotated(path))
    except FileNotFoundError:
        pass


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def _read(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def read_since(path: Path, offset: int) -> str:
    """The text appended to ``path`` after byte ``offset``; across one rotation too (the
    log now smaller than ``offset``: the rest of ``<name>.1``, then the new log)."""
    try:
        if size(path) < offset:
            return _read(rotated(path), offset) + _read(path, 0)
        return _read(path, offset)
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


def pump(
    source: BinaryIO, path: Path, max_bytes: int = MAX_BYTES, mask: Callable[[bytes], bytes] | None = None,
    on_line: Callable[[bytes], bytes | None] | None = None,
) -> None:
    """Append each line read from ``source`` to ``path``, masked, rotating past ``max_bytes``.

    It never stops reading before litestream stops writing: a pump that ended
    would kill litestream at its next line (a closed pipe), without its final
    sync. A line that cannot be written (a full disk, a log made unwritable) is
    dropped, and the next one tries again.
    """
    out: BinaryIO | None = None
    for line in iter(source.readline, b""):
        before = None  # a line of the pump's own, logged before litestream's
        if on_line is not None:
            with contextlib.suppress(Exception):  # never stop reading: see above
                before = on_line(line)
        try:
            out = out or open_private(path)
            out.write((before or b"") + (mask(line) if mask else line))
            out.flush()
            if out.tell() > max_bytes:  # appending: the position is the file's size
                out.close()
                out = None
                rotate(path, max_bytes)
        except OSError:
            if out is not None:
                with contextlib.suppress(OSError):
                    out.close()
            out = None
    if out is not None:
        out.close()


def start_pump(
    path: Path, source: int, environ: Mapping[str, str], secrets: tuple[str, ...] = (),
    touch: Path | None = None, restored: Path | None = None,
) -> subprocess.Popen:
    """``python -m backup.logfile``, reading the pipe ``source``, detached like the daemon."""
    import json

    from .litestream import start_process

    environ = {**environ, MASK_VARIABLE: json.dumps(list(secrets))}
    if touch is not None:
        environ[TOUCH_VARIABLE] = str(touch)
        environ[RESTORED_VARIABLE] = str(restored or touch)
    return start_process(
        # -I: the daemon's folder on sys.path must not decide which backup.logfile runs.
        [sys.executable, "-I", "-m", "backup.logfile", str(path), str(MAX_BYTES)],
        True,
        stdin=source,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(environ),
    )


def keeper(copy: Path, restored: Path) -> Callable[[bytes], bytes | None]:
    """A follower's side of the pump: once litestream follows (its first restore done), put
    ``restored`` in place as ``copy`` (``sqlitefile.place``); then move the copy's change
    counter after each change litestream reports applied. The follow command may be gone by
    then (``--background`` with a ``--timeout``): the pump lives as long as the follower."""
    from .sqlitefile import Locked, place, touch

    following = placed = said = False

    def on_line(line: bytes) -> bytes | None:
        nonlocal following, placed, said
        event = ltlog.parse(line.decode("utf-8", "replace"))
        following = following or event.says(*ltlog.FOLLOWING)
        if following and not placed:  # tried again at each line until done, said once
            try:
                place(restored, copy)
                placed = True
            except (OSError, Locked) as exc:  # a file it cannot move, a reader's long lock
                # Said in the log, where follow and status look; tried again at the next line.
                if not said:
                    said = True
                    return f"{PLACE_FAILED}: {type(exc).__name__}: {exc}\n".encode("utf-8", "replace")
        elif placed and event.says(ltlog.APPLIED):
            touch(copy)
        return None

    return on_line


if __name__ == "__main__":
    import json

    touched = os.environ.pop(TOUCH_VARIABLE, "")
    restored = os.environ.pop(RESTORED_VARIABLE, "") or touched
    pump(sys.stdin.buffer, Path(sys.argv[1]), int(sys.argv[2]),
         masker(json.loads(os.environ.pop(MASK_VARIABLE, "[]"))),
         keeper(Path(touched), Path(restored)) if touched else None)
