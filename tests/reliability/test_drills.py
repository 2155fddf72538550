"""Scheduled restore drills (issue 26), with real processes: the first drill one interval
(1m) after the start, under a writer committing every 50 ms; a replica damaged under a running
daemon caught by the next drill and passing again after a snapshot; the ping URL told once
per passing drill and never for a failing one; a drill ended mid-restore leaves nothing.

Each test waits a minute or two for its drills: they are few, and the logic beneath them
(schedule, record, ping URL, consistent copy) is proven by fast tests in tests/test_drills.py.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import psutil
import pytest

from conftest import PingServer, insert, make_db, wait_for
from test_holes import NEVER, delete_middle_pending, set_levels

from .conftest import Forwarder, Writer, setup, status, stop, write_s3_env

pytestmark = pytest.mark.minutes

TOKEN = "drill-4b1d9e-ping-token"
FIRST_DRILL = 150  # seconds: the first drill comes one interval (1m) after the start, plus its time


@pytest.fixture
def pings():
    server = PingServer(f"/drill/{TOKEN}")  # not a healthchecks URL: a failure is told by silence
    try:
        yield server
    finally:
        server.close()


def spread(db) -> None:
    """300 rows of 1 KB over many pages: a later insert rewrites only the last of them, so a
    foreign first file stays visible in every restore."""
    make_db(db, 0)
    con = sqlite3.connect(db)
    con.executemany("INSERT INTO items (body) VALUES (?)", [(os.urandom(500).hex(),) for _ in range(300)])
    con.commit()
    con.close()


def record(ws) -> dict:
    path = ws.state / "drills.json"
    return json.loads(path.read_text()) if path.exists() else {}


def drilled(ws, after: str | None = None) -> dict:
    """Wait for a drill's verdict on the workspace's database newer than ``after``; it."""
    def newer():
        entry = record(ws).get("databases", {}).get(str(ws.db))
        return entry if entry and entry.get("by") == "drill" and entry["at"] != after else None
    return wait_for(newer, FIRST_DRILL, interval=0.5, what="a restore drill's verdict")


def doctor_drills(ws) -> tuple[int, dict]:
    result = ws.inv("backup.doctor", "--json")
    return result.returncode, {c["name"]: c for c in json.loads(result.stdout)["checks"] if c["name"].startswith("drill")}


def restores(ws) -> list[psutil.Process]:
    where = str(ws.state / "drill")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(arg.startswith(where) for arg in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def assert_token_nowhere(ws) -> None:
    for text in ws.outputs:
        assert TOKEN not in text
    for path in ws.root.rglob("*"):
        if path.is_file() and path.name != ".env":
            assert TOKEN.encode() not in path.read_bytes(), f"the ping token is in {path}"


def test_a_passing_drill_under_a_writer_is_recorded_pinged_once_and_logged(rws, pings):
    write_s3_env(rws, BACKUP_VERIFY_INTERVAL="1m", BACKUP_VERIFY_PING_URL=pings.url)
    make_db(rws.db, 3)
    setup(rws)
    started = rws.inv("backup.start-bg")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "warning: BACKUP_VERIFY_INTERVAL 1m is shorter than 1h" in started.stderr
    code, data = status(rws)
    verified = data["databases"][0]["verified"]
    assert code == 0 and verified["ok"] is None and verified["next"], verified
    assert "the first runs at" in verified["message"]
    with Writer(rws.db, pause=0.05) as writer:
        entry = drilled(rws)
        writer.wait_commits(5)
    assert entry["ok"] is True and entry["compared"] == "content", entry
    code, data = status(rws)
    verified = data["databases"][0]["verified"]
    assert code == 0, data
    assert verified["ok"] is True and verified["compared"] == "content" and verified["txid"]
    assert verified["at"] and verified["next"] > verified["at"]
    assert "content identical" in verified["message"]
    assert pings.paths == [f"/drill/{TOKEN}"]  # exactly one request for one passing drill
    code, checks = doctor_drills(rws)
    check = checks["drill"]
    assert check["state"] == "warn" and "last passed" in check["detail"]  # 1m: warned, not failed
    logs = rws.inv("backup.logs", "-n", "200")
    assert f"chora-backup drill: {rws.db}: ok at txid {verified['txid']}" in logs.stdout
    stop(rws)
    assert not (rws.state / "drill").exists() and not (rws.state / "drill.pid").exists()
    assert_token_nowhere(rws)


@pytest.mark.posix
def test_a_damaged_replica_fails_the_next_drill_until_a_snapshot(ws, pings):
    """Two databases, two kinds of damage under the running daemon, one drill: a level-0 file
    deleted from one replica, another database's history written into the other's prefix."""
    other = ws.path / "other.db"
    ws.write_env(BACKUP_DB="chora.db,other.db", BACKUP_VERIFY_INTERVAL="1m", BACKUP_VERIFY_PING_URL=pings.url,
                 BACKUP_LOCAL_DIR=str(ws.root / "backups"))
    make_db(ws.db, 3)
    spread(other)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    set_levels(ws, *NEVER)  # no compaction to merge the files around the damage
    assert ws.inv("backup.start-bg").returncode == 0
    for n in range(4):
        insert(ws.db, f"late {n}")
        insert(other, f"late {n}")
        time.sleep(1.2)  # one L0 file each
    missing = delete_middle_pending(ws, 0)
    # A foreign database's first file (its whole content) where other.db's history starts.
    foreign = ws.root / "foreign"
    foreign.mkdir()
    spread(foreign / "f.db")  # the same shape, other rows
    conf = foreign / "litestream.yml"
    conf.write_text(f"dbs:\n  - path: {foreign / 'f.db'}\n    replica:\n      type: file\n"
                    f"      path: {foreign / 'replica'}\n")
    assert ws.litestream("replicate", "-config", str(conf), "-no-expand-env", "-once").returncode == 0
    theirs = next((foreign / "replica").rglob("0000000000000001-*.ltx")).read_bytes()
    replaced = list((ws.root / "backups" / "other.db").rglob("0000000000000001-*.ltx"))
    assert replaced
    for path in replaced:
        path.write_bytes(theirs)

    entry = drilled(ws)
    assert entry["ok"] is False and f"txid {missing:016x} is missing" in entry["message"], entry
    assert record(ws)["databases"][str(other)]["ok"] is False, record(ws)
    code, data = status(ws)
    assert code == 1 and data["healthy"] is False
    for db in data["databases"]:
        assert db["verified"]["ok"] is False and "the last restore drill" in db["verified"]["message"]
        assert "inv backup.snapshot" in db["verified"]["message"], db["verified"]
    human = ws.inv("backup.status")
    assert human.returncode == 1 and "verified       the last restore drill" in human.stdout
    code, drill = doctor_drills(ws)
    assert code == 1 and set(drill) == {"drill (chora.db)", "drill (other.db)"}
    assert all(c["state"] == "fail" and "inv backup.snapshot" in c["fix"] for c in drill.values())
    assert pings.paths == []  # a failing drill sends nothing: silence is the alarm

    assert ws.inv("backup.snapshot").returncode == 0
    verify = ws.inv("backup.verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    code, data = status(ws)
    assert code == 0 and all(db["verified"]["ok"] is True and db["verified"]["by"] == "verify"
                             for db in data["databases"])
    assert all(c["state"] != "fail" for c in doctor_drills(ws)[1].values())
    assert pings.paths == []
    assert ws.inv("backup.stop").returncode == 0


@pytest.mark.posix
@pytest.mark.parametrize("how", ["stop", "kill -9"])
def test_a_drill_ended_mid_restore_leaves_no_temporary_file(rws, s3_endpoint, how):
    """A restore slowed to 1 MB/s: 'inv backup.stop' ends the drill at once, its restore killed
    and its folder gone; a runner killed outright leaves them to the stop, which removes them."""
    port = int(s3_endpoint.rsplit(":", 1)[1])
    with Forwarder(port, down=1_000_000) as slow:
        write_s3_env(rws, slow.url, BACKUP_VERIFY_INTERVAL="1m")
        make_db(rws.db, 0)
        con = sqlite3.connect(rws.db)
        con.executemany("INSERT INTO items (body) VALUES (?)", [(os.urandom(500).hex(),) for _ in range(8000)])
        con.commit()  # 8 MB that does not compress: seconds to restore at 1 MB/s
        con.close()
        setup(rws)
        start = rws.inv("backup.start-bg", "--timeout", "120")
        assert start.returncode == 0, start.stdout + start.stderr
        try:
            wait_for(lambda: restores(rws), FIRST_DRILL, interval=0.2, what="the drill's restore")
        except AssertionError:
            raise AssertionError((rws.state / "litestream.log").read_text()[-3000:]) from None
        assert list((rws.state / "drill").rglob("*"))  # its temporary folder
        if how == "kill -9":
            runner = int(json.loads((rws.state / "drill.pid").read_text())["pid"])
            os.kill(runner, signal.SIGKILL)
            wait_for(lambda: not psutil.pid_exists(runner) or psutil.Process(runner).status() == "zombie",
                     10, what="the runner to die")
        stopped = rws.inv("backup.stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert restores(rws) == []
        assert not (rws.state / "drill").exists()
        kept = record(rws).get("databases", {})
        assert all(e.get("by") != "drill" for e in kept.values()), kept  # a cut drill says nothing
