"""Count the S3 requests litestream makes, by Cloudflare R2 billing class.

    python bench/requests.py --speedup 1 --warmup 10 --minutes 60      # the reference: real time
    python bench/requests.py [--minutes N] [--warmup N] [--speedup K]   # quick, time-compressed
    python bench/requests.py --speedup 1 --variants project,project:l1=15m:checkpoint=10m

The reference is real time (``--speedup 1``): 10 minutes of warm-up, up to 15 more for
each idle database's first level-1 merge, the window, then the restores: about 85 minutes
for a 60-minute window (the one that sees the hourly timers), 40 for a 15-minute one. The time-compressed mode (default K=10:
6 minutes of warm-up and 3 measured, about 10 minutes) is for quick comparisons only:
it cannot see WAL checkpoints, whose timer is local and not scaled, so each of its real
minutes holds about ten writes and one checkpoint, and a checkpoint's extra upload
almost always rides on a write's. In real time, at litestream's 1-minute checkpoint, a
write every 26 s ships half again as many files as it writes. ``--variants`` runs
configs side by side: ``defaults``, ``project`` (what ``inv backup.setup`` renders),
and ``project`` with overrides (``l1``/``l2``/``l3`` for a level's interval,
``checkpoint`` for the databases' checkpoint-interval, or a global key).

Starts moto's S3 server on 127.0.0.1 and runs four real litestream daemons
side by side, each against its own bucket: litestream's default settings and
this project's rendered R2 config, each for an idle database (a few writes,
then nothing) and for the seed's workload (100k writes a month, evenly
spread). moto logs one line per request; each bucket's lines inside a common
measuring window are classified by R2 class and turned into requests per
hour and dollars per month. Afterwards every replica is restored, to the
latest state and (seed workload) to the middle of the window, and those
restores' requests and times are reported too.

Time compression: litestream's timers (sync interval, compaction levels, L0
retention and its check, snapshots) run on the wall clock, so ``--speedup K``
divides every one of them, and the write period, by K: the daemon does in one
minute what it would do in K, and the counts are scaled back to real hours.
The local timers (the 1 s WAL check, checkpoints) make no requests and are
left alone; K stops at 10, where the scaled sync interval reaches that 1 s.
``--speedup 1`` runs the rendered config exactly as `inv backup.setup` writes
it, in real time.

Every process this starts is stopped by its pid on exit, Ctrl-C included.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, unquote

HERE = Path(__file__).resolve().parent
# This file is named requests.py: keep its folder off sys.path so it never
# shadows the requests library, and put the checkout first for `backup`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import yaml  # noqa: E402

from backup import config  # noqa: E402
from backup.cost import (  # noqa: E402
    FREE_CLASS_A,
    FREE_CLASS_B,
    FREE_STORAGE_GB,
    HOURS_PER_MONTH,
    PRICE_CLASS_A,
    PRICE_CLASS_B,
    PRICE_STORAGE_GB_MONTH,
    Timers,
    requests_per_hour,
)
from backup.litestream import Litestream  # noqa: E402
from backup.ltconfig import parse_config  # noqa: E402
from backup.render import render  # noqa: E402

# Prices, free tier and the request model live in one place: backup/cost.py.
WRITES_PER_MONTH = 100_000  # the seed's workload
WRITE_PERIOD = HOURS_PER_MONTH * 3600 / WRITES_PER_MONTH  # ~26.3 s
IDLE_HISTORY = 3  # writes an idle database gets before it falls silent

# litestream 0.5.17's defaults for the global keys the project sets; every run
# checks them against the daemon's own start-up log.
DEFAULTS = {
    "l0-retention": "5m",
    "l0-retention-check-interval": "15s",
    "levels": [{"interval": "30s"}, {"interval": "5m"}, {"interval": "1h"}],
    "snapshot": {"interval": "24h", "retention": "24h"},
}
COST_KEYS = tuple(DEFAULTS)
ACCESS_KEY_ID, SECRET_ACCESS_KEY = "AKIABENCHCHORA", "bench-secret"

# 127.0.0.1 - - [26/Nov/2026 03:18:11] "PUT /bucket/key?x-id=PutObject HTTP/1.1" 200 -
_REQUEST = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/[\d.]+" \d{3}')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_VERSION = re.compile(r"msg=litestream version=(\S+)")
_MONITOR = re.compile(r'msg="starting compaction monitor".* level=(\d+) interval=(\S+)')
_L0_MONITOR = re.compile(r'msg="starting L0 retention monitor".* interval=(\S+) retention=(\S+)')
_L1_DONE = re.compile(r'msg="compaction complete".* level=1 txid\.min=(\w+) txid\.max=(\w+)')


def classify(method: str, target: str) -> tuple[str, str]:
    """(R2 class "A", "B" or "free", S3 operation) of one path-style request."""
    path, _, query = target.partition("?")
    params = parse_qs(query, keep_blank_values=True)
    key = path.lstrip("/").partition("/")[2]
    if method == "PUT":
        if "partNumber" in params:
            return "A", "UploadPart"
        return ("A", "PutObject") if key else ("A", "CreateBucket")  # CopyObject is a PUT too
    if method == "POST":
        if "delete" in params:
            # R2's price list names DeleteObject as free but not the bulk
            # DeleteObjects litestream uses: counted as Class A, to be safe.
            return "A", "DeleteObjects"
        return "A", "CreateMultipartUpload" if "uploads" in params else "CompleteMultipartUpload"
    if method == "GET":
        if key:
            return ("A", "ListParts") if "uploadId" in params else ("B", "GetObject")
        if "location" in params:
            return "B", "GetBucketLocation"
        return ("A", "ListMultipartUploads") if "uploads" in params else ("A", "ListObjectsV2")
    if method == "HEAD":
        return "B", "HeadObject" if key else "HeadBucket"
    return "free", "AbortMultipartUpload" if "uploadId" in params else "DeleteObject"


@dataclass
class Tally:
    by_class: Counter = field(default_factory=Counter)
    by_op: Counter = field(default_factory=Counter)


class RequestLog:
    """moto's access log, read back between two byte offsets, per bucket."""

    def __init__(self, path: Path):
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size

    def tally(self, start: int, end: int) -> dict[str, Tally]:
        with self.path.open("rb") as fh:
            fh.seek(start)
            text = _ANSI.sub("", fh.read(end - start).decode("utf-8", errors="replace"))
        tallies: dict[str, Tally] = {}
        for match in _REQUEST.finditer(text):
            method, target = match.groups()
            bucket = unquote(target.partition("?")[0].lstrip("/").partition("/")[0])
            cls, op = classify(method, target)
            tally = tallies.setdefault(bucket, Tally())
            tally.by_class[cls] += 1
            tally.by_op[op] += 1
        return tallies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it is truthy and return it; give up after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise SystemExit(f"bench: timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the child by its pid, then SIGKILL it if it will not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@contextmanager
def moto_server(folder: Path) -> Iterator[tuple[str, RequestLog]]:
    """moto's S3 server on 127.0.0.1 and a free port; its log counts the requests."""
    port = free_port()
    log = folder / "moto.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder,
            env={"PATH": os.defpath, "PYTHONUNBUFFERED": "1", "AWS_EC2_METADATA_DISABLED": "true"},
            start_new_session=True,  # Ctrl-C reaches only us; we stop it
        )
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"bench: moto exited:\n{log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return True
            except OSError:
                return False

        poll(up, 30, "moto's S3 server")
        yield f"http://127.0.0.1:{port}", RequestLog(log)
    finally:
        stop(proc)


def scale(duration: str, speedup: float) -> str:
    if speedup == 1:
        return duration
    return f"{round(config.parse_duration(duration) * 1000 / speedup)}ms"


def with_overrides(data: dict, overrides: dict[str, str]) -> dict:
    """The rendered config with ``overrides``: ``l1``/``l2``/``l3`` (a level's interval),
    ``checkpoint`` (the database's checkpoint-interval), or any other global key."""
    data = yaml.safe_load(yaml.safe_dump(data))
    for key, value in overrides.items():
        if key in ("l1", "l2", "l3"):
            data["levels"][int(key[1]) - 1]["interval"] = value
        elif key == "checkpoint":
            for db in data["dbs"]:
                db["checkpoint-interval"] = value
        else:
            data[key] = value
    return data


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """'project:l1=15m:checkpoint=10m' -> ('project', {'l1': '15m', 'checkpoint': '10m'})."""
    base, *pairs = text.split(":")
    if base not in ("defaults", "project") or not all("=" in p for p in pairs):
        raise SystemExit(f"bench: --variants takes defaults or project[:key=value...], not {text!r}")
    return base, dict(p.split("=", 1) for p in pairs)


def scaled_config(data: dict, variant: str, speedup: float) -> dict:
    """The rendered config for ``variant`` with every litestream timer divided by ``speedup``."""
    out = {k: v for k, v in data.items() if k not in COST_KEYS}
    if variant == "project":
        chosen = {k: data[k] for k in COST_KEYS if k in data}
    else:  # unset keys are litestream's defaults; spell them out only to scale them
        chosen = DEFAULTS if speedup != 1 else {}
    for key, value in chosen.items():
        if key == "levels":
            out[key] = [{"interval": scale(lvl["interval"], speedup)} for lvl in value]
        elif key == "snapshot":
            out[key] = {k: scale(v, speedup) for k, v in value.items()}
        else:
            out[key] = scale(value, speedup)
    replica = out["dbs"][0]["replica"]
    replica["sync-interval"] = scale(replica["sync-interval"], speedup)
    # checkpoint-interval is a local timer (no request of its own): never scaled; the
    # defaults run has litestream's own (1m).
    if variant != "project":
        for db in out["dbs"]:
            db.pop("checkpoint-interval", None)
    return out


@dataclass
class Run:
    """One daemon: a config variant and a workload, in its own folder and bucket."""

    variant: str  # "defaults", "project", or "project:l1=15m:..." (see parse_variant)
    workload: str  # "idle" or "seed"
    root: Path
    settings: config.Settings | None = None
    intended: dict = field(default_factory=dict)  # the cost keys it should log
    timers: Timers | None = None  # unscaled, for backup.cost's model
    proc: subprocess.Popen | None = None
    writes: list[float] = field(default_factory=list)  # wall-clock time of each write
    max_wal: int = 0  # the largest the WAL got while measured (bytes)

    @property
    def name(self) -> str:
        return f"{self.workload:<5} {self.variant:<9}"

    @property
    def base(self) -> str:
        return parse_variant(self.variant)[0]

    @property
    def log(self) -> Path:
        return self.root / "litestream.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def write(self, con: sqlite3.Connection) -> None:
        con.execute("INSERT INTO events (at, body) VALUES (?, ?)", (time.time(), "x" * 200))
        con.commit()
        self.writes.append(time.time())


def prepare(run: Run, endpoint: str, speedup: float, s3) -> None:
    run.root.mkdir(parents=True)
    bucket = f"bench-{run.base}-{run.workload}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    environ = {
        "R2_ENDPOINT": endpoint, "R2_BUCKET": bucket,
        "R2_ACCESS_KEY_ID": ACCESS_KEY_ID, "R2_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "BACKUP_DB": str(run.root / "chora.db"), "BACKUP_STATE_DIR": str(run.root / "state"),
    }
    run.settings = config.load(cwd=run.root, environ=environ, mode=config.R2)
    run.settings.state_dir.mkdir(parents=True)
    rendered = render(run.settings, config.R2)
    base, overrides = parse_variant(run.variant)
    full = with_overrides(yaml.safe_load(rendered), overrides) if base == "project" else {}
    # litestream's defaults: the rendered config's databases, none of its timers
    typed = full if base == "project" else {"dbs": [{k: v for k, v in db.items() if k != "checkpoint-interval"}
                                                    for db in yaml.safe_load(rendered)["dbs"]]}
    run.timers = Timers.from_config(parse_config(typed, run.root / "litestream.yml"), run.settings.interval(config.R2))
    if base == "project" and speedup == 1 and not overrides:
        text, data = rendered, yaml.safe_load(rendered)
    elif base == "project" and speedup == 1:
        data = full
        text = yaml.safe_dump(data, sort_keys=False)
    else:
        data = scaled_config(full or yaml.safe_load(rendered), base, speedup)
        text = yaml.safe_dump(data, sort_keys=False)
    run.settings.config_path.write_text(text, "utf-8")
    run.intended = {**DEFAULTS, **{k: data[k] for k in COST_KEYS if k in data}}
    con = sqlite3.connect(run.settings.db)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, at REAL, body TEXT)")
        con.commit()
    finally:
        con.close()


def check_started(run: Run) -> None:
    """The daemon logged the intervals we meant and is past its start-up burst.

    Unknown config keys are silently ignored, so the start-up log is the proof
    the settings took. At start every level compacts once: wait for the
    snapshot and the first level-1 file before measuring.
    """

    def ready() -> str | None:
        if run.proc.poll() is not None:
            raise SystemExit(f"bench: litestream exited:\n{run.log_text()}")
        text = run.log_text()
        return text if "snapshot complete" in text and _L1_DONE.search(text) else None

    seconds = config.parse_duration
    want = run.intended
    # The first level-1 file can wait for the level's next tick.
    first_l1 = 60 + seconds(want["levels"][0]["interval"])
    text = poll(ready, first_l1, f"{run.name.strip()}: start-up snapshot and compaction")
    logged = {int(level): seconds(iv) for level, iv in _MONITOR.findall(text)}
    expected = {i + 1: seconds(lvl["interval"]) for i, lvl in enumerate(want["levels"])}
    expected[9] = seconds(want["snapshot"]["interval"])
    ((check, retention),) = _L0_MONITOR.findall(text)
    if (logged, seconds(check), seconds(retention)) != (
        expected, seconds(want["l0-retention-check-interval"]), seconds(want["l0-retention"])
    ):
        raise SystemExit(f"bench: litestream did not take the {run.variant} settings; its log:\n{text}")
    if "checkpoint" in parse_variant(run.variant)[1]:  # a database key: proven by the file it read
        want_checkpoint = parse_variant(run.variant)[1]["checkpoint"]
        if yaml.safe_load(run.settings.config_path.read_text())["dbs"][0].get("checkpoint-interval") != want_checkpoint:
            raise SystemExit(f"bench: {run.variant}: checkpoint-interval not in the config")


def compacted_history(run: Run) -> bool:
    """Has a level-1 file merged more than one write (as in any real history)?"""
    return any(lo != hi for lo, hi in _L1_DONE.findall(run.log_text()))


def writer(runs: list[Run], period: float, stop_event: threading.Event) -> None:
    """One INSERT per ``period`` into each database, evenly spaced, until stopped."""
    cons = [(run, sqlite3.connect(run.settings.db, timeout=30)) for run in runs]
    try:
        next_at = time.monotonic()
        while not stop_event.is_set():
            for run, con in cons:
                run.write(con)
            next_at += period
            stop_event.wait(max(0.0, next_at - time.monotonic()))
    finally:
        for _, con in cons:
            con.close()


def wal_sampler(runs: list[Run], stop_event: threading.Event) -> None:
    """Each database's WAL size once a second: how far it grows between checkpoints."""
    while not stop_event.wait(1.0):
        for run in runs:
            with contextlib.suppress(OSError):
                run.max_wal = max(run.max_wal, Path(f"{run.settings.db}-wal").stat().st_size)


def idle_history(runs: list[Run], gap: float, stop_event: threading.Event) -> None:
    """A few writes, one sync interval apart, then silence: an idle database with a past."""
    for _ in range(IDLE_HISTORY):
        for run in runs:
            con = sqlite3.connect(run.settings.db, timeout=30)
            try:
                run.write(con)
            finally:
                con.close()
        if stop_event.wait(gap):
            return


def dollars(a_per_hour: float, b_per_hour: float, gb: float, free_tier: bool) -> float:
    a, b = a_per_hour * HOURS_PER_MONTH, b_per_hour * HOURS_PER_MONTH
    if free_tier:
        a, b, gb = max(0.0, a - FREE_CLASS_A), max(0.0, b - FREE_CLASS_B), max(0.0, gb - FREE_STORAGE_GB)
    return a * PRICE_CLASS_A + b * PRICE_CLASS_B + gb * PRICE_STORAGE_GB_MONTH


def bucket_bytes(s3, bucket: str) -> int:
    total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        total += sum(obj["Size"] for obj in page.get("Contents", []))
    return total


@dataclass
class Restore:
    label: str
    seconds: float
    requests: Tally
    rows: int
    expected: int


def restore(run: Run, requests_log: RequestLog, environ: dict[str, str], label: str,
            moment: float | None = None) -> Restore:
    out = run.root / f"restored-{label}.db"
    args = ["-o", str(out)]
    if moment is not None:
        args += ["-timestamp", datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")]
    before, started = requests_log.mark(), time.monotonic()
    Litestream(run.settings, environ=environ).run("restore", *args, str(run.settings.db), timeout=300)
    took = time.monotonic() - started
    poll(lambda: requests_log.mark() > before, 10, "the restore's requests in moto's log")
    tally = requests_log.tally(before, requests_log.mark()).get(run.settings.bucket, Tally())
    con = sqlite3.connect(out)
    try:
        (restored,) = con.execute("SELECT count(*) FROM events").fetchone()
    finally:
        con.close()
    expected = sum(1 for t in run.writes if moment is None or t < moment)
    return Restore(label, took, tally, restored, expected)


def measure(args: argparse.Namespace, root: Path) -> dict:
    import boto3

    with moto_server(root) as (endpoint, requests_log):
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY)
        # Our own AWS_* and LITESTREAM_* stay out; AWS_CA_BUNDLE goes in so that
        # Litestream's workaround (hand it over as SSL_CERT_FILE) is exercised.
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LITESTREAM_"))}
        if os.environ.get("AWS_CA_BUNDLE"):
            environ["AWS_CA_BUNDLE"] = os.environ["AWS_CA_BUNDLE"]
        runs = [Run(v, w, root / f"{n}-{w}") for w in ("idle", "seed") for n, v in enumerate(args.variants)]
        idle = [r for r in runs if r.workload == "idle"]
        seed = [r for r in runs if r.workload == "seed"]
        for run in runs:
            prepare(run, endpoint, args.speedup, s3)
        stop_event = threading.Event()
        threads = [
            threading.Thread(target=writer, args=(seed, WRITE_PERIOD / args.speedup, stop_event)),
            threading.Thread(target=idle_history, args=(idle, 15 / args.speedup, stop_event)),
        ]
        try:
            for run in runs:
                with run.log.open("wb") as fh:
                    run.proc = Litestream(run.settings, environ=environ).spawn(
                        "replicate", stdout=fh, stderr=subprocess.STDOUT
                    )
            for run in runs:
                check_started(run)
            for thread in threads:
                thread.start()
            warm_until = time.monotonic() + args.warmup * 60
            poll(lambda: time.monotonic() >= warm_until and all(map(compacted_history, idle)),
                 args.warmup * 60 + 3600 / args.speedup, "the warm-up", interval=0.5)
            begin, t0 = requests_log.mark(), time.monotonic()
            writes_before = {run.name: len(run.writes) for run in runs}
            sampler = threading.Thread(target=wal_sampler, args=(runs, stop_event))
            threads.append(sampler)
            sampler.start()
            stop_event.wait(args.minutes * 60)
            end, elapsed = requests_log.mark(), time.monotonic() - t0
            middle = time.time() - elapsed / 2
        finally:
            stop_event.set()
            for thread in threads:
                if thread.is_alive():
                    thread.join()
            for run in runs:
                if run.proc is not None:
                    stop(run.proc)
        measured = requests_log.tally(begin, end)
        restores = {run.name: [restore(run, requests_log, environ, "latest")] for run in runs}
        for run in seed:
            restores[run.name].append(restore(run, requests_log, environ, "mid-window", moment=middle))
        return {
            "version": (_VERSION.search(runs[0].log_text()) or [None, "?"])[1],
            "hours": elapsed * args.speedup / 3600,
            "runs": runs,
            "measured": {run.name: measured.get(run.settings.bucket, Tally()) for run in runs},
            "writes": {run.name: len(run.writes) - writes_before[run.name] for run in runs},
            "bytes": {run.name: bucket_bytes(s3, run.settings.bucket) for run in runs},
            "restores": restores,
        }


def report(args: argparse.Namespace, result: dict) -> None:
    hours = result["hours"]
    print(f"litestream {result['version']}, moto on 127.0.0.1, speed-up {args.speedup:g}: "
          f"{args.warmup:g} min warm-up, then {args.minutes:g} min measured = {hours * 60:.0f} "
          f"simulated minutes per run")
    print(f"seed workload: one write every {WRITE_PERIOD:.1f} s (simulated); idle: "
          f"{IDLE_HISTORY} writes before the warm-up ends, none after")
    print()
    print(f"{'':<16}{'requests / hour':^24}{'$ / month':^28}")
    print(f"{'run':<16}{'A':>8}{'B':>8}{'free':>8}{'list price':>14}{'after free tier':>17}")
    rates = {}
    for run in result["runs"]:
        tally = result["measured"][run.name]
        a, b, free = (tally.by_class[c] / hours for c in ("A", "B", "free"))
        gb = result["bytes"][run.name] / 1e9
        rates[run.workload, run.variant] = a
        print(f"{run.name:<16}{a:>8.0f}{b:>8.0f}{free:>8.0f}"
              f"{dollars(a, b, gb, False):>14.2f}{dollars(a, b, gb, True):>17.2f}")
    print()
    floor = 3600 / WRITE_PERIOD
    for workload in ("idle", "seed"):
        if (workload, "project") in rates and (workload, "defaults") in rates:
            ours, theirs = rates[workload, "project"], rates[workload, "defaults"]
            ratio = f"{ours / theirs:.3f}" if theirs else "n/a"
            print(f"{workload}: Class A, project / defaults = {ours:.0f} / {theirs:.0f} = {ratio}")
    print(f"seed floor: one PUT per write = {floor:.0f} Class A / hour")
    for (workload, variant), a in rates.items():
        if workload == "seed":
            print(f"  seed {variant}: {a:.0f} Class A / hour = {a / floor:.2f}x the floor")
    print()
    print("backup.cost's model (inv backup.cost) against these counts, Class A / hour:")
    for run in result["runs"]:
        measured = result["measured"][run.name].by_class["A"] / hours
        writes = result["writes"][run.name] / hours
        modelled = requests_per_hour(run.timers, writes).class_a
        gap = f"{modelled / measured - 1:+.0%}" if measured else "n/a"
        print(f"  {run.name} measured {measured:7.0f}  model {modelled:7.0f}  ({gap})")
    print()
    print("requests / hour by operation:")
    for run in result["runs"]:
        tally = result["measured"][run.name]
        ops = ", ".join(f"{op} {n / hours:.0f}" for op, n in sorted(tally.by_op.items()))
        print(f"  {run.name} {ops or '-'}  ({result['writes'][run.name]} writes measured)")
    print()
    print("restores afterwards (daemon stopped): time, requests, rows restored / rows written before the target")
    for run in result["runs"]:
        for r in result["restores"][run.name]:
            ops = r.requests.by_op
            print(f"  {run.name} {r.label:<10} {r.seconds:5.2f} s  GET {ops['GetObject']:>3}  "
                  f"LIST {ops['ListObjectsV2']:>3}  HEAD {ops['HeadObject']:>4}  rows {r.rows}/{r.expected}")
    print()
    print("largest WAL while measured: " + ", ".join(
        f"{run.name.split()[0]} {run.variant} {run.max_wal / 1024:.0f} KiB" for run in result["runs"]
    ))
    print("replica size at the end: " + ", ".join(
        f"{run.name.split()[0]} {run.variant} {result['bytes'][run.name] / 1024:.0f} KiB" for run in result["runs"]
    ))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Count litestream's S3 requests by R2 class: defaults vs this project's config."
    )
    parser.add_argument("--minutes", type=float, default=3.0,
                        help="wall-clock minutes measured; the four runs go side by side (default 3)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="wall-clock minutes run before measuring (default: one simulated hour, "
                        "the project's l0-retention, so its L0 expiry is in the window: 60/K)")
    parser.add_argument("--variants", default="defaults,project",
                        help="comma-separated configs side by side: defaults, project, and project with "
                        "overrides such as project:l1=15m:checkpoint=10m (default: defaults,project)")
    parser.add_argument("--speedup", type=float, default=10.0,
                        help="divide every litestream timer and the write period by this, 1-10 (default 10)")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant in args.variants:
        parse_variant(variant)
    if args.warmup is None:
        args.warmup = 60 / args.speedup
    if not 1 <= args.speedup <= 10:
        parser.error("--speedup must be from 1 to 10: the scaled 10 s sync interval must stay >= 1 s")
    if args.minutes <= 0 or args.warmup < 0:
        parser.error("--minutes must be positive and --warmup not negative")

    def terminated(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    with tempfile.TemporaryDirectory(prefix="chora-bench-") as tmp:
        result = measure(args, Path(tmp))
    report(args, result)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started has been stopped", file=sys.stderr)
        sys.exit(130)
