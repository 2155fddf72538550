"""What `inv backup.query` costs and how long it takes, beside a restore of the same point.

    python bench/query_cost.py [--megabytes 200] [--runs 3]

A database of about --megabytes MB (items: an integer key, a small indexed column `k`, 1 KB
of incompressible bytes a row; tags: 2,000 rows naming items, indexed by tag) replicated
to moto's S3 server on 127.0.0.1 through a TCP forwarder that counts the bytes sent back.
The replica holds two states: the database, then (seconds later) 1,000 more rows, so
`--timestamp` asks the earlier one.

For each statement (a point lookup, an index range, a full-table count(*), a join), at the
latest state and at the earlier time, --runs times with no kept copy: seconds, LISTs, GETs
and HEADs (moto's log), bytes (the forwarder), the path that answered (`via`) and whether
the answer's own `requests` and `bytes` agree; beside them, `inv backup.restore --output` of
the same point plus the statement on that local copy, and the ratio of the query's time to
theirs. Then, as on a new machine (the database moved away, so the VFS plans), the
statements that go to a copy; and a query answered by the copy kept for the latest state.
Medians throughout.
Targets (issue 27): every ratio at most 1.5; a point lookup under 5 % of the database's
bytes and faster than the restore.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from _workspace import counting, median, run_main, s3_server, workspace

STATEMENTS = {
    "point lookup": "select k, length(body) from items where id = {middle}",
    "index range": "select count(*) from items where k between 10 and 12",
    "count(*)": "select count(*) from items",
    "join": "select count(*), sum(length(i.body)) from tags t join items i on i.id = t.item_id where t.tag = 'red'",
}
TAGS = ("red", "green", "blue", "amber", "grey")


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
    con.execute("CREATE TABLE tags (item_id INTEGER, tag TEXT)")
    con.execute("CREATE INDEX tags_tag ON tags (tag)")
    rows = int(megabytes * 1e6 / 1000)
    for start in range(0, rows, 1000):
        con.executemany("INSERT INTO items (k, body) VALUES (?, ?)",
                        [(n % 97, os.urandom(1000)) for n in range(start, min(rows, start + 1000))])
        con.commit()
    step = max(1, rows // 2000)
    con.executemany("INSERT INTO tags VALUES (?, ?)",
                    [(item, TAGS[n % len(TAGS)]) for n, item in enumerate(range(1, rows, step))])
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return rows


def more_rows(db: Path, count: int) -> None:
    con = sqlite3.connect(db)
    con.executemany("INSERT INTO items (k, body) VALUES (?, ?)", [(n % 97, os.urandom(1000)) for n in range(count)])
    con.commit()
    con.close()


def local_seconds(path: Path, sql: str) -> tuple[float, list]:
    began = time.perf_counter()
    con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    rows = con.execute(sql).fetchall()
    con.close()
    return time.perf_counter() - began, [list(r) for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    requests = counting()
    results: dict[tuple[str, str], list[dict]] = {}
    with contextlib.ExitStack() as stack, workspace(sync_interval="1s") as ws:
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
        ws.inv("backup.stop")  # its final sync: the replica holds the first state
        time.sleep(1.5)
        earlier = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        time.sleep(1.5)
        more_rows(ws.db, 1000)
        ws.inv("backup.start-bg", "--timeout", "600")
        ws.inv("backup.stop")
        kept = ws.root / "state" / "query"
        points = {"latest": [], f"at {earlier[11:19]}": ["--timestamp", earlier]}

        def measured(argv: list[str]) -> tuple[dict, float, object]:
            mark, before = log.mark(), meter.down
            began = time.perf_counter()
            proc = ws.inv(*argv)
            seconds = time.perf_counter() - began
            time.sleep(0.3)  # moto's access log lines land
            tally = log.tally(mark, log.mark()).get("bench-query")
            ops = tally.by_op if tally else {}
            return ({"LIST": ops.get("ListObjectsV2", 0), "GET": ops.get("GetObject", 0),
                     "HEAD": ops.get("HeadObject", 0), "bytes": meter.down - before}, seconds, proc)

        for run in range(args.runs):
            for point, when in points.items():
                out = ws.root / f"restored-{run}.db"
                counts, restore_s, _ = measured(["backup.restore", "--output", str(out), *when])
                results.setdefault(("restore --output", point), []).append({**counts, "seconds": restore_s})
                for name, template in STATEMENTS.items():
                    sql = template.format(middle=rows // 2)
                    local_s, local_rows = local_seconds(out, sql)
                    shutil.rmtree(kept, ignore_errors=True)  # cold: no copy kept from before
                    counts, seconds, proc = measured(["backup.query", sql, "--json", *when])
                    answer = json.loads(proc.stdout)
                    if answer["rows"] != local_rows:
                        raise SystemExit(f"{name} {point}: {answer['rows']} != the restored copy's {local_rows}")
                    reported = dict(answer["requests"], bytes=answer["bytes"])
                    agree = all(reported[k.lower()] == counts[k] for k in ("LIST", "GET", "HEAD"))
                    results.setdefault((name, point), []).append({
                        **counts, "seconds": seconds, "via": answer["via"], "agree": agree,
                        "reported_bytes": answer["bytes"], "beside": restore_s + local_s,
                    })
                out.unlink(missing_ok=True)
            # A new machine: no database here to plan from, so the VFS plans (latest state).
            aside = ws.root / "aside"
            aside.mkdir(exist_ok=True)
            moved = [f for f in ws.path.glob("chora.db*")]
            for f in moved:
                f.rename(aside / f.name)
            out = ws.root / f"restored-{run}.db"
            counts, restore_s, _ = measured(["backup.restore", "--output", str(out)])
            for name in ("index range", "count(*)", "join"):
                sql = STATEMENTS[name]
                local_s, local_rows = local_seconds(out, sql)
                shutil.rmtree(kept, ignore_errors=True)
                counts, seconds, proc = measured(["backup.query", sql, "--json"])
                answer = json.loads(proc.stdout)
                if answer["rows"] != local_rows:
                    raise SystemExit(f"{name}, no database here: {answer['rows']} != {local_rows}")
                agree = all(answer["requests"][k.lower()] == counts[k] for k in ("LIST", "GET", "HEAD"))
                results.setdefault((f"{name}, no db here", "latest"), []).append({
                    **counts, "seconds": seconds, "via": answer["via"], "agree": agree,
                    "beside": restore_s + local_s})
            out.unlink(missing_ok=True)
            for f in moved:
                (aside / f.name).rename(f)
            # A copy kept for the latest state answers the next query.
            sql = STATEMENTS["point lookup"].format(middle=rows // 2)
            ws.inv("backup.query", sql, "--via", "copy")
            counts, seconds, proc = measured(["backup.query", sql, "--json"])
            results.setdefault(("point lookup, copy kept", "latest"), []).append(
                {**counts, "seconds": seconds, "via": json.loads(proc.stdout)["via"], "agree": True})
    print(f"database: {size / 1e6:.0f} MB, {rows} rows; medians of {args.runs} runs, through the local S3 server")
    print(f"{'statement':<26}{'point':<13}{'via':<6}{'seconds':>8}{'LIST':>6}{'GET':>6}{'HEAD':>6}"
          f"{'MB':>8}{'of db':>7}{'agree':>6}{'restore+local':>14}{'ratio':>7}")
    for (name, point), runs in results.items():
        mid = {k: median([r[k] for r in runs]) for k in ("seconds", "LIST", "GET", "HEAD", "bytes")}
        via = "/".join(sorted({r.get("via", "-") for r in runs}))
        agree = "yes" if all(r.get("agree", True) for r in runs) else "NO"
        beside = median([r["beside"] for r in runs]) if "beside" in runs[0] else None
        ratio = f"{mid['seconds'] / beside:.2f}" if beside else "-"
        print(f"{name:<26}{point:<13}{via:<6}{mid['seconds']:>8.2f}{mid['LIST']:>6.0f}{mid['GET']:>6.0f}"
              f"{mid['HEAD']:>6.0f}{mid['bytes'] / 1e6:>8.2f}{mid['bytes'] / size:>7.1%}{agree:>6}"
              f"{(f'{beside:.2f}' if beside else '-'):>14}{ratio:>7}")
    return 0


if __name__ == "__main__":
    run_main(main)
