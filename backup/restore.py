"""Restore without ever destroying what it replaces; snapshots and the window.

A restore goes into a temp file beside the target, passes SQLite's
``PRAGMA integrity_check``, and only then is renamed into place. An existing
target (and its -wal/-shm, and litestream's local state) is moved aside to
``<name>.pre-restore-<UTC timestamp>`` first, never deleted.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from . import daemon, localstate, process
from .config import Settings
from .errors import EXIT_CONFIG, SNAPSHOT_FIX, BackupError, ConfigError, missing_txids
from .files import identity, private_dir, spelling, temp_beside
from .ltx import LtxFile, Window, plan, window
from .process import ProcessState
from .timeparse import iso_z, rfc3339
from .workspace import Database, Workspace

SIDECARS = ("-wal", "-shm")
NOTHING_YET = "nothing to restore yet: the replica holds no backup of {db} (start replication with 'inv backup.start-bg')"

Progress = Callable[[int, float], None]  # (bytes written so far, seconds elapsed)


def nothing_yet(db: Path, state: ProcessState) -> str:
    """An empty replica, and the fix: a daemon that already runs is not told to start."""
    if state.running:
        return (
            f"nothing to restore: the replica holds no backup of {db} although litestream "
            f"(pid {state.pid}) replicates it: {SNAPSHOT_FIX}"
        )
    return NOTHING_YET.format(db=db)


@dataclass
class Snapshots:
    path: str
    snapshots: list[LtxFile]
    window: Window | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshots": [
                {k: v for k, v in s.as_dict().items() if k != "level"} for s in self.snapshots
            ],
            "window": self.window.as_dict() if self.window else None,
        }

    def as_lines(self) -> list[str]:
        lines = []
        if not self.snapshots:
            lines.append("no snapshots yet")
        else:
            lines.append(f"{'time':<22} {'txids':<35} {'size':>10}")
            for s in self.snapshots:
                d = s.as_dict()
                lines.append(f"{d['timestamp']:<22} {d['min_txid']}-{d['max_txid']} {s.size:>10}")
        if self.window:
            lines.append(f"restorable: {self.window.describe()}")
        else:
            lines.append("restorable: nothing yet (start replication with 'inv backup.start-bg')")
        return lines


@dataclass
class Each:
    """One result per database: printed as it always was for one, as a list for several."""

    items: list[Any]
    names: list[str]
    several: bool

    def as_dict(self) -> dict[str, Any]:
        if not self.several:
            return asdict_of(self.items[0])
        # A snapshot listing names its database here; a restore result already does.
        return {"databases": [
            {"path": item.path, **item.as_dict()} if isinstance(item, Snapshots) else asdict_of(item)
            for item in self.items
        ]}

    def as_lines(self) -> list[str]:
        if not self.several:
            return self.items[0].as_lines()
        lines: list[str] = []
        for item, name in zip(self.items, self.names):
            if lines:
                lines.append("")
            lines.append(f"database  {name}")
            lines += [f"  {line}" for line in item.as_lines()]
        return lines


def asdict_of(item: Any) -> dict[str, Any]:
    return item.as_dict() if hasattr(item, "as_dict") else asdict(item)


def snapshots(workspace: Workspace, databases: tuple[Database, ...]) -> Each:
    """Each database's snapshots and restorable window: one listing each."""
    items = [
        Snapshots(str(db.path), db.replica.snapshots(), db.replica.window()) for db in databases
    ]
    return Each(items, [db.name for db in databases], workspace.listed_apart(databases))


@dataclass
class RestoreResult:
    path: str
    txid: str | None
    timestamp: str | None
    integrity: str
    moved_aside: str | None
    source: str
    duration_seconds: float = 0.0
    bytes: int = 0
    check_seconds: float = 0.0
    stale_sidecars_moved: list[str] = field(default_factory=list)

    def as_lines(self) -> list[str]:
        lines = []
        if self.moved_aside:
            lines.append(f"moved the old database aside to {self.moved_aside}")
        for path in self.stale_sidecars_moved:
            lines.append(f"moved a stale {path.rsplit('-', 1)[-1]} file aside to {path}")
        lines.append(f"restored {self.path} (txid {self.txid}, {self.bytes} bytes) in "
                     f"{self.duration_seconds:.1f}s; integrity check: {self.integrity}")
        return lines


@dataclass
class RestorePlan:
    source: str
    target: str
    min_txid: str
    max_txid: str
    files: list[dict[str, Any]]
    bytes: int
    replaces_existing: bool

    def as_lines(self) -> list[str]:
        lines = [
            f"plan: restore {self.source} to {self.target}",
            f"  txids  {self.min_txid} to {self.max_txid}",
            f"  files  {len(self.files)}, {self.bytes} bytes to download",
        ]
        for f in self.files:
            lines.append(f"    L{f.get('level')} {f.get('name')}  {f.get('size')} B  {f.get('timestamp')}")
        if self.replaces_existing:
            lines.append("  the existing file would be moved aside (--force)")
        return lines


def connect_readonly(path: Path) -> sqlite3.Connection:
    """Open ``path`` read-only; the URI is escaped so '#', '?' or '%' name no other file."""
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)


def integrity_check(path: Path) -> str:
    """SQLite's own verdict: 'ok', or the first problems it names."""
    try:
        con = connect_readonly(path)
        try:
            rows = con.execute("PRAGMA integrity_check").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return f"not a database ({exc})"
    verdict = "; ".join(str(r[0]) for r in rows[:5])
    return verdict


def holders(path: Path) -> list[int]:
    """Pids of other processes that have ``path`` (or its -wal/-shm) open, where visible."""
    real = identity(path)
    wanted = {real, *(real + s for s in SIDECARS)}
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if any(spelling(f.path) in wanted for f in proc.open_files()):
                found.append(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def _aside_stamp(target: Path) -> str:
    """A UTC timestamp no earlier move-aside of ``target`` (or its sidecars, or state) used."""
    base = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    meta = localstate.folder(target)
    for n in range(1, 10_000):
        stamp = base if n == 1 else f"{base}-{n}"
        taken = [Path(f"{target}.pre-restore-{stamp}{s}") for s in ("", *SIDECARS)]
        taken.append(meta.with_name(f"{meta.name}.pre-restore-{stamp}"))
        if not any(p.exists() or p.is_symlink() for p in taken):
            return stamp
    raise BackupError(f"too many {target.name}.pre-restore-* files: move some away first")


def _aside(path: Path, stamp: str) -> Path:
    return path.with_name(f"{path.name}.pre-restore-{stamp}")


def _check_target(
    settings: Settings, target: Path, force: bool, is_live: bool, dry_run: bool = False,
    in_folder: bool = False,
) -> None:
    if is_live and in_folder and not target.parent.exists():
        # A folder entry's database on a new machine: its folder is part of the workspace.
        if dry_run:
            return
        target.parent.mkdir(parents=True)
    if not target.parent.is_dir():
        raise ConfigError(
            f"--output {target}: folder {target.parent} does not exist; create it first"
        )
    if target.is_dir():
        raise ConfigError(f"--output {target} is a folder: name the database file to write")
    if target.exists() and not force and not dry_run:
        raise BackupError(
            f"{target} exists: pass --force to replace it (the old file is moved aside to "
            f"{target.name}.pre-restore-<time>, never deleted), or restore elsewhere with --output"
        )
    if dry_run:
        return
    if is_live:
        state = daemon.check(settings)
        process.refuse_unknown(settings.pidfile, state)
        if state.running:
            raise BackupError(
                f"litestream is replicating {target} (pid {state.pid}): stop it first with "
                "'inv backup.stop', then restore"
            )
    _refuse_holders(target, "")
    try:  # before minutes of download, not after
        temp_beside(target, b"").unlink()
    except OSError as exc:
        raise BackupError(
            f"cannot write in {target.parent} ({exc.strerror}): check its permissions and free "
            "space, or restore elsewhere with --output"
        ) from None


def _refuse_holders(target: Path, when: str) -> None:
    if target.exists():
        pids = holders(target)
        if pids:
            raise BackupError(
                f"{target} is open in process {', '.join(map(str, pids))}{when}: close it, then "
                "restore (nothing was replaced)"
            )


def _past_hole(point: str, files: list[LtxFile]) -> None:
    """Refuse a point the restore chain cannot reach because of a hole.

    litestream itself fails only a restore of the latest state over a hole; one to a
    txid past it says "no matching backup files", and one to a time past it quietly
    stops at the hole. ``files`` are those a restore to ``point`` may read.
    """
    hole = plan(files).hole
    if hole:
        raise BackupError(
            f"{point} lies past a hole in the replica "
            f"({missing_txids(hole.from_txid, hole.to_txid)}): a restore stops before txid "
            f"{hole.from_txid:016x}; restore an earlier point, or {SNAPSHOT_FIX} for the latest state"
        )


def point_args(
    files: list[LtxFile],
    db: Path,
    timestamp: datetime | None,
    txid: int | None,
    daemon_state: Callable[[], ProcessState],
) -> list[str]:
    """litestream's arguments for a point (``-txid``/``-timestamp``; none for the latest),
    once it is proven inside the replica's window; restore's errors otherwise."""
    span = window(files)
    if span is None:
        hole = plan(files).hole
        raise BackupError(hole.message() if hole else nothing_yet(db, daemon_state()))
    if txid is not None:
        if not span.min_txid <= txid <= span.max_txid:
            raise BackupError(
                f"--txid {txid:016x} is outside what the replica can reach: {span.describe()}"
            )
        _past_hole(f"--txid {txid:016x}", [f for f in files if f.max_txid <= txid])
        return ["-txid", f"{txid:016x}"]
    if timestamp is not None:
        if timestamp < span.earliest:
            raise BackupError(
                f"--timestamp {rfc3339(timestamp)} is before the earliest backup: the replica "
                f"can restore {span.describe()}"
            )
        _past_hole(f"--timestamp {rfc3339(timestamp)}", [f for f in files if f.timestamp < timestamp])
        return ["-timestamp", rfc3339(timestamp)]
    if span.hole:
        raise BackupError(span.hole.message())
    return []


def _written(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        try:
            total += p.stat().st_size
        except OSError:
            pass
    return total


def _watch(paths: list[Path], progress: Progress, done: threading.Event, started: float) -> None:
    """Report bytes written every half second while litestream restores."""
    while not done.wait(0.5):
        progress(_written(paths), time.monotonic() - started)


def restore(
    workspace: Workspace,
    databases: tuple[Database, ...],
    output: Path | None = None,
    timestamp: datetime | None = None,
    txid: int | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Each:
    """Restore each of ``databases`` (to ``output``, for one) to one point in time.

    Every target is checked before the first download, so a refusal leaves every
    file as it was; each database is then restored and swapped in on its own.
    """
    if not databases:
        raise BackupError(
            "no database to restore: none is listed by BACKUP_DB, and no replica names one yet"
        )
    if output is not None and len(databases) != 1:
        known = ", ".join(db.name for db in databases)
        raise BackupError(
            f"--output names one file, but this workspace has {len(databases)} databases "
            f"({known}): add --db PATH to choose one", code=EXIT_CONFIG,
        )
    # Resolved, so another spelling of the live database (a/../app.db, a link) is seen as it.
    live = {identity(db.path) for db in workspace.databases}
    targets = [(db, Path(os.path.realpath(output if output is not None else db.path))) for db in databases]
    any_live = any(identity(target) in live for _, target in targets)
    # No daemon may start, and no other restore may move files, until these are in place;
    # a copy elsewhere locks only its own path.
    lock = workspace.lock(of=None if any_live else targets[0][1])
    with lock if not dry_run else contextlib.nullcontext():
        points = {}
        for db, target in targets:
            _check_target(workspace.settings, target, force, identity(target) in live, dry_run, db.folder is not None)
        for db, _ in targets:  # every database can reach the point, before the first download
            try:
                points[db.path] = point_args(db.replica.files(), db.path, timestamp, txid,
                                              lambda: daemon.check(workspace.settings))
            except BackupError as exc:
                if len(targets) == 1:
                    raise
                raise BackupError(f"{db.name}: {exc.message} — nothing was restored",
                                  code=exc.code, details=exc.details) from None
        done: list[Any] = []
        for db, target in targets:
            try:
                done.append(_restore(workspace.settings, db, target, identity(target) in live, points[db.path],
                                     timestamp, txid, dry_run, progress))
            except BackupError as exc:
                if not done or dry_run:
                    raise
                restored = ", ".join(d.path for d in done)
                raise BackupError(f"{db.name}: {exc.message} (already restored: {restored})",
                                  code=exc.code, details=exc.details) from None
    return Each(done, [db.name for db in databases], workspace.listed_apart(databases))


def _restored_time(files: list[LtxFile], timestamp: datetime | None, txid: int | None) -> datetime | None:
    """The moment the restored state belongs to (never later than the newest backup)."""
    reached = [f.timestamp for f in files if txid is None or f.max_txid <= txid]
    latest = max(reached, default=None)
    if timestamp is not None and latest is not None:
        return min(timestamp, latest)
    return latest


def _restore(
    settings: Settings,
    db: Database,
    target: Path,
    is_live: bool,
    point: list[str],
    timestamp: datetime | None,
    txid: int | None,
    dry_run: bool,
    progress: Progress | None,
) -> RestoreResult | RestorePlan:
    """One database: plan from the listing, restore beside the target, check, swap in."""
    replica = db.replica
    files = replica.files()
    # Restored inside a folder of its own, 0700: litestream creates the file with the umask's
    # mode, and nobody else may read the copy while it downloads and is checked.
    folder = target.with_name(f".{target.name}.restoring-{os.getpid()}")
    temp = folder / target.name
    if dry_run:
        plan = replica.json("restore", "-dry-run", "-o", str(temp), *point)
        return RestorePlan(
            source=replica.where,
            target=str(target),
            min_txid=plan.get("min_txid", ""),
            max_txid=plan.get("max_txid", ""),
            files=plan.get("files") or [],
            bytes=sum(int(f.get("size", 0)) for f in plan.get("files") or []),
            replaces_existing=target.exists(),
        )
    # A restored live database continues its replica's history: learn whose it is first.
    from .owner import read_owner, record_restore  # not on status's import path

    store = replica.store() if is_live and replica.has_store else None
    owner = read_owner(store) if store else None

    started = time.monotonic()
    try:
        private_dir(folder)
        summary = _download(replica, temp, point, progress, started)
        duration = time.monotonic() - started
        checked = time.monotonic()
        verdict = integrity_check(temp)
        check_seconds = time.monotonic() - checked
        if verdict != "ok":
            raise BackupError(
                f"the restored copy of {db.name} failed SQLite's integrity check ({verdict}); nothing "
                "was replaced — the replica may be damaged, try an earlier --timestamp"
            )
        size = temp.stat().st_size
        _same_access(temp, target, db.path)
        # The download can take minutes: whoever opened the file meanwhile would keep
        # reading (or writing) the old one after the swap.
        _refuse_holders(target, " (opened during the restore)")
        moved_aside, stale = _swap(temp, target)
        if is_live:
            record_restore(target, owner, replica.newest_txid(), store.where if store else None)
    finally:
        for leftover in (temp, *(Path(str(temp) + s) for s in (*SIDECARS, ".tmp"))):
            leftover.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()
    restored_txid = summary.get("txid") if isinstance(summary, dict) else None
    when = _restored_time(files, timestamp, txid)
    return RestoreResult(
        path=str(target),
        txid=restored_txid,
        timestamp=iso_z(when) if when else None,
        integrity="ok",
        moved_aside=str(moved_aside) if moved_aside else None,
        source=replica.where,
        duration_seconds=round(duration, 3),
        bytes=size,
        check_seconds=round(check_seconds, 3),
        stale_sidecars_moved=[str(p) for p in stale],
    )


def _download(replica: Any, temp: Path, point: list[str], progress: Progress | None, started: float) -> Any:
    """litestream restore into ``temp``, reporting bytes written while it runs."""
    done = threading.Event()
    watcher = None
    if progress:
        watcher = threading.Thread(
            target=_watch, args=([temp, temp.with_name(temp.name + ".tmp")], progress, done, started),
            daemon=True,
        )
        watcher.start()
    try:
        # No timeout: a download of the whole database takes as long as its size and the link need.
        summary = replica.json("restore", "-o", str(temp), *point, timeout=None)
    finally:
        done.set()
        if watcher:
            watcher.join()
    if progress:
        progress(_written([temp]), time.monotonic() - started)
    return summary


def _same_access(temp: Path, target: Path, source: Path) -> None:
    """The restored file gets the replaced file's mode, owner and group; a new one (a copy
    elsewhere) the mode of the database it copies, or 0600 when that is gone, within the
    umask: a copy of a private database must not come out world-readable."""
    if target.exists():
        info = target.stat()
        os.chmod(temp, stat.S_IMODE(info.st_mode))
        if hasattr(os, "chown"):
            try:
                os.chown(temp, info.st_uid, info.st_gid)
            except PermissionError:
                pass  # only the owner's group, or root, may: the mode still holds
    else:
        try:
            mode = stat.S_IMODE(source.stat().st_mode)
        except OSError:
            mode = 0o600
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temp, mode & ~mask)  # and never looser than this shell asks for


def _swap(temp: Path, target: Path) -> tuple[Path | None, list[Path]]:
    """Move what is at ``target`` aside and the restored copy in; on any OS error, put it all back."""
    moves: list[tuple[Path, Path]] = []
    try:
        moved_aside, stale = _make_room(target, _aside_stamp(target), moves)
        os.replace(temp, target)
    except BaseException as exc:
        kept = _put_back(moves)  # Ctrl-C half-way too: never leave the target missing
        if not isinstance(exc, OSError):
            raise
        where = f"{target} is as it was" if not kept else "the original is kept at " + ", ".join(kept)
        raise BackupError(
            f"could not put the restored copy in place ({exc.strerror or exc}: "
            f"{exc.filename or target}); {where} — close any program using it, check free space "
            "and permissions, then restore again"
        ) from None
    return moved_aside, stale


def _put_back(moves: list[tuple[Path, Path]]) -> list[str]:
    """Undo ``moves``, newest first; the places of any that could not be undone."""
    stuck = []
    for source, dest in reversed(moves):
        try:
            os.replace(dest, source)
        except OSError:
            stuck.append(str(dest))
    return stuck


def _make_room(target: Path, stamp: str, moves: list[tuple[Path, Path]]) -> tuple[Path | None, list[Path]]:
    """Move the old database, its sidecars and litestream's state for it aside (into ``moves``)."""

    def move(source: Path, dest: Path) -> None:
        os.replace(source, dest)
        moves.append((source, dest))

    moved_aside = None
    stale: list[Path] = []
    if target.exists():
        moved_aside = _aside(target, stamp)
        move(target, moved_aside)
    for suffix in SIDECARS:
        sidecar = Path(str(target) + suffix)
        if sidecar.exists():
            # With the database gone these would be replayed into the restored
            # file by SQLite: keep them with the old database instead.
            dest = Path(str(moved_aside or _aside(target, stamp)) + suffix)
            move(sidecar, dest)
            if moved_aside is None:
                stale.append(dest)
    meta = localstate.folder(target)
    if meta.exists():
        move(meta, meta.with_name(f"{meta.name}.pre-restore-{stamp}"))
    return moved_aside, stale

