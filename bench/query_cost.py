"""What `inv backup.query` fetches from S3, next to a restore of the same database.

    python bench/query_cost.py [--megabytes 100] [--runs 3]

A database of about --megabytes MB (rows of 1 KB of incompressible bytes, an index on
a small column) replicated to moto's S3 server on 127.0.0.1 through a byte-counting TCP
forwarder. Then, each --runs times: a point query (one row by primary key), a
`count(*)` (SQLite counts through the smallest index), and `inv backup.restore --output`
of the whole database. Prints the bytes each fetched from S3 (medians), their share of
the database, GET requests, and seconds. Target: a point query fetches under 5 % of the
database and answers faster than the restore.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

from _workspace import counting, median, s3_server, workspace


class Meter:
    """A TCP forwarder to ``port`` on 127.0.0.1 that counts the bytes sent back to clients."""

    def __init__(self, port: int):
        self.port = port
        self.down = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, count: bool) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if count:
                    with self._lock:
                        self.down += len(chunk)
                dest.sendall(chunk)
        for sock in (source, dest):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()


def fill(db: Path, megabytes: float) -> int:
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, k INTEGER, body BLOB)")
    con.execute("CREATE INDEX items_k ON items (k)")
    rows = int(megabytes * 1e6 / 1000)
    for start in range(0, rows, 1000):
        con.executemany("INSERT INTO items (k, body) VALUES (?, ?)",
                        [(n % 97, os.urandom(1000)) for n in range(start, min(rows, start + 1000))])
        con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    requests = counting()
    with contextlib.ExitStack() as stack, workspace() as ws:
        endpoint, log, s3 = s3_server(stack)
        meter = Meter(int(endpoint.rsplit(":", 1)[1]))
        stack.callback(meter.close)
        s3.create_bucket(Bucket="bench-query")
        (ws.path / ".env").write_text(
            f"R2_ENDPOINT={meter.endpoint}\nR2_BUCKET=bench-query\n"
            f"R2_ACCESS_KEY_ID={requests.ACCESS_KEY_ID}\nR2_SECRET_ACCESS_KEY={requests.SECRET_ACCESS_KEY}\n"
        )
        rows = fill(ws.db, args.megabytes)
        size = ws.db.stat().st_size
        ws.inv("backup.setup")
        ws.inv("backup.start-bg", "--timeout", "600")
        ws.inv("backup.stop")  # its final sync: the replica holds everything
        cases = {
            "point query": ["backup.query", f"select k, length(body) from items where id = {rows // 2}"],
            "count(*)": ["backup.query", "select count(*) from items"],
        }
        results: dict[str, list[tuple[int, int, float]]] = {name: [] for name in [*cases, "restore --output"]}
        for run in range(args.runs):
            out = ws.root / f"restored-{run}.db"
            for name, argv in [*cases.items(), ("restore --output", ["backup.restore", "--output", str(out)])]:
                mark, before = log.mark(), meter.down
                began = time.perf_counter()
                proc = ws.inv(*argv)
                seconds = time.perf_counter() - began
                if name == "count(*)" and str(rows) not in proc.stdout:
                    raise SystemExit(f"count(*) did not answer {rows}: {proc.stdout}")
                time.sleep(0.3)  # moto's access log lines land
                tally = log.tally(mark, log.mark()).get("bench-query")
                gets = tally.by_op["GetObject"] if tally else 0
                results[name].append((meter.down - before, gets, seconds))
            out.unlink(missing_ok=True)
    print(f"database: {size / 1e6:.0f} MB, {rows} rows; medians of {args.runs} runs, through the local S3 server")
    print(f"{'':<18} {'fetched':>10} {'of the db':>10} {'GETs':>6} {'seconds':>8}")
    for name, runs in results.items():
        fetched, gets, seconds = (median([r[i] for r in runs]) for i in range(3))
        print(f"{name:<18} {fetched / 1e6:>8.2f}MB {fetched / size:>9.1%} {gets:>6.0f} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
