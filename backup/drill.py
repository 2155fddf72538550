"""The restore drill runner: while litestream replicates, prove the replica on a schedule.

``python -m backup.drill <litestream pid>`` runs beside the daemon, started by every start
(foreground, background, the service) with the environment the start had, in the
workspace. It waits one ``BACKUP_VERIFY_INTERVAL`` after the start (so a restart loop is
never a download loop), then restores every database from its replica and compares it with
the live one exactly as ``inv backup.verify`` does — both sides read at the txid the
replica holds — and waits again. The verdicts go to the drills' record (``status``,
``doctor``), a line each to litestream's output (``logs``), and, after a drill that passed,
one GET to ``BACKUP_VERIFY_PING_URL`` (after one that failed: its ``/fail`` URL where the
service takes one, else nothing).

A drill never replicates on its own (it syncs through the daemon), never holds the
workspace lock, and works in a folder of the state dir. When litestream ends, or the
runner is asked to stop (SIGTERM, SIGINT, SIGHUP; Ctrl-Break on Windows), the drill in
progress ends at once — its restore killed, its folder removed — and the runner exits.
"""
from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import psutil

from . import config, drills, process
from .config import Settings
from .drills import Proof, iso
from .errors import BackupError
from .ping import failure_url, ping
from .workspace import Workspace

WATCH = 0.5  # seconds between two looks at litestream
MIN_RESTORE_TIMEOUT = 600.0
PREFIX = "chora-backup drill:"


class Stopped(Exception):
    """Litestream ended, or the runner was asked to stop."""


class Runner:
    """The schedule and the drills of one workspace, beside one litestream."""

    def __init__(self, settings: Settings, litestream: psutil.Process, out: IO[str],
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.litestream = litestream
        self.out = out
        self.clock = clock
        self.stopping = threading.Event()

    def say(self, text: str) -> None:
        """One line where litestream's output goes, masked, written whole."""
        with contextlib.suppress(OSError, ValueError):
            self.out.write(self.settings.mask(f"{PREFIX} {text}") + "\n")
            self.out.flush()

    # -- the schedule --------------------------------------------------------------

    def run(self) -> None:
        settings = self.settings
        drills.clean(settings)  # what a drill killed outright left
        started = self.clock()
        interval = settings.verify_interval
        if interval is None:
            drills.schedule(settings, pid=os.getpid(), started_at=iso(started), interval=config.OFF, next=None)
            self.say("restore drills are off (BACKUP_VERIFY_INTERVAL=off); 'inv backup.verify' proves "
                     "the replica on demand")
            self._wait(None)
            return
        due = started + interval
        while True:
            drills.schedule(settings, pid=os.getpid(), started_at=iso(started), interval=settings.verify_interval_text,
                            next=iso(due))
            self.say(f"next restore drill at {iso(due)} (every {settings.verify_interval_text})")
            self._wait(due)
            began = self.clock()
            self.drill()
            due = began + interval
            if due <= self.clock():  # a drill longer than the interval: the next one an interval on
                due = self.clock() + interval

    def _wait(self, until: float | None) -> None:
        """Until ``until`` (None: forever), or raise Stopped once litestream has ended."""
        while until is None or self.clock() < until:
            self._check()
            self.stopping.wait(WATCH if until is None else max(0.0, min(WATCH, until - self.clock())))

    def _check(self) -> None:
        if self.stopping.is_set() or not process.alive(self.litestream):
            raise Stopped

    # -- one drill -------------------------------------------------------------------

    def drill(self) -> dict[Path, Proof]:
        """Every database restored and compared; each verdict kept, said, and pinged."""
        from .verify import verify

        settings = self.settings
        self.say("restore drill: restoring every database from its replica to compare it with the live one")
        paths = [db.path for db in settings.databases]
        try:
            workspace = Workspace.load(settings, remember=False)
            paths = [db.path for db in workspace.databases]
            units = tuple(db for db in workspace.databases if db.path.is_file())
            for db in workspace.databases:
                if db not in units:
                    self.say(f"{db.path}: skipped: it does not exist (litestream waits for it)")
            # A drill can take no longer than its interval (at least 10 minutes): a stalled
            # download ends as a failed drill, not as a runner that never answers again.
            timeout = max(settings.verify_interval or 0.0, MIN_RESTORE_TIMEOUT)
            proofs = verify(workspace, units, by=None, daemon_only=True, temp_root=drills.folder(settings),
                            restore_timeout=timeout).proofs
        except (Stopped, KeyboardInterrupt):
            raise
        except BackupError as exc:
            proofs = {path: Proof(False, exc.message) for path in paths}
        except (OSError, sqlite3.Error) as exc:  # a full disk, an unreadable file: a failed drill, said
            where = drills.folder(settings)
            proofs = {path: Proof(False, f"the drill could not run: {type(exc).__name__}: {exc}: it restores "
                                         f"into {where}, which needs about twice the database's size free and "
                                         "must be writable; 'inv backup.verify' runs the same check now")
                      for path in paths}
        finally:
            drills.clean(settings)
        self._check()  # a drill cut short by a stop leaves no verdict
        drills.remember(settings, proofs, "drill")
        for path, proof in proofs.items():
            verdict = "ok" if proof.ok else "FAILED"
            at = f" at txid {proof.txid}" if proof.txid else ""
            self.say(f"{path}: {verdict}{at}: {proof.message}")
        if proofs:
            self._ping(all(p.ok for p in proofs.values()))
        return proofs

    def _ping(self, passed: bool) -> None:
        url = self.settings.verify_ping_url
        if not url:
            return
        target = url if passed else failure_url(url)
        if target is None:
            self.say("the drill failed: no ping sent (its silence is the alarm)")
            return
        ok, what = ping(target, self.settings, what="the drill's ping")
        self.say(what if ok else f"the drill's ping failed: {what}")


@contextlib.contextmanager
def _stops(runner: Runner) -> Iterator[None]:
    """A stop request or litestream's end interrupts whatever the runner does: its children
    (a restore) are killed, and Stopped is raised in the main thread, so every ``finally``
    on the way out removes its files."""

    def end_children() -> None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process().children(recursive=True):
                process.kill(child)

    def interrupt() -> None:
        runner.stopping.set()
        # First: the main thread raises as soon as its restore is gone. (SIGINT is handled
        # below, so interrupt_main works even where the runner was started ignoring it.)
        _thread.interrupt_main()
        end_children()

    def on_signal(signum: int, frame: object) -> None:
        runner.stopping.set()
        end_children()
        raise Stopped

    def watch() -> None:
        while not runner.stopping.is_set():
            if not process.alive(runner.litestream):
                interrupt()
                return
            time.sleep(WATCH)

    names = ("SIGTERM", "SIGINT", "SIGHUP", "SIGBREAK")
    previous = {}
    for name in names:
        if hasattr(signal, name):
            previous[name] = signal.signal(getattr(signal, name), on_signal)
    threading.Thread(target=watch, name="drill-watch", daemon=True).start()
    try:
        yield
    finally:
        runner.stopping.set()
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def main(argv: list[str]) -> int:
    try:
        watched = psutil.Process(int(argv[0]))
        settings = config.load()  # the workspace's .env and the environment the start had
    except (IndexError, ValueError, psutil.Error, BackupError) as exc:
        print(f"{PREFIX} cannot run: {exc}", flush=True)
        return 2
    runner = Runner(settings, watched, sys.stdout)
    try:
        with _stops(runner):
            runner.run()
    except (Stopped, KeyboardInterrupt):
        pass
    finally:
        drills.clean(settings)
        drills.stopped(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
