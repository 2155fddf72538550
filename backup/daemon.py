"""The replicating process: pidfile, start (background or foreground), stop.

Exactly one litestream per workspace config: every start and stop holds an
exclusive lock on ``<state dir>/litestream.lock`` while it looks at and
changes the pidfile, so concurrent starts serialise and the losers find the
winner's daemon. The pidfile names a process by pid *and* its exact command
line, which must be a ``litestream replicate`` of the workspace config; one
whose process is gone, or whose pid now belongs to another program, is stale
and never used to signal anything. Only this module touches the pidfile.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import psutil

from . import drills, localstate, logfile, ltlog, process, terminal, wal
from .config import LOCAL, R2, START_WAIT, Settings, require_r2
from .errors import NO_CONFIG, BackupError, ConfigError, LitestreamError, translate
from .files import private_dir, write_private
from .litestream import (
    Litestream,
    check_endpoint,
    holders_of,
    replicators,
)
from .ltconfig import DEFAULT_STOP_TIMEOUT, LitestreamConfig, read_config
from .process import ProcessState
from .render import WriteResult, write_config
from .sqlitefile import is_sqlite
from .workspace import active_config, replicator

if TYPE_CHECKING:
    from .owner import Claim

log = logging.getLogger("backup.daemon")

POLL = process.POLL


# -- the daemon's pidfile and lock ------------------------------------------------


def check(settings: Settings) -> ProcessState:
    """What the daemon's pidfile says, proven against the process table. Signals nothing."""
    return replicator(settings).check()


def _refuse_other_workspace(settings: Settings, state: ProcessState) -> None:
    if state.running and state.record and state.record.config != str(settings.config_path):
        raise BackupError(
            f"BACKUP_STATE_DIR {settings.state_dir} belongs to the daemon of "
            f"{state.record.config} (pid {state.record.pid}): give each workspace its own "
            "BACKUP_STATE_DIR"
        )


def refuse_unrecorded(settings: Settings) -> None:
    """Refuse a second litestream for this config when one runs that no pidfile names.

    Two replicating processes can corrupt the replica; the pidfile alone cannot
    see one started with another BACKUP_STATE_DIR, or by hand.
    """
    config = str(settings.config_path)
    for proc in replicators(config):
        if process.alive(proc):
            raise BackupError(
                f"litestream (pid {proc.pid}) already replicates {config} but "
                f"{settings.pidfile} does not name it (started by hand, or with another "
                f"BACKUP_STATE_DIR): stop that process, then retry"
            )


@dataclass(frozen=True)
class Prepared:
    """What a replicating start checked, read once: the config and each replica's claim."""

    config: LitestreamConfig
    text: bytes
    claims: tuple[Claim, ...]
    repaired: tuple[str, ...] = ()  # set by replicate_once: databases copied whole first
    fresh: tuple[str, ...] = ()  # replicas that hold nothing: their history starts anew, whole

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text).hexdigest()


def _prepare(settings: Settings, litestream: Litestream, given: LitestreamConfig | None = None) -> Prepared:
    """Read litestream.yml once, check credentials and endpoints, claim every replica.

    ``given``: the file as the caller has already read it (a run with -once keeps no copy).
    """
    from .owner import (  # only a replicating start claims
        Ownership,
        reset_litestream_state,
    )
    from .replica import Replica

    path = settings.config_path
    text = b""
    if given is None:
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(NO_CONFIG) from None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    config = given or read_config(path, text)
    litestream.binary  # a missing or outdated binary fails before any claim is written
    if config.uses_s3:
        require_r2(settings)
    for entry in config.databases:
        check_endpoint(entry.endpoint)  # at once, not after litestream's two minutes of retries
        if entry.pattern and not entry.path.is_dir():
            # litestream's folder scan fails on a missing folder.
            raise ConfigError(
                f"the folder {entry.path} (BACKUP_DB {entry.pattern} in it) does not exist: "
                "create it, or fix BACKUP_DB"
            )
    files = [one.path for entry in config.databases for one in entry.databases() if one.path.is_file()]
    for db in files:
        if not is_sqlite(db):
            raise ConfigError(
                f"{db} is not an SQLite database: check BACKUP_DB (the file to back up) — nothing "
                "was started"
            )
    # Another workspace's litestream on the same database (its own config, its own state
    # dir): two replicators of one database share its local state folder.
    held = holders_of(files)
    if held:
        db, other = next(iter(held.items()))
        raise BackupError(
            f"litestream (pid {other.pid}) already replicates {db} with another config (another "
            "workspace naming the same database?): stop it there first — nothing was started"
        )
    # Only the replicas chora-backup writes (S3, a folder) carry an owner record; a
    # hand-written config's other kinds are litestream's to check. A database a folder
    # entry finds later is claimed at the next start.
    claims, fresh = [], []
    for entry in config.databases:
        for one in entry.databases():
            replica = Replica(settings, one, litestream, path, found=entry.pattern is not None)
            if replica.has_store:
                claim = Ownership(settings, one, replica.store(), replica.newest_txid).claim()
                claims.append(claim)
                # A replica that holds nothing (a new bucket or prefix) after this database
                # replicated elsewhere: litestream would upload from txid 1 changes it keeps
                # only from a later txid on, and fail. A new history starts whole instead.
                if claim.action in ("claimed", "reclaimed") and (cleared := reset_litestream_state(one.path)):
                    fresh.append(f"{replica.where} holds nothing yet: cleared litestream's local "
                                 f"state ({cleared}) so the first sync uploads the whole database "
                                 "(a new history)")
    return Prepared(config, text, tuple(claims), fresh=tuple(fresh))


AFTER_CRASH = (
    "the last daemon died without a clean stop: took a fresh snapshot first, so the replica "
    "holds every change even if litestream was cut off mid-sync"
)


def _snapshot_after_crash(settings: Settings, litestream: Litestream, state: ProcessState,
                          config: LitestreamConfig) -> bool:
    """After a daemon that died (kill -9, a crash, a power cut), snapshot before replicating.

    litestream killed in the middle of a sync can restart with its local state and the
    replica disagreeing about what one txid holds; it then skips a change it believes
    uploaded, and a restore silently lacks rows (seen here under repeated kill -9 while
    writing). A snapshot holds every page as it is now: a restore of the latest state
    starts from it. Costs one upload of the database, once per crash. Needs the lock held.
    """
    if state.state != "stale":
        return False
    if any(not e.pattern and not e.path.exists() for e in config.databases):
        return False  # 'replicate -once' would wait for a database that is not there
    # No timeout: an upload of the whole database takes as long as its size and the link need.
    litestream.run("replicate", "-once", "-force-snapshot", config=settings.config_path, timeout=None)
    return True


def _existing(config: LitestreamConfig) -> list[Path]:
    """Every database of ``config`` that exists now (a folder entry's, as found now)."""
    return [one.path for db in config.databases for one in db.databases() if one.path.exists()]


def _guard(config: LitestreamConfig) -> tuple[wal.Pin, list[str]]:
    """Every database's WAL pinned, and repaired where litestream would resume from it wrongly
    (see ``backup.wal``). Needs the lock held; the caller releases the pin once litestream
    has synced."""
    return wal.guard(_existing(config))


def _private_socket_folder(settings: Settings, socket: Path | None) -> None:
    """The control socket's folder must be this user's alone: anyone who can reach the
    socket can make the daemon sync, pause or stop replicating."""
    if socket is None:
        return
    folder = private_dir(socket.parent)
    if sys.platform == "win32":
        return  # made (litestream will not), in the user's own %TEMP%; no POSIX mode to check
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise BackupError(
            f"the control socket's folder {folder} is not private to you (mode "
            f"{info.st_mode & 0o777:o}): remove it, or set BACKUP_STATE_DIR to a shorter path "
            "so the socket lives in the state dir"
        )


def _remove_socket(socket: Path | None, platform: str = sys.platform) -> None:
    """A litestream that was killed leaves its socket file behind: take it away. (Python
    cannot tell a Windows socket file from another file: there, whatever is at that path,
    in our own state dir or folder, with no daemon running.)"""
    if socket is not None and (socket.is_socket() or (platform == "win32" and socket.is_file())):
        socket.unlink(missing_ok=True)


def _keep_running_copy(settings: Settings, prepared: Prepared) -> None:
    """Keep the config the daemon starts with, so every command can describe what runs."""
    write_private(settings.running_config, prepared.text)
    if prepared.config.socket and prepared.config.socket.parent != settings.state_dir:
        _private_socket_folder(settings, prepared.config.socket)


def _record(
    proc: subprocess.Popen, argv: list[str], settings: Settings, foreground: bool, prepared: Prepared
) -> process.PidRecord:
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        create_time = 0.0  # it died at once; the start-up wait reports why
    return process.PidRecord(
        pid=proc.pid,
        create_time=create_time,
        cmdline=argv,
        config=str(settings.config_path),
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        log=None if foreground else str(settings.logfile),
        foreground=foreground,
        config_sha256=prepared.sha256,
    )


# -- background ----------------------------------------------------------------


@dataclass(frozen=True)
class StartResult:
    pid: int
    log: Path
    already_running: bool
    stale: ProcessState | None = None
    waiting: tuple[Path, ...] = ()  # databases that do not exist yet
    claims: tuple[Claim, ...] = ()
    syncing: tuple[Path, ...] = ()  # databases whose first sync was still running at the timeout
    timeout: float = 0.0  # how long the start waited for first syncs
    resnapshot: bool = False  # a fresh snapshot was taken first: the last daemon died
    repaired: tuple[str, ...] = ()  # histories that start whole: a new replica, a WAL restarted meanwhile

    def as_lines(self) -> list[str]:
        if self.already_running:
            return [f"already running (pid {self.pid})"]
        lines = [f"replaced a stale pidfile ({self.stale.reason})"] if self.stale else []
        lines += list(self.repaired)
        if self.resnapshot:
            lines.append(AFTER_CRASH)
        lines += [claim.describe() for claim in self.claims if claim.describe()]
        lines += [f"waiting for {path}: it does not exist yet; litestream replicates it once it does"
                  for path in self.waiting]
        lines.append(f"started (pid {self.pid})")
        lines += [f"  first sync of {path} still in progress after {self.timeout:g}s (a large database "
                  "or a slow link): litestream goes on in the background; 'inv backup.status' says "
                  "when it is done, 'inv backup.logs --follow' shows it" for path in self.syncing]
        return lines + [f"  log   {self.log}", "  stop  inv backup.stop"]


def start_background(
    settings: Settings,
    litestream: Litestream,
    timeout: float,
    platform: process.Posix | process.Windows | None = None,
) -> StartResult:
    """Start the daemon and return once it is healthy, or raise with its log."""
    platform = platform or process.current_platform()
    with replicator(settings).claimed(platform) as state:
        _refuse_other_workspace(settings, state)
        if state.running and state.record:
            return StartResult(state.record.pid, settings.logfile, already_running=True)
        refuse_unrecorded(settings)
        prepared = _prepare(settings, litestream)
        settings = settings.masking(prepared.config.heartbeat_url)  # the URL litestream will log
        pin, repaired = _guard(prepared.config)
        with pin:  # no WAL restart until litestream has synced once (or the wait is over)
            resnapshot = _snapshot_after_crash(settings, litestream, state, prepared.config)
            _keep_running_copy(settings, prepared)
            _remove_socket(prepared.config.socket)  # a killed daemon's, which litestream may not take for one
            argv = litestream.argv("replicate")
            logfile.rotate(settings.logfile)
            offset = logfile.size(settings.logfile)
            drills.stop_runner(settings, timeout=5)  # one left by a litestream that died
            proc, log_pump, runner = process.spawn_logged(settings, litestream, settings.logfile, "replicate",
                                                          beside=drills.argv)
            record = None
            try:  # from here on, a failure (or Ctrl-C) must leave no process behind
                record = _record(proc, argv, settings, False, prepared)
                process.write_pidfile(settings.pidfile, record)
                drills.started(settings, runner)
                waiting, syncing = _wait_healthy(
                    settings, litestream, prepared.config, proc, log_pump, offset, timeout
                )
            except BaseException:
                process.kill(proc)
                if runner is not None:
                    process.kill(runner)
                drills.stop_runner(settings, timeout=1)
                process.kill(log_pump)  # it ends with litestream's output; this is for a pump left waiting
                _remove_socket(prepared.config.socket)
                if record is not None:
                    process.remove_pidfile(settings.pidfile, record)
                raise
        return StartResult(
            proc.pid,
            settings.logfile,
            already_running=False,
            stale=state if state.state == "stale" else None,
            waiting=waiting,
            claims=prepared.claims,
            syncing=syncing,
            timeout=timeout,
            resnapshot=resnapshot,
            repaired=prepared.fresh + tuple(repaired),
        )


def _synced(litestream: Litestream, socket: Path) -> set[Path] | None:
    """Databases the daemon has synced at least once, per its control socket."""
    try:
        listing = litestream.listing(socket)
    except LitestreamError:
        return None  # no answer within the timeout: ask again
    if listing is None:
        return None  # not listening yet
    return {Path(db["path"]) for db in listing if db.get("path") and db.get("last_sync_at")}


def _synced_by_replicas(settings: Settings, litestream: Litestream, config: LitestreamConfig) -> set[Path]:
    """Databases whose replica holds the txid litestream has captured locally: a first sync
    proven from the replica itself, where there is no control socket to ask."""
    from .replica import Replica

    synced = set()
    for entry in config.databases:
        for one in entry.databases():
            local = localstate.local_txid(one.path)
            if local is None:
                continue
            try:
                newest = Replica(settings, one, litestream, settings.config_path, found=bool(entry.pattern),
                                 remember=False).newest_txid()
            except BackupError:
                continue  # not reachable yet: the next look may be
            if newest is not None and newest >= local:
                synced.add(one.path)
    return synced


def _startup_error(settings: Settings, offset: int, fallback: str) -> str | None:
    """The first error litestream logged since ``offset``, translated, or None (a failed
    heartbeat is not one: replication itself is fine)."""
    error = ltlog.first_error(ltlog.events(logfile.read_since(settings.logfile, offset)))
    return translate(error.line, fallback) if error else None


def _wait_healthy(
    settings: Settings,
    litestream: Litestream,
    config: LitestreamConfig,
    proc: subprocess.Popen,
    log_pump: subprocess.Popen,
    offset: int,
    timeout: float,
) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """Wait for the first sync of every database that exists: (waiting, still syncing).

    Only a litestream that exits or logs an error is a failed start. One still
    busy at ``timeout`` is left running: a large first upload on a slow link
    can take far longer than any wait a person sits through.
    """
    started = time.monotonic()
    deadline = started + timeout
    next_listing = next_ask = started
    ask_by_process = bool(config.socket) and litestream.control(config.socket).via_cli

    def failure(reason: str) -> BackupError:
        lines = tuple(settings.mask(l) for l in logfile.tail(settings.logfile, 20, offset))
        return BackupError(settings.mask(reason), details=lines)

    while True:
        code = proc.poll()
        if code is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                log_pump.wait(5)  # its last lines, with the reason, reach the log first
            exited = f"litestream exited with code {code} while starting"
            raise failure(_startup_error(settings, offset, exited) or exited)
        error = _startup_error(settings, offset, "litestream reported an error")
        if error:
            raise failure(f"litestream failed to start: {error}")
        waiting = tuple(db.path for db in config.databases if not db.pattern and not db.path.exists())
        pending = _existing(config)
        synced: set[Path] | None = None
        if config.socket and not any(e.says(ltlog.SOCKET_FAILED)
                                     for e in ltlog.events(logfile.read_since(settings.logfile, offset))):
            if time.monotonic() >= next_ask:  # each ask a process where litestream's client asks
                next_ask = time.monotonic() + (1.0 if ask_by_process else 0.0)
                synced = _synced(litestream, config.socket)
        elif time.monotonic() >= next_listing and (pending or time.monotonic() - started > 2.0):
            # No control socket (a hand-written config, or one litestream could not open: it
            # goes on without): the replicas prove it, a listing a second; with nothing to
            # sync yet, two quiet seconds prove it read its config.
            next_listing = time.monotonic() + 1.0
            synced = _synced_by_replicas(settings, litestream, config)
        if synced is not None and all(p in synced for p in pending):
            return waiting, ()
        if time.monotonic() > deadline:
            return waiting, tuple(p for p in pending if p not in (synced or set()))
        time.sleep(POLL)


# -- foreground ----------------------------------------------------------------


def run_foreground(
    settings: Settings,
    litestream: Litestream,
    out: IO[str],
    platform: process.Posix | process.Windows | None = None,
) -> int:
    """Replicate in the foreground, streaming masked output; litestream's exit code.

    SIGINT, SIGTERM and SIGHUP all end in litestream's clean stop (final sync):
    see ``terminal.Stopper``. The pidfile names the child meanwhile, so start-bg and
    stop see it.
    """
    platform = platform or process.current_platform()
    output = terminal.Output(out, settings)
    with terminal.Stopper(platform).installed() as stopper:
        with replicator(settings).claimed(platform) as state:
            _refuse_other_workspace(settings, state)
            if state.running and state.record:
                how = "in the foreground" if state.record.foreground else "by 'inv backup.start-bg'"
                raise BackupError(
                    f"litestream already replicates this workspace (pid {state.record.pid}, started "
                    f"{how}): stop it first with 'inv backup.stop'"
                )
            refuse_unrecorded(settings)
            prepared = _prepare(settings, litestream)
            settings = output.settings = settings.masking(prepared.config.heartbeat_url)
            for db in prepared.config.databases:
                if not db.path.exists():
                    output.write(f"warning: {db.path} does not exist yet; litestream waits for it\n")
            for claim in prepared.claims:
                if claim.describe():
                    output.write(f"{claim.describe()}\n")
            if stopper.requested:
                return 0  # asked to stop before anything started
            pin, repaired = _guard(prepared.config)
            captured = _captured(prepared.config)
            try:
                for line in [*prepared.fresh, *repaired]:
                    output.write(line + "\n")
                if _snapshot_after_crash(settings, litestream, state, prepared.config):
                    output.write(AFTER_CRASH + "\n")
                _keep_running_copy(settings, prepared)
                _remove_socket(prepared.config.socket)
                argv = litestream.argv("replicate")
                drills.stop_runner(settings, timeout=5)  # one left by a litestream that died
                proc = litestream.spawn("replicate", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                try:  # a failure before the pidfile names it must leave no process behind
                    stopper.attach(proc)
                    record = _record(proc, argv, settings, True, prepared)
                    process.write_pidfile(settings.pidfile, record)
                    _start_runner(settings, proc, output)
                except BaseException:
                    process.kill(proc)
                    raise
            except BaseException:
                pin.release()
                raise
            # The output must be read meanwhile (a full pipe would stall litestream): the pin
            # is lifted beside it, once litestream has synced.
            threading.Thread(target=_release_after_first_sync,
                             args=(pin, litestream, prepared.config, proc, captured),
                             name="wal-pin", daemon=True).start()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                output.write(raw.decode("utf-8", errors="replace"))
            return proc.wait()
        finally:
            if proc.poll() is None:
                stopper(0, None)
                proc.wait()
            pin.release()
            drills.stop_runner(settings, platform=platform)  # it ends its drill with litestream
            if proc.returncode >= 0 and proc.returncode != GO_PANIC:
                try:
                    with replicator(settings).locked(platform):
                        process.remove_pidfile(settings.pidfile, record)
                except BackupError:
                    # Another command holds the lock too long: the pidfile still names only
                    # this run (checked before removing), and litestream stopped cleanly.
                    process.remove_pidfile(settings.pidfile, record)
            # Otherwise litestream was killed or crashed (a signal; a Go panic exits 2): the
            # pidfile stays, stale, so the next start — a service's restart included —
            # snapshots first, as after any crash. An exit 1 is a start-up failure: nothing
            # was cut off mid-sync.


GO_PANIC = 2  # the exit code of a Go program that panicked


def _start_runner(settings: Settings, proc: subprocess.Popen, output: terminal.Output) -> None:
    """The drill runner beside a foreground litestream, its lines into the same output."""
    read_end, write_end = os.pipe()
    try:
        runner = process.start_beside(settings, drills.argv(proc.pid), write_end)
    finally:
        os.close(write_end)
    reader = os.fdopen(read_end, "rb")
    if runner is None:
        reader.close()
        return
    try:
        drills.started(settings, runner, foreground=True)
    except BaseException:
        process.kill(runner)
        reader.close()
        raise

    def forward() -> None:
        with reader:
            for raw in reader:
                output.write(raw.decode("utf-8", errors="replace"))

    threading.Thread(target=forward, name="drill-output", daemon=True).start()


def _captured(config: LitestreamConfig) -> dict[Path, int]:
    """Each database's local position (newest L0 txid) before litestream starts."""
    return {path: localstate.local_txid(path) or 0 for path in _existing(config)}


def _release_after_first_sync(pin: wal.Pin, litestream: Litestream, config: LitestreamConfig,
                              proc: subprocess.Popen, captured: dict[Path, int],
                              timeout: float = START_WAIT) -> None:
    """Lift the WAL pin once litestream has taken over every database — captured a change
    past its position at start, or synced (its control socket says so) —, has exited, or
    ``timeout`` has passed: its first sync comes a second after start."""
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            moved = {db for db, txid in captured.items() if (localstate.local_txid(db) or 0) > txid}
            synced = _synced(litestream, config.socket) if config.socket else None
            if set(captured) <= moved | (synced or set()):
                return
            time.sleep(0.2)
    finally:
        pin.release()


# -- stop ----------------------------------------------------------------------


CAUGHT_UP_LATER = "nothing committed is lost: the replica catches up at the next start"


@dataclass(frozen=True)
class StopResult:
    was_running: bool
    pid: int | None = None
    forced: bool = False
    stale: ProcessState | None = None
    timeout: float = 0.0  # how long the final sync was given
    final_sync: bool | None = None  # known done, known not done, or not known

    def as_lines(self) -> list[str]:
        lines = [f"removed a stale pidfile ({self.stale.reason})"] if self.stale else []
        if not self.was_running:
            return lines + ["not running"]
        if self.forced and self.final_sync:  # synced through its socket, then it would not exit
            return lines + [f"stopped (pid {self.pid}) after its final sync; it did not exit on "
                            "its own and was killed"]
        if self.forced:
            return lines + [f"killed (pid {self.pid}) after {self.timeout:g}s without a final sync; "
                            f"{CAUGHT_UP_LATER}"]
        if self.final_sync:
            return lines + [f"stopped (pid {self.pid}) after its final sync"]
        if self.final_sync is False:
            return lines + [f"stopped (pid {self.pid}); its final sync did not complete (see "
                            f"'inv backup.logs'); {CAUGHT_UP_LATER}"]
        return lines + [f"stopped (pid {self.pid})"]

    def as_dict(self) -> dict[str, Any]:
        return {"was_running": self.was_running, "pid": self.pid, "forced": self.forced,
                "final_sync": self.final_sync}


def stop_timeout(settings: Settings, state: ProcessState) -> float:
    """Litestream's own shutdown-sync-timeout (from the config it runs) plus a margin."""
    try:
        return active_config(settings, state).config.stop_timeout
    except ConfigError:
        return DEFAULT_STOP_TIMEOUT


def stop(
    settings: Settings, timeout: float | None = None, platform: process.Posix | process.Windows | None = None
) -> StopResult:
    """Stop the daemon gracefully (final sync), killing it after ``timeout`` (see stop_timeout)."""
    platform = platform or process.current_platform()
    with replicator(settings).claimed(platform) as state:
        if not state.running or state.record is None or state.process is None:
            if state.state == "stale":
                process.remove_pidfile(settings.pidfile, state.record)
            drills.stop_runner(settings, timeout=5)  # what a drill killed outright left
            return StopResult(False, stale=state if state.state == "stale" else None)
        drills.stop_runner(settings, platform=platform)  # first: a drill in progress ends at once
        timeout = stop_timeout(settings, state) if timeout is None else timeout
        deadline = time.monotonic() + timeout  # the sync first (Windows) and the stop share it
        offset = logfile.size(settings.logfile)
        # Windows: litestream's own final sync needs a Ctrl-Break that may not reach it;
        # ask for the sync first, through its socket, and wait for it.
        synced = _sync_now(settings, state, deadline) if isinstance(platform, process.Windows) else None
        forced = process.stop(state, max(1.0, deadline - time.monotonic()), platform)
        process.remove_pidfile(settings.pidfile, state.record)
        own = None if forced else _shutdown_sync(settings, offset)
        if synced:
            final: bool | None = True  # every replica held its local txid before the signal
        elif own is not None:
            final = own  # litestream's own final sync, as its log tells
        else:
            final = synced  # a socket sync that fell short (False), or nothing known (None)
        return StopResult(True, pid=state.record.pid, forced=forced, timeout=timeout, final_sync=final)


def _shutdown_sync(settings: Settings, offset: int, wait: float = 2.0) -> bool | None:
    """What litestream's log says of its own final sync on a stop: True once it logged its
    shutdown with no failed or skipped sync; False when it logged one; None when it did not
    log a shutdown at all (it exited for another reason). The pump may lag a moment."""
    deadline = time.monotonic() + wait
    while True:
        said = ltlog.shutdown(ltlog.events(logfile.read_since(settings.logfile, offset)))
        if said is not None or time.monotonic() > deadline:
            return said
        time.sleep(POLL)


def _sync_now(settings: Settings, state: ProcessState, deadline: float) -> bool | None:
    """Every database of the running daemon synced to its replica through the control
    socket (``sync -wait``): True when each replica holds its local txid, False when one does
    not, None when the socket does not answer or there is none."""
    try:
        config = active_config(settings, state).config
    except ConfigError:
        return None
    if config.socket is None:
        return None
    control = Litestream(settings).control(config.socket)
    paths = _existing(config)
    done = True
    for path in paths:
        answer = control.sync(path, wait=max(1.0, deadline - time.monotonic()))
        if answer is None:
            return None  # no answer (a socket litestream could not open): not known
        done = done and int(answer.get("replicated_txid") or 0) >= int(answer.get("txid") or 0)
    return done


def replicate_once(
    settings: Settings, litestream: Litestream, *args: str, timeout: float | None = 300,
    platform: process.Posix | process.Windows | None = None, lock: bool = True, config: LitestreamConfig | None = None,
) -> Prepared | None:
    """``litestream replicate -once`` (plus ``args``), claimed like a start; None if a daemon runs.

    Holds the workspace lock, so no daemon starts meanwhile (``lock=False``: the
    caller already holds it).
    """
    if lock:
        held = replicator(settings).claimed(platform)
    else:  # the caller holds the lock: check and refuse all the same
        held = contextlib.nullcontext(check(settings))
        process.refuse_unknown(settings.pidfile, held.enter_result)
    with held as state:
        if state.running:
            return None
        refuse_unrecorded(settings)
        prepared = _prepare(settings, litestream, config)
        pin, repaired = _guard(prepared.config)
        with pin:
            litestream.run("replicate", "-once", *args, config=settings.config_path, timeout=timeout)
        return replace(prepared, repaired=prepared.fresh + tuple(repaired))


def rewrite_config(settings: Settings, text: str, force: bool = False) -> WriteResult:
    """Write litestream.yml, refusing a change while a daemon runs on the current one.

    Refused rather than restarted: a new config may point at another replica,
    and a restart that then fails to claim it would leave no backup running —
    the person who changes where backups go should see each step.
    """
    with replicator(settings).claimed() as state:
        if state.running and state.record:
            try:
                same = settings.config_path.read_bytes() == text.encode("utf-8")
            except OSError:
                same = False
            if not same:
                raise BackupError(
                    f"litestream (pid {state.record.pid}) is replicating with the current "
                    f"{settings.config_path.name}: stop it first with 'inv backup.stop', run this "
                    "again, then 'inv backup.start-bg' — nothing was written"
                )
        return write_config(settings, text, force=force)


def ensure_config(
    settings: Settings, write_missing: bool = False, config: LitestreamConfig | None = None
) -> str | None:
    """Write litestream.yml where .env alone must do; say what was written, if anything.

    - none yet, ``write_missing``, and .env has every R2 setting (a restore on a new
      machine): write it as setup does;
    - a generated one naming only databases that are gone while BACKUP_DB exists
      (the workspace was moved or renamed): write it anew for the new place.
    """
    from .render import render

    path = settings.config_path
    if not path.exists():
        if not write_missing or settings.missing_r2():
            return None
        rewrite_config(settings, render(settings, R2))
        return f"wrote {path} from {settings.env_location()} (as 'inv backup.setup' does)"
    try:
        config = config or read_config(path)  # the caller's, when it has read the file already
    except ConfigError:
        return None  # every command reports it in its own words
    named = [db.path for db in config.databases]
    if not config.generated or settings.db in named or any(p.exists() for p in named):
        return None
    if not settings.db.exists() or (config.uses_s3 and settings.missing_r2()):
        return None
    rewrite_config(settings, render(settings, R2 if config.uses_s3 else LOCAL))
    gone = ", ".join(str(p) for p in named)
    return f"rewrote {path} for {settings.db}: it named {gone}, which is gone (the workspace moved?)"
