"""A first upload slower than start-bg's wait: the daemon is left running, status says
so until the first sync is done, and every row is restorable. The uplink is a TCP
forwarder in front of the local S3 server, throttled to 0.5 MB/s.
"""
from __future__ import annotations

import sqlite3
import time
from urllib.parse import urlsplit

from conftest import insert, rows, wait_for

from .conftest import Forwarder, Restores, alive, setup, status, stop, write_s3_env

RATE = 512 * 1024  # bytes a second
SIZE = 4 * 1024 * 1024  # incompressible: about 8 s through that link, 4x the wait below


def big_db(path) -> None:
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, body BLOB)")
        con.executemany("INSERT INTO items (body) VALUES (randomblob(?))", [(64 * 1024,)] * (SIZE // 65536))
        con.commit()
    finally:
        con.close()


def test_start_bg_leaves_a_slow_first_upload_running_and_status_says_so(rws, report):
    began = time.monotonic()
    with Forwarder(urlsplit(rws.endpoint).port, rate=RATE) as uplink:
        write_s3_env(rws, endpoint=uplink.url)
        setup(rws)
        big_db(rws.db)
        started = rws.inv("backup.start-bg", "--timeout", "2")
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"first sync of {rws.db} still in progress after 2s" in started.stdout
        pid = rws.daemon_pid()
        assert pid and alive(pid)

        code, data = status(rws)
        assert code == 1 and data["databases"][0]["first_sync_pending"] is True
        human = rws.inv("backup.status")
        assert human.returncode == 1 and "first sync in progress" in human.stdout

        wait_for(lambda: status(rws)[0] == 0, 120, interval=1, what="the first sync to finish")
        waited = time.monotonic() - began
        assert alive(pid) and rws.daemon_pid() == pid
        insert(rws.db, "after the first sync")
        stop(rws)
        restored = Restores(rws)()
        assert restored == rows(rws.db) and len(restored) == SIZE // 65536 + 1
    report(f"slow-first-upload: {SIZE >> 20} MB at {RATE >> 10} KB/s: start-bg exited 0 after 2s, status "
           f"'first sync in progress' until healthy at {waited:.0f}s, every row restorable")
