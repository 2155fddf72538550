"""What a scheduled restore drill (issue 26) costs in requests, and how long it takes.

    python bench/drill.py [--cost-mb 100] [--sizes 200,1000] [--runs 3]
    python bench/drill.py --quick              # 20 MB, one run: does the script work?

A drill is what the runner beside the daemon does every BACKUP_VERIFY_INTERVAL
(``backup.drill.Runner.drill()``): sync through the running daemon, restore every
database from its replica, check it, and compare it with the live database read at the
same txid. Here it runs in-process, against the litestream the workspace's pidfile names.

1. Cost: a database of --cost-mb MB of incompressible 4 KB rows (_workspace.fill),
   replicated by a running daemon (`inv backup.setup`, `inv backup.start-bg`) to moto's
   S3 server on 127.0.0.1 (sync interval 10s, R2's default). Once the daemon has synced
   and its bucket fell quiet, one drill; moto's request log between two marks,
   classified by R2 class with bench/requests.py's classifier, and the bytes the GETs
   fetched (each object's size in the bucket's listing: moto's log does not carry sizes,
   and litestream's restore fetches whole objects). Then the daemon alone for as long as
   the drill took, for comparison. Then --history writes, one per sync interval (one L0
   file each), and a second drill the same way: a replica with a little history. Priced
   per month at R2's list prices (backup.cost) for a drill every 24h and every 1h.
2. Speed, for each of --sizes (MB; bench/verify.py's rows of about 150 bytes, indexed,
   which make hashing every row expensive, so --sizes 200,1000 gives its 155 and 773 MB
   databases): a daemon replicating to a local folder
   (`inv backup.local --no-start`, `inv backup.start-bg`), then medians of --runs of
   (a) raw `litestream restore -o` plus `PRAGMA integrity_check` of the result,
   (b) one drill, (c) `inv backup.verify`. Target: drill and verify at most 1.5x raw.

Every process started here is stopped by its pid (the daemon with `inv backup.stop`),
Ctrl-C included.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from urllib.parse import unquote

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _workspace import BIN, REPO, Bench, counting, fill, median, run_main, s3_server, workspace  # noqa: E402
from verify import fill_rows, raw_restore  # noqa: E402  (bench/verify.py: rows costly to hash)

sys.path.insert(0, str(REPO))
import psutil  # noqa: E402

from backup import config  # noqa: E402
from backup.cost import HOURS_PER_MONTH, PRICE_CLASS_A, PRICE_CLASS_B  # noqa: E402
from backup.drill import Runner  # noqa: E402

requests = counting()  # moto's server and the classifier; loaded last, it prunes sys.path
QUIET = 5.0  # seconds without a request before the bucket counts as quiet
SYNC = "10s"  # R2's default sync interval


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ as a process the workspace started would have it (the drill runner is
    started with the start's environment; litestream children inherit it)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def drill(ws: Bench, out: io.TextIOBase | None = None) -> tuple[float, str]:
    """One drill in-process beside the workspace's litestream: seconds, and the verdict."""
    pid = ws.pid()
    if pid is None:
        raise SystemExit("bench: no daemon runs in the workspace")
    settings = config.load(cwd=ws.path, environ=ws.env)
    with environment(ws.env):
        runner = Runner(settings, psutil.Process(pid), out or sys.stdout)
        started = time.perf_counter()
        proofs = runner.drill()
        took = time.perf_counter() - started
    failed = [f"{path}: {proof.message}" for path, proof in proofs.items() if not proof.ok]
    if not proofs or failed:
        raise SystemExit(f"bench: the drill failed: {failed or 'no database'}")
    (proof,) = proofs.values()
    return took, f"{proof.compared}, txid {proof.txid}: {proof.message}"


def wait_quiet(log, seconds: float = QUIET, limit: float = 900) -> None:
    """Until moto's log has not grown for ``seconds``."""
    end = time.monotonic() + limit
    size, since = log.mark(), time.monotonic()
    while time.monotonic() - since < seconds:
        if time.monotonic() > end:
            raise SystemExit(f"bench: the bucket did not fall quiet within {limit:g}s")
        time.sleep(0.25)
        if log.mark() != size:
            size, since = log.mark(), time.monotonic()


def requests_between(log, start: int, end: int, bucket: str) -> tuple[Counter, Counter, list[str]]:
    """(requests by operation, by R2 class, keys of the GetObjects) in moto's log between two marks."""
    with log.path.open("rb") as fh:
        fh.seek(start)
        text = requests._ANSI.sub("", fh.read(end - start).decode("utf-8", errors="replace"))
    ops: Counter = Counter()
    by_class: Counter = Counter()
    gets = []
    for match in requests._REQUEST.finditer(text):
        method, target = match.groups()
        path = target.partition("?")[0].lstrip("/")
        name, _, key = path.partition("/")
        if unquote(name) != bucket:
            continue
        cls, op = requests.classify(method, target)
        ops[op] += 1
        by_class[cls] += 1
        if op == "GetObject":
            gets.append(unquote(key))
    return ops, by_class, gets


def listing(s3, bucket: str) -> dict[str, int]:
    sizes = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        sizes.update({obj["Key"]: obj["Size"] for obj in page.get("Contents", [])})
    return sizes


def split(ops: Counter) -> tuple[int, int, int, int]:
    """LISTs, GETs, HEADs, and every other request."""
    lists, gets, heads = ops["ListObjectsV2"], ops["GetObject"], ops["HeadObject"]
    return lists, gets, heads, sum(ops.values()) - lists - gets - heads


def show(ops: Counter) -> str:
    return ", ".join(f"{op} {n}" for op, n in sorted(ops.items())) or "none"


def one_drill(ws: Bench, log, s3, bucket: str, size: int, label: str) -> None:
    """One drill between two marks of moto's log; its requests, its bytes, and the daemon alone."""
    wait_quiet(log)  # the uploads and the start's compactions are done
    before = listing(s3, bucket)
    mark = log.mark()
    print(f"   {label}: {len(before)} objects in the bucket")
    seconds, verdict = drill(ws)
    time.sleep(0.5)  # moto writes its log line after it answers
    end = log.mark()
    ops, by_class, keys = requests_between(log, mark, end, bucket)
    time.sleep(seconds)  # the daemon alone, for as long: what in the window was not the drill's
    alone, _, _ = requests_between(log, end, log.mark(), bucket)
    sizes = {**listing(s3, bucket), **before}
    unknown = [k for k in keys if k not in sizes]
    for key in unknown:
        with contextlib.suppress(Exception):
            sizes[key] = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    fetched = sum(sizes.get(k, 0) for k in keys)
    lists, gets, heads, other = split(ops)
    a, b = by_class["A"], by_class["B"]
    print(f"   drill: {seconds:.2f} s; {verdict}")
    print(f"   requests: LIST {lists}, GET {gets}, HEAD {heads}, other {other} ({show(ops)})")
    print(f"   R2 classes: A {a}, B {b}; downloaded {fetched / 1e6:.2f} MB "
          f"({fetched / size:.0%} of the database; {len(keys)} objects"
          + (f", {len(unknown)} sized by HEAD" if unknown else "") + ")")
    print(f"   the daemon alone, the next {seconds:.1f} s: {show(alone)}")
    for interval, hours in (("24h", 24), ("1h", 1)):
        per_month = HOURS_PER_MONTH / hours
        dollars = per_month * (a * PRICE_CLASS_A + b * PRICE_CLASS_B)
        print(f"   BACKUP_VERIFY_INTERVAL={interval:<4} {per_month:4.0f} drills a month: "
              f"{a * per_month:6.0f} Class A, {b * per_month:6.0f} Class B, ${dollars:.4f} a month at list price; "
              f"{fetched * per_month / 1e9:.1f} GB downloaded (R2 egress is free)")


def cost(megabytes: float, history: int) -> None:
    with contextlib.ExitStack() as stack, workspace(sync_interval=SYNC) as ws:
        endpoint, log, s3 = s3_server(stack)
        bucket = f"bench-drill-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        (ws.path / ".env").write_text(
            f"R2_ENDPOINT={endpoint}\nR2_BUCKET={bucket}\n"
            f"R2_ACCESS_KEY_ID={requests.ACCESS_KEY_ID}\nR2_SECRET_ACCESS_KEY={requests.SECRET_ACCESS_KEY}\n"
        )
        fill(ws.db, megabytes)  # rows of 4 KB: the size asked for (the shape costs no request)
        size = ws.db.stat().st_size
        ws.inv("backup.setup")
        print(f"\n1. cost of one drill: {size / 1e6:.0f} MB, the daemon (sync interval {SYNC}) "
              "replicating to moto's S3 on 127.0.0.1")
        try:
            ws.inv("backup.start-bg", "--timeout", "600")
            one_drill(ws, log, s3, bucket, size, "a) right after the first upload")
            if history:
                for n in range(history):  # one write per sync interval: one L0 file each
                    con = sqlite3.connect(ws.db, timeout=30)
                    try:
                        con.execute("UPDATE blobs SET body = ? WHERE id = ?", (os.urandom(4000), n * 1000 + 1))
                        con.commit()
                    finally:
                        con.close()
                    time.sleep(config.parse_duration(SYNC) + 1)
                one_drill(ws, log, s3, bucket, size, f"b) after {history} more writes, one per sync interval")
        finally:
            ws.stop()


def speed(sizes: list[float], runs: int) -> None:
    print(f"\n2. speed, daemon replicating to a local folder; medians of {runs} run(s)")
    results = []
    for size in sizes:
        with workspace() as ws:
            rows = fill_rows(ws.db, size)
            ws.inv("backup.local", "--no-start")
            try:
                ws.inv("backup.start-bg", "--timeout", "600")
                megabytes = ws.db.stat().st_size / 1e6
                raw, drills, verifies = [], [], []
                verdict = ""
                for run in range(runs):
                    out = ws.root / f"raw-{run}.db"
                    raw.append(raw_restore(ws, out))
                    out.unlink()
                    seconds, verdict = drill(ws, io.StringIO())
                    drills.append(seconds)
                    started = time.perf_counter()
                    result = ws.inv("backup.verify", check=False)
                    verifies.append(time.perf_counter() - started)
                    if result.returncode != 0 or "(page for page)" not in result.stdout:
                        raise SystemExit(f"bench: inv backup.verify failed:\n{result.stdout}{result.stderr}")
                    print(f"   {megabytes:.0f} MB run {run + 1}: raw {raw[-1]:.2f} s, drill {drills[-1]:.2f} s, "
                          f"verify {verifies[-1]:.2f} s", flush=True)
            finally:
                ws.stop()
        results.append((megabytes, rows, median(raw), median(drills), median(verifies), verdict))
    print(f"\n   {'size':>7} {'rows':>9} {'raw restore+check':>18} {'drill':>8} {'inv backup.verify':>18} "
          f"{'drill/raw':>10} {'verify/raw':>11}")
    for megabytes, rows, r, d, v, _ in results:
        print(f"   {megabytes:>5.0f}MB {rows:>9} {r:>17.2f}s {d:>7.2f}s {v:>17.2f}s {d / r:>9.2f}x {v / r:>10.2f}x")
    for megabytes, *_, verdict in results:
        print(f"   {megabytes:.0f} MB drill: {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cost-mb", type=float, default=100, help="database size for the cost part (MB)")
    parser.add_argument("--sizes", default="200,1000", help="database sizes for the speed part (MB)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--history", type=int, default=6,
                        help="writes, one per sync interval, before a second costed drill (0: none)")
    parser.add_argument("--quick", action="store_true", help="20 MB, one run: to check that the script works")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.cost_mb, args.sizes, args.runs, args.history = 20, "20", 1, 2

    def terminated(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    version = subprocess.run([str(BIN / "litestream"), "version"], check=False, capture_output=True,
                             text=True).stdout.strip()
    print(f"litestream {version}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{platform.machine()}, {date.today().isoformat()}")
    if not args.skip_cost:
        cost(args.cost_mb, args.history)
    if not args.skip_speed:
        speed([float(s) for s in args.sizes.split(",")], args.runs)
    return 0


if __name__ == "__main__":
    run_main(main)
