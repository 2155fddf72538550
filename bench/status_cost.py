"""What watching replication costs: S3 requests and time per `inv backup.status`, and the
uploads an hour with status polled every second.

    python bench/status_cost.py [--minutes 10] [--calls 10] [--skip-hourly]

Starts moto's S3 server on 127.0.0.1 and drives real workspaces through `inv`, as a
user (or a status bar, or a cron job) would:

1. Per call: `inv backup.status` with no daemon (it lists the replica), and with a
   daemon running (it asks the daemon), with and without a write before each call;
   the S3 requests each call made, by operation, and its wall time beside `inv --list`.
   Then a daemon with the heartbeat (1m, to a local HTTP server) and metrics on, its
   metrics scraped every second: the requests to the bucket meanwhile.
2. Per hour: four daemons side by side for ``--minutes`` of real time, each against
   its own bucket: the seed's workload (a write every 26.3 s) and a heavy one (a
   write every second), each once with `inv backup.status` run every second and
   once left alone. PUTs and LISTs an hour, status's own requests included.

Real time on purpose: status may force one WAL sync per sync interval, and whether
that adds uploads depends on litestream's 1 s WAL check, which no speed-up divides.
Every process started here is stopped by its pid on exit, Ctrl-C included.
"""
from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _workspace import BIN, Bench, counting as _counting, median, s3_server  # noqa: E402

counting = _counting()  # the moto server and request classifier of bench/requests.py

SEED_PERIOD = 730 * 3600 / 100_000  # seconds between writes: the seed's 100k a month
HEAVY_PERIOD = 1.0


def r2_workspace(stack: ExitStack, endpoint: str, s3, name: str) -> Bench:
    root = Path(tempfile.mkdtemp(prefix=f"chora-bench-{name}-"))
    bench = Bench(root, sync_interval="10s")  # R2's default interval
    stack.callback(shutil.rmtree, root, ignore_errors=True)
    stack.callback(bench.stop)  # first: the daemon stops before its folder goes
    bucket = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    bench.bucket = bucket
    (bench.path / ".env").write_text(
        f"R2_ENDPOINT={endpoint}\nR2_BUCKET={bucket}\n"
        f"R2_ACCESS_KEY_ID={counting.ACCESS_KEY_ID}\nR2_SECRET_ACCESS_KEY={counting.SECRET_ACCESS_KEY}\n"
    )
    con = sqlite3.connect(bench.db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, at REAL, body TEXT)")
    con.commit()
    con.close()
    bench.inv("backup.setup")
    return bench


def write(db: Path) -> None:
    con = sqlite3.connect(db, timeout=10)
    try:
        con.execute("INSERT INTO events (at, body) VALUES (?, ?)", (time.time(), "x" * 200))
        con.commit()
    finally:
        con.close()


def per_call(bench: Bench, log, calls: int, writing: bool) -> tuple[Counter, float]:
    """Requests per call (summed over ``calls``) and the median wall time of one call."""
    ops: Counter = Counter()
    times = []
    for _ in range(calls):
        if writing:
            write(bench.db)
        time.sleep(1.5)  # the daemon's own sync of that write falls outside the window
        start_mark = log.mark()
        started = time.perf_counter()
        bench.inv("backup.status", check=False)
        times.append(time.perf_counter() - started)
        time.sleep(0.3)  # moto writes its log line after it answers
        tally = log.tally(start_mark, log.mark()).get(bench.bucket)
        if tally:
            ops.update(tally.by_op)
    return ops, median(times)


def inv_list_time(bench: Bench, calls: int) -> float:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        subprocess.run([str(BIN / "inv"), "--list"], cwd=bench.path, env=bench.env, capture_output=True)
        times.append(time.perf_counter() - started)
    return median(times)


def show(ops: Counter, calls: int) -> str:
    if not ops:
        return "none"
    return ", ".join(f"{op} {n / calls:g}" for op, n in sorted(ops.items()))


def part_one(endpoint: str, log, s3, calls: int) -> None:
    with ExitStack() as stack:
        bench = r2_workspace(stack, endpoint, s3, "percall")
        write(bench.db)
        bench.inv("backup.start-bg")
        bench.inv("backup.stop")  # the replica now holds the database; no daemon runs
        print(f"\n1. per `inv backup.status` call ({calls} calls each; requests per call, median time)")
        floor = inv_list_time(bench, calls)
        print(f"   {'inv --list (the floor)':<38} {floor * 1000:6.0f} ms")
        ops, took = per_call(bench, log, calls, writing=False)
        print(f"   {'no daemon (lists the replica)':<38} {took * 1000:6.0f} ms   {show(ops, calls)}")
        bench.inv("backup.start-bg")
        time.sleep(12)  # past the start-up listings and the first sync interval
        ops, took = per_call(bench, log, calls, writing=False)
        print(f"   {'daemon running, database idle':<38} {took * 1000:6.0f} ms   {show(ops, calls)}")
        ops, took = per_call(bench, log, calls, writing=True)
        print(f"   {'daemon running, a write before each':<38} {took * 1000:6.0f} ms   {show(ops, calls)}")
        bench.stop()


def part_watch(endpoint: str, log, s3, seconds: float = 75.0) -> None:
    """Heartbeat (1m) and metrics on, metrics scraped every second, the database idle —
    beside a control daemon with neither, started the same way at the same time."""
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    pings: list[float] = []

    class Ping(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            pings.append(time.time())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    with ExitStack() as stack:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ping)
        stack.callback(httpd.server_close)
        stack.callback(httpd.shutdown)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        watched = r2_workspace(stack, endpoint, s3, "watched")
        control = r2_workspace(stack, endpoint, s3, "control")
        metrics_port = counting.free_port()
        with (watched.path / ".env").open("a") as fh:
            fh.write(f"BACKUP_HEARTBEAT_URL=http://127.0.0.1:{httpd.server_address[1]}/ping/bench\n"
                     f"BACKUP_HEARTBEAT_INTERVAL=1m\nBACKUP_METRICS_ADDR=127.0.0.1:{metrics_port}\n")
        watched.inv("backup.setup")
        for bench in (watched, control):
            write(bench.db)
            bench.inv("backup.start-bg")
        time.sleep(12)  # past the start-up listings
        start_mark, scrapes, until = log.mark(), 0, time.monotonic() + seconds
        while time.monotonic() < until:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
                answer.read()
            scrapes += 1
            time.sleep(1.0)
        time.sleep(0.3)
        tallies = log.tally(start_mark, log.mark())
        print(f"\n1b. {seconds:g} s, databases idle; requests to each bucket:")
        for name, bench in (("heartbeat (1m) and metrics on", watched), ("neither (control)", control)):
            tally = tallies.get(bench.bucket)
            print(f"   {name:<38} {dict(tally.by_op) if tally else 'none'}")
        print(f"   ({len(pings)} heartbeat ping(s) received, {scrapes} metrics scrapes)")
        for bench in (watched, control):
            bench.stop()


class Runner:
    """One workload on one daemon; with ``poll``, `inv backup.status` every second."""

    def __init__(self, bench: Bench, period: float, poll: bool):
        self.bench, self.period, self.poll = bench, period, poll
        self.writes = 0
        self.polls = 0
        self.failing = 0

    def writer(self, until: float) -> None:
        next_at = time.monotonic()
        while time.monotonic() < until:
            write(self.bench.db)
            self.writes += 1
            next_at += self.period
            time.sleep(max(0.0, next_at - time.monotonic()))

    def poller(self, until: float) -> None:
        while time.monotonic() < until:
            started = time.monotonic()
            result = self.bench.inv("backup.status", check=False)
            self.polls += 1
            self.failing += result.returncode != 0
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


def part_two(endpoint: str, log, s3, minutes: float) -> None:
    with ExitStack() as stack:
        runs = {}
        for workload, period in (("seed", SEED_PERIOD), ("heavy", HEAVY_PERIOD)):
            for poll in (False, True):
                name = f"{workload}-{'poll' if poll else 'quiet'}"
                bench = r2_workspace(stack, endpoint, s3, name)
                write(bench.db)
                bench.inv("backup.start-bg")
                runs[name] = Runner(bench, period, poll)
        time.sleep(15)  # past every daemon's start-up burst
        start_mark = log.mark()
        started = time.monotonic()
        until = started + minutes * 60
        threads = [threading.Thread(target=r.writer, args=(until,)) for r in runs.values()]
        threads += [threading.Thread(target=r.poller, args=(until,)) for r in runs.values() if r.poll]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(12)  # the last writes' uploads land inside the window
        hours = (time.monotonic() - started) / 3600
        tallies = log.tally(start_mark, log.mark())
        print(f"\n2. uploads an hour over {minutes:g} real minutes, sync interval 10s "
              "(status's own requests included)")
        print(f"   {'run':<12} {'writes/h':>9} {'status/h':>9} {'PutObject/h':>12} {'ListObjectsV2/h':>16}"
              f" {'Class A/h':>10}  failing status calls")
        for name, run in runs.items():
            tally = tallies.get(run.bench.bucket) or counting.Tally()
            print(f"   {name:<12} {run.writes / hours:9.0f} {run.polls / hours:9.0f} "
                  f"{tally.by_op['PutObject'] / hours:12.0f} {tally.by_op['ListObjectsV2'] / hours:16.0f} "
                  f"{tally.by_class['A'] / hours:10.0f}  {run.failing}")
            run.bench.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="real minutes of part 2; default 10")
    parser.add_argument("--calls", type=int, default=10, help="status calls per case in part 1; default 10")
    parser.add_argument("--skip-hourly", action="store_true", help="skip part 2 (the real-time hour)")
    args = parser.parse_args(argv)
    with ExitStack() as cleanup:
        endpoint, log, s3 = s3_server(cleanup)
        print(f"litestream {subprocess.run([str(BIN / 'litestream'), 'version'], capture_output=True, text=True).stdout.strip()}, "
              f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}")
        part_one(endpoint, log, s3, args.calls)
        part_watch(endpoint, log, s3)
        if not args.skip_hourly:
            part_two(endpoint, log, s3, args.minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
