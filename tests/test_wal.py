"""backup.wal on real SQLite files: the restart that litestream would miss, the pin that
keeps one from happening, and the repair. Scenarios through ``inv`` with the real binary
are in reliability/test_wal_restart.py."""
from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import pytest

from backup import wal
from backup.errors import BackupError
from backup.localstate import folder as local_state_dir


def app(db: Path) -> sqlite3.Connection:
    con = sqlite3.connect(db, isolation_level=None, timeout=5)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
    return con


def add(con: sqlite3.Connection, n: int) -> None:
    for _ in range(n):
        con.execute("INSERT INTO t VALUES (randomblob(200))")


def page_size(db: Path) -> int:
    return struct.unpack(">I", Path(f"{db}-wal").read_bytes()[8:12])[0]


def save_position(db: Path, txid: int = 7) -> wal.Position:
    """An L0 file as litestream writes it after syncing the WAL to its last frame (the WAL
    index's mxFrame: after a restart the file is longer than the frames in use)."""
    data = Path(f"{db}-wal").read_bytes()
    frames = struct.unpack("=I", Path(f"{db}-shm").read_bytes()[16:20])[0]
    data = data[:wal.WAL_HEADER + frames * (page_size(db) + wal.FRAME_HEADER)]
    salts = struct.unpack(">II", data[16:24])
    head = bytearray(wal.LTX_HEADER)
    head[:4] = b"LTX1"
    head[8:12] = struct.pack(">I", page_size(db))
    head[48:64] = struct.pack(">qq", wal.WAL_HEADER, len(data) - wal.WAL_HEADER)
    head[64:72] = struct.pack(">II", *salts)
    folder = local_state_dir(db) / "ltx" / "0"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{txid:016x}-{txid:016x}.ltx").write_bytes(bytes(head))
    pos = wal.position(db)
    assert pos is not None and pos.txid == txid and pos.salts == salts and pos.end == len(data)
    return pos


def restart_wal(con: sqlite3.Connection) -> None:
    busy, log, done = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and log == done
    add(con, 1)  # a write after a whole checkpoint restarts the WAL


def test_no_position_or_no_wal_is_no_risk(tmp_path):
    db = tmp_path / "a.db"
    con = app(db)
    add(con, 20)
    assert wal.position(db) is None and wal.risk(db) is None
    save_position(db)
    con.close()  # the last connection checkpoints and deletes the WAL
    assert not wal.wal_path(db).exists() and wal.risk(db) is None


def test_appended_frames_are_no_risk_a_restart_is(tmp_path):
    db = tmp_path / "a.db"
    con = app(db)
    add(con, 50)
    save_position(db)
    add(con, 10)  # appended while off: litestream continues from its position
    assert wal.risk(db) is None
    add(con, 20)
    restart_wal(con)
    assert "restarted by another connection" in wal.risk(db)
    con.close()


def test_a_restarted_wal_longer_than_the_position_is_left_to_litestream(tmp_path):
    """The frame before the position then carries the new salts: litestream copies the
    whole database itself ("wal overwritten by another process")."""
    db = tmp_path / "a.db"
    con = app(db)
    add(con, 5)
    save_position(db)
    restart_wal(con)
    add(con, 50)
    assert wal.risk(db) is None
    con.close()


def test_a_plain_reader_does_not_stop_a_restart_the_pin_does(tmp_path):
    db = tmp_path / "a.db"
    con = app(db)
    add(con, 30)
    con.execute("PRAGMA wal_checkpoint(PASSIVE)")
    before = wal.wal_salts(db)
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()
    add(con, 1)
    assert wal.wal_salts(db) != before, "a reader of a fully checkpointed WAL reads the database file only"
    reader.close()

    con.execute("PRAGMA wal_checkpoint(PASSIVE)")
    before = wal.wal_salts(db)
    with wal.Pin.hold([db]) as pin:
        assert pin.pinned == (db,) and pin.problems == ()
        add(con, 3)
        assert wal.wal_salts(db) == before, "pinned: the writer appends instead of restarting"
        con.execute("PRAGMA busy_timeout=200")
        assert con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 1
        assert rows(con) == 34
    assert con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    con.close()


def rows(con: sqlite3.Connection) -> int:
    return con.execute("SELECT count(*) FROM t").fetchone()[0]


def test_the_pin_helper_leaves_nothing_running(tmp_path):
    db = tmp_path / "a.db"
    con = app(db)
    add(con, 3)
    pin = wal.Pin.hold([db, tmp_path / "absent.db"])
    proc = pin._proc
    assert proc is not None and proc.poll() is None
    pin.release()
    assert proc.returncode == 0
    con.close()


def test_guard_repairs_and_says_so_and_litestream_then_sees_a_truncated_wal(tmp_path):
    db = tmp_path / "a.db"
    con = app(db)
    add(con, 50)
    pos = save_position(db)
    add(con, 20)
    restart_wal(con)
    pin, lines = wal.guard([db])
    try:
        assert len(lines) == 1 and f"took a fresh full copy of {db} before replicating" in lines[0]
        assert wal.wal_path(db).stat().st_size < pos.end  # litestream copies the whole database
        assert wal.risk(db) is None
        assert rows(con) == 71
    finally:
        pin.release()
    pin, lines = wal.guard([db])
    pin.release()
    assert lines == []
    con.close()


def test_a_reader_holding_the_wal_fails_the_repair_with_the_fix(tmp_path):
    db = tmp_path / "a.db"
    con = app(db)
    add(con, 20)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN")
    other.execute("SELECT count(*) FROM t").fetchone()
    add(con, 5)
    with pytest.raises(BackupError) as caught:
        wal.truncate(db, wait=0.5)
    assert "held a read transaction" in caught.value.message and "retry" in caught.value.message
    other.close()
    wal.truncate(db)
    assert wal.wal_path(db).stat().st_size == 0
    con.close()


class FakeKernel32:
    """What the Windows pin asks of kernel32, recorded; ``answer`` is LockFileEx's result."""

    def __init__(self, answer: int):
        self.answer = answer
        self.calls: list[tuple] = []

    def LockFileEx(self, handle, flags, reserved, low, high, overlapped):  # noqa: N802 -- the API's name
        self.calls.append((handle.value, flags, reserved, low, high, overlapped._obj.Offset, overlapped._obj.OffsetHigh))
        return self.answer


def test_the_windows_pin_takes_the_reader_slot_shared_as_sqlite_does():
    kernel32 = FakeKernel32(1)
    wal.lock_shared_windows(1234, wal.READ_LOCK_1, kernel32)
    # shared (no LOCKFILE_EXCLUSIVE_LOCK), fail at once; one byte at 124, the first reader slot
    assert kernel32.calls == [(1234, 0x1, 0, 1, 0, 124, 0)]
    with pytest.raises(OSError):
        wal.lock_shared_windows(1234, wal.READ_LOCK_1, FakeKernel32(0))


def test_a_database_that_cannot_be_pinned_is_said_so(tmp_path):
    db = tmp_path / "a.db"
    con = app(db)
    add(con, 3)
    con.execute("PRAGMA locking_mode=EXCLUSIVE")
    add(con, 1)  # holds the database: no other connection can read it now
    pin, lines = wal.guard([db])
    pin.release()
    assert len(lines) == 1 and f"could not hold the WAL of {db} still" in lines[0]
    assert "'inv backup.verify' checks" in lines[0]
    con.close()


def test_written_since_reads_the_frame_at_the_position_not_the_files_length(tmp_path):
    db = tmp_path / "a.db"
    con = app(db)
    add(con, 60)
    restart_wal(con)  # the WAL file keeps its length: longer than what comes next
    add(con, 2)
    pos = save_position(db)
    assert wal.wal_path(db).stat().st_size > pos.end
    assert wal.written_since(db) is False  # old frames past the position are not new ones
    add(con, 1)
    assert wal.written_since(db) is True
    con.close()
