"""A throwaway workspace for benchmarks: its own HOME and state dir, driven through the CLI.

Every process started here is stopped by its pid when the context ends.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
_SCRUB = ("R2_", "BACKUP_", "LITESTREAM_", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


class Bench:
    def __init__(self, root: Path, sync_interval: str = "1s"):
        self.root = root
        self.path = root / "ws"
        self.path.mkdir(parents=True)
        shutil.copy(REPO / "tasks.py", self.path / "tasks.py")
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
        env.update(HOME=str(root / "home"), BACKUP_STATE_DIR=str(root / "state"),
                   BACKUP_SYNC_INTERVAL=sync_interval)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        self.env = env
        self.db = self.path / "chora.db"

    def inv(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(BIN / "inv"), *args], cwd=self.path, env=self.env,
                              capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise SystemExit(f"inv {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def litestream_env(self) -> dict[str, str]:
        env = {k: v for k, v in self.env.items() if k != "AWS_CA_BUNDLE"}
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        return env

    def pid(self) -> int | None:
        try:
            return json.loads((self.root / "state" / "litestream.pid").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None

    def stop(self) -> None:
        if self.pid():
            self.inv("backup.stop", check=False)


@contextlib.contextmanager
def workspace(sync_interval: str = "1s") -> Iterator[Bench]:
    root = Path(tempfile.mkdtemp(prefix="chora-bench-"))
    bench = Bench(root, sync_interval)
    try:
        yield bench
    finally:
        bench.stop()
        shutil.rmtree(root, ignore_errors=True)


def counting():
    """bench/requests.py (the moto server, the request classifier), loaded by path: its
    name would shadow the requests library as an import."""
    import importlib.util

    if "bench_requests" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_requests", Path(__file__).with_name("requests.py"))
        module = sys.modules["bench_requests"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules["bench_requests"]


def s3_server(stack: contextlib.ExitStack) -> tuple[str, Any, Any]:
    """moto's S3 server on 127.0.0.1 for the life of ``stack``: (endpoint, its request log,
    a boto3 client with the bench's keys)."""
    import boto3

    requests = counting()
    root = Path(tempfile.mkdtemp(prefix="chora-bench-moto-"))
    stack.callback(shutil.rmtree, root, ignore_errors=True)
    endpoint, log = stack.enter_context(requests.moto_server(root))
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=requests.ACCESS_KEY_ID, aws_secret_access_key=requests.SECRET_ACCESS_KEY)
    return endpoint, log, s3


def fill(db: Path, megabytes: float, row_bytes: int = 4000) -> None:
    """A WAL database of about ``megabytes`` MB of incompressible rows."""
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, body BLOB)")
        rows = int(megabytes * 1e6 / row_bytes)
        batch = 500
        for start in range(0, rows, batch):
            con.executemany("INSERT INTO blobs (body) VALUES (?)",
                            [(os.urandom(row_bytes),) for _ in range(min(batch, rows - start))])
            con.commit()
    finally:
        con.close()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, capture_output=True)
    return time.perf_counter() - start


def run_main(main) -> None:
    """A bench script's entry: its exit code; Ctrl-C says that everything was stopped."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started has been stopped", file=sys.stderr)
        sys.exit(130)
