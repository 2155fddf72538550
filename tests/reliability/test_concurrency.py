"""Storms of concurrent start-bg and stop: never two daemons, never an orphan, never a
signal to a process that is not ours.

A sampler thread lists this workspace's litestream processes continuously while
each storm runs. A ``sleep`` whose pid sits in a stale pidfile stands for a
foreign process that has inherited a dead daemon's pid: it must survive.
"""
from __future__ import annotations

import random
import re
import threading
import time

import psutil
import pytest

from conftest import BIN, Workspace, insert, make_db, rows

from .conftest import SEED, Restores, alive, litestreams, setup, stale_pidfile, stop

pytestmark = pytest.mark.posix

STARTED = re.compile(r"^started \(pid (\d+)\)$", re.M)
ALREADY = re.compile(r"^already running \(pid (\d+)\)$", re.M)
STOPPED = re.compile(r"^stopped \(pid (\d+)\) after its final sync$", re.M)
INTERLEAVED_ROUNDS = 2
SAMPLE_PAUSE = 0.01  # seconds


class Sampler:
    """Counts this workspace's live litestream processes, as often as it can, on a thread."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.samples = 0
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        # A short pause between samples leaves the CPU to the storm (a duplicate daemon would
        # live for seconds, far longer than the pause).
        while not self._stop.wait(SAMPLE_PAUSE):
            self.most = max(self.most, len(litestreams(self.ws)))
            self.samples += 1

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the sampler did not stop"


def storm(ws: Workspace, commands: list[str]) -> tuple[list[str], int, int]:
    """Launch every command at once; (their outputs, most daemons seen at once, samples)."""
    with Sampler(ws) as sampler:
        procs = [ws.spawn(str(BIN / "inv"), command) for command in commands]
        outputs = []
        for command, proc in zip(commands, procs):
            out, _ = proc.communicate(timeout=180)
            text = out.decode("utf-8", errors="replace")
            ws.outputs.append(text)
            assert proc.returncode == 0, f"{command}: {text}"
            outputs.append(text)
    return outputs, sampler.most, sampler.samples


def found(pattern: re.Pattern, outputs: list[str]) -> list[int]:
    return [int(m.group(1)) for out in outputs for m in pattern.finditer(out)]


def untouched(proc) -> bool:
    """Alive, and neither stopped nor a zombie: no signal reached it."""
    return proc.poll() is None and psutil.Process(proc.pid).status() not in (
        psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED,
    )


def assert_consistent(ws: Workspace) -> int | None:
    """Either one daemon that the pidfile names, or none and no pidfile; its pid."""
    running = [p.pid for p in litestreams(ws)]
    assert running == ([ws.daemon_pid()] if ws.pidfile.exists() else []), running
    return running[0] if running else None


def test_concurrent_start_bg_and_stop_storms(rws, sentinel, report):
    began = time.monotonic()
    rng = random.Random(SEED)
    setup(rws)
    make_db(rws.db, 3)
    most = samples = 0
    started: list[int] = []

    # 20 start-bg at once, over a pidfile naming the sentinel.
    stale_pidfile(rws, sentinel.pid)
    outputs, m, s = storm(rws, ["backup.start-bg"] * 20)
    most, samples = max(most, m), samples + s
    started += found(STARTED, outputs)
    assert len(started) == 1, outputs
    assert found(ALREADY, outputs) == started * 19, outputs
    assert sum(f"stale pidfile (pid {sentinel.pid} now belongs" in o for o in outputs) == 1, outputs
    assert assert_consistent(rws) == started[0]
    assert untouched(sentinel)

    # 20 stop at once.
    insert(rws.db, "before the stop storm")
    outputs, m, s = storm(rws, ["backup.stop"] * 20)
    most, samples = max(most, m), samples + s
    assert found(STOPPED, outputs) == started, outputs
    assert sum(o.strip() == "not running" for o in outputs) == 19, outputs
    assert assert_consistent(rws) is None
    assert not alive(started[0])

    # start-bg and stop interleaved: 10 of each at once, in a random order.
    stale_pidfile(rws, sentinel.pid)
    running = None
    stops = 0
    for round_ in range(INTERLEAVED_ROUNDS):
        insert(rws.db, f"before interleaved round {round_}")
        commands = ["backup.start-bg"] * 10 + ["backup.stop"] * 10
        rng.shuffle(commands)
        outputs, m, s = storm(rws, commands)
        most, samples = max(most, m), samples + s
        new = found(STARTED, outputs)
        stopped = found(STOPPED, outputs)
        # Every stop names a daemon that was running then; each runs once.
        assert set(stopped) <= set(new) | {running}, outputs
        assert len(stopped) == len(set(stopped)), outputs
        assert not set(new) & set(started), outputs
        started += new
        stops += len(stopped)
        running = assert_consistent(rws)
        assert all(not alive(pid) for pid in started if pid != running)
        assert untouched(sentinel)

    stops += "stopped (pid" in stop(rws)
    assert litestreams(rws) == [], "an orphan outlived the final stop"
    assert all(not alive(pid) for pid in started)
    assert untouched(sentinel)
    assert most == 1, f"{most} litestream processes at once"

    restored = Restores(rws)()
    assert restored == rows(rws.db)
    rws.assert_no_secrets()
    report(
        f"concurrency (seed {SEED}): 20 start-bg, 20 stop, {INTERLEAVED_ROUNDS}x(10 start-bg + 10 stop) "
        f"interleaved: {len(started)} daemons started, {stops + 1} stopped, at most {most} at "
        f"once in {samples} samples, 0 orphans, sentinel pid untouched, "
        f"{len(restored)} rows restored, 0 lost, {time.monotonic() - began:.1f}s"
    )
