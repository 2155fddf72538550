"""How long a row written on the primary takes to show in a follower's copy.

    python bench/follow_delay.py [--writes 30] [--intervals 1s,10s] [--follow-interval 1s]

Starts moto's S3 server on 127.0.0.1, a primary workspace replicating to it (`inv
backup.start-bg`) and a follower workspace beside it (another folder and state dir, the same
.env) running `inv backup.follow --background`. A writer commits one row every 2 s on the
primary; a reader holds the copy open read-only and polls it every 20 ms, noting when each
row first appears. Prints p50, p95 and max of commit-to-visible, per primary sync interval.
Every process started here is stopped by its pid on exit, Ctrl-C included.
"""
from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _workspace import Bench, counting as _counting, median, s3_server  # noqa: E402

counting = _counting()  # the moto server and request classifier of bench/requests.py

WRITE_EVERY = 2.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def workspace(stack: ExitStack, name: str, env_text: str, interval: str) -> Bench:
    root = Path(tempfile.mkdtemp(prefix=f"chora-bench-{name}-"))
    bench = Bench(root, sync_interval=interval)
    stack.callback(shutil.rmtree, root, ignore_errors=True)
    stack.callback(lambda: bench.inv("backup.stop", "--all", check=False))
    (bench.path / ".env").write_text(env_text)
    return bench


def run(endpoint: str, s3, interval: str, follow_interval: str, writes: int) -> list[float]:
    bucket = f"bench-follow-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    env_text = (f"R2_ENDPOINT={endpoint}\nR2_BUCKET={bucket}\nR2_ACCESS_KEY_ID={counting.ACCESS_KEY_ID}\n"
                f"R2_SECRET_ACCESS_KEY={counting.SECRET_ACCESS_KEY}\n")
    with ExitStack() as stack:
        primary = workspace(stack, "primary", env_text, interval)
        follower = workspace(stack, "follower", env_text, interval)
        con = sqlite3.connect(primary.db)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, at REAL)")
        con.execute("INSERT INTO events (at) VALUES (0)")
        con.commit()
        primary.inv("backup.setup")
        primary.inv("backup.start-bg")
        copy = follower.path / "copy.db"
        follower.inv("backup.follow", "--output", str(copy), "--interval", follow_interval, "--background")
        seen: dict[int, float] = {}
        committed: dict[int, float] = {}
        done = threading.Event()

        def read() -> None:
            reader = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)  # held open throughout
            while not done.is_set() or len(seen) < len(committed):
                now = time.monotonic()
                for (row,) in reader.execute("SELECT id FROM events WHERE id > ?", (max(seen, default=1),)):
                    seen.setdefault(row, now)
                if done.is_set() and now - last[0] > 60:
                    break  # a row that never arrives is reported as missing
                time.sleep(0.02)
            reader.close()

        last = [time.monotonic()]
        thread = threading.Thread(target=read)
        thread.start()
        for _ in range(writes):
            cur = con.execute("INSERT INTO events (at) VALUES (?)", (time.time(),))
            con.commit()
            committed[cur.lastrowid] = last[0] = time.monotonic()
            time.sleep(WRITE_EVERY)
        done.set()
        thread.join()
        con.close()
        missing = [i for i in committed if i not in seen]
        if missing:
            raise SystemExit(f"bench: rows {missing} never reached the follower's copy")
        return [seen[i] - committed[i] for i in committed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=30, help="rows written per run; default 30")
    parser.add_argument("--intervals", default="1s,10s", help="primary sync intervals; default 1s,10s")
    parser.add_argument("--follow-interval", default="1s", help="the follower's --interval; default 1s")
    args = parser.parse_args(argv)
    with ExitStack() as cleanup:
        endpoint, _, s3 = s3_server(cleanup)
        print(f"commit on the primary to visible in the follower's open copy; {args.writes} rows, "
              f"one every {WRITE_EVERY:g}s, follow interval {args.follow_interval}")
        print(f"  {'sync interval':<14} {'p50':>7} {'p95':>7} {'max':>7}   bound: sync + follow interval")
        for interval in args.intervals.split(","):
            delays = run(endpoint, s3, interval.strip(), args.follow_interval, args.writes)
            print(f"  {interval:<14} {median(delays):6.2f}s {percentile(delays, 95):6.2f}s "
                  f"{max(delays):6.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
