"""What is replicating, and how far behind the replica is. Starts nothing.

Kept light on purpose (no jinja2, no boto): ``inv backup.status`` should
answer well under a second for a small database on a local replica.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from . import drills, localstate, ltlog
from .config import OFF, Settings, max_age, parse_duration
from .errors import (
    EXIT_FAILED,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    SNAPSHOT_FIX,
    BackupError,
    hole_message,
    missing_bucket,
)
from .files import mtime, read_json, size_text, update_json
from .localstate import local_txid, unsynced_since
from .ltx import SNAPSHOT_LEVEL, LtxFile
from .process import ProcessState
from .timeparse import from_litestream, iso_seconds
from .wal import risk, written_since
from .workspace import Database, Workspace


@dataclass
class DatabaseStatus:
    path: str
    replica: str
    exists: bool
    size_bytes: int | None = None
    wal_mode: bool | None = None
    local_txid: str | None = None
    replica_txid: str | None = None
    replica_time: str | None = None
    lag_txids: int | None = None
    lag_seconds: float | None = None
    latest_snapshot: str | None = None
    last_sync_at: str | None = None
    unseen_changes: bool = False  # written while no litestream was watching
    # With no daemon: why the next start takes a fresh full copy first (backup.wal), or None.
    # Not a failure in itself: the start repairs what litestream alone would miss.
    next_start_full_copy: str | None = None
    first_sync_pending: bool = False  # the running daemon has not synced it once yet
    daemon_answered: bool = True  # False: its socket did not answer in time (busy uploading)
    owner: str | None = None  # another database whose backups the replica holds, if so
    sync_interval: str = "1s"
    # Can a restore reach the replica's newest file? None when the replica was not read.
    restorable: bool | None = None
    hole: dict[str, str] | None = None  # {"from_txid", "to_txid"}: what a restore cannot cross
    error: str | None = None  # why this database is failing, with the fix
    # Where replica_txid came from: "daemon" (its control socket: no request to the
    # bucket) or "listing" (the replica listed now). With "daemon", latest_snapshot,
    # replica_time, restorable and hole come from this workspace's last listing, made
    # at listed_at (None: never listed here yet).
    replica_source: str = "listing"
    listed_at: str | None = None
    name: str = ""  # as people name it: relative to the workspace where it lies inside
    # The last restore drill or verify (backup.drills): at, ok, txid, compared, message, by,
    # and when the next drill runs (None: no drill runner runs).
    verified: dict[str, Any] | None = None

    @property
    def failing(self) -> bool:
        """The one rule for "replication of this database is failing"."""
        if self.error or self.first_sync_pending:
            return True
        if self.verified and self.verified.get("ok") is False:
            return True  # until a later drill or 'inv backup.verify' passes
        if not self.exists:
            return False  # waiting for it is not a failure
        return self.lag_seconds is None or self.lag_seconds > max_age(self.sync_interval)


@dataclass
class Status:
    running: bool
    pid: int | None
    config: str
    daemon: dict[str, Any]
    databases: list[DatabaseStatus] = field(default_factory=list)
    # litestream.yml differs from the copy the running daemon was started with.
    config_changed: bool = False
    # The per-user service that manages replication: manager, name, file, enabled, active.
    service: dict[str, Any] | None = None
    # litestream's Prometheus endpoint (BACKUP_METRICS_ADDR), as the daemon's config has it.
    metrics_url: str | None = None
    # {"url": scheme and host only, "interval"}: the ping URL's token is never shown.
    heartbeat: dict[str, str] | None = None
    # Read-only copies this workspace keeps (backup.follow): output, state, pid, txid, lag.
    followers: list[Any] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.daemon.get("state") == "unknown":
            return EXIT_FAILED  # perhaps running, perhaps not: never "healthy", never "stopped"
        if any(f.failing for f in self.followers):
            return EXIT_FAILED
        if not self.running:
            # A machine that only follows (no database of its own here) is healthy with them.
            only_follows = self.followers and not any(db.exists for db in self.databases)
            return EXIT_OK if only_follows else EXIT_NOT_RUNNING
        if self.config_changed or any(db.failing for db in self.databases):
            return EXIT_FAILED
        return EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["healthy"] = self.exit_code == EXIT_OK
        data["exit_code"] = self.exit_code
        return data

    def as_lines(self) -> list[str]:
        return _lines(self)


def _hex(txid: int | None) -> str | None:
    return None if txid is None else f"{txid:016x}"


def _parse_time(text: str) -> float:
    return from_litestream(text).timestamp()


def is_wal(path: Path) -> bool | None:
    """WAL mode, read from the header (bytes 18-19 are 2 in WAL mode); no lock taken."""
    try:
        with path.open("rb") as fh:
            header = fh.read(20)
    except OSError:
        return None
    if len(header) < 20 or not header.startswith(b"SQLite format 3\x00"):
        return None
    return header[18] == 2 and header[19] == 2


def unseen_since(db: Path, stopped_at: float | None = None) -> float | None:
    """When litestream last captured this database, if it was written after that.

    Only meaningful while no daemon runs: a running one captures every change
    within a sync interval. Decided from what changed where that can be read: a WAL
    that still carries litestream's salts and ends where it stopped reading holds nothing
    new, whatever the file times say (litestream's own stop checkpoints and touches the
    database). Otherwise from the times, with litestream's shutdown (``stopped_at``, from
    its log) and two seconds of slack not counted as a write.
    """
    captured = localstate.captured_at(db)
    moved = written_since(db)
    if moved is not None:
        return captured if moved else None
    written = max(mtime(db), mtime(db.with_name(db.name + "-wal")))
    if stopped_at is not None and written <= stopped_at + 2.0:
        return None
    return captured if written > captured + 2.0 else None


def _log_tail(settings: Settings, tail_bytes: int = 65536) -> list[ltlog.Event]:
    """The end of the daemon's log (a local file: free to read), as litestream's events."""
    from . import logfile

    end = logfile.size(settings.logfile)
    return ltlog.events(logfile.read_since(settings.logfile, max(0, end - tail_bytes)))


def last_shutdown(settings: Settings) -> float | None:
    """When the daemon's litestream last logged its clean shutdown, if it did."""
    return ltlog.last_shutdown(_log_tail(settings))


def _listing(db: Database) -> list[LtxFile] | BackupError:
    """The replica's LTX files across all levels, or the error reading them."""
    try:
        return db.replica.files()
    except BackupError as exc:
        return exc


def _local_facts(unit: Database, **fields: Any) -> tuple[DatabaseStatus, int | None]:
    """What the database file and litestream's local state say: no request anywhere."""
    db = unit.path
    status = DatabaseStatus(path=str(db), replica=unit.replica.where, name=unit.name,
                            exists=db.is_file(), sync_interval=unit.sync_interval, **fields)
    if not status.exists:
        return status, None
    status.size_bytes = db.stat().st_size
    status.wal_mode = is_wal(db)
    local = local_txid(db)
    status.local_txid = _hex(local)
    return status, local


def _database_status(
    unit: Database, replica: list[LtxFile] | BackupError | None, now: float, running: bool,
    stopped_at: float | None = None,
) -> DatabaseStatus:
    """One database's status from a listing of its replica (no daemon answered)."""
    db = unit.path
    status, local = _local_facts(unit)
    if not status.exists:
        return status
    if isinstance(replica, BackupError):
        status.error = replica.message
        return status
    files = replica or []
    replica_txid = max((f.max_txid for f in files), default=None)
    status.replica_txid = _hex(replica_txid)
    if files:
        status.replica_time = iso_seconds(max(f.timestamp for f in files).timestamp())
    snapshots = [f.timestamp.timestamp() for f in files if f.level == SNAPSHOT_LEVEL]
    status.latest_snapshot = iso_seconds(max(snapshots)) if snapshots else None
    chain = unit.replica.plan()
    status.restorable = chain.restorable
    if chain.hole:
        status.hole = chain.hole.as_dict()
        status.error = chain.hole.message()
    if files and unit.replica.has_store:
        _whose(status, unit)
    _lag(status, db, local, replica_txid, now, running, stopped_at)
    if not running:
        status.next_start_full_copy = risk(db)
    return status


def _whose(status: DatabaseStatus, unit: Database) -> None:
    """Say so when the replica holds another database's backups (one GET, with no daemon
    running: a running one claimed it at its start)."""
    from .owner import foreign_owner

    try:
        owner = foreign_owner(unit.replica.settings, unit.entry, unit.replica.store())
    except BackupError:
        return  # the owner record is doctor's to diagnose; the listing above was read
    if owner is not None:
        status.owner = owner.describe()
        status.error = status.error or (
            f"the replica holds the backups of {owner.describe()}, not of this database: set "
            "BACKUP_REPLICA_PATH (local mode: BACKUP_LOCAL_DIR) to a place of its own, or restore "
            "that backup here with 'inv backup.restore --force' (this file is moved aside)"
        )


def _lag(status: DatabaseStatus, db: Path, local: int | None, replica_txid: int | None,
         now: float, running: bool, stopped_at: float | None = None) -> None:
    """How far behind the replica is: in txids, and since when it misses local changes."""
    unseen = None if running else unseen_since(db, stopped_at)
    if unseen is not None:
        # Upper bound: the replica has missed these changes at most since then.
        status.unseen_changes = True
        status.lag_seconds = round(max(0.0, now - unseen), 1) if unseen else None
        return
    if local is None:
        return  # litestream has never seen this database
    if replica_txid is None:
        status.lag_txids = local
        since = unsynced_since(db, 0)
    elif replica_txid >= local:
        status.lag_txids, status.lag_seconds = 0, 0.0
        return
    else:
        status.lag_txids = local - replica_txid
        since = unsynced_since(db, replica_txid)
    status.lag_seconds = round(max(0.0, now - since), 1) if since else None


def stalled_after(sync_interval: str) -> float:
    """How long a running daemon may go without a successful replica sync (it syncs every
    interval, changes or not) before its replica counts as unreachable."""
    return max(3 * parse_duration(sync_interval), 10.0)


class DaemonView(NamedTuple):
    replicated: int | None  # the replica's txid as the daemon knows it
    unreachable: BackupError | None  # the endpoint does not answer a TCP connect
    answered: bool = True  # False: the socket did not answer in time; the last answer stands
    uploaded_at: float | None = None  # when this daemon was first seen to have uploaded


def _daemon_view(workspace: Workspace, unit: Database, now: float) -> DaemonView:
    """The replica's txid as the running daemon knows it: no request to the bucket; and
    whether the daemon answered.

    ``POST /sync`` answers with it, but first syncs the WAL into litestream's local
    state, so a pending change is uploaded early: asked at most once per sync interval
    per database; in between, the last answer stands. A daemon busy with a large upload
    may not answer within the socket's timeout: then its last answer stands, however old.
    """
    try:
        unit.replica.check()  # a TCP connect to the endpoint: free, and says at once it is cut
    except BackupError as exc:
        return DaemonView(None, exc)
    record_file = workspace.settings.state_dir / "daemon-sync.json"
    last = read_json(record_file).get(str(unit.path))
    last = last if isinstance(last, dict) and last.get("pid") == workspace.state.pid else {}
    first = last.get("first_replicated_at")
    if last and now - float(last.get("at", 0)) < parse_duration(unit.sync_interval):
        return DaemonView(last.get("replicated_txid"), None, True, first)
    socket = workspace.config.socket
    answer = workspace.litestream.control(socket).sync(unit.path) if socket else None
    if answer is None:
        return DaemonView(last.get("replicated_txid"), None, False, first)
    replicated = int(answer.get("replicated_txid") or 0) or None
    # When this daemon was first seen to have uploaded: a listing older than that (made
    # during a long first upload) says nothing about the replica now.
    first = first or (now if replicated else None)
    update_json(record_file, str(unit.path), {
        "at": now, "pid": workspace.state.pid, "replicated_txid": replicated, "first_replicated_at": first,
    })
    return DaemonView(replicated, None, True, first)


LISTING_MAX_AGE = 15 * 60.0  # status lists a replica again past this
LISTINGS_PER_HOUR = 4  # and never more often than this, whatever the reason
CONTRADICTED_AGE = 60.0  # sooner when the daemon contradicts the listing (it found nothing)


def _current_listing(workspace: Workspace, unit: Database, now: float,
                     replicated: int | None = None, uploaded_at: float | None = None) -> dict[str, Any] | None:
    """This workspace's last listing of the replica, listed again (one LIST through the
    store) once it is older than LISTING_MAX_AGE — so restorability never goes stale without
    bound — or than CONTRADICTED_AGE when it found nothing but the daemon has uploaded
    (``replicated``; seen first at ``uploaded_at``): a listing made during a long first upload
    must not outlive it.
    Attempts count too, failed ones included: never more than LISTINGS_PER_HOUR."""
    from .replica import last_listing

    listed = last_listing(workspace.settings, unit.path)
    if listed and listed.get("replica") != unit.replica.where:
        listed = None
    at = _parse_time(listed["listed_at"]) if listed and listed.get("listed_at") else 0.0
    attempts = workspace.settings.state_dir / "listing-attempts.json"
    tried = read_json(attempts).get(str(unit.path))
    recent = [t for t in tried if isinstance(t, (int, float)) and now - t < 3600] if isinstance(tried, list) else []
    contradicted = bool(listed and not listed.get("newest_txid") and replicated)
    limit = CONTRADICTED_AGE if contradicted else LISTING_MAX_AGE
    if contradicted and isinstance(uploaded_at, (int, float)) and at < uploaded_at:
        limit = 0.0  # listed before this daemon's first upload was seen: list now, once
    if now - at <= limit or not unit.replica.has_store or len(recent) >= LISTINGS_PER_HOUR or \
            (recent and now - recent[-1] <= limit):
        return listed
    update_json(attempts, str(unit.path), [*recent, now])
    try:
        unit.replica.relist()
    except BackupError:
        return listed  # the daemon's own errors say what is wrong with the endpoint
    return last_listing(workspace.settings, unit.path)


def log_errors(settings: Settings) -> list[ltlog.Event]:
    """The daemon's recent timed ERROR events, in either log format."""
    return [e for e in _log_tail(settings) if e.level == "ERROR" and e.time is not None]


def daemon_errors(settings: Settings) -> list[ltlog.Event]:
    """The daemon's recent sync errors: not a heartbeat's or the metrics server's."""
    return ltlog.sync_errors(_log_tail(settings))


def _from_daemon(workspace: Workspace, unit: Database, synced: dict[str, str], now: float,
                 errors: list[ltlog.Event] | None = None) -> DatabaseStatus:
    """One database's status from the running daemon and the last listing (listed again
    once it is 15 minutes old: see _current_listing)."""
    db = unit.path
    status, local = _local_facts(unit, last_sync_at=synced.get(str(db)), replica_source="daemon")
    if not status.exists:
        return status
    # Until litestream has synced it once, nothing below says anything about the replica.
    status.first_sync_pending = not status.last_sync_at
    replicated, unreachable, answered, uploaded_at = _daemon_view(workspace, unit, now)
    listed = _current_listing(workspace, unit, now, replicated, uploaded_at)
    if listed and listed.get("newest_txid"):
        # What the bucket itself held when listed: never behind what the daemon told before.
        replicated = max(replicated or 0, int(listed["newest_txid"], 16)) or None
    status.replica_txid = _hex(replicated)
    status.daemon_answered = answered
    if listed:
        status.listed_at = listed.get("listed_at")
        status.replica_time = listed.get("newest_time")
        status.latest_snapshot = listed.get("latest_snapshot")
        status.restorable = listed.get("restorable")
        status.hole = listed.get("hole")
    last_good = _parse_time(status.last_sync_at) if status.last_sync_at else 0.0
    # litestream's log names a database by its path or by its file name alone.
    failed = [e.line for e in errors or () if (e.time or 0) > last_good and e.db in (None, str(db), db.name)]
    if unreachable is not None:
        status.error = unreachable.message
    elif failed:
        # A sync failed after the last good one: say so now, not a few intervals later.
        from .errors import translate

        message = translate(failed[-1], "litestream reports a failing sync")
        if "NoSuchBucket" in failed[-1]:
            message = missing_bucket([unit.entry.bucket or ""]) or message
        status.error = workspace.settings.mask(message)
    elif status.last_sync_at:
        quiet = now - _parse_time(status.last_sync_at)
        if quiet > stalled_after(unit.sync_interval):
            status.error = (
                f"litestream has not synced the replica for {quiet:.0f}s (last at "
                f"{status.last_sync_at[:19]}Z): the storage endpoint may be unreachable or "
                "refusing it — see 'inv backup.logs'"
            )
    if status.hole and not status.error:
        status.error = hole_message(int(status.hole["from_txid"], 16), int(status.hole["to_txid"], 16))
    elif listed and not listed.get("newest_txid") and replicated and not status.error:
        # The daemon believes it uploaded everything, and nothing re-uploads it.
        status.error = (
            f"the replica held nothing when last listed ({status.listed_at}), although litestream "
            f"has synced {db} (txid {replicated:016x}): {SNAPSHOT_FIX}"
        )
    _lag(status, db, local, replicated, now, True)
    if not answered and not status.error and status.last_sync_at and (status.lag_txids or 0) > 0:
        # The daemon did not answer in time (a large upload keeps it busy): its last
        # successful sync, which /list gives at once, bounds how far behind the replica is.
        status.lag_txids = None
        status.lag_seconds = round(max(0.0, now - _parse_time(status.last_sync_at)), 1)
    if status.error and status.last_sync_at:
        # The daemon's last good sync bounds how long the replica has missed changes.
        status.lag_seconds = max(status.lag_seconds or 0.0,
                                 round(max(0.0, now - _parse_time(status.last_sync_at)), 1))
    return status


def _daemon_info(state: ProcessState, settings: Settings, now: float) -> dict[str, Any]:
    info: dict[str, Any] = {
        "state": state.state,
        "pid": state.pid,
        "pidfile": str(settings.pidfile),
        "log": str(settings.logfile),
    }
    if state.state == "stale":
        info["stale_reason"] = state.reason
    if state.state == "unknown" and state.record:
        info["pid"] = state.record.pid
        info["unknown_reason"] = state.reason
    if state.running and state.record and state.process:
        info["started_at"] = state.record.started_at
        info["foreground"] = state.record.foreground
        try:
            info["uptime_seconds"] = round(now - state.process.create_time())
            info["memory_bytes"] = state.process.memory_info().rss
        except psutil.Error:
            pass
    return info


def gather(workspace: Workspace) -> Status:
    """Read every fact status reports. Starts nothing; writes only its own small records."""
    state, config, litestream = workspace.state, workspace.config, workspace.litestream
    now = time.time()
    present = [db for db in workspace.databases if db.path.is_file()]
    listing = litestream.listing(config.socket) if state.running and config.socket else None
    synced = None if listing is None else {
        db["path"]: db["last_sync_at"] for db in listing if db.get("last_sync_at")
    }
    if synced is not None:
        # The daemon answers: the replica's state comes from it, with no request to the bucket.
        errors = daemon_errors(workspace.settings)
        databases = [_from_daemon(workspace, db, synced, now, errors) for db in workspace.databases]
    else:
        databases = _listed(workspace, present, now)
    record = drills.read(workspace.settings)
    for db in databases:
        db.verified = verified(workspace.settings, record, Path(db.path), state.running)
    from .service import find

    installed = find(workspace.settings)
    return Status(
        running=state.running,
        pid=state.pid,
        config=str(config.path),
        service=installed.as_dict() if installed else None,
        config_changed=workspace.config_changed,
        daemon=_daemon_info(state, workspace.settings, now),
        databases=databases,
        metrics_url=config.metrics_url,
        heartbeat=config.heartbeat,
        followers=_followers(workspace, now),
    )


DRILL_FIX = "'inv backup.verify' shows every check; 'inv backup.snapshot' takes a fresh full copy"


def verified(settings: Settings, record: drills.Record, db: Path, running: bool) -> dict[str, Any]:
    """What the last restore drill (or verify) of ``db`` proved, and when the next drill runs."""
    entry = record.of(db)
    following = record.next_at()
    interval = record.schedule.get("interval") if record.running else settings.verify_interval_text
    if entry:
        message = str(entry.get("message") or "")
        if entry.get("ok") is False:
            who = "restore drill" if entry.get("by") == "drill" else "'inv backup.verify'"
            message = f"the last {who} ({entry.get('at')}) failed: {message}"
            if "inv backup." not in message:
                message += f"; {DRILL_FIX}"
    elif interval == OFF:
        message = "restore drills are off (BACKUP_VERIFY_INTERVAL=off): 'inv backup.verify' proves the replica on demand"
    elif following:
        message = f"no restore drill yet: the first runs at {following} (every {interval})"
    elif running:
        message = "no restore drill yet, and no drill runner beside the daemon: restart it to run drills"
    else:
        message = f"no restore drill yet: drills run every {interval} while the daemon runs"
    return {"at": entry.get("at"), "ok": entry.get("ok"), "txid": entry.get("txid"),
            "compared": entry.get("compared"), "message": message, "next": following,
            "by": entry.get("by"), "interval": interval}


def _followers(workspace: Workspace, now: float) -> list[Any]:
    from .follow import FOLLOWERS, status

    if not any((workspace.settings.state_dir / FOLLOWERS).glob("*.pid")):
        return []  # none: not even the follow module's listing
    return status(workspace, now)


def _listed(workspace: Workspace, present: list[Database], now: float) -> list[DatabaseStatus]:
    """Each database's status from a listing of its replica (no daemon to ask)."""
    from concurrent.futures import ThreadPoolExecutor

    if present:
        workspace.litestream.binary  # found and version-checked once, before the threads share it
    with ThreadPoolExecutor(max_workers=max(1, len(present))) as pool:  # independent listings
        calls = {db.path: pool.submit(_listing, db) for db in present}
        replicas = {path: call.result() for path, call in calls.items()}
    stopped_at = None if workspace.running else last_shutdown(workspace.settings)  # one read of the log
    return [_database_status(db, replicas.get(db.path), now, workspace.running, stopped_at)
            for db in workspace.databases]


def _verified_line(v: dict[str, Any]) -> str:
    if v.get("ok") is None:
        return v["message"]
    line = v["message"] if v["ok"] is False else (
        f"ok at {v['at']} ({v.get('by') or 'drill'}): {v.get('compared') or '-'} compared"
        + (f" at txid {v['txid']}" if v.get("txid") else "") + f" — {v['message']}")
    return line + (f"; next drill {v['next']}" if v.get("next") else "")


def _lines(status: Status) -> list[str]:
    d = status.daemon
    if status.running:
        line = f"daemon    running (pid {status.pid}"
        if "uptime_seconds" in d:
            line += f", up {d['uptime_seconds']}s, {size_text(d.get('memory_bytes'))}"
        lines = [line + ")"]
    elif d["state"] == "unknown":
        lines = [f"daemon    unknown (access denied): {d.get('unknown_reason')}"]
    elif d["state"] == "stale":
        lines = [f"daemon    stopped (stale pidfile: {d.get('stale_reason')})"]
    else:
        lines = ["daemon    stopped"]
    service = status.service
    if service:
        state = {True: "active", False: "inactive", None: "state unknown"}[service["active"]]
        enabled = {True: "enabled", False: "disabled", None: "unknown"}[service["enabled"]]
        lines.append(f"service   {service['name']} ({service['manager']}, {enabled}, {state})")
    else:
        lines.append("service   none: replication stops at the next reboot or logout "
                     "('inv backup.install-service' keeps it running)")
    lines += [f"log       {d['log']}", f"config    {status.config}"]
    if status.metrics_url:
        lines.append(f"metrics   {status.metrics_url}" + ("" if status.running else " (served while the daemon runs)"))
    if status.heartbeat:
        lines.append(f"heartbeat {status.heartbeat['url']} every {status.heartbeat['interval']}, "
                     "after successful syncs")
    if status.config_changed:
        lines.append(
            "          changed since the daemon started, which still runs the old one: restart to "
            "apply ('inv backup.stop', then 'inv backup.start-bg')"
        )
    for db in status.databases:
        lines.append("")
        lines.append(f"database  {db.name or db.path}")
        lines.append(f"  replica        {db.replica}")
        if not db.exists:
            lines.append("  state          does not exist yet (litestream waits for it)")
            continue
        wal = {True: "WAL", False: "not WAL (litestream switches it)", None: "unknown"}[db.wal_mode]
        lines.append(f"  size           {size_text(db.size_bytes)}, {wal}")
        lines.append(f"  local txid     {db.local_txid or '-'}")
        if db.replica_source == "daemon":
            source = "from the daemon" if db.daemon_answered else \
                "the daemon did not answer in time (busy uploading?): as last known"
            lines.append(f"  replica txid   {db.replica_txid or '-'}  ({source}; last sync "
                         f"{(db.last_sync_at or '-')[:19]})")
            lines.append(f"  last listed    {db.listed_at or 'never in this workspace'} (snapshot and "
                         "restorability as of then; 'inv backup.snapshots' lists now)")
        else:
            lines.append(f"  replica txid   {db.replica_txid or '-'}  at {db.replica_time or '-'}")
        if db.first_sync_pending:
            lines.append("  state          first sync in progress: not backed up until it is done "
                         "('inv backup.logs --follow' shows it)")
        if db.restorable is not None:
            whose = f" (the backups of {db.owner}, not of this database)" if db.owner else ""
            lines.append(f"  restorable     {'yes' if db.restorable else 'no'}{whose}")
        if db.error:
            lines.append(f"  error          {db.error}")
        elif db.unseen_changes:
            secs = "unknown" if db.lag_seconds is None else f"at most {db.lag_seconds:g}s"
            lines.append(f"  lag            changes written while litestream was not running ({secs})")
        elif db.lag_seconds == 0:
            lines.append("  lag            none: the replica holds the local state")
        elif db.lag_txids is not None:
            secs = "unknown" if db.lag_seconds is None else f"{db.lag_seconds:g}s"
            lines.append(f"  lag            {db.lag_txids} txid(s), missing local changes for {secs}")
        elif db.lag_seconds is not None:
            lines.append(f"  lag            at most {db.lag_seconds:g}s (since the daemon's last successful sync)")
        lines.append(f"  last snapshot  {db.latest_snapshot or '-'}")
        if db.verified:
            lines.append(f"  verified       {_verified_line(db.verified)}")
        if db.next_start_full_copy:
            lines.append(f"  next start     takes a fresh full copy first: {db.next_start_full_copy}")
    for f in status.followers:
        lines.append("")
        lines.append(f"follower  {f.output}")
        logs = f"'inv backup.logs --follower {f.output}'"
        state = {"running": f"running (pid {f.pid})",
                 "starting": f"restoring (pid {f.pid}): " + (f"{f.reason}; see {logs}" if f.reason else
                                                            "not ready to read until it follows"),
                 "stale": f"stale (its litestream is gone): {f.reason}; {logs} says why, "
                          "'inv backup.follow' continues it",
                 }.get(f.state, f"{f.state}: {f.reason}")
        lines.append(f"  state          {state}")
        lines.append(f"  database       {f.database or '- (not one of this config: its lag cannot be checked)'}")
        lag = "none: the copy holds the replica's newest change" if f.lag_seconds == 0 else \
            "unknown" if f.lag_seconds is None else f"{f.lag_seconds:g}s behind the replica"
        lines.append(f"  txid           {f.txid or '-'} (replica {f.replica_txid or '-'}); lag {lag}")
    verdict = {EXIT_OK: "healthy", EXIT_NOT_RUNNING: "not running", EXIT_FAILED: "failing"}
    lines.append("")
    lines.append(f"status: {verdict[status.exit_code]}")
    return lines
