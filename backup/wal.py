"""A database's WAL as litestream will find it at its next start — the one place that reads
SQLite's WAL and litestream's local position side by side.

Litestream 0.5 resumes from the newest level-0 LTX file in its local state: the header
holds the WAL offset and size it had read up to and the WAL's salts then. If another
connection checkpointed and restarted the WAL while no litestream ran, and the new WAL
is still shorter than that offset, the last frame litestream synced is still on disk with
the old salts; litestream's ``verify`` finds it, takes the restart for its own, and syncs
the new WAL incrementally from its start. The frames committed after the last sync went
into the database file during the checkpoint and never reach any LTX file: the replica
silently lacks rows (``db.go``: ``verifyWithExecutor`` → ``lastPageMatch``;
``detectFullCheckpoint`` misses a single restart; upstream PR #761).

``risk`` mirrors litestream's own checks and names exactly that state. ``truncate``
repairs it: a TRUNCATE checkpoint moves every frame into the database and empties the
WAL, so no stale frame is left to fool litestream: its next sync finds the WAL shorter
than its position (or starting with other salts) and writes the whole database as a
level-0 file ("wal truncated by another process", "wal overwritten by another process"). That full copy sits
*in* the txid chain, so no later compaction can mix pre-stop pages back over it — which a
level-9 snapshot taken after the faulty incremental would not prevent (litestream's restore
planner prefers a compacted level-1 file that spans the faulty txid over the snapshot).

``Pin`` closes the window between the check and litestream's first sync: a helper process
holds a shared lock on the WAL index's first reader slot (``WAL_READ_LOCK(1)``), which every
WAL restart and every RESTART/TRUNCATE checkpoint must lock exclusively. Writers keep
writing (they append instead of restarting); a passive checkpoint copies only up to that
reader's mark meanwhile, so the WAL grows for the few seconds the pin is held.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BackupError
from .localstate import l0_file, newest_l0

WAL_HEADER = 32  # bytes; salt-1 and salt-2 at 16..23, big-endian
FRAME_HEADER = 24  # bytes; the frame's copy of the salts at 8..15
LTX_HEADER = 100  # bytes; see the ltx package: page size at 8, WAL offset/size at 48/56, salts at 64
# SQLite's WAL-index (-shm) locks: byte 120 + lock number; readers' slots are 3 + i.
# A restart locks slots 1..4 exclusively (wal.c, walRestartLog); so does a RESTART or
# TRUNCATE checkpoint. A shared lock on slot 1 makes both wait, and nothing else.
READ_LOCK_1 = 120 + 3 + 1
SHM_SALTS = 32  # the WAL index header's copy of the WAL header's salts (bytes 16..23)
PIN_WAIT = 10.0  # seconds for the helper to pin every database
TRUNCATE_WAIT = 30.0  # seconds a reader may hold the WAL before a repair gives up


@dataclass(frozen=True)
class Position:
    """Where litestream will resume: its newest local level-0 file's header."""

    txid: int
    page_size: int
    wal_offset: int
    wal_size: int
    salts: tuple[int, int]

    @property
    def end(self) -> int:
        return self.wal_offset + self.wal_size


def wal_path(db: Path) -> Path:
    return Path(f"{db}-wal")


def position(db: Path, txid: int | None = None) -> Position | None:
    """litestream's saved position for ``db`` (its newest level-0 file), or at ``txid``; None
    before it wrote one (or unreadable, or no longer kept)."""
    if txid is None:
        newest = newest_l0(db)
        if newest is None:
            return None
        txid, path = newest
    elif (path := l0_file(db, txid)) is None:
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(LTX_HEADER)
    except OSError:
        return None
    if len(head) < 72 or head[:4] != b"LTX1":
        return None
    page_size = struct.unpack(">I", head[8:12])[0]
    offset, size = struct.unpack(">qq", head[48:64])
    return Position(txid, page_size, offset, size, struct.unpack(">II", head[64:72]))


def _read_at(path: Path, offset: int, size: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)
    except OSError:
        return b""


def wal_salts(db: Path) -> tuple[int, int] | None:
    """The WAL header's salts, or None when there is no WAL (or not a whole header)."""
    head = _read_at(wal_path(db), 0, WAL_HEADER)
    if len(head) < WAL_HEADER:
        return None
    return struct.unpack(">II", head[16:24])


def written_since(db: Path) -> bool | None:
    """Has the WAL moved on since litestream's saved position? None when that cannot be read
    from the WAL (no position, no WAL). SQLite keeps a WAL file's length when it restarts
    it, so its length says nothing: a frame right at the position, of the same generation
    (its salts), does; so do other salts in the header (a restart)."""
    pos, salts = position(db), wal_salts(db)
    if pos is None or salts is None:
        return None
    if salts != pos.salts:
        return True
    frame = _read_at(wal_path(db), pos.end, FRAME_HEADER)
    return len(frame) == FRAME_HEADER and struct.unpack(">II", frame[8:16]) == pos.salts


def risk(db: Path) -> str | None:
    """Why litestream would silently skip committed frames if it started now, or None.

    Mirrors litestream's verify: it trusts its position only when the WAL is at least as
    long as the position and the frame just before it still carries the position's salts.
    Then a header with other salts means another connection restarted the WAL — and the
    frames committed between the last sync and that checkpoint are in no LTX file. In
    every other state litestream copies the whole database itself (or continues correctly).
    """
    pos = position(db)
    salts = wal_salts(db)
    if pos is None or salts is None or salts == pos.salts or pos.page_size <= 0:
        return None
    frame = pos.page_size + FRAME_HEADER
    previous = pos.end - frame
    try:
        length = wal_path(db).stat().st_size
    except OSError:
        return None
    if previous <= WAL_HEADER or length < pos.end:
        return None  # litestream takes a full copy itself ("salt reset", "wal truncated")
    stale = _read_at(wal_path(db), previous, FRAME_HEADER)
    if len(stale) < FRAME_HEADER or struct.unpack(">II", stale[8:16]) != pos.salts:
        return None  # "wal overwritten by another process": litestream takes a full copy
    return ("its WAL was checkpointed and restarted by another connection while litestream "
            "was not running")


# -- the live database at one of litestream's txids -----------------------------------

# The WAL index's checkpoint record, in the machine's byte order, after the index header's
# two 48-byte copies: nBackfillAttempted, which a checkpoint sets *before* it copies frames
# into the database file (nBackfill, at 96, only after).
SHM_BACKFILL_ATTEMPTED = 128
COPY_CHUNK = 1 << 20


class NoImage(Exception):
    """Why the live database cannot be copied at a txid now; ``again``: it may be next time
    (something moved meanwhile), rather than not at all in this state (no WAL, no position)."""

    def __init__(self, reason: str, again: bool = False):
        super().__init__(reason)
        self.reason, self.again = reason, again


def image_possible(db: Path, txid: int) -> Position:
    """litestream's position at ``txid``, or NoImage when ``Reading.image`` at it cannot work
    now, from the files alone (no WAL, no position, a WAL restarted or shorter since): cheap,
    before a download, and again under the read transaction."""
    pos = position(db, txid)
    if pos is None or pos.page_size <= 0 or pos.end < WAL_HEADER:
        raise NoImage(f"litestream no longer keeps its position at txid {txid:016x}", again=True)
    if not Path(f"{db}-shm").exists():
        raise NoImage("it has no WAL (no connection has it open)")
    try:
        length = wal_path(db).stat().st_size
    except OSError:
        raise NoImage("it has no WAL (no connection has it open)") from None
    if wal_salts(db) != pos.salts:
        raise NoImage(f"its WAL restarted after txid {txid:016x}", again=True)
    if length < pos.end:
        raise NoImage(f"its WAL is shorter than at txid {txid:016x}", again=True)
    return pos


class Reading:
    """A read transaction on a live database, with the files it reads from held open.

    While it lasts, the WAL cannot restart under the frames it was opened over, and a
    checkpoint copies into the database file no frame a reader needs: so the database
    file and the start of the WAL, copied now, hold the database exactly as it was at a
    txid litestream captured, from the real files rather than litestream's view of them.
    ``image`` writes that copy. The handles are opened before the transaction and closed
    after it: on POSIX, closing any handle of a file drops every lock this process holds
    on it, SQLite's own included.
    """

    def __init__(self, db: Path):
        self.db = db
        self._files: dict[str, Any] = {}
        self._con: sqlite3.Connection | None = None
        self.problem: str | None = None

    def __enter__(self) -> Reading:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                # Unbuffered: the WAL index is read a few bytes at a time, never across the
                # lock bytes (120-127) that Windows' byte-range locks would refuse.
                self._files[suffix] = open(f"{self.db}{suffix}", "rb", buffering=0)  # noqa: SIM115 -- closed in __exit__
        try:
            self._con = sqlite3.connect(f"{self.db.absolute().as_uri()}?mode=ro", uri=True, timeout=5,
                                        isolation_level=None)
            self._con.execute("BEGIN")
            self._con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            self.problem = f"cannot read {self.db}: {exc}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._con is not None:
            self._con.close()
        for fh in self._files.values():
            fh.close()

    def image(self, txid: int, out: Path) -> None:
        """Write ``db`` as it was at litestream's ``txid`` to ``out`` (one plain file, no
        WAL), or raise NoImage saying why it cannot (``out`` then does not exist)."""
        try:
            self._image(txid, out)
        except (OSError, sqlite3.Error) as exc:
            self._remove(out)
            raise NoImage(f"the copy failed: {exc}", again=True) from None
        except NoImage:
            self._remove(out)
            raise

    @staticmethod
    def _remove(out: Path) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{out}{suffix}").unlink(missing_ok=True)

    def _image(self, txid: int, out: Path) -> None:
        if self.problem:
            raise NoImage(self.problem)
        main, log, index = (self._files.get(s) for s in ("", "-wal", "-shm"))
        if main is None or log is None or index is None:
            raise NoImage("it has no WAL (no connection has it open)")
        if not all(_same(fh, Path(f"{self.db}{s}")) for s, fh in self._files.items()):
            raise NoImage("its files were replaced meanwhile", again=True)
        pos = image_possible(self.db, txid)  # of the very files held: checked just above
        head = _pread(log, 0, WAL_HEADER)  # its salts, for the WAL index's below
        frames = (pos.end - WAL_HEADER) // (pos.page_size + FRAME_HEADER)
        _copy(main, out)
        _copy(log, Path(f"{out}-wal"), pos.end)
        # Read after the copy: every checkpoint that could have written the database file
        # while it was copied had set this first.
        salts, record = _pread(index, SHM_SALTS, 8), _pread(index, SHM_BACKFILL_ATTEMPTED, 4)
        if len(record) < 4 or salts != head[16:24]:
            raise NoImage("its WAL index belongs to another WAL", again=True)
        attempted = struct.unpack("=I", record)[0]
        if attempted > frames:
            raise NoImage(f"a checkpoint copied changes made after txid {txid:016x} into the database "
                          "file meanwhile", again=True)
        # SQLite replays the copied frames (checking each one's checksum) and writes them in;
        # closing the last connection removes the WAL.
        con = sqlite3.connect(out, isolation_level=None)
        try:
            busy, logged, written = con.execute("PRAGMA wal_checkpoint").fetchone()
        finally:
            con.close()
        if busy or logged != frames or written != logged:
            raise NoImage(f"its WAL up to txid {txid:016x} did not replay whole ({logged} of {frames} "
                          "frames)", again=True)


def _same(fh: Any, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
    except OSError:
        return False


def _pread(fh: Any, offset: int, size: int) -> bytes:
    fh.seek(offset)
    return fh.read(size)


def _copy(source: Any, target: Path, length: int | None = None) -> None:
    """The first ``length`` bytes (all) of the open file ``source`` into a new ``target``;
    the kernel copies where it can (``copy_file_range``)."""
    length = os.fstat(source.fileno()).st_size if length is None else length
    done = 0
    with open(target, "wb") as out:
        if hasattr(os, "copy_file_range"):
            with contextlib.suppress(OSError):  # not across these file systems: by hand, below
                while done < length:
                    n = os.copy_file_range(source.fileno(), out.fileno(), length - done, done, done)
                    if n <= 0:
                        break
                    done += n
        source.seek(done)
        out.seek(done)
        while done < length:
            chunk = source.read(min(COPY_CHUNK, length - done))
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)


def truncate(db: Path, wait: float = TRUNCATE_WAIT) -> None:
    """Checkpoint every frame into ``db`` and empty its WAL (SQLite's TRUNCATE checkpoint).

    Waits up to ``wait`` seconds for readers that still use the WAL; raises BackupError
    when one holds it longer. Writers wait meanwhile, as for any TRUNCATE checkpoint.
    """
    deadline = time.monotonic() + wait
    try:
        con = sqlite3.connect(db, timeout=min(5.0, wait))
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {db} to repair its WAL: {exc}") from None
    try:
        while True:
            busy = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                return
            if time.monotonic() > deadline:
                raise BackupError(
                    f"a connection has held a read transaction on {db} for over {wait:g}s, so "
                    "its restarted WAL cannot be checkpointed before replication starts (that "
                    "would lose rows in the replica): retry when that read ends, or restart the "
                    "app holding it"
                )
            time.sleep(0.2)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot checkpoint {db} to repair its WAL: {exc}") from None
    finally:
        con.close()


REPAIRED = ("took a fresh full copy of {db} before replicating: {why}; litestream alone "
            "would skip the rows committed in between")
GUARD_ROUNDS = 3


def guard(databases: list[Path]) -> tuple[Pin, list[str]]:
    """Pin every database's WAL and repair the ones litestream would resume from wrongly;
    (the pin, to release once litestream has synced; one line per repair).

    The check runs under the pin, so no restart can slip in between it and litestream's
    first sync. A repair needs the pin lifted (a TRUNCATE checkpoint locks what it holds);
    a WAL just emptied cannot fool litestream, whatever happens before the pin is back.
    """
    lines: list[str] = []
    for _ in range(GUARD_ROUNDS):
        pin = Pin.hold(databases)
        for db in pin.pinned:
            _settled(db)
        risky = [(db, why) for db in databases if (why := risk(db))]
        if not risky:
            return pin, lines + pin.missing(databases)
        pin.release()
        for db, why in risky:
            truncate(db)
            lines.append(REPAIRED.format(db=db, why=why))
    raise BackupError(
        f"the WAL of {', '.join(str(db) for db, _ in risky)} was restarted by another connection "
        f"{GUARD_ROUNDS} times while replication was starting: run the command again"
    )


def _settled(db: Path, wait: float = 1.0) -> None:
    """Wait (briefly) until the WAL file's header shows the salts the WAL index holds: a
    restart updates the index and lets go of its locks before it writes the new header, so
    a pin taken in between would read the old salts from the file."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        index = _read_at(Path(f"{db}-shm"), SHM_SALTS, 8)
        header = _read_at(wal_path(db), 16, 8)
        if len(index) < 8 or len(header) < 8 or index == header:
            return
        time.sleep(0.01)


# -- the pin --------------------------------------------------------------------------


class Pin:
    """Keeps the WAL of each database from restarting until released (see the module doc).

    A helper process (``python -m backup.wal DB...``) holds the locks, so no SQLite
    connection of this process can drop them (POSIX locks belong to a process), and they
    go with it however this process ends: it exits when its stdin closes.
    """

    def __init__(self, proc: subprocess.Popen | None, pinned: tuple[Path, ...], problems: tuple[str, ...]):
        self._proc = proc
        self._lock = threading.Lock()  # released by whichever comes first: the wait or the end
        self.pinned = pinned
        self.problems = problems  # databases that could not be pinned, and why

    def missing(self, databases: list[Path]) -> list[str]:
        """One line per database with a WAL this pin does not hold, saying why."""
        return [
            f"could not hold the WAL of {db} still until litestream's first sync "
            f"({'; '.join(p for p in self.problems if str(db) in p) or 'the pin helper did not answer'}): "
            "a checkpoint by another connection meanwhile could still skip rows; "
            "'inv backup.verify' checks the replica"
            for db in databases if wal_path(db).exists() and db not in self.pinned
        ]

    @classmethod
    def hold(cls, databases: list[Path], wait: float = PIN_WAIT) -> Pin:
        wanted = [db for db in databases if wal_path(db).exists()]
        if not wanted:
            return cls(None, (), ())
        flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0  # type: ignore[attr-defined]
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-m", "backup.wal", *map(str, wanted)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True, creationflags=flags,
            )
        except OSError as exc:
            return cls(None, (), (f"cannot start the WAL pin: {exc.strerror}",))
        lines: list[str] = []
        ready = threading.Event()

        def read() -> None:  # on a thread: a helper that hangs must not hang the start
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if line.startswith("ready"):
                    break
            ready.set()

        threading.Thread(target=read, name="wal-pin-reader", daemon=True).start()
        ready.wait(wait + 5)
        pinned = [Path(l.partition(" ")[2]) for l in list(lines) if l.startswith("pinned ")]
        problems = [l.partition(" ")[2] for l in list(lines) if l.startswith("unpinned ")]
        return cls(proc, tuple(pinned), tuple(problems))

    def release(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdout is not None
            proc.stdout.close()

    def __enter__(self) -> Pin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _lock_shared(fh, offset: int) -> None:
    """A shared lock on one byte, as SQLite takes its WAL-index locks; OSError when held."""
    if sys.platform == "win32":
        import ctypes
        import msvcrt

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        lock_shared_windows(msvcrt.get_osfhandle(fh.fileno()), offset, kernel32)  # type: ignore[attr-defined]
        return
    import fcntl

    fcntl.lockf(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)


LOCKFILE_FAIL_IMMEDIATELY = 0x1  # without LOCKFILE_EXCLUSIVE_LOCK (0x2): shared, as SQLite's readers


def lock_shared_windows(handle: int, offset: int, kernel32: Any) -> None:
    """LockFileEx on one byte at ``offset``, shared, failing at once (os_win.c's
    winShmSystemLock takes the WAL-index locks the same way)."""
    import ctypes
    from ctypes import wintypes

    class OVERLAPPED(ctypes.Structure):
        _fields_ = [("Internal", ctypes.c_void_p), ("InternalHigh", ctypes.c_void_p),
                    ("Offset", wintypes.DWORD), ("OffsetHigh", wintypes.DWORD),
                    ("hEvent", ctypes.c_void_p)]

    overlapped = OVERLAPPED(None, None, offset, 0, None)
    if not kernel32.LockFileEx(ctypes.c_void_p(handle), LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0,
                               ctypes.byref(overlapped)):
        raise OSError(ctypes.get_last_error() if hasattr(ctypes, "get_last_error") else 0,
                      "the WAL index is locked")


def _pin(db: Path, deadline: float) -> tuple[sqlite3.Connection, object]:
    """Open a read-only read transaction (so the WAL index exists and SQLite maps it), then
    lock reader slot 1 shared. A read-only connection never checkpoints or deletes the WAL."""
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5, isolation_level=None)
    con.execute("BEGIN")
    con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    fh = open(f"{db}-shm", "rb")  # noqa: SIM115 -- held until this process exits
    while True:
        try:
            _lock_shared(fh, READ_LOCK_1)
            return con, fh
        except OSError:
            # Held exclusively for a moment: a checkpointer updating reader marks.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def main(argv: list[str]) -> int:
    """The helper: pin each database named, say so on stdout, hold until stdin closes."""
    held = []
    deadline = time.monotonic() + PIN_WAIT
    for name in argv:
        try:
            held.append(_pin(Path(name), deadline))
            print(f"pinned {name}", flush=True)
        except (OSError, sqlite3.Error) as exc:
            print(f"unpinned {name}: {exc}", flush=True)
    print("ready", flush=True)
    sys.stdin.read()  # until the parent releases the pin, or goes away
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
