"""Restore drills, the fast part (issue 26): the setting, the ping URL, the record, the
schedule, and the one consistent copy of a live database at a litestream txid. The drills
themselves, with real processes, are in tests/reliability/test_drills.py."""
from __future__ import annotations

import os
import sqlite3
import struct
import time
from pathlib import Path

import pytest

from backup import config, drills
from backup.drill import Runner, Stopped
from backup.drills import Proof
from backup.errors import ConfigError
from backup.localstate import folder
from backup.ping import failure_url
from backup.status import verified
from backup.wal import NoImage, Reading, image_possible

from conftest import PingServer

# -- the setting ------------------------------------------------------------------------


def load(tmp_path: Path, **env: str) -> config.Settings:
    return config.load(cwd=tmp_path, environ=env)


def test_drills_run_daily_by_default_and_can_be_turned_off(tmp_path):
    settings = load(tmp_path)
    assert settings.verify_interval == 24 * 3600 and settings.verify_interval_text == "24h"
    assert settings.warnings == ()
    off = load(tmp_path, BACKUP_VERIFY_INTERVAL="OFF")
    assert off.verify_interval is None and off.verify_interval_text == "off"
    assert load(tmp_path, BACKUP_VERIFY_INTERVAL="6h").verify_interval == 6 * 3600


@pytest.mark.parametrize("value, problem", [
    ("30s", "BACKUP_VERIFY_INTERVAL '30s' is shorter than 1m"),
    ("daily", "BACKUP_VERIFY_INTERVAL 'daily' is not a duration (e.g. 24h, 6h, 30m) or 'off'"),
    ("0", "is not a duration"),
])
def test_an_interval_under_a_minute_or_not_a_duration_is_refused(tmp_path, value, problem):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BACKUP_VERIFY_INTERVAL=value)
    assert problem in caught.value.message and "\n" not in caught.value.message


def test_an_interval_under_an_hour_is_warned_about(tmp_path):
    settings = load(tmp_path, BACKUP_VERIFY_INTERVAL="10m")
    assert settings.verify_interval == 600
    assert settings.warnings == ("BACKUP_VERIFY_INTERVAL 10m is shorter than 1h: each drill downloads the "
                                 "whole database (R2 request charges add up; see 'inv backup.cost'); 24h is "
                                 "the default",)


def test_the_ping_url_is_a_secret_and_is_never_echoed(tmp_path):
    url = "https://hc-ping.com/0b8e4a52-5f3c-4e8e-9b0a-3a1c2f9e7d11"
    settings = load(tmp_path, BACKUP_VERIFY_PING_URL=url)
    assert settings.verify_ping_url == url
    assert url in settings.secrets() and "/0b8e4a52-5f3c-4e8e-9b0a-3a1c2f9e7d11" in settings.secrets()
    assert settings.mask(f"GET {url} failed") == "GET **** failed"
    assert "BACKUP_VERIFY_PING_URL" in config.SECRET_VARIABLES
    bad = "ftp://example.com/secret-token-1234"
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BACKUP_VERIFY_PING_URL=bad)
    assert "BACKUP_VERIFY_PING_URL must be an http:// or https:// URL" in caught.value.message
    assert "secret-token" not in caught.value.message


@pytest.mark.parametrize("url, fail", [
    ("https://hc-ping.com/abc-uuid", "https://hc-ping.com/abc-uuid/fail"),
    ("https://hc-ping.com/ping-key/my-check", "https://hc-ping.com/ping-key/my-check/fail"),
    ("https://healthchecks.example.org/ping/abc", "https://healthchecks.example.org/ping/abc/fail"),
    ("https://uptime.betterstack.com/api/v1/heartbeat/tok", "https://uptime.betterstack.com/api/v1/heartbeat/tok/fail"),
    ("https://example.com/push/tok?status=up", None),
    ("http://127.0.0.1:8080/drill/tok", None),
    ("https://hc-ping.com/abc/fail", None),
])
def test_a_failure_goes_to_fail_only_where_the_service_takes_it(url, fail):
    assert failure_url(url) == fail


# -- the record -------------------------------------------------------------------------


def settings_in(tmp_path: Path, **env: str) -> config.Settings:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    settings = config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(tmp_path / "state")})
    settings.state_dir.mkdir(parents=True)
    return settings


def test_the_record_keeps_each_verdict_and_when_each_database_last_passed(tmp_path):
    settings = settings_in(tmp_path)
    db = settings.db
    drills.remember(settings, {db: Proof(True, "content identical", "0000000000000007", "content")}, "drill", at=100)
    drills.remember(settings, {db: Proof(False, "content differs in items", "0000000000000009", "content")},
                    "drill", at=200)
    entry = drills.read(settings).of(db)
    assert entry["ok"] is False and entry["txid"] == "0000000000000009" and entry["by"] == "drill"
    assert entry["at"] == drills.iso(200) and entry["passed_at"] == drills.iso(100)
    assert oct((settings.state_dir / "drills.json").stat().st_mode & 0o777) == "0o600"

    said = verified(settings, drills.read(settings), db, running=True)
    assert said["ok"] is False and said["next"] is None
    assert said["message"].startswith(f"the last restore drill ({drills.iso(200)}) failed: content differs")
    assert "'inv backup.snapshot'" in said["message"]  # the fix, named

    drills.remember(settings, {db: Proof(True, "content identical", "000000000000000a", "content")}, "verify", at=300)
    said = verified(settings, drills.read(settings), db, running=True)
    assert said["ok"] is True and said["by"] == "verify" and said["compared"] == "content"


def test_before_any_drill_status_says_when_and_whether_one_comes(tmp_path):
    settings = settings_in(tmp_path)
    record = drills.read(settings)
    assert verified(settings, record, settings.db, running=False)["message"] == \
        "no restore drill yet: drills run every 24h while the daemon runs"
    off = settings_in(tmp_path / "off", BACKUP_VERIFY_INTERVAL="off")
    assert "restore drills are off" in verified(off, drills.read(off), off.db, running=True)["message"]


# -- the schedule -------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        self.now += 600  # every look at the clock moves it on ten minutes: the waits end at once
        return self.now


class Said(list):
    """Stands for the runner's output: the lines it wrote."""

    def write(self, text):
        self.append(text)

    def flush(self):
        pass


class Alive:
    """Stands for litestream's process in process.alive()."""

    def is_running(self):
        return True

    def status(self):
        return "running"


def test_the_first_drill_comes_one_interval_after_the_start_then_every_interval(tmp_path, monkeypatch):
    settings = settings_in(tmp_path, BACKUP_VERIFY_INTERVAL="1h")
    clock = Clock(1_000_000.0)
    runner = Runner(settings, Alive(), open(os.devnull, "w"), clock=clock)
    started, drilled, planned = [], [], []
    real_schedule = drills.schedule

    def schedule(settings, **fields):
        planned.append(fields["next"])
        real_schedule(settings, **fields)

    def drill():
        drilled.append(clock.now)
        if len(drilled) == 2:
            raise Stopped

    monkeypatch.setattr(drills, "schedule", schedule)
    monkeypatch.setattr(runner, "drill", drill)
    started.append(clock.now)
    with pytest.raises(Stopped):
        runner.run()
    assert started[0] + 3600 <= drilled[0] <= started[0] + 3600 + 1800
    assert drilled[0] + 3600 - 1200 <= drilled[1] <= drilled[0] + 3600 + 1800
    assert planned[0] == drills.iso(started[0] + 600 + 3600)  # the start read the clock once


def test_a_runner_stops_when_litestream_is_gone(tmp_path):
    settings = settings_in(tmp_path)

    class Gone(Alive):
        def is_running(self):
            return False

    runner = Runner(settings, Gone(), open(os.devnull, "w"))
    with pytest.raises(Stopped):
        runner.run()


@pytest.mark.parametrize("path, passed, expected", [
    ("/ping/tok-123456", True, ["/ping/tok-123456"]),
    ("/ping/tok-123456", False, ["/ping/tok-123456/fail"]),
    ("/drill/tok-123456", False, []),
])
def test_a_drill_pings_once_when_it_passes_and_fail_only_where_taken(tmp_path, path, passed, expected):
    server = PingServer(path)
    try:
        settings = settings_in(tmp_path, BACKUP_VERIFY_PING_URL=server.url)
        said = Said()
        Runner(settings, Alive(), said)._ping(passed)
        assert server.paths == expected
        assert "tok-123456" not in "".join(said)
    finally:
        server.close()


# -- one consistent copy at a txid ---------------------------------------------------------


def ltx_header(page_size: int, txid: int, offset: int, size: int, salts: tuple[int, int]) -> bytes:
    head = bytearray(100)
    head[0:4] = b"LTX1"
    head[8:12] = struct.pack(">I", page_size)
    head[16:32] = struct.pack(">QQ", txid, txid)
    head[48:64] = struct.pack(">qq", offset, size)
    head[64:72] = struct.pack(">II", *salts)
    return bytes(head)


def wal_database(tmp_path: Path) -> tuple[Path, sqlite3.Connection, list[int]]:
    """A WAL database with autocheckpoint off, 5 commits; the WAL's end after each."""
    db = tmp_path / "live.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t (x)")
    ends = []
    for n in range(5):
        con.execute("INSERT INTO t VALUES (?)", (n,))
        ends.append(os.path.getsize(f"{db}-wal"))
    return db, con, ends


def position_at(db: Path, txid: int, end: int) -> None:
    """litestream's level-0 file for ``txid``, as if it had captured the WAL up to ``end``."""
    with open(f"{db}-wal", "rb") as fh:
        head = fh.read(32)
    where = folder(db) / "ltx" / "0"
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{txid:016x}-{txid:016x}.ltx").write_bytes(
        ltx_header(4096, txid, 32, end - 32, struct.unpack(">II", head[16:24])))


def rows(path: Path) -> list[int]:
    con = sqlite3.connect(path)
    try:
        return [r[0] for r in con.execute("SELECT x FROM t ORDER BY x")]
    finally:
        con.close()


def test_the_live_database_is_copied_exactly_as_it_was_at_a_txid(tmp_path):
    db, con, ends = wal_database(tmp_path)
    position_at(db, 3, ends[2])  # litestream captured the first three commits as txid 3
    out = tmp_path / "image.db"
    with Reading(db) as reading:
        reading.image(3, out)
    assert rows(out) == [0, 1, 2]  # not the two commits made after
    assert not Path(f"{out}-wal").exists()
    con.close()


def test_no_copy_when_a_checkpoint_wrote_later_changes_into_the_file_or_the_wal_restarted(tmp_path):
    db, con, ends = wal_database(tmp_path)
    position_at(db, 3, ends[2])
    con.execute("PRAGMA wal_checkpoint(PASSIVE)")  # every frame, the last two commits' too
    out = tmp_path / "image.db"
    with Reading(db) as reading, pytest.raises(NoImage) as caught:
        reading.image(3, out)
    assert caught.value.again and "a checkpoint copied changes made after txid" in caught.value.reason
    assert not out.exists() and not Path(f"{out}-wal").exists()

    image_possible(db, 3)  # from the files alone it looked possible: only the copy could tell

    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("INSERT INTO t VALUES (9)")  # a new WAL, with other salts
    with pytest.raises(NoImage) as early:
        image_possible(db, 3)  # told before any download is spent on it
    assert early.value.again and "its WAL restarted after txid" in early.value.reason
    with Reading(db) as reading, pytest.raises(NoImage) as caught:
        reading.image(3, out)
    assert caught.value.again and "its WAL restarted after txid" in caught.value.reason
    with Reading(db) as reading, pytest.raises(NoImage) as caught:
        reading.image(4, out)
    assert "no longer keeps its position at txid 0000000000000004" in caught.value.reason
    con.close()


def test_a_restart_keeps_when_the_runners_began_watching_so_doctor_sees_drills_that_never_come(tmp_path):
    settings = settings_in(tmp_path)
    drills.schedule(settings, pid=1, started_at="2026-12-01T00:00:00+00:00", interval="24h", next="x")
    drills.schedule(settings, pid=2, started_at="2026-12-02T00:00:00+00:00", interval="24h", next="y")
    plan = drills.read(settings).schedule
    assert plan["pid"] == 2 and plan["watching_since"] == "2026-12-01T00:00:00+00:00"
    drills.schedule(settings, pid=3, started_at="2026-12-03T00:00:00+00:00", interval="off", next=None)
    drills.schedule(settings, pid=4, started_at="2026-12-04T00:00:00+00:00", interval="24h", next="z")
    assert drills.read(settings).schedule["watching_since"] == "2026-12-04T00:00:00+00:00"  # off: anew
    drills.stopped(settings)  # now
    later = drills.iso(time.time() + 90000)  # a start more than an interval after that stop
    drills.schedule(settings, pid=5, started_at=later, interval="24h", next="w")
    assert drills.read(settings).schedule["watching_since"] == later  # a long stop: anew
    drills.stopped(settings)
    drills.schedule(settings, pid=6, started_at=drills.iso(time.time() + 60), interval="24h", next="v")
    assert drills.read(settings).schedule["watching_since"] == later  # a restart a minute on: kept


@pytest.mark.posix
def test_the_leftovers_of_a_killed_drill_are_its_folders_processes_only(tmp_path):
    import subprocess
    import sys

    settings = settings_in(tmp_path)
    inside = drills.folder(settings) / "chora-verify-1" / "chora.db"
    beside = settings.state_dir / "drills.json"
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    procs = [subprocess.Popen([*sleeper, str(path)]) for path in (inside, beside)]
    try:
        assert [p.pid for p in drills.leftovers(settings)] == [procs[0].pid]
        drills.clean(settings)
        assert procs[0].wait(10) is not None and procs[1].poll() is None
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


def test_a_drill_that_cannot_run_is_a_failed_drill_said_and_kept(tmp_path, monkeypatch):
    import backup.verify

    settings = settings_in(tmp_path)
    (tmp_path / "litestream.yml").write_text(
        f"dbs:\n  - path: {settings.db}\n    replica:\n      type: file\n      path: {tmp_path / 'replica'}\n")
    settings.db.write_bytes(b"")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(backup.verify, "verify", full_disk)
    said = Said()
    proofs = Runner(settings, Alive(), said).drill()
    assert proofs[settings.db].ok is False and "No space left on device" in proofs[settings.db].message
    assert drills.read(settings).of(settings.db)["ok"] is False
    assert any("FAILED" in line and "the drill could not run: OSError" in line for line in said)


def test_a_verify_that_compared_nothing_is_no_proof(tmp_path):
    """Judged by its lag alone (the live database ahead of a replica it could not hold still),
    a verify passes its checks but proves no content: it does not clear a failed drill."""
    from backup.verify import Check, VerifyResult, _proof

    class Unit:
        name = "chora.db"

    result = VerifyResult(configured=True)
    checks = [Check("sync", True, "synced"), Check("compare", True, "live database is ahead of the replica")]
    proof = _proof(Unit(), result, checks)
    assert proof.ok is False and proof.message.startswith("nothing compared: ")
    result.compared["chora.db"] = "content"
    assert _proof(Unit(), result, [*checks, Check("content", True, "content identical")]).ok is True
