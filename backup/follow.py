"""backup.follow: a read-only copy of a database, kept a few seconds behind its replica.

litestream's follow mode (``restore -f``) restores the latest state, then applies each
change that reaches the replica. It runs here as a managed process, like the daemon: a
pidfile per output path, proven against the process table before anything is signalled;
a lock per output, so two starts at once make one follower; a log of its own.

A reader never sees a missing or half-written copy. A first restore is litestream's own
(into a temporary file, renamed when complete). A copy that cannot be resumed is restored
again into a working file beside it, which is renamed over it once litestream has opened
it to follow: litestream goes on writing through its open descriptor (POSIX; Windows
refuses to rename a file another process holds open, so there the old copy must go first).
That last step is the log pump's (``logfile.keeper``), which lives as long as the follower:
a first restore of a large database goes on after ``follow --background`` has returned.
Each change is written under SQLite's lock bytes, and the log pump moves the change counter
after it (see ``backup.sqlitefile``), so a connection held open sees it.

Restarting into its own copy: litestream resumes from the txid it saved beside the file
it follows (``<file>-txid``) only while that txid is not past the replica's newest
snapshot; with a daily snapshot it usually refuses, and the copy is restored beside.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from . import logfile, ltlog, process, sqlitefile, terminal
from .config import Settings, max_age, parse_duration
from .errors import BackupError, ConfigError, translate
from .files import absolute, private_dir, same_file, write_private
from .process import PidRecord, ProcessState
from .workspace import Database, Workspace

FOLLOWERS = "followers"  # under the state dir: each follower's pidfile, lock, log, config
DEFAULT_INTERVAL = "1s"
STOP_TIMEOUT = 30.0  # a follower has no final sync: it stops between two applies
READ_ONLY = ("the copy is for reading: open it read-only (sqlite3 -readonly PATH, or "
             "'file:PATH?mode=ro' with uri=True in Python); a write to it is lost at the next change")


@dataclass(frozen=True)
class Slot:
    """One follower's files in the state dir, named after its output path."""

    output: Path
    pidfile: Path
    lockfile: Path
    logfile: Path
    config: Path  # the one-database litestream.yml it reads: no credential in it
    managed: process.Managed  # its pidfile and lock, as a managed process


def slot_for(settings: Settings, output: Path) -> Slot:
    digest = hashlib.sha256(os.fsencode(output)).hexdigest()[:12]
    folder = settings.state_dir / FOLLOWERS
    stem = f"{output.name}-{digest}"
    pidfile, lockfile = folder / f"{stem}.pid", folder / f"{stem}.lock"
    managed = process.Managed(pidfile, lockfile, settings.state_dir, is_follow, remove_lock=True,
                              marker=settings.lockfile)
    return Slot(output, pidfile, lockfile, folder / f"{stem}.log", folder / f"{stem}.yml", managed)


def is_follow(record: PidRecord) -> bool:
    """Does ``record`` describe a follower a start wrote: litestream restore -f into its file?"""
    cmd = record.cmdline
    return cmd[1:2] == ["restore"] and "-f" in cmd and record.working is not None and \
        any(flag == "-o" and value == record.working for flag, value in zip(cmd, cmd[1:]))


def check(slot: Slot) -> ProcessState:
    return slot.managed.check()


def txid_file(path: Path | str) -> Path:
    """Where litestream keeps the position of a copy it follows."""
    return Path(f"{path}{sqlitefile.TXID_SUFFIX}")


def read_txid(path: Path | str) -> int | None:
    try:
        return int(txid_file(path).read_text("ascii").strip(), 16) or None
    except (OSError, ValueError):
        return None


# -- starting ------------------------------------------------------------------


@dataclass
class Started:
    output: Path
    pid: int
    log: Path
    database: str
    resumed: bool = False  # continued from the copy's saved txid
    replaced: bool = False  # restored again beside the copy, then swapped in
    moved_aside: Path | None = None
    stale: str | None = None  # the reason a previous follower's pidfile was stale
    foreground: bool = False
    still_restoring: float | None = None  # seconds waited, when the first restore is not done yet

    def as_lines(self) -> list[str]:
        lines = [f"removed a stale follower pidfile ({self.stale})"] if self.stale else []
        if self.moved_aside:
            lines.append(f"moved the existing file aside to {self.moved_aside}")
        how = ("resumed from its saved position" if self.resumed else
               "restored again beside the old copy, then swapped in (litestream could not "
               "resume it)" if self.replaced else "restored")
        if self.still_restoring is not None:
            lines.append(
                f"restoring {self.database} into {self.output} (pid {self.pid}): still restoring after "
                f"{self.still_restoring:g}s (a large database or a slow link); it goes on in the background "
                "and follows once done: 'inv backup.status' says when the copy is ready")
        else:
            lines.append(f"following {self.database} into {self.output} (pid {self.pid}): {how}")
        lines.append(f"  {READ_ONLY.replace('PATH', str(self.output))}")
        if not self.foreground:
            lines += [f"  log   {self.log}", f"  stop  inv backup.stop --follower {self.output}"]
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "pid": self.pid, "log": str(self.log), "database": self.database,
                "resumed": self.resumed, "replaced": self.replaced,
                "moved_aside": str(self.moved_aside) if self.moved_aside else None,
                "ready": self.still_restoring is None}


def _refuse_own_database(workspace: Workspace, output: Path) -> None:
    """The output must not be a database this workspace replicates (or would, by a glob)."""
    resolved = output.resolve()
    for spec in workspace.settings.databases:
        if spec.matches(resolved) or spec.matches(output):
            raise BackupError(
                f"--output {output} is this workspace's own replicated database ({spec.written}): "
                "a follower writes a separate read-only copy; choose another path"
            )
    for db in workspace.databases:
        if same_file(db.path, resolved):
            raise BackupError(f"--output {output} is this workspace's database {db.name}: choose another path")


def _identity(config: bytes) -> tuple[Any, ...] | None:
    """What a follower's one-database config follows: the database and its replica's place."""
    import yaml

    try:
        (entry,) = yaml.safe_load(config)["dbs"]
        replica = entry["replica"]
        return (entry["path"], replica.get("type"), replica.get("bucket"), replica.get("path"),
                replica.get("endpoint"))
    except (ValueError, TypeError, KeyError, yaml.YAMLError):
        return None


def _is_follower_copy(slot: Slot, db: Database) -> bool:
    """Did a follower of this very database and replica write ``slot.output``? Its config
    in the slot says (a copy of another database must not take this one's changes)."""
    try:
        kept = _identity(slot.config.read_bytes())
    except OSError:
        return False
    return kept is not None and kept == _identity(db.replica.one_database_yaml())


def _move_aside(output: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        aside = output.with_name(f"{output.name}.pre-follow-{stamp}" + (f"-{n}" if n > 1 else ""))
        if not aside.exists():
            break
    for suffix in ("-journal", "-wal", "-shm"):
        sidecar = Path(f"{output}{suffix}")
        if sidecar.exists():
            os.replace(sidecar, Path(f"{aside}{suffix}"))
    os.replace(output, aside)
    return aside


def _check_output(workspace: Workspace, output: Path) -> None:
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder: name the file the copy is written to")
    if not output.parent.is_dir():
        raise ConfigError(f"--output {output}: folder {output.parent} does not exist; create it first")
    _refuse_own_database(workspace, output)


def _nothing_yet(db: Database) -> None:
    """Refuse a replica that holds no backup yet: there is nothing to follow."""
    if db.replica.newest_txid() is None:
        raise BackupError(
            f"nothing to follow yet: the replica of {db.name} ({db.replica.where}) holds no backup; "
            "start replication where the database lives ('inv backup.start-bg'), then follow"
        )


class _Run:
    """One litestream follow process, recorded in the slot's pidfile from the moment it exists."""

    def __init__(self, workspace: Workspace, slot: Slot, target: Path, interval: str, db: Database,
                 foreground: bool):
        settings, litestream = workspace.settings, workspace.litestream
        self.slot, self.target = slot, target
        logfile.rotate(slot.logfile)
        self.offset = logfile.size(slot.logfile)
        args = ("-f", "-follow-interval", interval, "-o", str(target), str(db.path))
        argv = litestream.argv("restore", *args, config=slot.config)
        self.record: PidRecord | None = None
        # The pump puts the restored file in place once litestream follows (logfile.keeper).
        self.proc, self.pump, _ = process.spawn_logged(settings, litestream, slot.logfile, "restore", *args,
                                                   config=slot.config, touch=slot.output, restored=target)
        try:
            self.record = PidRecord(
                pid=self.proc.pid, create_time=_create_time(self.proc.pid), cmdline=argv, config=str(slot.config),
                started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), log=str(slot.logfile),
                foreground=foreground, output=str(slot.output), working=str(target),
            )
            process.write_pidfile(slot.pidfile, self.record)
        except BaseException:
            self.abandon()
            raise

    def wait(self, timeout: float | None = None) -> bool | None:
        """True once litestream follows and the copy is in place; False when it would not
        resume; None when it is still restoring after ``timeout`` seconds; raise on a failure."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            text = logfile.read_since(self.slot.logfile, self.offset)
            failed = next((line for line in text.splitlines() if line.startswith(logfile.PLACE_FAILED)), None)
            if failed:  # logged before litestream's "entering follow mode"
                raise BackupError(failed.removeprefix("chora-backup: error: "))
            said = ltlog.events(text)
            if any(event.says(*ltlog.FOLLOWING) for event in said):
                return True
            code = self.proc.poll()
            if code is not None:
                with contextlib.suppress(Exception):
                    self.pump.wait(5)
                text = logfile.read_since(self.slot.logfile, self.offset)
                if process.read_pidfile(self.slot.pidfile) != self.record:
                    raise BackupError(
                        f"the follower of {self.slot.output} stopped before its first restore was done (by "
                        f"'inv backup.stop', or it failed: 'inv backup.logs --follower {self.slot.output}')")
                process.remove_pidfile(self.slot.pidfile, self.record)
                if any(event.says(ltlog.FOLLOW_REFUSED) for event in ltlog.events(text)):
                    return False
                raise BackupError(translate(text, f"litestream's follow mode exited with code {code}"),
                                  details=tuple(logfile.tail(self.slot.logfile, 10, self.offset)))
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(process.POLL)

    def abandon(self) -> None:
        """Stop it (a clean stop first, as its temporary files are its own to remove), and
        remove what it leaves of an unfinished restore."""
        with contextlib.suppress(Exception):
            process.current_platform().interrupt(self.proc)
            self.proc.wait(10)
        process.kill(self.proc)
        if self.record is not None:  # else its pidfile was never written
            process.remove_pidfile(self.slot.pidfile, self.record)
        if self.target != self.slot.output:
            _remove_working(self.target)


def start(
    workspace: Workspace, db: Database, output: Path, interval: str = DEFAULT_INTERVAL,
    force: bool = False, foreground: bool = False, timeout: float | None = None,
) -> Started:
    """Start following ``db`` into ``output``; return once litestream follows it, or once
    ``timeout`` seconds have passed with its first restore still going on (it goes on)."""
    settings = workspace.settings
    output = absolute(output)
    _check_output(workspace, output)
    try:
        if parse_duration(interval) <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"--interval {interval!r} is not a positive duration (e.g. 1s, 500ms)") from None
    slot = slot_for(settings, output)
    private_dir(slot.pidfile.parent)
    with slot.managed.claimed() as state:
        if state.running and state.record:
            raise BackupError(f"a follower already writes {output} (pid {state.record.pid}): "
                              f"'inv backup.stop --follower {output}' stops it")
        previous = state.record
        started = Started(output, 0, slot.logfile, db.name, stale=state.reason if state.state == "stale" else None,
                          foreground=foreground)
        if state.state == "stale":
            _settle(previous)  # killed (kill -9, a reboot): keep the copy's position beside it
            process.remove_pidfile(slot.pidfile, previous)
        ours = output.exists() and _is_follower_copy(slot, db)
        if output.exists() and not ours and not force:
            raise BackupError(
                f"{output} exists and is not a copy a follower of {db.name} wrote: pass --force to "
                f"replace it (it is moved aside to {output.name}.pre-follow-<time>, never deleted), or "
                "follow into another path"
            )
        _nothing_yet(db)
        if output.exists() and not ours:
            started.moved_aside = _move_aside(output)
        try:
            write_private(slot.config, db.replica.one_database_yaml())
            run = _begin(workspace, slot, db, interval, foreground, ours, started, timeout)
        except BaseException:
            _put_back(started, slot)
            raise
    # Recorded in its pidfile: a second start refuses, and a stop need not wait for this one.
    started.pid = run.proc.pid
    if started.resumed:
        return started
    try:
        if run.wait(timeout) is None:
            started.still_restoring = timeout
    except BaseException:
        run.abandon()  # its own process, pidfile (while it names it) and working file only
        if started.moved_aside is not None:
            with slot.managed.locked():
                if process.read_pidfile(slot.pidfile) is None:  # no other start since
                    _put_back(started, slot)
        raise
    return started


def _put_back(started: Started, slot: Slot) -> None:
    """A start that failed: the file --force moved aside goes back, if nothing took its place."""
    if started.moved_aside is not None and not slot.output.exists() \
            and not Path(f"{slot.output}.tmp").exists():
        os.replace(started.moved_aside, slot.output)
        slot.config.unlink(missing_ok=True)  # that file is still not a follower's copy
        started.moved_aside = None


def _begin(workspace: Workspace, slot: Slot, db: Database, interval: str, foreground: bool, ours: bool,
           started: Started, timeout: float | None) -> _Run:
    """The litestream that follows into ``slot.output``: resumed (waited for), or restoring
    beside the copy to be swapped in, or (no copy yet) straight to it."""
    output = slot.output
    if ours and read_txid(output):
        # Resume: litestream reads the position beside the file it is told to follow. It
        # decides after one listing of the replica; undecided after the wait, it goes on.
        run = _Run(workspace, slot, output, interval, db, foreground)
        try:
            ready = run.wait(timeout)
            if ready is not False:
                started.resumed = True
                started.still_restoring = None if ready else timeout
                return run
        except BaseException:
            run.abandon()
            raise
    if not output.exists():
        # litestream's own restore is atomic (a temporary file, renamed when complete).
        txid_file(output).unlink(missing_ok=True)
        return _Run(workspace, slot, output, interval, db, foreground)
    if os.name == "nt":
        raise BackupError(
            f"litestream cannot resume {output}, and Windows cannot swap a new copy in under a "
            f"running follower: stop its readers, delete it and {txid_file(output).name}, then follow again"
        )
    # Restored beside the output, then renamed over it (sqlitefile.place).
    work = output.with_name(f".{output.name}.follow-{secrets.token_hex(4)}")
    started.replaced = True
    return _Run(workspace, slot, work, interval, db, foreground)


def _remove_working(work: Path) -> None:
    """A working file that was never swapped in, with its position and litestream's temporaries."""
    for leftover in (work, txid_file(work), Path(f"{work}.tmp"), Path(f"{txid_file(work)}.tmp")):
        leftover.unlink(missing_ok=True)


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


# -- stopping and listing ------------------------------------------------------


@dataclass(frozen=True)
class Stopped:
    output: Path
    was_running: bool
    pid: int | None = None
    forced: bool = False
    stale: str | None = None

    def as_lines(self) -> list[str]:
        lines = [f"removed a stale follower pidfile ({self.stale})"] if self.stale else []
        if not self.was_running:
            return lines + [f"no follower writes {self.output}"]
        how = "killed" if self.forced else "stopped"
        if not self.output.exists():
            return lines + [f"{how} the follower of {self.output} (pid {self.pid}) before its first restore "
                            "was done; 'inv backup.follow' starts it again"]
        return lines + [f"{how} the follower of {self.output} (pid {self.pid}); the copy stays, and "
                        "'inv backup.follow' continues it"]

    def as_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "was_running": self.was_running, "pid": self.pid,
                "forced": self.forced}


def stop(settings: Settings, output: Path) -> Stopped:
    output = absolute(output)
    slot = slot_for(settings, output)
    if not slot.pidfile.exists():
        return Stopped(output, False)
    with slot.managed.claimed() as state:
        if not state.running:
            if state.state == "stale":
                _settle(state.record)
                process.remove_pidfile(slot.pidfile, state.record)
            return Stopped(output, False, stale=state.reason if state.state == "stale" else None)
        forced = process.stop(state, STOP_TIMEOUT)
        _settle(state.record)
        process.remove_pidfile(slot.pidfile, state.record)
        return Stopped(output, True, pid=state.record.pid if state.record else None, forced=forced)


def _settle(record: PidRecord | None) -> None:
    """With its litestream gone, keep the copy's position beside the copy itself
    (``<output>-txid``), where the next follow looks for it and litestream resumes from it."""
    if record is None or not record.output or not record.working:
        return
    working = Path(record.working)
    if record.working == record.output:
        # A first restore cut short leaves litestream's temporary file (never the copy).
        Path(f"{working}.tmp").unlink(missing_ok=True)
        return
    if working.exists() or Path(f"{working}.tmp").exists():
        # Never swapped in (its start was cut short): its position is not the copy's.
        _remove_working(working)
        return
    saved = read_txid(working)
    if saved is not None:
        write_private(txid_file(record.output), f"{saved:016x}\n".encode("ascii"))
    txid_file(working).unlink(missing_ok=True)


def slots(settings: Settings) -> list[tuple[Slot, ProcessState]]:
    """Every follower this state dir has a pidfile for, with its state."""
    folder = settings.state_dir / FOLLOWERS
    found = []
    for pidfile in sorted(folder.glob("*.pid")) if folder.is_dir() else []:
        record = process.read_pidfile(pidfile)
        if not isinstance(record, PidRecord) or not record.output:
            continue
        slot = slot_for(settings, Path(record.output))
        if slot.pidfile == pidfile:
            found.append((slot, check(slot)))
    return found


@dataclass
class FollowerStatus:
    output: str
    # running; starting (its first restore is not done); stale (its process is gone:
    # 'inv backup.follow' continues it); unknown (its process cannot be inspected)
    state: str
    pid: int | None
    database: str | None
    txid: str | None  # the copy's position
    replica_txid: str | None
    lag_seconds: float | None  # how long the copy has missed the replica's newest change; 0 if current
    log: str | None
    reason: str = ""
    max_lag_seconds: float | None = None  # beyond this the copy counts as failing

    @property
    def failing(self) -> bool:
        if self.state != "running" or self.database is None:
            return True  # not following, or following a database whose lag cannot be checked
        if self.replica_txid is not None and self.txid != self.replica_txid and self.lag_seconds is None:
            return True  # behind, by an unknown time
        return self.lag_seconds is not None and self.max_lag_seconds is not None \
            and self.lag_seconds > self.max_lag_seconds


def status(workspace: Workspace, now: float | None = None) -> list[FollowerStatus]:
    """Each follower: its process and how far the copy is behind its replica (one listing
    per followed database, which litestream's own follow loop makes every interval anyway)."""
    now = time.time() if now is None else now
    found = []
    for slot, state in slots(workspace.settings):
        record = state.record
        copy = read_txid(record.working) if record and record.working else None
        db = _followed(workspace, record)
        newest = newest_time = None
        if db is not None:
            try:
                files = db.replica.files()
                newest = max((f.max_txid for f in files), default=None)
                # The oldest file holding a change the copy lacks, at any level (L0 files are
                # merged away within the hour).
                missing = [f for f in files if copy is not None and f.max_txid > copy]
                newest_time = min((f.timestamp.timestamp() for f in missing), default=None)
            except BackupError:
                pass
        state_name = state.state
        reason = state.reason
        if state.running and record and record.output and _restoring(record):
            state_name = "starting"  # litestream is still restoring: not a copy to read yet
            failed = [line for line in logfile.tail(slot.logfile, 50) if line.startswith(logfile.PLACE_FAILED)]
            reason = failed[-1].removeprefix("chora-backup: error: ") if failed else reason
        if copy is not None and newest is not None and copy >= newest:
            lag = 0.0
        elif newest_time is not None:
            lag = round(max(0.0, now - newest_time), 1)
        else:
            lag = None
        found.append(FollowerStatus(
            output=str(slot.output), state=state_name, pid=state.pid, database=db.name if db else None,
            txid=f"{copy:016x}" if copy is not None else None,
            replica_txid=f"{newest:016x}" if newest is not None else None, lag_seconds=lag,
            log=str(slot.logfile), reason=reason,
            max_lag_seconds=_max_lag(db, record),
        ))
    return found


def _restoring(record: PidRecord) -> bool:
    """The first restore is not in place yet: litestream still writes its temporary file
    (``<file>.tmp``), or the working file beside the copy is not renamed over it yet, or
    there is no copy at all."""
    working = record.working or record.output
    if Path(f"{working}.tmp").exists():
        return True
    if working != record.output and Path(working).exists():
        return True
    return not Path(record.output).exists()


def _max_lag(db: Database | None, record: PidRecord | None) -> float | None:
    """How long a copy may miss a change before it counts as failing: as long as a replica
    may (config.max_age), plus the follower's own interval."""

    if db is None or record is None:
        return None
    cmd = record.cmdline
    interval = next((value for flag, value in zip(cmd, cmd[1:]) if flag == "-follow-interval"), DEFAULT_INTERVAL)
    try:
        return max_age(db.sync_interval) + parse_duration(interval)
    except ValueError:
        return max_age(db.sync_interval)


def _followed(workspace: Workspace, record: PidRecord | None) -> Database | None:
    if record is None:
        return None
    path = record.cmdline[-1] if record.cmdline else None
    return workspace.database_at(Path(path)) if path else None


# -- in the foreground ---------------------------------------------------------


def run_foreground(
    workspace: Workspace, db: Database, output: Path, interval: str, force: bool, out: Any
) -> int:
    """Follow until Ctrl-C, a kill or a closed terminal, showing the follower's log; 0 after
    a stop asked for, 1 when the follower died by itself."""
    # Ctrl-C during the first restore interrupts it (start removes what it began); from
    # here on a stop signal stops the follower and this command, which returns 0.
    settings = workspace.settings
    screen = terminal.Output(out, settings)  # masked; a closed terminal must not stop the stop
    screen.write(f"starting to follow {db.name} into {output} (Ctrl-C cancels)\n")
    started = start(workspace, db, output, interval, force, foreground=True)
    with terminal.stop_requests() as asked:
        screen.write("\n".join(started.as_lines()) + "\n")
        slot = slot_for(settings, started.output)
        offset = logfile.size(slot.logfile)
        for line in logfile.follow(slot.logfile, stop=lambda: bool(asked) or not check(slot).running,
                                   offset=offset):
            screen.write(line + "\n")
        if asked:
            screen.write("\n".join(stop(settings, started.output).as_lines()) + "\n")
            return 0
        screen.write(f"the follower of {started.output} stopped by itself: see 'inv backup.logs "
                       f"--follower {started.output}'; 'inv backup.follow' continues it\n")
        return 1
