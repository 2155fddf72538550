"""backup.snapshot: a fresh full snapshot now — the fix for a replica a restore cannot follow.

litestream takes a snapshot on demand only in ``replicate -once -force-snapshot``
(``-force-snapshot`` without ``-once`` is refused), and that must not run beside
the daemon: two processes replicating one database can corrupt the replica. So a
running daemon is stopped first (with its final sync) and started again after.

A snapshot alone does not end the damage of a hole. Each compaction merges the
files of the level below that it has not merged yet, and fails on a gap among
them ("non-contiguous transaction ids in input files", at every tick) while files
from before the hole are still waiting — at level 1 until the L0 files the
snapshot covers are gone, at level 2 until the level-1 ones are, and so on. So
after a snapshot taken over a hole, every file below the snapshot level that the
snapshot covers is deleted, except the newest L0 file: litestream computes the
replica's position from it, and without it a restarted daemon would upload every
local change again from txid 1 — and fail once it has pruned the oldest ones.

A replica that holds nothing at all has no position for litestream to continue
from, and ``replicate -once`` would try to upload every change since txid 1 from
litestream's local state, which keeps only recent ones. That local state (a
cache of changes already in the database) is cleared first, so litestream starts
a new history whose first file holds the whole database.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import daemon
from .config import START_WAIT, Settings
from .errors import BackupError, hole_problem
from .litestream import Litestream, local_state_dir
from .owner import read_local, write_local
from .render import Database, read_config
from .restore import SNAPSHOT_LEVEL, LtxFile, configured_database, plan, replica_files
from .store import ltx_key, open_store

Say = Callable[[str], None]  # one line of progress for people


@dataclass
class SnapshotResult:
    database: str
    replica: str
    txid: str  # the new snapshot reaches this txid
    size: int  # bytes
    hole: dict[str, str] | None  # the hole the replica had before, if any
    deleted: int  # files removed because the snapshot covers them
    reset_local_state: bool  # litestream's local state cleared (the replica held nothing)
    restorable_txid: str  # the newest txid a restore reaches now
    stopped_pid: int | None = None  # the daemon stopped for the snapshot
    started_pid: int | None = None  # the daemon started again after it
    steps: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def covered(files: list[LtxFile], txid: int) -> list[LtxFile]:
    """Files below the snapshot level that a snapshot up to ``txid`` makes redundant.

    The newest L0 file stays: it is the replica's position for litestream.
    """
    level0 = [f for f in files if f.level == 0]
    newest = max(level0, key=lambda f: f.max_txid) if level0 else None
    return [f for f in files if f.level < SNAPSHOT_LEVEL and f.max_txid <= txid and f is not newest]


def take_snapshot(settings: Settings, litestream: Litestream, say: Say | None = None) -> SnapshotResult:
    """Stop the daemon if it runs, snapshot, repair a hole, start it again."""
    steps: list[str] = []

    def step(line: str) -> None:
        steps.append(line)
        if say:
            say(line)

    _, entry = configured_database(settings, litestream)
    if not entry.path.is_file():
        raise BackupError(f"nothing to snapshot: {entry.path} does not exist yet")
    state = daemon.check(settings)
    daemon.refuse_unknown(settings, state)
    active = daemon.active_config(settings, state)
    if active.changed and read_config(settings.config_path).databases != active.config.databases:
        # The snapshot runs the file; the listing and the repair would read the daemon's copy,
        # which names other databases or replicas.
        raise BackupError(
            f"{settings.config_path.name} changed since the daemon started and names other "
            "databases or replicas: restart it first ('inv backup.stop', then "
            "'inv backup.start-bg'), then run 'inv backup.snapshot'"
        )
    if state.running and state.record and state.record.foreground:
        # Someone watches it in a terminal: stopping it there and starting a
        # background daemon instead would be a surprise.
        raise BackupError(
            f"litestream replicates in the foreground (pid {state.pid}, 'inv backup.start'): "
            "stop it with Ctrl-C, then run 'inv backup.snapshot'"
        )
    stopped = None
    if state.running:
        step(f"stopping the daemon (pid {state.pid}): litestream takes a snapshot on demand only "
             "with 'replicate -once', which must not run beside it")
        result = daemon.stop(settings)
        if result.forced:
            step(f"killed the daemon (pid {result.pid}) after it did not stop in time; the "
                 "snapshot uploads what its final sync missed")
        elif result.was_running:
            step(f"stopped the daemon (pid {result.pid}) after its final sync")
        stopped = result.pid if result.was_running else None
    try:
        # The lock keeps any start-bg or restore out while litestream runs here.
        with daemon.exclusive(settings):
            meanwhile = daemon.check(settings)
            if meanwhile.running:
                raise BackupError(
                    f"a daemon started meanwhile (pid {meanwhile.pid}): run 'inv backup.snapshot' again"
                )
            outcome = _snapshot(settings, litestream, entry, step)
    except BaseException as exc:
        if stopped is not None:
            _restart_after_failure(settings, litestream, step, exc)
        raise
    outcome.steps = steps
    if stopped is not None:
        outcome.stopped_pid = stopped
        started = daemon.start_background(settings, litestream, START_WAIT)
        outcome.started_pid = started.pid
        again = "was started meanwhile" if started.already_running else "started again"
        step(f"the daemon {again} (pid {started.pid})")
    else:
        step("no daemon was running: 'inv backup.start-bg' starts one")
    return outcome


def _restart_after_failure(settings: Settings, litestream: Litestream, step: Say, exc: BaseException) -> None:
    """Replication must not stay stopped because the snapshot failed."""
    try:
        started = daemon.start_background(settings, litestream, START_WAIT)
    except BackupError as again:
        original = exc.message if isinstance(exc, BackupError) else type(exc).__name__
        raise BackupError(
            f"{original}; and the daemon stopped for the snapshot did not start again "
            f"({again.message}): start it with 'inv backup.start-bg'"
        ) from None
    step(f"the daemon runs again (pid {started.pid})")


def _snapshot(settings: Settings, litestream: Litestream, entry: Database, step: Say) -> SnapshotResult:
    db = entry.path
    before = replica_files(litestream, db)
    hole = plan(before).hole
    if hole:
        step(hole_problem(hole.from_txid, hole.to_txid))
    reset = False
    daemon.refuse_unrecorded(settings)  # nothing local is touched beside a replicator
    if not before:
        local = local_state_dir(db)
        if local.exists():
            mine = read_local(db)  # who this database is survives the reset
            try:
                shutil.rmtree(local)
            except OSError as exc:
                raise BackupError(f"cannot clear litestream's local state {local}: {exc.strerror}") from None
            if mine:
                write_local(db, mine)
            reset = True
            step(f"the replica holds nothing: cleared litestream's local state ({local}) so the "
                 "snapshot starts a new history")
    step("taking a snapshot: litestream replicate -once -force-snapshot")
    # Claimed like any replicating start; the caller holds the workspace lock.
    if daemon.replicate_once(settings, litestream, "-force-snapshot", timeout=None, lock=False) is None:
        raise BackupError("a daemon started meanwhile: run 'inv backup.snapshot' again")
    after = replica_files(litestream, db)
    snapshots = [f for f in after if f.level == SNAPSHOT_LEVEL]
    if not snapshots:
        raise BackupError(f"litestream reported success but {entry.replica} holds no snapshot: see 'inv backup.doctor'")
    newest = max(snapshots, key=lambda f: f.max_txid)
    step(f"took a snapshot up to txid {newest.max_txid:016x} ({newest.size} bytes)")
    removed: list[LtxFile] = []
    if hole:
        removed = covered(after, newest.max_txid)
        open_store(entry, settings).delete(ltx_key(f, entry.replica_type) for f in removed)
        step(f"deleted {len(removed)} file(s) the snapshot covers, so compaction no longer trips "
             "over the hole")
    gone = set(removed)
    final = plan(f for f in after if f not in gone)
    if not final.restorable or final.max_txid is None:
        # Not expected: the snapshot itself reaches its txid.
        raise BackupError("the replica is still not restorable after the snapshot: see 'inv backup.doctor'")
    step(f"a restore now reaches txid {final.max_txid:016x}")
    return SnapshotResult(
        database=str(db),
        replica=entry.replica,
        txid=f"{newest.max_txid:016x}",
        size=newest.size,
        hole=hole.as_dict() if hole else None,
        deleted=len(removed),
        reset_local_state=reset,
        restorable_txid=f"{final.max_txid:016x}",
    )
