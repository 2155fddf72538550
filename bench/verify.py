"""verify against a raw restore plus SQLite's integrity check (issue 26: at most 1.5x).

    python bench/verify.py [--sizes 200,1000] [--runs 3]     # MB

For each size: a database of small rows with an index (about 150 bytes a row, the shape
that makes hashing every row expensive) is replicated to a local folder and the daemon
stopped, so there is nothing left to sync. Then, medians of --runs:
- raw: `litestream restore -o` plus `PRAGMA integrity_check` of the result;
- `inv backup.verify` (no daemon: its own `replicate -once`, the restore, the check, and
  the comparison with the live database, page for page);
- for reference, what comparing row by row would add: a sha256 over every table's rows
  of the live database and of a restored copy (backup.verify.digest), as verify did
  before it compared pages.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from _workspace import BIN, Bench, median, workspace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from backup.verify import digest  # noqa: E402


def fill_rows(db: Path, megabytes: float) -> int:
    """About ``megabytes`` MB of 150-byte rows, indexed; the number of rows."""
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, kind INTEGER, body TEXT)")
        rows = int(megabytes * 1e6 / 190)  # the row plus its index entry
        batch = 20_000
        for start in range(0, rows, batch):
            con.executemany("INSERT INTO items (kind, body) VALUES (?, ?)",
                            [(n % 97, os.urandom(60).hex()) for n in range(start, min(rows, start + batch))])
            con.commit()
        con.execute("CREATE INDEX items_kind ON items (kind)")
        con.commit()
        return rows
    finally:
        con.close()


def check(path: Path) -> float:
    start = time.perf_counter()
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    return time.perf_counter() - start


def raw_restore(ws: Bench, out: Path) -> float:
    """`litestream restore -o` of the workspace's database plus `PRAGMA integrity_check`: seconds."""
    config_path = ws.path / "litestream.yml"
    started = time.perf_counter()
    proc = subprocess.run([str(BIN / "litestream"), "restore", "-config", str(config_path), "-no-expand-env",
                           "-o", str(out), str(ws.db)], check=False, cwd=ws.path, env=ws.litestream_env(),
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"bench: litestream restore failed: {proc.stderr.strip()}")
    return seconds + check(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,1000", help="database sizes in MB")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{'size':>7} {'rows':>9} {'raw restore+check':>18} {'inv backup.verify':>18} {'ratio':>6} "
          f"{'row-by-row compare adds':>24}")
    for size in (float(s) for s in args.sizes.split(",")):
        with workspace() as ws:
            rows = fill_rows(ws.db, size)
            ws.inv("backup.local", "--no-start")
            ws.inv("backup.start-bg")
            ws.inv("backup.stop")  # final sync: nothing left to sync
            megabytes = ws.db.stat().st_size / 1e6
            raw, ours, rowwise = [], [], []
            for run in range(args.runs):
                out = ws.root / f"raw-{run}.db"
                raw.append(raw_restore(ws, out))
                start = time.perf_counter()
                result = ws.inv("backup.verify", check=False)
                ours.append(time.perf_counter() - start)
                assert result.returncode == 0 and "(page for page)" in result.stdout, result.stdout + result.stderr
                start = time.perf_counter()
                digest(ws.db), digest(out)
                rowwise.append(time.perf_counter() - start)
                out.unlink()
        r, o, w = median(raw), median(ours), median(rowwise)
        print(f"{megabytes:>5.0f}MB {rows:>9} {r:>17.2f}s {o:>17.2f}s {o / r:>5.2f}x {w:>23.2f}s")


if __name__ == "__main__":
    main()
