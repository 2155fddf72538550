"""What the wrapper costs: `inv backup.status` against the floor it cannot beat.

    python bench/wrapper.py [--runs 15]

The floor is invoke's own start-up (`inv --list`) plus the raw litestream calls
status needs (`status -json`, `ltx -level all -json`, `list -json`), run one
after another. Prints the medians, their ratio (target: at most 1.25), and the
import time of the package's status path.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

from _workspace import BIN, fill, median, timed, workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    with workspace() as ws:
        fill(ws.db, 1)
        ws.inv("backup.local", "--background")
        import yaml

        config = ws.path / "litestream.yml"
        socket = yaml.safe_load(config.read_text())["socket"]["path"]
        lite = str(BIN / "litestream")
        raw = [
            [lite, "status", "-config", str(config), "-no-expand-env", "-json"],
            [lite, "ltx", "-config", str(config), "-no-expand-env", "-level", "all", "-json", str(ws.db)],
            [lite, "list", "-json", "-socket", socket],
        ]
        env = ws.litestream_env()
        inv_list = [str(BIN / "inv"), "--list"]
        ours = {
            "inv backup.status": [str(BIN / "inv"), "backup.status"],
            "chora-backup status": [str(BIN / "chora-backup"), "status"],
        }
        samples: dict[str, list[float]] = {name: [] for name in ["floor", *ours]}
        for _ in range(args.runs):  # interleaved, so drift hits every series alike
            samples["floor"].append(
                timed(inv_list, ws.path, ws.env) + sum(timed(a, ws.path, env) for a in raw)
            )
            for name, argv in ours.items():
                samples[name].append(timed(argv, ws.path, ws.env))
        imports = []
        for _ in range(args.runs):
            probe = "import time; t=time.perf_counter(); import backup.tasks, backup.status; print(time.perf_counter()-t)"
            out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ws.env)
            imports.append(float(out.stdout))
        ws.stop()

    floor = median(samples["floor"])
    print(f"runs: {args.runs} (medians)")
    print(f"  {'floor: inv --list + 3 raw litestream calls':<45} {floor * 1000:7.1f} ms")
    for name in ours:
        value = median(samples[name])
        print(f"  {name:<45} {value * 1000:7.1f} ms   {value / floor:.2f}x floor (target <= 1.25x)")
    print(f"  {'import backup.tasks + backup.status':<45} {median(imports) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
