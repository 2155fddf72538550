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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from . import daemon
from .config import Settings, require_r2
from .errors import SNAPSHOT_FIX, BackupError, ConfigError, hole_message, missing_txids
from .litestream import Litestream, check_endpoint, local_state_dir
from .files import temp_beside
from .render import Database, LitestreamConfig
from .timeparse import from_litestream, iso_z, rfc3339

SIDECARS = ("-wal", "-shm")
SNAPSHOT_LEVEL = 9
NOTHING_YET = "nothing to restore yet: the replica holds no backup of {db} (start replication with 'inv backup.start-bg')"

Progress = Callable[[int, float], None]  # (bytes written so far, seconds elapsed)


@dataclass(frozen=True)
class LtxFile:
    level: int
    min_txid: int
    max_txid: int
    size: int
    timestamp: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "min_txid": f"{self.min_txid:016x}",
            "max_txid": f"{self.max_txid:016x}",
            "size": self.size,
            "timestamp": iso_z(self.timestamp),
        }


@dataclass(frozen=True)
class Hole:
    """Txids no file of the replica holds: a restore stops before them."""

    from_txid: int
    to_txid: int

    def message(self) -> str:
        return hole_message(self.from_txid, self.to_txid)

    def as_dict(self) -> dict[str, str]:
        return {"from_txid": f"{self.from_txid:016x}", "to_txid": f"{self.to_txid:016x}"}


@dataclass(frozen=True)
class Plan:
    """The files a restore of the latest state reads, and the hole it stops at, if any."""

    files: tuple[LtxFile, ...]
    hole: Hole | None

    @property
    def max_txid(self) -> int | None:
        return self.files[-1].max_txid if self.files else None

    @property
    def restorable(self) -> bool:
        return bool(self.files) and self.hole is None


def _reaches_further(new: LtxFile, old: LtxFile) -> bool:
    """litestream's restoreCandidateBetter: further, then wider, then higher level, then older."""
    return (new.max_txid, -new.min_txid, new.level, -new.timestamp.timestamp()) > (
        old.max_txid, -old.min_txid, old.level, -old.timestamp.timestamp()
    )


def plan(files: Iterable[LtxFile]) -> Plan:
    """How litestream plans a restore of the latest state (replica.go's CalcRestorePlan).

    The newest snapshot (level 9) starts the chain; then, again and again, the file
    from any level 0-8 that starts no later than the next txid and reaches furthest
    extends it. A file left over that starts past the chain's end is a hole:
    litestream refuses that restore ("non-contiguous ltx files"). Files the chain
    has passed are never useful again, so one walk in order of first txid suffices.
    Where litestream names the next file of the highest level, the hole here ends
    at the first file of any level: the txids really missing.
    """
    files = list(files)
    snapshots = [f for f in files if f.level == SNAPSHOT_LEVEL]
    chain = [max(snapshots, key=lambda f: (f.min_txid, f.max_txid))] if snapshots else []
    reach = chain[0].max_txid if chain else 0
    rest = sorted((f for f in files if f.level < SNAPSHOT_LEVEL), key=lambda f: (f.min_txid, f.max_txid))
    i = 0
    while True:
        best = None
        while i < len(rest) and rest[i].min_txid <= reach + 1:
            if rest[i].max_txid > reach and (best is None or _reaches_further(rest[i], best)):
                best = rest[i]
            i += 1
        if best is None:
            break
        chain.append(best)
        reach = best.max_txid
    hole = Hole(reach + 1, rest[i].min_txid - 1) if i < len(rest) else None
    return Plan(tuple(chain), hole)


@dataclass(frozen=True)
class Window:
    """The earliest and latest point a restore can reach, across all levels."""

    earliest: datetime
    latest: datetime
    min_txid: int
    max_txid: int
    hole: Hole | None = None  # the txids after ``max_txid`` that no file holds

    def describe(self) -> str:
        text = (
            f"{iso_z(self.earliest)} to {iso_z(self.latest)} "
            f"(txid {self.min_txid:016x} to {self.max_txid:016x})"
        )
        if self.hole:
            text += f"; then {missing_txids(self.hole.from_txid, self.hole.to_txid)}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "earliest": iso_z(self.earliest),
            "latest": iso_z(self.latest),
            "min_txid": f"{self.min_txid:016x}",
            "max_txid": f"{self.max_txid:016x}",
            "hole": self.hole.as_dict() if self.hole else None,
        }


def replica_files(litestream: Litestream, db: Path) -> list[LtxFile]:
    """Every LTX file in the replica, all levels (one listing per level)."""
    return parse_files(litestream.replica_files(db))


def parse_files(raw: Iterable[dict[str, Any]]) -> list[LtxFile]:
    """``ltx -json`` elements as LtxFile."""
    return [
        LtxFile(
            level=int(f["level"]),
            min_txid=int(f["min_txid"], 16),
            max_txid=int(f["max_txid"], 16),
            size=int(f["size"]),
            timestamp=from_litestream(f["timestamp"]),
        )
        for f in raw
    ]


def window(files: list[LtxFile]) -> Window | None:
    """Restorable window: from the first file that starts the chain to the newest it reaches.

    Files past a hole are out of reach (see ``plan``): the window ends before it.
    """
    starts = [f for f in files if f.min_txid == 1]
    if not starts:
        return None
    hole = plan(files).hole
    reached = [f for f in files if hole is None or f.max_txid < hole.from_txid]
    first = min(starts, key=lambda f: (f.timestamp, f.max_txid))
    return Window(
        earliest=first.timestamp,
        latest=max(f.timestamp for f in reached),
        min_txid=first.max_txid,
        max_txid=max(f.max_txid for f in reached),
        hole=hole,
    )


def nothing_yet(db: Path, state: daemon.DaemonState) -> str:
    """An empty replica, and the fix: a daemon that already runs is not told to start."""
    if state.running:
        return (
            f"nothing to restore: the replica holds no backup of {db} although litestream "
            f"(pid {state.pid}) replicates it: {SNAPSHOT_FIX}"
        )
    return NOTHING_YET.format(db=db)


@dataclass
class Snapshots:
    snapshots: list[LtxFile]
    window: Window | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshots": [
                {k: v for k, v in s.as_dict().items() if k != "level"} for s in self.snapshots
            ],
            "window": self.window.as_dict() if self.window else None,
        }


def configured_database(settings: Settings, litestream: Litestream) -> tuple[LitestreamConfig, Database]:
    """The config that describes replication now (a running daemon's own), and BACKUP_DB's entry."""
    config = daemon.active_config(settings, litestream=litestream).config
    if config.uses_s3:
        require_r2(settings)
    entry = config.primary(settings.db)
    check_endpoint(entry.endpoint)
    return config, entry


def snapshots(settings: Settings, litestream: Litestream) -> Snapshots:
    _, entry = configured_database(settings, litestream)
    files = replica_files(litestream, entry.path)
    return Snapshots(
        snapshots=sorted((f for f in files if f.level == 9), key=lambda f: f.timestamp),
        window=window(files),
    )


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


@dataclass
class RestorePlan:
    source: str
    target: str
    min_txid: str
    max_txid: str
    files: list[dict[str, Any]]
    bytes: int
    replaces_existing: bool


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
    real = os.path.realpath(path)
    wanted = {real, *(real + s for s in SIDECARS)}
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if any(f.path in wanted for f in proc.open_files()):
                found.append(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def _aside_stamp(target: Path) -> str:
    """A UTC timestamp no earlier move-aside of ``target`` (or its sidecars, or state) used."""
    base = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    meta = local_state_dir(target)
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
    settings: Settings, target: Path, force: bool, is_live: bool, dry_run: bool = False
) -> None:
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
        daemon.refuse_unknown(settings, state)
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


def _point_args(
    files: list[LtxFile],
    db: Path,
    timestamp: datetime | None,
    txid: int | None,
    daemon_state: Callable[[], daemon.DaemonState],
) -> list[str]:
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
    settings: Settings,
    litestream: Litestream,
    output: Path | None = None,
    timestamp: datetime | None = None,
    txid: int | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> RestoreResult | RestorePlan:
    """Restore the configured database to ``output`` (default: its own path)."""
    config, entry = configured_database(settings, litestream)
    # Resolved, so another spelling of the live database (a/../app.db, a link) is seen as it.
    target = Path(os.path.realpath(output if output is not None else entry.path))
    is_live = any(Path(os.path.realpath(db.path)) == target for db in config.databases)
    # No daemon may start, and no other restore may move files, until this one is in place;
    # a copy elsewhere locks only its own path.
    lock = daemon.exclusive(settings, of=None if is_live else target)
    with lock if not dry_run else contextlib.nullcontext():
        return _restore(settings, litestream, entry, target, is_live, timestamp, txid, force,
                        dry_run, progress)


def _restored_time(files: list[LtxFile], timestamp: datetime | None, txid: int | None) -> datetime | None:
    """The moment the restored state belongs to (never later than the newest backup)."""
    reached = [f.timestamp for f in files if txid is None or f.max_txid <= txid]
    latest = max(reached, default=None)
    if timestamp is not None and latest is not None:
        return min(timestamp, latest)
    return latest


def _restore(
    settings: Settings,
    litestream: Litestream,
    entry: Database,
    target: Path,
    is_live: bool,
    timestamp: datetime | None,
    txid: int | None,
    force: bool,
    dry_run: bool,
    progress: Progress | None,
) -> RestoreResult | RestorePlan:
    _check_target(settings, target, force, is_live, dry_run)
    files = replica_files(litestream, entry.path)
    point = _point_args(files, entry.path, timestamp, txid, lambda: daemon.check(settings))
    # A restored live database continues its replica's history: learn whose it is first.
    from .owner import read_owner, record_restore  # not on status's import path
    from .store import STORE_TYPES, open_store

    store = open_store(entry, settings) if is_live and not dry_run and entry.replica_type in STORE_TYPES else None
    owner = read_owner(store) if store else None

    temp = target.with_name(f".{target.name}.restoring-{os.getpid()}")
    if dry_run:
        plan = litestream.json(
            "restore", "-dry-run", "-o", str(temp), *point, str(entry.path), timeout=120
        )
        return RestorePlan(
            source=entry.replica,
            target=str(target),
            min_txid=plan.get("min_txid", ""),
            max_txid=plan.get("max_txid", ""),
            files=plan.get("files") or [],
            bytes=sum(int(f.get("size", 0)) for f in plan.get("files") or []),
            replaces_existing=target.exists(),
        )

    started = time.monotonic()
    done = threading.Event()
    watcher = None
    if progress:
        watcher = threading.Thread(
            target=_watch, args=([temp, temp.with_name(temp.name + ".tmp")], progress, done, started),
            daemon=True,
        )
        watcher.start()
    try:
        try:
            summary = litestream.json(
                "restore", "-o", str(temp), *point, str(entry.path), timeout=None
            )
        finally:
            done.set()
            if watcher:
                watcher.join()
        duration = time.monotonic() - started
        if progress:
            progress(_written([temp]), duration)
        checked = time.monotonic()
        verdict = integrity_check(temp)
        check_seconds = time.monotonic() - checked
        if verdict != "ok":
            raise BackupError(
                f"the restored copy failed SQLite's integrity check ({verdict}); nothing was "
                "replaced — the replica may be damaged, try an earlier --timestamp"
            )
        size = temp.stat().st_size
        _same_access(temp, target)
        # The download can take minutes: whoever opened the file meanwhile would keep
        # reading (or writing) the old one after the swap.
        _refuse_holders(target, " (opened during the restore)")
        moved_aside, stale = _swap(temp, target)
        if is_live:
            newest = max((f.max_txid for f in files), default=None)
            record_restore(target, owner, newest, store.where if store else None)
    finally:
        for leftover in (temp, *(Path(str(temp) + s) for s in (*SIDECARS, ".tmp"))):
            leftover.unlink(missing_ok=True)
    restored_txid = summary.get("txid") if isinstance(summary, dict) else None
    when = _restored_time(files, timestamp, txid)
    return RestoreResult(
        path=str(target),
        txid=restored_txid,
        timestamp=iso_z(when) if when else None,
        integrity="ok",
        moved_aside=str(moved_aside) if moved_aside else None,
        source=entry.replica,
        duration_seconds=round(duration, 3),
        bytes=size,
        check_seconds=round(check_seconds, 3),
        stale_sidecars_moved=[str(p) for p in stale],
    )


def _same_access(temp: Path, target: Path) -> None:
    """The restored file gets the replaced file's mode, owner and group; a new one the umask's."""
    if target.exists():
        info = target.stat()
        os.chmod(temp, stat.S_IMODE(info.st_mode))
        if hasattr(os, "chown"):
            try:
                os.chown(temp, info.st_uid, info.st_gid)
            except PermissionError:
                pass  # only the owner's group, or root, may: the mode still holds
    else:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temp, 0o666 & ~mask)


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
    meta = local_state_dir(target)
    if meta.exists():
        move(meta, meta.with_name(f"{meta.name}.pre-restore-{stamp}"))
    return moved_aside, stale

