"""Restore speed: this tool against raw `litestream restore`, integrity check apart.

    python bench/restore.py [--sizes 10,100] [--runs 3]     # MB; add 1000 for 1 GB

For each size: a database of incompressible rows is replicated to a local
folder, then restored by raw `litestream restore -o` and by
`inv backup.restore --output … --json` (whose result splits the litestream
part from SQLite's integrity check). Prints seconds and MB/s (medians), and
this tool's throughput before the check as a share of raw litestream's
(target: at least 0.95).
"""
from __future__ import annotations

import argparse
import json
import time

from _workspace import BIN, fill, median, timed, workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100", help="database sizes in MB")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{'size':>7} {'raw litestream':>16} {'chora-backup':>14} {'of which check':>15} "
          f"{'before check':>13} {'share':>6}")
    for size in (float(s) for s in args.sizes.split(",")):
        with workspace() as ws:
            fill(ws.db, size)
            ws.inv("backup.local", "--no-start")
            ws.inv("backup.start-bg")
            ws.inv("backup.stop")  # final sync: the replica holds everything
            megabytes = ws.db.stat().st_size / 1e6
            config = str(ws.path / "litestream.yml")
            raw, ours, checks, wrapper = [], [], [], []
            for run in range(args.runs):
                out = ws.root / f"raw-{run}.db"
                raw.append(timed([str(BIN / "litestream"), "restore", "-config", config,
                                  "-no-expand-env", "-o", str(out), str(ws.db)],
                                 ws.path, ws.litestream_env()))
                out.unlink()
                out = ws.root / f"ours-{run}.db"
                start = time.perf_counter()
                result = json.loads(ws.inv("backup.restore", "--output", str(out), "--json").stdout)
                total = time.perf_counter() - start
                out.unlink()
                ours.append(total)
                checks.append(result["check_seconds"])
                wrapper.append(total - result["check_seconds"])
        r, o, c, w = median(raw), median(ours), median(checks), median(wrapper)
        print(f"{megabytes:>5.0f}MB {r:>7.2f}s {megabytes / r:>6.0f}MB/s {o:>7.2f}s {megabytes / o:>4.0f}MB/s"
              f" {c:>7.2f}s ({c / o:.0%}) {megabytes / w:>7.0f}MB/s {r / w:>6.2f}")


if __name__ == "__main__":
    main()
