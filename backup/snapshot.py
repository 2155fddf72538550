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

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from . import daemon, process
from .config import START_WAIT, Settings
from .errors import BackupError, hole_problem
from .litestream import Litestream
from .ltconfig import read_config
from .ltx import SNAPSHOT_LEVEL, LtxFile, plan
from .owner import reset_litestream_state
from .store import ltx_key
from .workspace import Database, Workspace

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Snapshotted:
    """One snapshot run: every database's result, and the steps taken for all."""

    results: list[SnapshotResult]
    steps: list[str]
    several: bool

    def as_dict(self) -> dict[str, Any]:
        if not self.several:
            return {**self.results[0].as_dict(), "steps": self.steps}
        return {"databases": [r.as_dict() for r in self.results], "steps": self.steps}

    def as_lines(self) -> list[str]:
        return [f"snapshot: ok, a restore of {r.database} reaches txid {r.restorable_txid}" for r in self.results]


def covered(files: list[LtxFile], txid: int) -> list[LtxFile]:
    """Files below the snapshot level that a snapshot up to ``txid`` makes redundant.

    The newest L0 file stays: it is the replica's position for litestream.
    """
    level0 = [f for f in files if f.level == 0]
    newest = max(level0, key=lambda f: f.max_txid) if level0 else None
    return [f for f in files if f.level < SNAPSHOT_LEVEL and f.max_txid <= txid and f is not newest]


def take_snapshot(workspace: Workspace, say: Say | None = None) -> Snapshotted:
    """Stop the daemon if it runs, snapshot every database, repair holes, start it again."""
    settings, litestream = workspace.settings, workspace.litestream
    steps: list[str] = []

    def step(line: str) -> None:
        steps.append(line)
        if say:
            say(line)

    databases = [db for db in workspace.databases if db.path.is_file()]
    if not databases:
        names = ", ".join(str(db.path) for db in workspace.databases)
        raise BackupError(f"nothing to snapshot: {names or 'no database of BACKUP_DB'} does not exist yet")
    for db in databases:
        db.replica.check()  # credentials and endpoint, before the daemon is stopped
    state = daemon.check(settings)
    process.refuse_unknown(settings.pidfile, state)
    if workspace.config_changed and read_config(settings.config_path).databases != workspace.config.databases:
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
        with workspace.lock():
            meanwhile = daemon.check(settings)
            if meanwhile.running:
                raise BackupError(
                    f"a daemon started meanwhile (pid {meanwhile.pid}): run 'inv backup.snapshot' again"
                )
            # The file as this command read it, unless it changed under the daemon since.
            results = _snapshot(settings, litestream, databases, step,
                                None if workspace.config_changed else workspace.config)
    except BaseException as exc:
        if stopped is not None:
            _restart_after_failure(settings, litestream, step, exc)
        raise
    if stopped is not None:
        started = daemon.start_background(settings, litestream, START_WAIT)
        for r in results:
            r.stopped_pid, r.started_pid = stopped, started.pid
        again = "was started meanwhile" if started.already_running else "started again"
        step(f"the daemon {again} (pid {started.pid})")
    else:
        step("no daemon was running: 'inv backup.start-bg' starts one")
    return Snapshotted(results, steps, workspace.several)


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


def _snapshot(settings: Settings, litestream: Litestream, databases: list[Database], step: Say,
              config: Any = None) -> list[SnapshotResult]:
    """One ``replicate -once -force-snapshot`` for every database, each prepared and repaired."""
    before = {db.path: db.replica.files() for db in databases}
    holes = {db.path: plan(before[db.path]).hole for db in databases}
    daemon.refuse_unrecorded(settings)  # nothing local is touched beside a replicator
    several = len(databases) > 1
    reset = {db.path: _prepare(db, before[db.path], holes[db.path], step, several) for db in databases}
    step("taking a snapshot: litestream replicate -once -force-snapshot")
    # Claimed like any replicating start; the caller holds the workspace lock.
    # No timeout: an upload of the whole database takes as long as its size and the link need.
    prepared = daemon.replicate_once(settings, litestream, "-force-snapshot", timeout=None, lock=False,
                                     config=config)
    if prepared is None:
        raise BackupError("a daemon started meanwhile: run 'inv backup.snapshot' again")
    for line in prepared.repaired:
        step(line)
    results = []
    for db in databases:
        db.replica.forget()  # the snapshot changed the replica: list it again
        results.append(_repair(db, holes[db.path], reset[db.path], step, several))
    return results


def _prepare(db: Database, files: list[LtxFile], hole: Any, step: Say, several: bool) -> bool:
    """Name a hole; clear litestream's local state when the replica holds nothing."""
    tag = f"{db.name}: " if several else ""
    if hole:
        step(f"{tag}{hole_problem(hole.from_txid, hole.to_txid)}")
    if files:
        return False
    local = reset_litestream_state(db.path)
    if local is None:
        return False
    step(f"{tag}the replica holds nothing: cleared litestream's local state ({local}) so "
         "the snapshot starts a new history")
    return True


def _repair(db: Database, hole: Any, reset: bool, step: Say, several: bool) -> SnapshotResult:
    """After the snapshot: delete what it covers past a hole; prove a restore reaches it."""
    tag = f"{db.name}: " if several else ""
    after = db.replica.files()
    snapshots = [f for f in after if f.level == SNAPSHOT_LEVEL]
    if not snapshots:
        raise BackupError(f"litestream reported success but {db.replica.where} holds no snapshot: see 'inv backup.doctor'")
    newest = max(snapshots, key=lambda f: f.max_txid)
    step(f"{tag}took a snapshot up to txid {newest.max_txid:016x} ({newest.size} bytes)")
    removed: list[LtxFile] = []
    if hole:
        removed = covered(after, newest.max_txid)
        db.replica.store().delete(ltx_key(f, db.replica.kind) for f in removed)
        step(f"{tag}deleted {len(removed)} file(s) the snapshot covers, so compaction no "
             "longer trips over the hole")
    gone = set(removed)
    final = plan(f for f in after if f not in gone)
    if not final.restorable or final.max_txid is None:
        # Not expected: the snapshot itself reaches its txid.
        raise BackupError(f"the replica of {db.name} is still not restorable after the snapshot: see 'inv backup.doctor'")
    step(f"{tag}a restore now reaches txid {final.max_txid:016x}")
    return SnapshotResult(
        database=str(db.path),
        replica=db.replica.where,
        txid=f"{newest.max_txid:016x}",
        size=newest.size,
        hole=hole.as_dict() if hole else None,
        deleted=len(removed),
        reset_local_state=reset,
        restorable_txid=f"{final.max_txid:016x}",
    )
