"""A read replica on another machine: `backup.follow` against a primary replicating to S3.

The follower is a second workspace (another folder, another HOME and state dir, the same
.env): what a reporting box or a teammate's laptop would be. Rows written on the primary
must reach the follower's copy while a reader holds it open; stopping, restarting and a
kill -9 of the follower's litestream must lose nothing.
"""
from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import time

import psutil
import pytest

from conftest import BIN, Workspace, insert, make_db, rows, wait_for

from .conftest import setup, start_bg, status, write_s3_env


def follower_of(primary: Workspace, root) -> Workspace:
    """Another machine: its own folder, HOME and state dir (outside the primary's root, whose
    every file but its own .env the suite scans for secrets), the same .env."""
    other = Workspace(root)
    shutil.copy(primary.path / ".env", other.path / ".env")
    return other


def follow(ws: Workspace, *args: str):
    return ws.inv("backup.follow", "--output", str(ws.path / "copy.db"), *args)


def followers(ws: Workspace) -> tuple[int, list[dict]]:
    result = ws.inv("backup.status", "--json")
    assert result.stdout.startswith("{"), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)["followers"]


def insert_synced(ws: Workspace, body: str) -> None:
    """Commit ``body`` on the primary and wait until its replica holds it: litestream has
    captured a newer txid than before, and the replica has that txid (status says so)."""
    def txids() -> tuple[str, str]:
        (db,) = status(ws)[1]["databases"]
        return db["local_txid"] or "", db["replica_txid"] or ""

    before, _ = txids()
    insert(ws.db, body)
    wait_for(lambda: (lambda local, replica: local > before and local == replica)(*txids()), 20,
             interval=0.2, what="the primary's sync")


def copy_rows(ws: Workspace) -> list[tuple]:
    return rows(ws.path / "copy.db")


def restores_running(ws: Workspace) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [])[1:2] == ["restore"] and str(ws.path) in " ".join(p.info["cmdline"])]


@pytest.mark.posix
def test_a_follower_keeps_a_readable_copy_through_stops_and_a_kill(rws, report, tmp_path_factory):
    began = time.monotonic()
    setup(rws)
    make_db(rws.db, 3)
    start_bg(rws)
    other = follower_of(rws, tmp_path_factory.mktemp("follower-host"))
    try:
        started = follow(other, "--background")
        assert started.returncode == 0, started.stdout + started.stderr
        assert "open it read-only" in started.stdout and "following chora.db into" in started.stdout
        assert copy_rows(other) == rows(rws.db)

        # A reader holds the copy open and keeps querying while changes apply.
        reader = sqlite3.connect(f"file:{other.path / 'copy.db'}?mode=ro", uri=True)
        try:
            insert(rws.db, "while a reader holds it")
            committed = time.monotonic()
            wait_for(lambda: reader.execute("SELECT count(*) FROM items").fetchone()[0] == len(rows(rws.db)),
                     20, interval=0.1, what="the change in the reader's open copy")
            seen_after = time.monotonic() - committed
        finally:
            reader.close()

        code, found = followers(other)
        assert code == 0 and len(found) == 1, found
        assert found[0]["state"] == "running" and found[0]["output"] == str(other.path / "copy.db")
        wait_for(lambda: followers(other)[1][0]["lag_seconds"] == 0, 20, interval=0.5, what="lag 0")

        # Stopped, then continued: nothing written meanwhile is lost.
        stopped = other.inv("backup.stop", "--follower", str(other.path / "copy.db"))
        assert stopped.returncode == 0 and "stopped the follower" in stopped.stdout, stopped.stdout
        assert restores_running(other) == []
        insert_synced(rws, "while the follower was stopped")
        again = follow(other, "--background")
        assert again.returncode == 0, again.stdout + again.stderr
        assert copy_rows(other) == rows(rws.db)

        # kill -9 of the follower's litestream: status says so; the next follow recovers.
        (pid,) = [f["pid"] for f in followers(other)[1]]
        psutil.Process(pid).send_signal(signal.SIGKILL)
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                 10, what="the kill")
        code, found = followers(other)
        assert code == 1 and found[0]["state"] == "stale", found
        text = other.inv("backup.status").stdout
        assert "  state          stale (its litestream is gone)" in text, text  # the JSON's word
        insert_synced(rws, "after the kill")
        recovered = follow(other, "--background")
        assert recovered.returncode == 0, recovered.stdout + recovered.stderr
        assert "removed a stale follower pidfile" in recovered.stdout
        assert copy_rows(other) == rows(rws.db)

        everything = other.inv("backup.stop", "--all")
        assert everything.returncode == 0 and "stopped the follower" in everything.stdout
        assert restores_running(other) == []
    finally:
        other.inv("backup.stop", "--all")
        other.cleanup()
    rws.assert_no_secrets()
    other.assert_no_secrets()
    report(f"follow: copy current through a reader's open connection ({seen_after:.1f}s after the "
           f"commit), a stop and a kill -9; {len(rows(rws.db))} rows, 0 lost, "
           f"{time.monotonic() - began:.1f}s")


def test_follow_refuses_what_it_must_not_touch(rws):
    setup(rws)
    # Nothing in the replica yet: nothing to follow, and no file written.
    empty = follow(rws, "--background")
    assert empty.returncode == 1 and "nothing to follow yet" in empty.stderr, empty.stderr
    assert not (rws.path / "copy.db").exists()

    make_db(rws.db, 2)
    start_bg(rws)
    own = rws.inv("backup.follow", "--output", str(rws.db), "--background")
    assert own.returncode == 1 and "this workspace's own replicated database" in own.stderr, own.stderr

    foreign = rws.path / "copy.db"
    foreign.write_bytes(b"someone else's file")
    refused = follow(rws, "--background")
    assert refused.returncode == 1 and "is not a copy a follower of chora.db wrote: pass --force" in refused.stderr
    assert foreign.read_bytes() == b"someone else's file"
    forced = follow(rws, "--background", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    (aside,) = rws.path.glob("copy.db.pre-follow-*")
    assert aside.read_bytes() == b"someone else's file"
    assert rows(foreign) == rows(rws.db)
    twice = follow(rws, "--background")
    assert twice.returncode == 1 and "a follower already writes" in twice.stderr

    # Four starts at once into one output: one follower, three refusals naming it.
    assert rws.inv("backup.stop", "--follower", str(foreign)).returncode == 0
    procs = [rws.spawn(str(BIN / "inv"), "backup.follow", "--output", str(foreign), "--background")
             for _ in range(4)]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert sum("following chora.db into" in o for o in outputs) == 1, outputs
    assert sum("a follower already writes" in o for o in outputs) == 3, outputs
    assert len(restores_running(rws)) == 1
    assert rws.inv("backup.stop", "--all").returncode == 0
    assert restores_running(rws) == []
    for text in (empty.stderr, own.stderr, refused.stderr, twice.stderr):
        assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text


@pytest.mark.posix
def test_follow_in_the_foreground_stops_on_ctrl_c(rws):
    write_s3_env(rws)
    setup(rws)
    make_db(rws.db, 2)
    start_bg(rws)
    proc = rws.spawn(str(BIN / "inv"), "backup.follow", "--output", str(rws.path / "copy.db"))
    wait_for(lambda: (rws.path / "copy.db").exists() and restores_running(rws), 30, what="the follower")
    insert(rws.db, "while following in the foreground")
    wait_for(lambda: len(copy_rows(rws)) == len(rows(rws.db)), 20, interval=0.2, what="the change")
    code, out = rws.finish(proc, signal.SIGINT)
    assert code == 0, out
    assert "stopped the follower of" in out and "open it read-only" in out
    assert restores_running(rws) == []


def test_a_follower_still_restoring_at_the_timeout_goes_on_and_can_be_stopped(rws):
    setup(rws)
    make_db(rws.db, 50)
    start_bg(rws)
    copy = rws.path / "copy.db"

    def settled() -> bool:
        code, found = followers(rws)
        return code == 0 and found[0]["state"] == "running" and found[0]["lag_seconds"] == 0

    def leftovers(running: bool = False) -> list:
        # A running follower keeps its position beside the file it opened: <working>-txid.
        return sorted(p for p in rws.path.glob(".copy.db.follow-*") if not (running and p.name.endswith("-txid")))

    # Returned before the first restore is done: it goes on, and the copy is put in place.
    first = follow(rws, "--background", "--timeout", "0", "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(first.stdout)["ready"] is False
    wait_for(settled, 30, interval=0.3, what="the follower to be running")
    assert copy_rows(rws) == rows(rws.db) and copy.read_bytes()[18:20] == b"\x01\x01"

    # A copy that cannot be resumed: restored beside it, swapped in by the follower itself.
    assert rws.inv("backup.stop", "--follower", str(copy)).returncode == 0
    (rws.path / "copy.db-txid").unlink()
    insert_synced(rws, "before the second start")
    second = follow(rws, "--background", "--timeout", "0")
    assert second.returncode == 0 and "still restoring after 0s" in second.stdout, second.stdout
    wait_for(settled, 30, interval=0.3, what="the swapped-in copy")
    assert copy_rows(rws) == rows(rws.db) and leftovers(running=True) == []

    # Stopped while restoring (no waiting behind the start): nothing half-done is left.
    assert rws.inv("backup.stop", "--follower", str(copy)).returncode == 0
    (rws.path / "copy.db-txid").unlink(missing_ok=True)
    third = follow(rws, "--background", "--timeout", "0")
    assert third.returncode == 0, third.stdout + third.stderr
    stopped = rws.inv("backup.stop", "--follower", str(copy))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert restores_running(rws) == [] and leftovers() == []
    assert copy_rows(rws) == rows(rws.db)
    foreground = rws.inv("backup.follow", "--output", str(copy), "--timeout", "5")
    assert foreground.returncode == 2 and "--timeout goes with --background" in foreground.stderr


def test_a_new_machine_follows_a_database_it_knows_only_from_a_glob(rws, tmp_path_factory):
    write_s3_env(rws, BACKUP_DB="chora.db,data/*.db")
    setup(rws)
    make_db(rws.db, 2)
    (rws.path / "data").mkdir()
    make_db(rws.path / "data" / "b.db", 4)
    start_bg(rws)
    other = follower_of(rws, tmp_path_factory.mktemp("glob-follower-host"))
    try:
        several = follow(other, "--background")
        assert several.returncode == 2 and "pick one of chora.db, data/b.db with --db" in several.stderr
        started = follow(other, "--background", "--db", "data/b.db")
        assert started.returncode == 0, started.stdout + started.stderr
        assert copy_rows(other) == rows(rws.path / "data" / "b.db")
        code, found = followers(other)
        assert code == 0 and found[0]["database"] == "data/b.db" and found[0]["lag_seconds"] == 0, found
    finally:
        other.inv("backup.stop", "--all")
        other.cleanup()
