"""Windows end to end: what the README promises there, on a real Windows runner.

Skipped elsewhere (the ``windows`` marker, see tests/conftest.py); the Windows CI job
runs it with ``pytest -m windows``. There litestream comes from the release zip through
LITESTREAM_BIN, which tests/conftest.py hands to each workspace where no wheel brings one.
"""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from conftest import BIN, Workspace, insert, kill_litestream, make_db, rows, wait_for

pytestmark = pytest.mark.windows

LAST_ROW = "the last row"
# A child that runs `inv backup.start-bg`, passes on its exit code and exits at once.
START_AND_EXIT = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:], timeout=90).returncode)"


@pytest.fixture
def winws(r2ws: Workspace) -> Workspace:
    """The local S3 server's workspace, with the CI job's litestream and a minute between
    syncs: once the first sync is done, only stop's final sync can carry a commit."""
    with (r2ws.path / ".env").open("a", encoding="utf-8") as fh:
        fh.write("BACKUP_SYNC_INTERVAL=1m\n")
    setup = r2ws.inv("backup.setup")
    assert setup.returncode == 0, setup.stdout + setup.stderr
    make_db(r2ws.db, 3)
    return r2ws


@pytest.fixture
def daemons() -> Iterator[list[int]]:
    """The daemons a test started, by pid: killed at the end if a stop left one behind."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        kill_litestream(pid)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def restored(ws: Workspace, name: str) -> list[tuple] | None:
    """``inv backup.restore --output`` into a new file: its rows, or None if it failed."""
    out = ws.root / name
    result = ws.inv("backup.restore", "--output", str(out))
    return rows(out) if result.returncode == 0 else None


def daemon_pid(ws: Workspace) -> int:
    """The daemon's pid, as ``inv backup.status --json`` reports it."""
    result = ws.inv("backup.status", "--json")
    assert result.stdout.lstrip().startswith("{"), result.stdout + result.stderr
    pid = json.loads(result.stdout)["pid"]
    assert type(pid) is int, result.stdout
    return pid


def stop(ws: Workspace, pid: int) -> str:
    result = ws.inv("backup.stop")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: not alive(pid), 10, what=f"litestream (pid {pid}) to exit")
    assert not ws.pidfile.exists()
    return result.stdout


def test_stop_makes_the_final_sync_and_a_restore_holds_the_last_row(winws, daemons):
    started = winws.inv("backup.start-bg")
    assert started.returncode == 0, started.stdout + started.stderr
    pid = winws.daemon_pid()
    assert pid is not None, started.stdout
    daemons.append(pid)
    # The first sync is in the replica: start-bg waited for it through the socket.
    first = rows(winws.db)
    attempt = itertools.count()
    wait_for(lambda: restored(winws, f"before-{next(attempt)}.db") == first, 60, what="the first sync")

    insert(winws.db, LAST_ROW)
    expected = rows(winws.db)
    assert restored(winws, "not-yet.db") == first  # the next periodic sync is a minute away
    offset = (winws.state / "litestream.log").stat().st_size
    output = stop(winws, pid)
    assert f"stopped (pid {pid}) after its final sync" in output, output
    # The Ctrl-Break reached litestream (it stopped on it, and was not killed).
    assert "was killed" not in output and "killed (pid" not in output, output
    log = (winws.state / "litestream.log").read_bytes()[offset:].decode("utf-8", "replace")
    assert "signal received" in log and 'msg="litestream shut down"' in log, log[-2000:]

    assert restored(winws, "restored.db") == expected
    assert expected[-1][1] == LAST_ROW
    winws.assert_no_secrets()


def test_the_daemon_outlives_the_process_that_started_it(winws, daemons):
    # Output to a file, not a pipe: on Windows a pipe that a leaked handle keeps open
    # would hang subprocess.run's clean-up after a timeout.
    log = winws.root / "child.log"
    with open(log, "wb") as fh:
        child = subprocess.run(
            [sys.executable, "-c", START_AND_EXIT, str(BIN / "inv"), "backup.start-bg"],
            cwd=winws.path, env=winws.environ(), stdin=subprocess.DEVNULL, stdout=fh,
            stderr=subprocess.STDOUT, timeout=120,
        )
    output = log.read_text("utf-8", errors="replace")
    winws.outputs.append(output)
    assert child.returncode == 0, output
    # The child (and the inv it ran) are gone: subprocess.run waited for them.
    pid = daemon_pid(winws)
    daemons.append(pid)
    assert alive(pid), f"litestream (pid {pid}) died with the process that started it"
    assert "litestream" in " ".join(psutil.Process(pid).cmdline())

    stop(winws, pid)
    winws.assert_no_secrets()
