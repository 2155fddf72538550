"""Managed processes: the replicating daemon and every follower alike.

A managed process is a litestream this package started and must find again: a
pidfile names it by pid *and* its exact command line, and one lock file
serialises every command that looks at or changes that pidfile. ``Managed``
holds the three (pidfile, lock, what makes a record ours); ``claimed`` is the
one way in — lock, check against the process table, refuse a process that
cannot be inspected. A record whose process is gone, or whose pid now runs
another program, is stale and never used to signal anything. Starting goes
through ``spawn_logged`` (litestream detached, its output through the log
pump); stopping through ``stop`` (litestream's clean stop, a kill after the
timeout). Only this module reads or writes a pidfile.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import psutil

from . import logfile
from .errors import BackupError
from .files import open_private, private_dir, write_private
from .litestream import CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, start_process

if TYPE_CHECKING:
    from .config import Settings
    from .litestream import Litestream

log = logging.getLogger("backup.process")

LOCK_TIMEOUT = 120.0  # a start holds the lock until its first sync at most
POLL = 0.1


# -- platform differences ---------------------------------------------------


class Posix:
    def lock(self, fh: IO[bytes]) -> None:
        """Take an exclusive lock on ``fh`` or raise BlockingIOError at once."""
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def unlock(self, fh: IO[bytes]) -> None:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def interrupt(self, proc: psutil.Process | subprocess.Popen, sig: int = signal.SIGTERM) -> bool:
        """Ask litestream to make its final sync and exit; True: the signal was sent."""
        proc.send_signal(sig)
        return True


class Windows:
    """Windows: litestream only handles os.Interrupt (Ctrl-C / Ctrl-Break)."""

    HELPER_WAIT = 15.0  # seconds for the Ctrl-Break helper to start and answer

    def __init__(self, run: Callable[..., subprocess.CompletedProcess] | None = None, msvcrt: Any = None):
        self._run = run or subprocess.run
        self._msvcrt = msvcrt

    def _locking(self) -> Any:
        if self._msvcrt is None:
            import msvcrt

            self._msvcrt = msvcrt
        return self._msvcrt

    def lock(self, fh: IO[bytes]) -> None:
        m = self._locking()
        # locking() works from the file position, which "a+b" puts at the end:
        # lock byte 0, the one unlock() releases.
        fh.seek(0)
        try:
            m.locking(fh.fileno(), m.LK_NBLCK, 1)
        except OSError as exc:
            raise BlockingIOError(str(exc)) from None

    def unlock(self, fh: IO[bytes]) -> None:
        m = self._locking()
        fh.seek(0)
        m.locking(fh.fileno(), m.LK_UNLCK, 1)

    def interrupt(self, proc: psutil.Process | subprocess.Popen, sig: int = 0) -> bool:
        """Ctrl-Break to litestream, through a helper attached to its console (see
        ``backup.winconsole``); True when delivered. The helper starts with a console of
        its own (no window), so the event never reaches this process or its terminal."""
        argv = [sys.executable, "-I", "-m", "backup.winconsole", str(proc.pid)]
        try:
            done = self._run(argv, creationflags=CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             timeout=self.HELPER_WAIT)
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("the Ctrl-Break helper did not run: %s", exc)
            return False
        log.debug("the Ctrl-Break helper exited %s", done.returncode)
        return done.returncode == 0


def current_platform() -> Posix | Windows:
    return Windows() if sys.platform == "win32" else Posix()


# -- the pidfile ---------------------------------------------------------------


@dataclass(frozen=True)
class PidRecord:
    pid: int
    # For people reading the file; not part of the identity, because psutil
    # derives it from the wall clock, which NTP or a manual change can step.
    create_time: float
    cmdline: list[str]
    config: str
    started_at: str  # RFC 3339, UTC
    log: str | None
    foreground: bool = False
    # The config the daemon was started with (a copy is kept as Settings.running_config).
    config_sha256: str | None = None
    # A follower's (backup.follow): the copy people read, and the file litestream was
    # told to write (a working name beside it, renamed over it once restored).
    output: str | None = None
    working: str | None = None


@dataclass(frozen=True)
class ProcessState:
    state: str  # "running", "stopped", "stale" or "unknown" (its process cannot be inspected)
    record: PidRecord | None = None
    reason: str = ""
    process: psutil.Process | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def pid(self) -> int | None:
        return self.record.pid if self.running and self.record else None


def read_pidfile(path: Path) -> PidRecord | None | str:
    """The record, None when there is no pidfile, or a reason it is unreadable."""
    try:
        data = json.loads(path.read_text("utf-8"))
        record = PidRecord(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        return f"unreadable pidfile ({type(exc).__name__})"
    # Types are checked here so a damaged file is stale, never a traceback
    # (psutil raises ValueError on a pid below 1, TypeError on a string).
    well_formed = (
        type(record.pid) is int
        and record.pid > 0
        and isinstance(record.create_time, (int, float))
        and isinstance(record.cmdline, list)
        and all(isinstance(arg, str) for arg in record.cmdline)
        and isinstance(record.config, str)
        and (record.config_sha256 is None or isinstance(record.config_sha256, str))
        and all(v is None or isinstance(v, str) for v in (record.output, record.working))
    )
    return record if well_formed else "unreadable pidfile (malformed record)"


def write_pidfile(path: Path, record: PidRecord) -> None:
    write_private(path, (json.dumps(asdict(record), indent=2) + "\n").encode("utf-8"))


def remove_pidfile(path: Path, record: PidRecord | None) -> None:
    """Remove the pidfile, but only while it still names ``record``."""
    current = read_pidfile(path)
    if record is None or not isinstance(current, PidRecord) or current == record:
        path.unlink(missing_ok=True)


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def check(path: Path, ours: Callable[[PidRecord], bool]) -> ProcessState:
    """What the pidfile at ``path`` says, proven against the process table: a process is
    the one recorded only if ``ours(record)`` holds and it runs exactly the recorded
    command line. Signals nothing."""
    record = read_pidfile(path)
    if record is None:
        return ProcessState("stopped")
    if isinstance(record, str):
        return ProcessState("stale", None, record)
    try:
        proc = psutil.Process(record.pid)
        # A process running that very command line does the recorded work, so it
        # is the one to report and to stop even if its pid was reused.
        same = ours(record) and proc.cmdline() == record.cmdline
    except psutil.NoSuchProcess:
        return ProcessState("stale", record, f"process {record.pid} is gone")
    except psutil.AccessDenied:
        # Another user's process, or an elevated one: it may well be a replicator.
        # Unknown is not stale: never delete its pidfile, never start beside it.
        return ProcessState("unknown", record, f"pid {record.pid} cannot be inspected (access denied)")
    if not same:
        return ProcessState("stale", record, f"pid {record.pid} now belongs to another program")
    if not alive(proc):
        return ProcessState("stale", record, f"process {record.pid} has exited")
    return ProcessState("running", record, process=proc)


def refuse_unknown(pidfile: Path, state: ProcessState) -> None:
    """Act on no pidfile whose process cannot be inspected: it may be a running litestream."""
    if state.state == "unknown" and state.record:
        raise BackupError(
            f"{pidfile} names pid {state.record.pid}, which cannot be inspected (access "
            "denied): it may be "
            "litestream started by another user or an elevated console; check it as that user "
            "and stop it, or delete the pidfile if it is not litestream — nothing was changed"
        )


# -- the lock ------------------------------------------------------------------


@contextlib.contextmanager
def locked(
    lockfile: Path, state_dir: Path, platform: Posix | Windows | None = None,
    timeout: float = LOCK_TIMEOUT, remove: bool = False, marker: Path | None = None,
) -> Iterator[None]:
    """Hold ``lockfile`` exclusively; ``remove``: delete it again on release (a follower's).

    A state dir holding ``marker`` (the workspace lock file, by default ``lockfile``) is
    ours: one an earlier version made 0755 is tightened.
    """
    platform = platform or current_platform()
    private_dir(state_dir, ours=(marker or lockfile).exists())
    deadline = time.monotonic() + timeout
    while True:
        with open_private(lockfile, "a+b") as fh:
            while True:
                try:
                    platform.lock(fh)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise BackupError(
                            f"another chora-backup command has held {lockfile} for "
                            f"{timeout:g}s: wait for it, or check 'inv backup.status'"
                        ) from None
                    time.sleep(POLL)
            if remove and not _same_file(fh, lockfile):
                platform.unlock(fh)
                continue  # its holder removed it meanwhile: lock the file now there
            try:
                yield
                return
            finally:
                if remove and sys.platform != "win32":
                    lockfile.unlink(missing_ok=True)  # while still locked: leave nothing behind
                platform.unlock(fh)


def _same_file(fh: IO[bytes], path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
    except OSError:
        return False


# -- one managed process -----------------------------------------------------------


@dataclass(frozen=True)
class Managed:
    """One managed process: its pidfile, its lock, and what makes a record ours."""

    pidfile: Path
    lockfile: Path
    state_dir: Path
    ours: Callable[[PidRecord], bool]
    remove_lock: bool = False  # a follower's lock goes with it; the workspace lock stays
    marker: Path | None = None  # see locked()

    def check(self) -> ProcessState:
        """What the pidfile says, proven against the process table. Signals nothing."""
        return check(self.pidfile, self.ours)

    def locked(self, platform: Posix | Windows | None = None, timeout: float = LOCK_TIMEOUT) -> Any:
        return locked(self.lockfile, self.state_dir, platform, timeout, remove=self.remove_lock, marker=self.marker)

    @contextlib.contextmanager
    def claimed(self, platform: Posix | Windows | None = None, timeout: float = LOCK_TIMEOUT) -> Iterator[ProcessState]:
        """Lock, check, refuse unknown: the process's state, under the lock, as the one way
        any command starts, stops or acts beside it."""
        with self.locked(platform, timeout):
            state = self.check()
            refuse_unknown(self.pidfile, state)
            yield state


# -- start and stop ----------------------------------------------------------------


def spawn_logged(
    settings: Settings, litestream: Litestream, log: Path, command: str, *args: str,
    config: Path | None = None, touch: Path | None = None, restored: Path | None = None,
    beside: Callable[[int], list[str]] | None = None,
) -> tuple[subprocess.Popen, subprocess.Popen, subprocess.Popen | None]:
    """litestream, detached, its output piped into the log pump that keeps ``log`` bounded
    and masked (and, for a follower, puts ``restored`` in place as the copy ``touch`` once
    it follows, then moves that copy's change counter after each apply). ``beside``: the
    argv (given litestream's pid) of a process that runs beside it, in the workspace, with
    this environment, its output into the same log; (litestream, the pump, that process)."""
    read_end, write_end = os.pipe()
    try:
        environ = {k: v for k, v in os.environ.items() if v not in settings.secrets()}
        log_pump = logfile.start_pump(log, read_end, environ, settings.secrets(), touch=touch, restored=restored)
        try:
            proc = litestream.spawn(command, *args, stdout=write_end, stderr=subprocess.STDOUT, detached=True,
                                    config=config)
        except BaseException:
            kill(log_pump)
            raise
        companion = start_beside(settings, beside(proc.pid), write_end) if beside else None
    finally:
        os.close(read_end)
        os.close(write_end)
    return proc, log_pump, companion


def start_beside(settings: Settings, argv: list[str], output: int | IO[Any] | None) -> subprocess.Popen | None:
    """A Python process beside litestream (the drill runner), detached like it, in the
    workspace, with this process's environment (never an argument: it may hold secrets);
    None when it cannot start (said in the debug log: replication goes on without it)."""
    try:
        return start_process(argv, True, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                             cwd=str(settings.workspace), env=dict(os.environ))
    except OSError as exc:
        log.debug("%s did not start: %s", argv, exc)
        return None


def kill(proc: subprocess.Popen | psutil.Process) -> None:
    with contextlib.suppress(psutil.Error, OSError):
        proc.kill()
    if isinstance(proc, subprocess.Popen):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def stop(state: ProcessState, timeout: float, platform: Posix | Windows | None = None) -> bool:
    """Ask the recorded process to stop (litestream's clean stop), kill it after ``timeout``;
    True when it had to be killed."""
    platform = platform or current_platform()
    proc = state.process
    if proc is None:
        return False
    delivered = True
    with contextlib.suppress(psutil.NoSuchProcess):
        delivered = platform.interrupt(proc)
    # Undelivered (Windows: no console to reach it through), nothing is coming: no wait.
    forced = not wait_gone(proc, timeout if delivered else 0.5)
    if forced:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
        wait_gone(proc, 10)
    return forced


def wait_gone(proc: psutil.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(proc):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL / 2)
    return True


