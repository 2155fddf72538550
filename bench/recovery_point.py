"""Recovery point: how long a commit waits before it is in the replica.

    python bench/recovery_point.py [--seconds 60] [--intervals 1s,10s]

Runs the real daemon (`inv backup.local --background`, a file replica) under
steady writes. Each commit's time is taken as it returns; the local LTX file
that captured it is the first one litestream writes after that moment, and
the commit is replicated when a file of the same name appears in the
replica. Prints p50 / p95 / max per sync interval (target: p95 at most the
interval + 0.5 s).
"""
from __future__ import annotations

import argparse
import sqlite3
import threading
import time
from pathlib import Path

from _workspace import fill, workspace

POLL = 0.005


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def watch(folder: Path, seen: dict[str, float], stop: threading.Event) -> None:
    """Record when each LTX file first appears in ``folder``."""
    while not stop.is_set():
        now = time.time()
        try:
            for entry in folder.iterdir():
                seen.setdefault(entry.name, now)
        except FileNotFoundError:
            pass
        time.sleep(POLL)


def run(interval: str, seconds: float) -> list[float]:
    period = max(0.2, float(interval.rstrip("s")) / 10)
    with workspace(sync_interval=interval) as ws:
        fill(ws.db, 0.1)
        ws.inv("backup.local", "--background")
        local = ws.path / ".chora.db-litestream" / "ltx" / "0"
        replica = ws.root / "home" / ".chora" / "backups" / "chora.db" / "ltx" / "0"
        local_seen: dict[str, float] = {}
        replica_seen: dict[str, float] = {}
        stop = threading.Event()
        watchers = [
            threading.Thread(target=watch, args=(local, local_seen, stop), daemon=True),
            threading.Thread(target=watch, args=(replica, replica_seen, stop), daemon=True),
        ]
        for w in watchers:
            w.start()
        commits: list[float] = []
        con = sqlite3.connect(ws.db)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            con.execute("INSERT INTO blobs (body) VALUES (randomblob(200))")
            con.commit()
            commits.append(time.time())
            time.sleep(period)
        con.close()
        settle = time.monotonic() + float(interval.rstrip("s")) * 2 + 2
        while time.monotonic() < settle:
            time.sleep(0.1)
        stop.set()
        for w in watchers:
            w.join()
        ws.stop()

    captures = sorted((t, name) for name, t in local_seen.items())
    latencies = []
    for committed in commits:
        name = next((n for t, n in captures if t >= committed), None)
        if name and name in replica_seen:
            latencies.append(replica_seen[name] - committed)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="writing time per interval")
    parser.add_argument("--intervals", default="1s,10s")
    args = parser.parse_args()
    print(f"{'sync interval':<14} {'commits':>8} {'p50':>7} {'p95':>7} {'max':>7}  target p95")
    for interval in args.intervals.split(","):
        latencies = run(interval, args.seconds)
        limit = float(interval.rstrip("s")) + 0.5
        p95 = percentile(latencies, 0.95)
        verdict = "met" if p95 <= limit else "MISSED"
        print(
            f"{interval:<14} {len(latencies):>8} {percentile(latencies, 0.5):>6.2f}s "
            f"{p95:>6.2f}s {max(latencies):>6.2f}s  <= {limit:g}s {verdict}"
        )


if __name__ == "__main__":
    main()
