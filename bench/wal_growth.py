"""How large the WAL grows between checkpoints under a heavy workload.

    python bench/wal_growth.py [--minutes 11] [--rate 10] [--intervals 1m,10m]

One litestream daemon per checkpoint interval (a local folder replica, sync 10 s),
each database written --rate times a second (200-byte rows, one commit each) for
--minutes; the WAL's size is sampled after every write. Takes --minutes of real time. Prints the largest each reached. bench/requests.py measures
the same under the seed's workload (a write every 26 s). Every process it starts is
stopped by its pid on exit.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from _workspace import BIN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=11.0)
    parser.add_argument("--rate", type=float, default=10.0, help="commits a second on each database")
    parser.add_argument("--intervals", default="1m,10m", help="checkpoint-interval values, side by side")
    args = parser.parse_args()
    intervals = [i.strip() for i in args.intervals.split(",") if i.strip()]
    with tempfile.TemporaryDirectory(prefix="chora-bench-wal-") as tmp:
        root = Path(tmp)
        procs: list[subprocess.Popen] = []
        cons: dict[str, sqlite3.Connection] = {}
        largest = dict.fromkeys(intervals, 0)
        try:
            for interval in intervals:
                folder = root / interval
                folder.mkdir()
                db = folder / "chora.db"
                con = sqlite3.connect(db, timeout=30)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, at REAL, body TEXT)")
                con.commit()
                cons[interval] = con
                config = folder / "litestream.yml"
                config.write_text(f"dbs:\n  - path: {db}\n    checkpoint-interval: {interval}\n    replica:\n"
                                  f"      type: file\n      path: {folder / 'replica'}\n      sync-interval: 10s\n")
                with (folder / "litestream.log").open("wb") as log:
                    procs.append(subprocess.Popen(
                        [str(BIN / "litestream"), "replicate", "-config", str(config), "-no-expand-env"],
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"},
                    ))
            end = time.monotonic() + args.minutes * 60
            while time.monotonic() < end:
                for interval, con in cons.items():
                    con.execute("INSERT INTO events (at, body) VALUES (?, ?)", (time.time(), "x" * 200))
                    con.commit()
                    wal = root / interval / "chora.db-wal"
                    if wal.exists():
                        largest[interval] = max(largest[interval], wal.stat().st_size)
                time.sleep(1 / args.rate)
        finally:
            for con in cons.values():
                con.close()
            for proc in procs:
                proc.terminate()
                proc.wait(60)
    print(f"heavy workload: {args.rate:g} writes a second (200-byte rows) for {args.minutes:g} minutes, sync 10 s")
    for interval, size in largest.items():
        print(f"  checkpoint-interval {interval:>4}: largest WAL {size / 1024:,.0f} KiB")


if __name__ == "__main__":
    main()
