"""Writing a follower's copy the way SQLite's readers expect: under their lock, with the
change counter moved, so a reader that holds the copy open sees every change applied.

litestream applies a change by writing pages into the copy under SQLite's exclusive lock
bytes, and moves the header's change counter only when page 1 is among them — which a
small change to a WAL-mode database rarely touches. A reader's connection keeps its page
cache while that counter stands still, and so goes on reading the old state. ``touch``
moves it after each apply (the log pump calls it on litestream's "applied updates" line).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# SQLite's lock bytes (os_unix.c, os_win.c), which litestream takes exclusively to apply.
PENDING_BYTE = 0x40000000
SHARED_FIRST, SHARED_SIZE = PENDING_BYTE + 2, 510
POLL = 0.05
HEADER = b"SQLite format 3\x00"  # every SQLite database file's first 16 bytes


class Locked(Exception):
    """The copy stayed locked (a reader's long transaction) past the timeout."""


@contextlib.contextmanager
def exclusive(fh: IO[bytes], timeout: float) -> Iterator[None]:
    """SQLite's PENDING byte and SHARED range, exclusively: no reader reads meanwhile."""
    deadline = time.monotonic() + timeout
    if os.name == "nt":
        import msvcrt

        def lock(start: int, size: int) -> None:
            fh.seek(start)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, size)

        def unlock(start: int, size: int) -> None:
            fh.seek(start)
            msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, size)
    else:
        import fcntl

        def lock(start: int, size: int) -> None:
            fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB, size, start)

        def unlock(start: int, size: int) -> None:
            fcntl.lockf(fh.fileno(), fcntl.LOCK_UN, size, start)

    held: list[tuple[int, int]] = []
    try:
        for start, size in ((PENDING_BYTE, 1), (SHARED_FIRST, SHARED_SIZE)):
            while True:
                try:
                    lock(start, size)
                    held.append((start, size))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise Locked(str(fh.name)) from None
                    time.sleep(POLL)
        fh.seek(0)
        yield
    finally:
        for start, size in reversed(held):
            with contextlib.suppress(OSError):
                unlock(start, size)


def touch(path: Path, rollback: bool = False, timeout: float = 30.0) -> bool:
    """Move the copy's change counter (and with ``rollback``, mark it a rollback-journal
    database, as litestream does at its first change); False when there is no copy."""
    try:
        fh = open(path, "r+b")  # noqa: SIM115 -- held across the lock below
    except OSError:
        return False
    with fh, exclusive(fh, timeout):
        header = bytearray(fh.read(28))
        if len(header) < 28 or not header.startswith(HEADER):
            return False
        if rollback:
            header[18:20] = b"\x01\x01"
        header[24:28] = secrets.token_bytes(4)
        fh.seek(0)
        fh.write(bytes(header))
        fh.flush()
        os.fsync(fh.fileno())
    return True


def is_sqlite(path: Path) -> bool:
    """Is ``path`` an SQLite database (or empty, which SQLite takes for a new one)?"""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(HEADER))
    except OSError:
        return True  # not readable here: litestream's own error says why
    return head in (b"", HEADER)


TXID_SUFFIX = "-txid"  # litestream keeps a followed file's position in <file>-txid


def place(restored: Path, copy: Path) -> None:
    """Make a just-restored file the copy readers open: a rollback-journal database (it keeps
    the primary's WAL-mode header until litestream's first change, and a reader opening it in
    WAL mode would read that first state forever), then, restored beside the copy, renamed
    over it in one step, so a reader sees the old copy or the new one, never a missing or
    partial file. litestream goes on writing through the file it holds open (POSIX)."""
    with open(restored, "rb") as fh:
        wal = fh.read(20)[18:20] != b"\x01\x01"
    if wal:  # a resumed copy is one already: no wait on its readers' locks
        touch(restored, rollback=True)
    if restored != copy:
        # The old copy's position goes first: a stop that saves the new one in between keeps it.
        Path(f"{copy}{TXID_SUFFIX}").unlink(missing_ok=True)
        os.replace(restored, copy)
