"""The restore smoke test: restore the latest backup and prove it holds the live data.

Used by ``inv backup.verify`` and the ``backup-restore-smoke`` pre-commit hook.
When the live database did not change between the sync and the comparison, the
restored copy must hold exactly its content: the same schema, and per table the
same rows in the same order (a sha256 over each table's rows). When the live
database moved on meanwhile, the whole check runs once more; if it moved on
again, only row counts are compared, and the result says so. Everything it
creates lives in one temp folder, removed on success, failure and Ctrl-C alike.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import daemon
from .config import Settings
from .errors import NOTHING_TO_RESTORE, SNAPSHOT_FIX, BackupError
from .litestream import Litestream
from .render import Database
from .restore import configured_database, connect_readonly, integrity_check, nothing_yet
from .status import local_txids, unsynced_since
from .status import max_age as default_max_age

CONTENT_METHOD = "sha256 per table, rowid order"
START_DAEMON = "start it with 'inv backup.start-bg'"
# SQLite's own tables and litestream's bookkeeping (which litestream writes on
# its own schedule) are not the user's data. '_' is a LIKE wildcard: escaped.
_OWN_OBJECTS = (
    "SELECT type, name, sql FROM sqlite_master "
    r"WHERE name NOT LIKE 'sqlite\_%' ESCAPE '\' AND name NOT LIKE '\_litestream%' ESCAPE '\' "
    "ORDER BY type, name"
)


# What to do when a check fails. None of them starts a daemon: verify has just
# synced, through the running one or with 'replicate -once'.
_MISMATCH_FIX = ": if no other database replicates to {replica}, " + SNAPSHOT_FIX
_LAG_FIX = "the replica is not keeping up: see 'inv backup.status' and 'inv backup.logs'"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyResult:
    configured: bool
    checks: list[Check] = field(default_factory=list)
    # One line each, worth telling even when every check passes.
    warnings: list[str] = field(default_factory=list)
    local_txid: str | None = None
    replica_txid: str | None = None
    lag_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)


@dataclass(frozen=True)
class Digest:
    """One consistent reading of a database: its schema, and per table its row count and checksum."""

    schema: dict[str, str]
    counts: dict[str, int]
    sums: dict[str, str]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _order(con: sqlite3.Connection, table: str) -> str:
    """The ORDER BY that lists ``table``'s rows the same way in any copy of it.

    The rowid, under the first of its three names that no column shadows; a
    WITHOUT ROWID table has none, and is ordered by its primary key.
    """
    columns = con.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
    taken = {c[1].lower() for c in columns}
    for alias in ("rowid", "_rowid_", "oid"):
        if alias in taken:
            continue
        try:
            con.execute(f"SELECT {alias} FROM {_quote(table)} LIMIT 0")
        except sqlite3.OperationalError:  # no such column: a WITHOUT ROWID table
            break
        return alias
    key = [c for c in sorted(columns, key=lambda c: c[5]) if c[5] > 0] or columns
    return ", ".join(_quote(c[1]) for c in key)


def _is_virtual(sql: str | None) -> bool:
    # A virtual table's rows live in its shadow tables (regular tables, checked
    # on their own); reading it may need a module this Python lacks.
    return bool(re.match(r"\s*CREATE\s+VIRTUAL\s+TABLE\b", sql or "", re.IGNORECASE))


def digest(path: Path) -> Digest:
    """Schema, row counts and a sha256 of every table's rows, read in one read transaction.

    Each row is hashed as the ``repr`` of its tuple, which is exact for
    integers, floats, text and blobs and tells them apart.
    """
    con = connect_readonly(path)
    con.isolation_level = None  # transactions are ours: BEGIN below
    # Text that is not valid UTF-8 is still data to compare, not an error.
    con.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
    try:
        con.execute("BEGIN")  # every table from the same state, even while others write
        objects = con.execute(_OWN_OBJECTS).fetchall()
        counts: dict[str, int] = {}
        sums: dict[str, str] = {}
        for kind, name, sql in objects:
            if kind != "table" or _is_virtual(sql):
                continue
            sha = hashlib.sha256()
            n = 0
            for row in con.execute(f"SELECT * FROM {_quote(name)} ORDER BY {_order(con, name)}"):
                sha.update(repr(row).encode("utf-8") + b"\n")
                n += 1
            counts[name], sums[name] = n, sha.hexdigest()
        return Digest({f"{kind} {name}": sql or "" for kind, name, sql in objects}, counts, sums)
    finally:
        con.close()


def _fingerprint(db: Path) -> tuple[tuple[int, int, int] | None, ...]:
    """What any write to the live database changes: identity, size and mtime of it and its WAL.

    A missing WAL and an empty one are the same state: a reader opening a WAL
    database creates an empty one.
    """
    marks: list[tuple[int, int, int] | None] = []
    for path in (db, db.with_name(db.name + "-wal")):
        try:
            st = path.stat()
        except FileNotFoundError:
            marks.append(None)
            continue
        marks.append((st.st_ino, st.st_size, st.st_mtime_ns) if st.st_size else None)
    return tuple(marks)


@dataclass(frozen=True)
class _Synced:
    how: str
    running: bool  # a daemon replicates the workspace
    current: bool  # the replica was made to hold the live state


def _sync(settings: Settings, litestream: Litestream, db: Path, socket: Path | None) -> _Synced:
    """Make the replica hold the live state before comparing; say how, and whether a daemon runs."""
    state = daemon.check(settings)
    if state.running:
        if not socket:
            return _Synced("daemon running without a control socket: compared as replicated so far", True, False)
        litestream.run("sync", "-wait", "-json", "-socket", str(socket), str(db), timeout=120)
        return _Synced(f"asked the daemon (pid {state.pid}) to sync", True, True)
    if daemon.replicate_once(settings, litestream) is None:  # one started meanwhile: it syncs on its own
        return _Synced("a daemon started meanwhile", True, False)
    return _Synced("no daemon running: synced once with 'litestream replicate -once'", False, True)


@dataclass
class _Attempt:
    """One sync, restore and reading of both databases."""

    checks: list[Check]
    running: bool
    current: bool = True  # the sync made the replica hold the live state
    restored_txid: int = 0
    local_txid: int | None = None
    live: Digest | None = None
    copy: Digest | None = None
    moved: bool = False  # the live database changed between the sync and its reading

    @property
    def behind(self) -> bool:
        """Has litestream seen local changes the restored copy lacks?"""
        return self.local_txid is not None and self.local_txid > self.restored_txid


def _attempt(
    settings: Settings, litestream: Litestream, entry: Database, socket: Path | None,
    folder: Path, running: bool,
) -> _Attempt:
    db = entry.path
    attempt = _Attempt([], running)
    try:
        synced = _sync(settings, litestream, db, socket)
    except BackupError as exc:
        attempt.checks.append(Check("sync", False, f"could not sync: {exc.message}"))
        return attempt
    attempt.running, attempt.current = synced.running, synced.current
    attempt.checks.append(Check("sync", True, synced.how))
    before = _fingerprint(db)

    folder.mkdir()
    restored = folder / db.name
    try:
        summary = litestream.json("restore", "-o", str(restored), str(db), timeout=None)
    except BackupError as exc:
        # An empty replica: whether to start a daemon depends on whether one runs.
        why = nothing_yet(db, daemon.check(settings)) if exc.message == NOTHING_TO_RESTORE else exc.message
        attempt.checks.append(Check("restore", False, f"restore failed: {why}"))
        return attempt
    attempt.restored_txid = int(summary["txid"], 16) if summary.get("txid") else 0
    attempt.checks.append(Check(
        "restore", True, f"restored txid {attempt.restored_txid:016x} from {entry.replica}",
    ))

    verdict = integrity_check(restored)
    attempt.checks.append(Check(
        "integrity", verdict == "ok",
        f"PRAGMA integrity_check: {verdict}" + ("" if verdict == "ok" else f"; the backup is damaged: {SNAPSHOT_FIX}"),
    ))
    if verdict != "ok":
        return attempt

    try:
        attempt.live = digest(db)
    except sqlite3.Error as exc:
        attempt.checks.append(Check("compare", False, f"could not read the live database {db}: {exc}"))
        return attempt
    attempt.moved = _fingerprint(db) != before
    attempt.local_txid = local_txids(litestream).get(str(db))
    try:
        attempt.copy = digest(restored)
    except sqlite3.Error as exc:
        attempt.checks.append(Check("compare", False, f"could not read the restored copy: {exc}"))
    return attempt


def _schema_check(live: Digest, copy: Digest, replica: str) -> Check:
    keys = sorted(set(live.schema) | set(copy.schema))
    differing = [
        k + (" (only in the live database)" if k not in copy.schema
             else " (only in the backup)" if k not in live.schema else "")
        for k in keys if live.schema.get(k) != copy.schema.get(k)
    ]
    if not differing:
        return Check("schema", True, "same schema")
    return Check("schema", False, "schema differs between the live database and the backup: "
                 + ", ".join(differing) + _MISMATCH_FIX.format(replica=replica))


def _table_difference(table: str, live: Digest, copy: Digest) -> str:
    if table not in copy.counts:
        return f"{table} (only in the live database)"
    if table not in live.counts:
        return f"{table} (only in the backup)"
    if live.counts[table] != copy.counts[table]:
        return f"{table} (live {live.counts[table]} rows, backup {copy.counts[table]})"
    return f"{table} (same {live.counts[table]} rows, different content)"


def _content_check(live: Digest, copy: Digest) -> Check:
    tables = sorted(set(live.sums) | set(copy.sums))
    differing = [t for t in tables if live.sums.get(t) != copy.sums.get(t)]
    if not differing:
        return Check("content", True, f"content identical in {len(tables)} table(s) ({CONTENT_METHOD})")
    return Check("content", False, (
        "content differs in " + ", ".join(_table_difference(t, live, copy) for t in differing)
        + ": the backup does not hold this database's data; check that no other database "
        "replicates to the same place (BACKUP_REPLICA_PATH) and run 'inv backup.doctor'"
    ))


def _counts_check(live: Digest, copy: Digest, why: str) -> Check:
    prefix = f"{why}: compared row counts only; "
    tables = sorted(set(live.counts) | set(copy.counts))
    differing = [t for t in tables if live.counts.get(t) != copy.counts.get(t)]
    if not differing:
        return Check("rows", True, prefix + f"row counts equal in {len(tables)} table(s)")
    return Check("rows", False, prefix + "row counts differ in " + ", ".join(
        f"{t} (live {live.counts.get(t)}, backup {copy.counts.get(t)})" for t in differing
    ) + "; run verify again once the database has been idle for a sync interval")


def _judge(
    attempt: _Attempt, retried: str | None, result: VerifyResult, db: Path, replica: str, limit: float
) -> None:
    """Turn the last attempt into checks: content, or counts when the database kept moving."""
    checks = attempt.checks
    if retried:
        checks[0] = Check("sync", True, f"{checks[0].detail}; checked twice, because {retried}")
    result.checks += checks
    if attempt.live is None or attempt.copy is None:
        return  # a check above failed and says why

    result.replica_txid = f"{attempt.restored_txid:016x}"
    result.local_txid = f"{attempt.local_txid:016x}" if attempt.local_txid is not None else None
    if attempt.behind:
        since = unsynced_since(db, attempt.restored_txid)
        result.lag_seconds = round(time.time() - since, 1) if since else None
        # The live database moved on: differences are lag, judged below.
        result.checks.append(Check("compare", True, "live database is ahead of the replica; judged by its lag"))
    else:
        result.lag_seconds = 0.0
        result.checks.append(_schema_check(attempt.live, attempt.copy, replica))
        if attempt.moved:
            why = "live database changed during the check"
            result.checks.append(_counts_check(attempt.live, attempt.copy, why))
        elif not attempt.current and attempt.live.sums != attempt.copy.sums:
            # Changes the daemon has not captured yet look like foreign data.
            why = "the replica could not be made current"
            result.checks.append(_counts_check(attempt.live, attempt.copy, why))
        else:
            result.checks.append(_content_check(attempt.live, attempt.copy))

    if result.lag_seconds is None:
        result.checks.append(Check(
            "lag", False, f"the replica is missing local changes of unknown age: {_LAG_FIX}"
        ))
    else:
        ok = result.lag_seconds <= limit
        where = f"behind by {result.lag_seconds:g}s" if attempt.behind else "holds every change litestream has seen"
        result.checks.append(Check(
            "lag", ok, f"replica {where}" + ("" if ok else f", more than --max-age {limit:g}s: {_LAG_FIX}"),
        ))


def _why_again(attempt: _Attempt) -> str | None:
    """Why one attempt is not final: the live database moved on, or the copy differs."""
    if attempt.live is None or attempt.copy is None:
        return None  # sync, restore or integrity failed: trying again proves nothing new
    if attempt.moved:
        return "the live database changed during the first check"
    if attempt.behind:
        return "the replica lacked changes litestream had seen"
    if attempt.live != attempt.copy:
        # A write can land after litestream read the WAL but before the sync
        # returned: no fingerprint sees it. Only a second difference is real.
        return "the first check found a difference"
    return None


def _continuity(result: VerifyResult, running: bool, require_running: bool) -> None:
    """Continuous backup needs a daemon; a smoke test that synced once does not prove one runs."""
    if running:
        return
    off = "continuous backup is off: no daemon replicates this workspace"
    if require_running:
        result.checks.append(Check("daemon", False, f"{off} (--require-running); {START_DAEMON}"))
    else:
        result.warnings.append(
            f"{off}, so changes after this check are not backed up; {START_DAEMON} "
            "(--require-running makes this a failure)"
        )


def verify(
    settings: Settings, litestream: Litestream, max_age: float | None = None, require_running: bool = False,
) -> VerifyResult:
    if not settings.config_path.exists():
        return VerifyResult(configured=False)
    config, entry = configured_database(settings, litestream)
    result = VerifyResult(configured=True)
    db = entry.path
    if not db.is_file():
        result.checks.append(Check(
            "database", False, f"{db} does not exist: check BACKUP_DB, or restore it with 'inv backup.restore'"
        ))
        return result
    limit = default_max_age(entry.sync_interval) if max_age is None else max_age

    running = daemon.check(settings).running
    retried = None
    folder = Path(tempfile.mkdtemp(prefix="chora-verify-"))
    try:
        for n in (1, 2):
            attempt = _attempt(settings, litestream, entry, config.socket, folder / str(n), running)
            running = attempt.running
            why = _why_again(attempt)
            if n == 2 or why is None:
                break
            retried = why
            shutil.rmtree(folder / str(n), ignore_errors=True)  # a large copy need not wait
        _judge(attempt, retried, result, db, entry.replica, limit)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    _continuity(result, running, require_running)
    return result
