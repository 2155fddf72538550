"""backup.follow's and backup.sqlitefile's logic, without litestream: fast."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from backup import config, follow, process, sqlitefile


def db_with_rows(path: Path, n: int, journal_mode: str) -> None:
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA journal_mode={journal_mode}")
    con.execute("CREATE TABLE IF NOT EXISTS t (x)")
    con.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(n)])
    con.commit()
    con.close()


def rollback_db(path: Path, n: int) -> None:
    db_with_rows(path, n, "DELETE")


def wal_db(path: Path, n: int) -> None:
    db_with_rows(path, n, "WAL")


def test_a_reader_holding_the_copy_sees_a_change_once_the_counter_moves(tmp_path):
    """What litestream does to a copy (pages written, page 1's counter untouched), and the fix."""
    copy, newer = tmp_path / "copy.db", tmp_path / "newer.db"
    rollback_db(copy, 3)
    shutil.copy(copy, newer)
    con = sqlite3.connect(newer)
    con.execute("INSERT INTO t VALUES (99)")
    con.commit()
    con.close()
    reader = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (3,)
    old_header = copy.read_bytes()[:100]
    pages = bytearray(newer.read_bytes())
    pages[24:28] = old_header[24:28]  # as litestream writes a change that leaves page 1's counter
    pages[92:96] = old_header[92:96]
    copy.write_bytes(bytes(pages))
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (3,)  # its cache: stale
    assert sqlitefile.touch(copy)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (4,)
    reader.close()


def test_touch_marks_a_wal_header_rollback_and_leaves_other_files_alone(tmp_path):
    db = tmp_path / "wal.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    assert db.read_bytes()[18:20] == b"\x02\x02"
    assert sqlitefile.touch(db, rollback=True)
    assert db.read_bytes()[18:20] == b"\x01\x01"
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    other = tmp_path / "notes.txt"
    other.write_bytes(b"x" * 100)
    assert not sqlitefile.touch(other) and other.read_bytes() == b"x" * 100
    assert not sqlitefile.touch(tmp_path / "missing.db")


READY_LINE = b'time=... level=INFO msg="entering follow mode" db=chora.db\n'
APPLIED_LINE = b'time=... level=INFO msg="follow: applied updates" db=chora.db from_txid=1 to_txid=2\n'


def test_the_log_pump_puts_a_restore_in_place_once_it_follows_then_touches_each_change(tmp_path):
    from backup import logfile

    copy, restored = tmp_path / "copy.db", tmp_path / ".copy.db.follow-1"
    rollback_db(copy, 1)
    follow.txid_file(copy).write_text("0000000000000001\n")  # the old copy's position
    wal_db(restored, 5)  # as litestream restores it: the primary's WAL-mode header
    reader = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)
    on_line = logfile.keeper(copy, restored)
    assert on_line(b"time=... level=INFO msg=restoring\n") is None and restored.exists()
    assert on_line(READY_LINE) is None
    assert not restored.exists() and not follow.txid_file(copy).exists()
    assert copy.read_bytes()[18:20] == b"\x01\x01"  # a rollback-journal database now
    fresh = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    assert fresh.execute("SELECT count(*) FROM t").fetchone() == (5,)
    before = copy.read_bytes()[24:28]
    assert on_line(READY_LINE) is None and copy.read_bytes()[24:28] == before  # once only
    on_line(APPLIED_LINE)
    assert copy.read_bytes()[24:28] != before
    reader.close()
    fresh.close()


def test_a_restore_that_cannot_be_put_in_place_is_said_in_the_log_before_the_ready_line(tmp_path):
    import io

    from backup import logfile

    copy = tmp_path / "copy.db"
    log = tmp_path / "follow.log"
    source = io.BytesIO(b"time=... msg=restoring\n" + READY_LINE + APPLIED_LINE)
    logfile.pump(source, log, on_line=logfile.keeper(copy, tmp_path / "gone.db"))
    lines = log.read_text().splitlines()
    assert lines[0] == "time=... msg=restoring"
    assert lines[1].startswith(logfile.PLACE_FAILED + ": ") and "gone.db" in lines[1]
    assert "entering follow mode" in lines[2] and "applied updates" in lines[3]
    assert not copy.exists()


def record(**fields) -> process.PidRecord:
    base = dict(pid=1, create_time=0.0, cmdline=["litestream", "restore", "-config", "c", "-no-expand-env", "-f",
                                                   "-follow-interval", "1s", "-o", "/w/.copy.db.follow-1",
                                                   "/ws/chora.db"],
                config="c", started_at="", log=None, output="/w/copy.db", working="/w/.copy.db.follow-1")
    return process.PidRecord(**{**base, **fields})


def test_a_follower_record_is_recognised_only_with_its_own_working_file():
    assert follow.is_follow(record())
    assert not follow.is_follow(record(working="/w/other"))
    assert not follow.is_follow(record(cmdline=["litestream", "replicate", "-config", "c"]))
    assert not follow.is_follow(record(working=None))


def test_a_stopped_follower_leaves_its_position_beside_the_copy(tmp_path):
    output, working = tmp_path / "copy.db", tmp_path / ".copy.db.follow-1"
    follow.txid_file(working).write_text("000000000000002a\n")
    follow._settle(record(output=str(output), working=str(working)))
    assert follow.read_txid(output) == 0x2A and not follow.txid_file(working).exists()


def test_a_start_cut_short_leaves_no_half_restored_file(tmp_path):
    output, working = tmp_path / "copy.db", tmp_path / ".copy.db.follow-1"
    output.write_bytes(b"the old copy")
    follow.txid_file(output).write_text("0000000000000001\n")
    Path(f"{working}.tmp").write_bytes(b"half a download")  # litestream's, before its rename
    follow._settle(record(output=str(output), working=str(working)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db", "copy.db-txid"]
    assert follow.read_txid(output) == 1  # the old copy's position stands
    straight = tmp_path / "first.db"
    Path(f"{straight}.tmp").write_bytes(b"half a download")
    follow._settle(record(output=str(straight), working=str(straight)))
    assert not Path(f"{straight}.tmp").exists()


def test_each_output_has_its_own_slot(tmp_path):
    settings = config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(tmp_path / "state")})
    a = follow.slot_for(settings, tmp_path / "a" / "copy.db")
    b = follow.slot_for(settings, tmp_path / "b" / "copy.db")
    assert a.pidfile != b.pidfile and a.pidfile.parent == settings.state_dir / "followers"
    assert a.pidfile.name.startswith("copy.db-") and a.logfile.suffix == ".log"


def test_a_copy_belongs_to_the_database_and_replica_its_follower_followed():
    one = b"dbs:\n- path: /ws/a.db\n  replica: {type: s3, bucket: b, path: p/a.db, endpoint: 'http://h'}\n"
    same_place_other_interval = one.replace(b"}", b", sync-interval: 10s}")
    other_db = one.replace(b"p/a.db", b"p/b.db")
    assert follow._identity(one) == follow._identity(same_place_other_interval)
    assert follow._identity(one) != follow._identity(other_db)
    assert follow._identity(b"not: [yaml") is None and follow._identity(b"dbs: []") is None


def test_a_working_file_never_swapped_in_is_removed_and_gives_the_copy_no_position(tmp_path):
    output, working = tmp_path / "copy.db", tmp_path / ".copy.db.follow-2"
    working.write_bytes(b"half a restore")
    follow.txid_file(working).write_text("0000000000000063\n")
    follow._settle(record(output=str(output), working=str(working)))
    assert not working.exists() and not follow.txid_file(working).exists()
    assert follow.read_txid(output) is None


def test_a_follower_is_starting_until_its_restore_is_in_place(tmp_path):
    output, working = tmp_path / "copy.db", tmp_path / ".copy.db.follow-1"
    straight = record(output=str(output), working=str(output))
    beside = record(output=str(output), working=str(working))
    assert follow._restoring(straight) and follow._restoring(beside)  # no copy yet
    output.write_bytes(b"old copy")
    Path(f"{working}.tmp").write_bytes(b"downloading")  # litestream's temporary file
    assert follow._restoring(beside) and not follow._restoring(straight)
    Path(f"{working}.tmp").unlink()
    working.write_bytes(b"restoring")
    assert not follow._restoring(straight) and follow._restoring(beside)
    working.unlink()  # renamed over the copy
    assert not follow._restoring(beside)


def test_a_follower_counts_as_failing_unless_provably_current_enough():
    def status(**fields) -> follow.FollowerStatus:
        base = dict(output="/w/copy.db", state="running", pid=1, database="chora.db", txid="02",
                    replica_txid="02", lag_seconds=0.0, log=None, max_lag_seconds=61.0)
        return follow.FollowerStatus(**{**base, **fields})

    assert not status().failing
    assert not status(txid="01", lag_seconds=30.0).failing
    assert status(txid="01", lag_seconds=62.0).failing
    assert status(txid="01", lag_seconds=None).failing  # behind by an unknown time
    assert status(state="starting").failing and status(state="stale").failing
    assert status(database=None, replica_txid=None, lag_seconds=None).failing  # not in this config


def test_a_log_read_from_an_offset_goes_on_across_a_rotation(tmp_path):
    from backup import logfile

    log = tmp_path / "follow.log"
    old = b"an old line, from before this start\n" * 3
    log.write_bytes(old + b"starting\n")
    offset = len(old)  # the new log stays smaller than this: rotation is at 10 MB
    log.write_bytes(log.read_bytes() + b"x" * 50 + b"\n")
    logfile.rotate(log, max_bytes=10)  # the pump rotates it while a start waits
    log.write_bytes(b'msg="entering follow mode"\n')
    text = logfile.read_since(log, offset)
    assert text.startswith("starting\n") and text.endswith('msg="entering follow mode"\n')


def test_the_pump_acts_on_litestreams_ready_message_only_and_retries_a_failed_placing(tmp_path):
    from backup import logfile

    copy, restored = tmp_path / "copy.db", tmp_path / ".copy.db.follow-1"
    on_line = logfile.keeper(copy, restored)
    mention = b'time=... level=ERROR msg="restore failed" err="output=/x entering follow mode"\n'
    assert on_line(mention) is None  # the words in another message's field: not litestream following
    failed = on_line(READY_LINE)  # no restored file (yet): said once
    assert failed is not None and failed.startswith(logfile.PLACE_FAILED.encode())
    assert on_line(b"time=... msg=other\n") is None  # tried again, not said again
    wal_db(restored, 2)
    assert on_line(APPLIED_LINE) is None  # the next line places it
    assert not restored.exists() and copy.read_bytes()[18:20] == b"\x01\x01"


def test_placing_a_resumed_copy_waits_for_no_reader(tmp_path):
    copy = tmp_path / "copy.db"
    rollback_db(copy, 2)
    reader = sqlite3.connect(copy)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()  # a long read transaction holds a shared lock
    before = copy.read_bytes()
    sqlitefile.place(copy, copy)  # returns at once: the copy is a rollback-journal database already
    assert copy.read_bytes() == before
    reader.close()
