"""kill -9 at random moments under continuous writes, ten times, restarting with start-bg."""
from __future__ import annotations

import random
import time

import psutil

from conftest import make_db, rows, wait_for

from .conftest import SEED, Restores, Writer, alive, integrity, litestreams, setup, start_bg, stop

KILLS = 10
# The moment of each kill: after this many more commits (~20 ms apart), so
# anywhere from right after start-bg's first sync to a few sync intervals later.
MAX_COMMITS_BEFORE_KILL = 150


def test_kill_9_ten_times_under_writes_loses_nothing(rws, report):
    began = time.monotonic()
    rng = random.Random(SEED)
    setup(rws)
    make_db(rws.db, 3)
    pid, _ = start_bg(rws)
    killed = []
    with Writer(rws.db) as writer:
        for _ in range(KILLS):
            writer.wait_commits(rng.randint(0, MAX_COMMITS_BEFORE_KILL))
            daemon = psutil.Process(rws.daemon_pid())  # kill -9 the pid the pidfile names
            assert daemon.pid == pid and str(rws.config) in daemon.cmdline()
            daemon.kill()
            killed.append(pid)
            wait_for(lambda: not alive(pid), 10, what=f"the killed daemon {pid} to die")
            assert litestreams(rws) == []

            pid, output = start_bg(rws)
            assert f"replaced a stale pidfile (process {killed[-1]} is gone)" in output, output
        writer.wait_commits(20)
    stop(rws)  # its final sync carries whatever the last daemon had not shipped

    expected = rows(rws.db)
    assert [body for _, body in expected[3:]] == writer.committed, f"seed {SEED}"
    assert integrity(rws.db) == "ok"
    restored = Restores(rws)()
    lost = len(set(expected) - set(restored))
    assert restored == expected, f"seed {SEED}: {lost} rows lost"
    assert len(set(killed)) == KILLS
    rws.assert_no_secrets()
    report(
        f"kill9: {KILLS} kills (seed {SEED}), {len(expected)} rows, {lost} lost, "
        f"integrity ok, {time.monotonic() - began:.1f}s"
    )
