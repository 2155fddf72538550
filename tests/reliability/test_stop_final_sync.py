"""``inv backup.stop`` right after a commit: the commit is in the replica.

The sync interval is a minute, so after start-bg's first sync only stop's final
sync can carry the commit; a restore just before the stop proves it was not
there yet.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sqlite3
import subprocess
import threading
import time

import psutil
import pytest

from conftest import BIN, insert, make_db, rows, wait_for

from .conftest import Restores, litestreams, setup, start_bg, stop, write_s3_env

COMMITS = {
    "one-row": lambda db: insert(db, "the last row"),
    "1000-rows": lambda db: insert(db, *(f"batch row {i}" for i in range(1000))),
    "4MB-blob": lambda db: insert_blob(db, 4 * 1024 * 1024),
}


def insert_blob(db, size: int) -> None:
    con = sqlite3.connect(db)
    try:
        con.execute("INSERT INTO items (body) VALUES (?)", (f"blob {size}:" + "x" * size,))
        con.commit()
    finally:
        con.close()


@pytest.mark.parametrize("commit", list(COMMITS), ids=list(COMMITS))
def test_stop_right_after_a_commit_ships_it(rws, report, commit):
    began = time.monotonic()
    write_s3_env(rws, interval="1m")
    setup(rws)
    make_db(rws.db, 3)
    start_bg(rws)
    restores = Restores(rws)
    before = rows(rws.db)

    COMMITS[commit](rws.db)
    expected = rows(rws.db)
    # Not yet replicated: the next sync is a minute away.
    assert restores() == before
    stop(rws)

    restored = restores()
    assert restored == expected
    assert len(restored) > len(before)
    rws.assert_no_secrets()
    report(
        f"stop-sync [{commit}]: commit absent from the replica before stop, present after "
        f"(sync interval 1m), {len(expected) - len(before)} new rows, 0 lost, "
        f"{time.monotonic() - began:.1f}s"
    )


def spawn_start(ws, **popen) -> subprocess.Popen:
    proc = subprocess.Popen([str(BIN / "inv"), "backup.start"], cwd=ws.path, env=ws.environ(), **popen)
    ws.children.append(proc)
    return proc


# Built from the names this system has: the module must import on Windows too (no SIGHUP).
STOP_SIGNALS = [getattr(signal, name) for name in ("SIGHUP", "SIGINT", "SIGTERM") if hasattr(signal, name)]


@pytest.mark.posix
@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_every_stop_signal_to_a_foreground_start_ends_in_the_final_sync(rws, report, sig):
    """A closed terminal, Ctrl-C, or a kill: litestream's clean stop, exit 0, the last row replicated."""
    write_s3_env(rws, interval="1m")
    setup(rws)
    make_db(rws.db, 3)
    proc = spawn_start(rws, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_for(rws.synced, 30, interval=0.2, what="first sync")
    # The drill runner runs beside a foreground litestream too, its schedule on record.
    wait_for(lambda: (rws.state / "drill.pid").exists(), 10, what="the drill runner")
    runner = json.loads((rws.state / "drill.pid").read_text())["pid"]
    assert "backup.drill" in psutil.Process(runner).cmdline()
    wait_for(lambda: json.loads(rws.inv("backup.status", "--json").stdout)["databases"][0]["verified"]["next"],
             10, what="the first drill's time in status")
    restores = Restores(rws)
    before = restores()
    insert(rws.db, f"committed just before {sig.name}")
    assert restores() == before  # the next sync is a minute away: only the final one carries it
    code, output = rws.finish(proc, sig)
    assert code == 0, output
    assert restores() == rows(rws.db) != before
    assert litestreams(rws) == [] and not rws.pidfile.exists()
    assert not psutil.pid_exists(runner) or psutil.Process(runner).status() == psutil.STATUS_ZOMBIE
    assert not (rws.state / "drill.pid").exists()
    assert "chora-backup drill: next restore drill at" in output  # its lines where litestream's go
    report(f"foreground {sig.name}: exit 0, the row committed just before it is in the replica")


@pytest.mark.posix
def test_a_closed_terminal_ends_in_the_final_sync(rws, report):
    """The real thing: the terminal (a pty) goes away under a foreground start."""
    import fcntl
    import termios

    write_s3_env(rws, interval="1m")
    setup(rws)
    make_db(rws.db, 3)
    primary, secondary = os.openpty()

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = spawn_start(rws, stdin=secondary, stdout=secondary, stderr=secondary,
                       start_new_session=True, preexec_fn=controlling_terminal)
    os.close(secondary)
    reading = threading.Event()
    reading.set()
    drained = threading.Thread(target=drain, args=(primary, reading), daemon=True)
    drained.start()
    wait_for(rws.synced, 30, interval=0.2, what="first sync")
    insert(rws.db, "committed just before the hang-up")
    # The terminal window closes. The reader lets go first: a read blocked on the
    # terminal would keep it open, and the kernel hangs up only on its last close.
    reading.clear()
    drained.join(5)
    os.close(primary)  # the kernel sends SIGHUP to the session
    assert proc.wait(60) == 0
    assert Restores(rws)() == rows(rws.db)
    assert litestreams(rws) == [] and not rws.pidfile.exists()
    report("closed terminal (pty): SIGHUP, exit 0, the last row in the replica")


def drain(fd: int, reading: threading.Event) -> None:
    """Read the terminal's output while ``reading`` is set, never blocking for long."""
    with contextlib.suppress(OSError):
        while reading.is_set():
            if select.select([fd], [], [], 0.1)[0] and not os.read(fd, 65536):
                return


@pytest.mark.posix
@pytest.mark.parametrize("how", ["pty-closed", "SIGHUP"])
def test_a_foreground_start_returns_only_after_litestreams_final_sync(rws, how):
    """Rows committed up to the hang-up, a minute's sync interval: the moment the command
    returns, litestream has exited after its shutdown and a restore holds every row."""
    import fcntl
    import termios

    from .conftest import Writer

    write_s3_env(rws, interval="1m")
    setup(rws)
    make_db(rws.db, 3)
    if how.startswith("pty"):
        primary, secondary = os.openpty()
        proc = spawn_start(rws, stdin=secondary, stdout=secondary, stderr=secondary, start_new_session=True,
                           preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(secondary)
        reading = threading.Event()
        reading.set()
        drained = threading.Thread(target=drain, args=(primary, reading), daemon=True)
        drained.start()
    else:
        proc = spawn_start(rws, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_for(rws.synced, 30, interval=0.2, what="first sync")
    with Writer(rws.db, pause=0.005) as writer:
        writer.wait_commits(40)  # a burst the next minute's sync would carry, if it came
    if how.startswith("pty"):
        reading.clear()
        drained.join(5)
        os.close(primary)  # the kernel hangs up the session
        assert proc.wait(60) == 0
    else:
        code, output = rws.finish(proc, signal.SIGHUP)
        assert code == 0, output
        # litestream's own word that its final sync was done, streamed before the command ended
        assert 'msg="litestream shut down"' in output and "shutdown sync" not in output, output
    assert litestreams(rws) == [], "the command returned while litestream still ran"
    assert Restores(rws)() == rows(rws.db)
