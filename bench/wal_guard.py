"""How often a start takes a fresh full copy (issue 23's repair), and that it is exact.

    python bench/wal_guard.py [--cycles 6] [--rate 20] [--seconds 5]

A local-folder workspace; an application holding one connection commits --rate rows a
second (200-byte rows, SQLite's default autocheckpoint) the whole time, the seed's
workload compressed in time. Phase 1: --cycles stop/start cycles of the daemon, the app
writing throughout — while the daemon runs and while it is off, with no checkpoint but
SQLite's own. Phase 2: the same cycles, each with a checkpoint that restarts the WAL while
the daemon is off. Prints the full copies each phase's starts took (expect 0; then one per
cycle, except where litestream's own checkpoint had just restarted the WAL before the stop,
so that litestream copies the whole database itself) and whether a restore equals the live database row for row. Every process it
starts is stopped by its pid on exit.
"""
from __future__ import annotations

import argparse
import sqlite3
import threading
import time

from _workspace import workspace

FULL_COPY = "took a fresh full copy of"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--rate", type=float, default=20.0, help="commits a second")
    parser.add_argument("--seconds", type=float, default=5.0, help="running time of each cycle")
    args = parser.parse_args()
    with workspace() as ws:
        ws.inv("backup.local", "--no-start")
        con = sqlite3.connect(ws.db, isolation_level=None, timeout=30, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        lock, done = threading.Lock(), threading.Event()

        def write() -> None:
            while not done.wait(1 / args.rate):
                with lock:
                    con.execute("INSERT INTO t (body) VALUES (randomblob(200))")

        writer = threading.Thread(target=write, name="app")
        writer.start()
        try:
            for phase, outside in ((1, False), (2, True)):
                copies = 0
                for _ in range(args.cycles):
                    copies += ws.inv("backup.start-bg").stdout.count(FULL_COPY)
                    time.sleep(args.seconds)
                    ws.inv("backup.stop")
                    time.sleep(0.5)  # the app writes while backups are off
                    if outside:
                        with lock:
                            con.execute("PRAGMA wal_checkpoint(PASSIVE)")
                            con.execute("INSERT INTO t (body) VALUES (randomblob(200))")
                what = "a checkpoint restarting the WAL while off" if outside else "appends only while off"
                print(f"phase {phase} ({what}): {args.cycles} starts, {copies} full copies")
        finally:
            done.set()
            writer.join(30)
        ws.inv("backup.start-bg")  # the rows written since the last stop, then a final sync
        ws.inv("backup.stop")
        out = ws.root / "restored.db"
        ws.inv("backup.restore", "--output", str(out))
        live = con.execute("SELECT id, hex(body) FROM t ORDER BY id").fetchall()
        copy = sqlite3.connect(out).execute("SELECT id, hex(body) FROM t ORDER BY id").fetchall()
        con.close()
        print(f"restore: {len(copy)} of {len(live)} rows, {'equal' if copy == live else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
