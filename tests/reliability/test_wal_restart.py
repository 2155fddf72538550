"""No silent loss across a stop (issue 23): a WAL that another connection checkpointed and
restarted while nothing replicated.

litestream 0.5 alone resumes from its last position, mistakes the restart for its own, and
the rows committed between its last sync and the checkpoint never reach the replica
(``backup.wal``). Every scenario here ends with a restore compared row for row with the
live database, and ``verify``: never txids or logs alone.
"""
from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from conftest import BIN, wait_for
from test_holes import set_levels

from .conftest import alive, integrity, setup, start_bg, stop, write_s3_env

FULL_COPY = "took a fresh full copy of"
AFTER_CRASH = "the last daemon died without a clean stop"


class App:
    """An application holding one connection open, committing one row per transaction."""

    def __init__(self, db: Path):
        self.con = sqlite3.connect(db, isolation_level=None, timeout=30, check_same_thread=False)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB)")
        self.lock = threading.Lock()

    def add(self, n: int, size: int = 100) -> None:
        with self.lock:
            for _ in range(n):
                self.con.execute("INSERT INTO t (body) VALUES (randomblob(?))", (size,))

    def batch(self, n: int) -> None:
        """``n`` rows in one transaction: one point in time for sure."""
        with self.lock:
            self.con.execute("BEGIN")
            self.con.executemany("INSERT INTO t (body) VALUES (randomblob(100))", [()] * n)
            self.con.execute("COMMIT")

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        with self.lock:
            return self.con.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()

    def rows(self) -> list[tuple]:
        with self.lock:
            return self.con.execute("SELECT id, hex(body) FROM t ORDER BY id").fetchall()

    def salts(self, db: Path) -> bytes:
        return Path(f"{db}-wal").read_bytes()[16:24]

    def close(self) -> None:
        self.con.close()


@pytest.fixture
def app(rws):
    write_s3_env(rws)
    setup(rws)
    a = App(rws.db)
    try:
        yield a
    finally:
        a.close()


def restored(ws, *args: str) -> list[tuple]:
    out = ws.root / f"restore-{len(list(ws.root.glob('restore-*')))}.db"
    result = ws.inv("backup.restore", "--output", str(out), "--json", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert integrity(out) == "ok"
    con = sqlite3.connect(out)
    try:
        return con.execute("SELECT id, hex(body) FROM t ORDER BY id").fetchall()
    finally:
        con.close()


def verified(ws) -> None:
    result = ws.inv("backup.verify")
    assert result.returncode == 0, result.stdout + result.stderr


def restart_outside(app: App, db: Path) -> None:
    """While backups are off: 100 rows, a checkpoint that backfills the whole WAL, then five
    more rows, which restart the WAL with new salts."""
    before = app.salts(db)
    app.add(100)
    busy, log, done = app.checkpoint()
    assert busy == 0 and log == done, "the checkpoint must backfill the whole WAL"
    app.add(5)
    assert app.salts(db) != before, "the WAL must have restarted"


def autocheckpoint_outside(app: App, db: Path) -> None:
    """The same with nobody calling a checkpoint: rows until SQLite's own autocheckpoint
    (at 1,000 pages) has backfilled the WAL and the next commit restarted it, then five."""
    before = app.salts(db)
    for _ in range(3000):
        app.add(1)
        if app.salts(db) != before:
            break
    assert app.salts(db) != before, "SQLite's autocheckpoint must have restarted the WAL"
    app.add(5)


def spawn_start(ws, command: str = "inv") -> subprocess.Popen:
    argv = [str(BIN / "inv"), "backup.start"] if command == "inv" else [str(BIN / "chora-backup"), "start"]
    proc = subprocess.Popen(argv, cwd=ws.path, env=ws.environ(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    ws.children.append(proc)
    return proc


def finish(ws, proc: subprocess.Popen, sig: int | None = signal.SIGINT) -> tuple[int, str]:
    if sig is not None:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=90)
    text = out.decode("utf-8", "replace")
    ws.outputs.append(text)
    return proc.returncode, text


@pytest.mark.posix
@pytest.mark.parametrize("ended", ["stop", "kill-9", "sigint", "autocheckpoint"])
def test_rows_committed_while_backups_were_off_reach_the_replica(rws, app, report, ended):
    """The issue's sequence: 300 rows replicate, replication ends, 100 rows + a checkpoint +
    5 rows restart the WAL, replication starts again, 5 rows. The restore holds all 410."""
    if ended == "sigint":
        proc = spawn_start(rws)
        wait_for(rws.synced, 30, interval=0.2, what="the foreground start's first sync")
        app.add(300)
        code, output = finish(rws, proc)
        assert code == 0, output
    else:
        pid, _ = start_bg(rws)
        app.add(300)
        if ended == "kill-9":
            psutil.Process(pid).kill()
            wait_for(lambda: not alive(pid), 10, what="the killed daemon to die")
        else:
            stop(rws)
    if ended == "autocheckpoint":
        autocheckpoint_outside(app, rws.db)
    else:
        restart_outside(app, rws.db)

    if ended == "stop":  # status says so beforehand, as a fact, not as the failure
        result = rws.inv("backup.status", "--json")
        db = json.loads(result.stdout)["databases"][0]
        assert "restarted by another connection" in db["next_start_full_copy"]
        text = rws.inv("backup.status").stdout
        assert "next start     takes a fresh full copy first" in text
    _, output = start_bg(rws)
    assert f"{FULL_COPY} {rws.db} before replicating" in output
    assert (AFTER_CRASH in output) == (ended == "kill-9")
    app.add(5)
    stop(rws)
    live = app.rows()
    assert ended == "autocheckpoint" or len(live) == 410
    assert restored(rws) == live
    verified(rws)
    rws.assert_no_secrets()
    report(f"wal restart [{ended}]: {len(live)} rows live, the same {len(live)} restored")


@pytest.mark.posix
def test_a_writer_checkpointing_in_a_loop_through_stop_and_start_loses_nothing(rws, app, report):
    """The window: checkpoints (and the restarts they allow) go on continuously while
    backups are off and while start-bg starts, checks and waits for the first sync."""
    pid, _ = start_bg(rws)
    done = threading.Event()
    counts = {"commits": 0, "restarts": 0}

    def write() -> None:
        salts = app.salts(rws.db)
        while not done.is_set():
            app.add(3)
            app.checkpoint()
            counts["commits"] += 3
            now = app.salts(rws.db)
            counts["restarts"] += now != salts
            salts = now

    writer = threading.Thread(target=write, name="checkpointing writer")
    writer.start()
    try:
        wait_for(lambda: counts["commits"] > 150, 30, interval=0.05, what="commits")
        stop(rws)
        wait_for(lambda: counts["restarts"] > 3, 30, interval=0.05, what="restarts while off")
        # Which side takes the full copy depends on where the writer has got to: chora-backup
        # when litestream would resume past the restart, litestream itself when the new
        # frames already overwrote its position. Either way no row may be lost.
        _, output = start_bg(rws)
        repaired = FULL_COPY in output
        rws.inv("backup.stop")  # and a stop and start with the writer going on throughout
        rws.inv("backup.start-bg")
        wait_for(lambda: counts["commits"] > 450, 60, interval=0.05, what="more commits")
    finally:
        done.set()
        writer.join(60)
    stop(rws)
    live = app.rows()
    assert restored(rws) == live
    verified(rws)
    report(f"wal restart [checkpoint loop]: {counts['commits']} commits, {counts['restarts']} "
           f"WAL restarts, {len(live)} rows restored exactly (full copy by "
           f"{'chora-backup' if repaired else 'litestream'} at the start)")


def _local_txid(ws) -> int:
    result = ws.inv("backup.status", "--json")
    db = json.loads(result.stdout)["databases"][0]
    return int(db["local_txid"], 16)


def _replicated(ws) -> bool:
    db = json.loads(ws.inv("backup.status", "--json").stdout)["databases"][0]
    return db["lag_txids"] == 0


@pytest.mark.posix
def test_every_point_in_time_from_the_repair_on_is_exact_across_a_level_1_compaction(rws, app, report):
    """A compacted level-1 file spanning the pre-stop txids and the repair must not bring
    stale pages back: the repair is a full copy inside the txid chain."""
    # No level-1 tick until every point is written; then one every 3 s: the first level-1
    # file spans the txids before the stop, the repair and those after it, however long
    # the repair's upload took.
    set_levels(rws, "1h", "2h", "6h")
    start_bg(rws)
    app.add(300)
    stop(rws)
    before_stop = app.rows()
    stopped_at = _local_txid(rws)
    restart_outside(app, rws.db)
    _, output = start_bg(rws)
    assert FULL_COPY in output
    points: dict[int, list[tuple]] = {}
    for batch in range(3):
        before = _local_txid(rws)
        app.batch(20)
        # Captured (a new txid) and uploaded: that txid's state is this batch's.
        wait_for(lambda: _local_txid(rws) > before and _replicated(rws), 30, interval=0.3,
                 what="the batch captured and replicated")
        points[_local_txid(rws)] = app.rows()
    stop(rws)
    set_levels(rws, "3s", "2h", "6h")
    start_bg(rws)
    log = rws.state / "litestream.log"
    newest = max(points)

    def level_1() -> list[tuple[int, int]]:
        found = re.findall(r"compaction complete.*level=1 txid\.min=(\S+) txid\.max=(\S+)", log.read_text())
        return [(int(lo, 16), int(hi, 16)) for lo, hi in found]

    wait_for(lambda: any(hi >= newest for _, hi in level_1()), 60, interval=0.3,
             what="a level-1 compaction of the newest txid")
    assert any(lo <= stopped_at < hi for lo, hi in level_1()), level_1()
    for txid, expected in points.items():
        assert restored(rws, "--txid", f"{txid:016x}") == expected, f"txid {txid:x}"
    assert restored(rws) == app.rows()
    # Before the repair: exactly what was replicated before the stop, nothing written while off.
    assert restored(rws, "--txid", f"{stopped_at:016x}") == before_stop
    stop(rws)
    verified(rws)
    report(f"wal restart [point in time]: {len(points)} points after the repair exact across "
           f"a level-1 compaction spanning it")


@pytest.mark.posix
def test_a_service_restart_after_litestream_was_killed_snapshots_first(rws, app, report):
    """systemd's Restart=on-failure: 'chora-backup start' must keep the stale pidfile when its
    litestream is killed, so the restart takes the after-crash snapshot."""
    cycles = 3
    for n in range(cycles + 1):
        proc = spawn_start(rws, "chora-backup")
        wait_for(rws.synced, 30, interval=0.2, what="the first sync")
        app.add(50)
        if n == cycles:
            code, output = finish(rws, proc, signal.SIGTERM)
            assert code == 0, output
            assert AFTER_CRASH in output
            break
        daemon = psutil.Process(rws.daemon_pid())
        daemon.kill()
        code, output = finish(rws, proc, None)
        assert code == 128 + signal.SIGKILL, output
        assert rws.pidfile.exists(), "the pidfile of a killed litestream must stay"
        assert (AFTER_CRASH in output) == (n > 0)
    assert not rws.pidfile.exists()
    assert restored(rws) == app.rows()
    verified(rws)
    report(f"wal restart [service]: {cycles} kill -9 / restart cycles, each restart snapshotted")


@pytest.mark.posix
def test_no_full_copy_when_nothing_restarted_the_wal_outside(rws, app, report):
    """Restarts with a running app writing, appending while off, and litestream's own
    checkpoints: never a repair."""
    repairs = 0
    for n in range(2):  # bench/wal_guard.py counts more cycles under a steady writer
        _, output = start_bg(rws)
        repairs += output.count(FULL_COPY)
        app.add(200, 2000)  # past litestream's own checkpoint threshold now and then
        rws.inv("backup.stop")
        app.add(10)  # appended while off, no checkpoint: litestream continues from them
    _, output = start_bg(rws)
    repairs += output.count(FULL_COPY)
    stop(rws)
    assert repairs == 0
    assert restored(rws) == app.rows()
    report(f"wal restart [no false alarm]: 3 starts, {repairs} full copies")


@pytest.mark.posix
@pytest.mark.parametrize("command", ["backup.verify", "backup.snapshot"])
def test_verify_and_snapshot_without_a_daemon_repair_first(rws, app, report, command):
    """Both run 'litestream replicate -once': the same guard, the same full copy first."""
    start_bg(rws)
    app.add(300)
    stop(rws)
    restart_outside(app, rws.db)
    result = rws.inv(command)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{FULL_COPY} {rws.db} before replicating" in result.stdout
    assert restored(rws) == app.rows()
    verified(rws)
    report(f"wal restart [{command}]: repaired by its own replicate -once")


@pytest.mark.posix
def test_a_replica_that_lost_rows_is_named_with_its_causes_and_the_fix_works(rws, app, report):
    """litestream run by hand (no guard) loses the rows; verify says why and what to run,
    and that fix ('inv backup.snapshot') makes the next verify pass."""
    start_bg(rws)
    app.add(300)
    stop(rws)
    restart_outside(app, rws.db)
    raw = rws.litestream("replicate", "-once", "-config", str(rws.config), "-no-expand-env")
    assert raw.returncode == 0, raw.stderr
    assert len(restored(rws)) < len(app.rows())  # litestream alone lost them
    result = rws.inv("backup.verify")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "likely causes, most likely first: (1) rows committed while replication was off" in last
    assert "fix: 'inv backup.snapshot'" in last
    fixed = rws.inv("backup.snapshot")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert restored(rws) == app.rows()
    verified(rws)
    report("wal restart [verify names it]: causes in order, 'inv backup.snapshot' repairs it")


@pytest.mark.posix
def test_a_litestream_that_fails_to_start_leaves_no_pidfile(rws, app):
    """Exit 1 is a start-up failure, not a crash mid-sync: no stale pidfile, and no
    after-crash snapshot at the next start."""
    from conftest import LITESTREAM

    wrapper = rws.root / "litestream-failing"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = replicate ] && [ "$2" != -once ]; then echo "Error: cannot start" >&2; exit 1; fi\n'
        f'exec "{LITESTREAM}" "$@"\n'
    )
    wrapper.chmod(0o755)
    failed = rws.cli("start", env={"LITESTREAM_BIN": str(wrapper)})
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert not rws.pidfile.exists()
    _, output = start_bg(rws)
    assert AFTER_CRASH not in output
    stop(rws)
