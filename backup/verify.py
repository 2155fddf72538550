"""The restore smoke test: restore the latest backup and prove it holds the live data.

Used by ``inv backup.verify`` and the ``backup-restore-smoke`` pre-commit hook.
When the live database did not change between the sync and the comparison, the
restored copy must hold exactly its content. First page for page: a restore writes
litestream's page images verbatim, so a copy of the live database taken with SQLite's
backup API (one consistent state) holds the same bytes, page 1's header aside; equal
pages are equal content, at the cost of reading the files. Where the pages differ, each
table is compared: the same schema, and the same rows in the same order (a sha256 over
each table's rows), which names the tables that differ. When the live
database moved on meanwhile, the whole check runs once more; if it moved on
again, only row counts are compared, and the result says so. Everything it
creates lives in one temp folder, removed on success, failure and Ctrl-C alike.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import daemon, drills
from .child import ChildTimeout
from .config import max_age as default_max_age
from .drills import Proof
from .files import private_dir
from .errors import NOTHING_TO_RESTORE, SNAPSHOT_FIX, BackupError
from .localstate import local_txid, unsynced_since
from .wal import NoImage, Reading, image_possible, written_since
from .owner import read_local, read_owner
from .restore import connect_readonly, integrity_check, nothing_yet
from .workspace import Database, Workspace

CONTENT, COUNTS = "content", "counts"  # what a comparison covered
CONTENT_METHOD = "sha256 per table, rowid order"
PAGES_METHOD = "page for page"
# Page 1's header bytes a copy may hold differently without any change of content: the
# change counter (24-27) and the schema cookie (40-43), which SQLite's backup API bumps in
# its copy, and version-valid-for with the library version that wrote it (92-99).
_HEADER_MASK = ((24, 28), (40, 44), (92, 100))
_HEADER = 100
START_DAEMON = "start it with 'inv backup.start-bg'"
SYNC_WAIT = 120.0  # seconds a running daemon is given to upload what it holds
POINT_TRIES = 3  # syncs tried for one point the live database and the replica share
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
    database: str = ""  # which database, where the workspace has several


@dataclass
class VerifyResult:
    configured: bool
    checks: list[Check] = field(default_factory=list)
    # One line each, worth telling even when every check passes.
    warnings: list[str] = field(default_factory=list)
    local_txid: str | None = None
    replica_txid: str | None = None
    lag_seconds: float | None = None
    # Per database (by name): what was compared, CONTENT or COUNTS (none: a check before
    # the comparison failed), and the txid both sides were read at, where one was held.
    compared: dict[str, str] = field(default_factory=dict)
    points: dict[str, str] = field(default_factory=dict)
    proofs: dict[Path, Proof] = field(default_factory=dict)  # each database's verdict

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    def as_lines(self) -> list[str]:
        if not self.configured:
            return ["no backup configured in this workspace (no litestream.yml): nothing to verify"]
        width = max((len(c.database) for c in self.checks), default=0)
        # A heading first: pre-commit strips the start of a hook's output, which took the
        # first check's indentation away.
        return ["verify: restore the replica to a temporary folder, check it, compare it with "
                "the live database"] + [
            f"  {'ok  ' if c.ok else 'FAIL'}  " + (f"{c.database:<{width}}  " if width else "")
            + f"{c.name:<9} {c.detail}"
            for c in self.checks
        ]

    def failure(self) -> str | None:
        """The one-line verdict when a check failed, naming every database that failed."""
        failed = [c for c in self.checks if not c.ok]
        if not failed:
            return None
        first = failed[0]
        where = f" for {', '.join(dict.fromkeys(c.database for c in failed))}" if first.database else ""
        return f"verify failed{where} at {first.name}: {first.detail}"


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
    txid: int | None = None  # the txid the replica was made to hold, where known


class _Syncer:
    """Makes a replica hold the live state before a comparison; says how.

    A running daemon is asked per database (its control socket); without one,
    one ``replicate -once`` syncs every database, so it runs once per round.
    """

    def __init__(self, workspace: Workspace, daemon_only: bool = False, restore_timeout: float | None = None):
        self.workspace = workspace
        self.daemon_only = daemon_only
        self.restore_timeout = restore_timeout  # the restores of this run (None: no limit)
        self._once: _Synced | BackupError | None = None

    def again(self) -> None:
        self._once = None  # a second round syncs anew

    def __call__(self, db: Database) -> _Synced:
        ws = self.workspace
        state = daemon.check(ws.settings)
        if state.running:
            socket = ws.config.socket
            if not socket:
                return _Synced("daemon running without a control socket: compared as replicated so far", True, False)
            answer = ws.litestream.control(socket).sync(db.path, wait=SYNC_WAIT)
            if answer is None:
                raise BackupError(f"the daemon (pid {state.pid}) did not answer a sync of {db.path} on {socket} "
                                  f"within {SYNC_WAIT:g}s: see 'inv backup.logs'")
            txid, held = int(answer.get("txid") or 0), int(answer.get("replicated_txid") or 0)
            if held < txid:
                raise BackupError(f"the daemon (pid {state.pid}) could not upload txid {txid:016x} of "
                                  f"{db.path} within {SYNC_WAIT:g}s (the replica holds {held:016x}): {_LAG_FIX}")
            return _Synced(f"asked the daemon (pid {state.pid}) to sync", True, True, held or None)
        if self.daemon_only:
            raise BackupError("no daemon replicates this workspace any more")
        if self._once is None and (idle := self._nothing_to_sync()):
            self._once = _Synced(f"no daemon running: nothing to sync ({idle})", False, True)
        if self._once is None:
            try:
                # The file as this command read it, unless it changed under a daemon since.
                config = None if ws.config_changed else ws.config
                prepared = daemon.replicate_once(ws.settings, ws.litestream, config=config)
                if prepared is None:  # one started meanwhile
                    self._once = _Synced("a daemon started meanwhile", True, False)
                else:
                    how = "no daemon running: synced once with 'litestream replicate -once'"
                    self._once = _Synced("; ".join([how, *prepared.repaired]), False, True)
            except BackupError as exc:
                self._once = exc
        if isinstance(self._once, BackupError):
            return self._failed(db, self._once)
        if self._once.current:  # what this database's last capture was, the replica holds
            return replace(self._once, txid=local_txid(db.path))
        return self._once

    def _nothing_to_sync(self) -> str | None:
        """Why no database of the workspace has anything litestream would upload, or None:
        for each, its WAL has not moved since litestream's saved position (same generation,
        no frame past it), and the replica holds the txid litestream captured last. Then
        'replicate -once' would only cost its start-up; in any other state (no WAL, no
        position, a restart, a replica behind) it runs. The comparison that follows is the
        proof either way: a replica that lacked a change would fail it."""
        txids = []
        for db in self.workspace.databases:
            local = local_txid(db.path)
            if local is None or written_since(db.path) is not False:
                return None
            try:
                if (db.replica.newest_txid() or 0) < local:
                    return None
            except BackupError:
                return None  # the restore says why
            txids.append(f"{local:016x}")
        if not txids:
            return None
        return f"the replica holds txid {', '.join(txids)}, and the WAL has not moved since"

    def _failed(self, db: Database, error: BackupError) -> _Synced:
        """One sync for all failed: it fails the database it names, not the others."""
        named = [d for d in self.workspace.databases if str(d.path) in error.message]
        if not named or db in named:
            raise error
        return _Synced(
            f"'litestream replicate -once' failed on {', '.join(d.name for d in named)}: "
            "compared as replicated so far", False, False,
        )


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
    method: str = CONTENT_METHOD  # how the two were compared
    moved: bool = False  # the live database changed between the sync and its reading
    point: int | None = None  # the txid both sides were read at, when one could be held
    before: tuple = ()  # the live database's fingerprint right after the last sync
    unpinned: str | None = None  # why not, when not

    @property
    def behind(self) -> bool:
        """Has litestream seen local changes the restored copy lacks?"""
        return self.local_txid is not None and self.local_txid > self.restored_txid


def _at_one_point(unit: Database, sync: _Syncer, attempt: _Attempt, image: Path,
                  restore_at: Callable[[int], Future], discard: Callable[[Future], None],
                  ) -> tuple[_Synced | None, Future | None]:
    """Sync, then copy the live database as it was at the very txid the replica now holds
    (``wal.Reading``) while the replica is restored at that txid (``restore_at``, on another
    thread): the two can then be compared exactly however fast the database moves on. Tried
    again when something moved in between. The sync of the last try (None when a sync
    failed: its check says why) and the restore at the point, when one was held;
    ``attempt.unpinned`` tells why none was."""
    db = unit.path
    synced: _Synced | None = None
    for n in range(POINT_TRIES):
        try:
            synced = sync(unit)
        except BackupError as exc:
            attempt.checks.append(Check("sync", False, f"could not sync: {exc.message}"))
            return None, None
        attempt.before = _fingerprint(db)  # what the live database was right after the sync
        if not synced.current or synced.txid is None:
            attempt.unpinned = "the replica could not be made current"
            return synced, None
        try:
            image_possible(db, synced.txid)  # before a download is spent on it
        except NoImage as exc:
            attempt.unpinned = exc.reason
            if not exc.again or n == POINT_TRIES - 1:
                return synced, None
            sync.again()
            continue
        restoring = restore_at(synced.txid)  # the download runs while the live copy is made
        try:
            with Reading(db) as reading:
                reading.image(synced.txid, image)
            attempt.point = synced.txid
            return synced, restoring
        except NoImage as exc:
            discard(restoring)
            attempt.unpinned = exc.reason
            if not exc.again or n == POINT_TRIES - 1:
                return synced, None
            sync.again()
    return synced, None  # not reached: the last try returns


def _attempt(unit: Database, sync: _Syncer, folder: Path, running: bool) -> _Attempt:
    db = unit.path
    attempt = _Attempt([], running)
    folder.mkdir()
    # Two folders, so no database name can make the live copy and the restored one one file.
    (folder / "live").mkdir()
    (folder / "replica").mkdir()
    image, restored = folder / "live" / db.name, folder / "replica" / db.name
    # By default no timeout: a download of the whole database takes as long as its size
    # and the link need.
    limit = sync.restore_timeout

    def restore(*point: str) -> Any:
        return unit.replica.json("restore", "-o", str(restored), *point, timeout=limit)

    def discard(restoring: Future) -> None:
        with contextlib.suppress(BackupError):
            restoring.result()
        restored.unlink(missing_ok=True)

    with ThreadPoolExecutor(max_workers=1) as pool:
        synced, restoring = _at_one_point(unit, sync, attempt, image,
                                          lambda txid: pool.submit(restore, "-txid", f"{txid:016x}"), discard)
        if synced is None:
            return attempt
        attempt.running, attempt.current = synced.running, synced.current
        attempt.checks.append(Check("sync", True, synced.how))
        before = attempt.before
        try:
            try:
                summary = restoring.result() if restoring is not None else restore()
            except BackupError as exc:
                if restoring is None or isinstance(exc, ChildTimeout):
                    raise  # a restore out of time gets no second one
                # litestream names a hole only on the way to the latest state: restore that, and
                # compare as the database stands.
                attempt.unpinned = f"no restore reaches txid {attempt.point:016x}"
                attempt.point = None
                image.unlink(missing_ok=True)
                restored.unlink(missing_ok=True)
                summary = restore()
        except BackupError as exc:
            # An empty replica: whether to start a daemon depends on whether one runs.
            why = nothing_yet(db, daemon.check(sync.workspace.settings)) if exc.message == NOTHING_TO_RESTORE else exc.message
            attempt.checks.append(Check("restore", False, f"restore failed: {why}"))
            if unit.replica.has_store:
                # What this learned (a hole, an empty replica) is what the next status says:
                # it reads the listing remembered here.
                with contextlib.suppress(BackupError):
                    unit.replica.relist()
            return attempt
    attempt.restored_txid = int(summary["txid"], 16) if summary.get("txid") else 0
    attempt.checks.append(Check(
        "restore", True, f"restored txid {attempt.restored_txid:016x} from {unit.replica.where}",
    ))

    same = None
    if attempt.point is not None:
        # SQLite's check and the page comparison read the same copy: side by side, on two cores.
        with ThreadPoolExecutor(max_workers=1) as pool:
            checking = pool.submit(integrity_check, restored)
            same = _pages_equal(image, restored)
            verdict = checking.result()
    else:
        verdict = integrity_check(restored)
    attempt.checks.append(Check(
        "integrity", verdict == "ok",
        f"PRAGMA integrity_check: {verdict}" + ("" if verdict == "ok" else f"; the backup is damaged: {SNAPSHOT_FIX}"),
    ))
    if verdict != "ok":
        return attempt

    if attempt.point is not None:
        # Both sides at one txid: whatever was committed since is not part of the question.
        attempt.local_txid = attempt.point
        try:
            _compare(attempt, image, restored, bool(same))
        except sqlite3.Error as exc:
            attempt.checks.append(Check("compare", False, f"could not read the copies to compare: {exc}"))
        return attempt
    shared = _same_pages(db, restored, folder)
    if shared is not None:
        attempt.live = attempt.copy = shared
        attempt.method = PAGES_METHOD
        attempt.moved = _fingerprint(db) != before
        attempt.local_txid = local_txid(db)
        return attempt
    try:
        attempt.live = digest(db)
    except sqlite3.Error as exc:
        attempt.checks.append(Check("compare", False, f"could not read the live database {db}: {exc}"))
        return attempt
    attempt.moved = _fingerprint(db) != before
    attempt.local_txid = local_txid(db)
    try:
        attempt.copy = digest(restored)
    except sqlite3.Error as exc:
        attempt.checks.append(Check("compare", False, f"could not read the restored copy: {exc}"))
    return attempt


def _pages_equal(live: Path, restored: Path) -> bool:
    try:
        return same_pages(live, restored)
    except OSError:
        return False  # compared table by table instead, which says what it cannot read


def _compare(attempt: _Attempt, live: Path, restored: Path, same: bool) -> None:
    """Page for page (``same``: the pages are equal), or where pages differ, table by table."""
    if same:
        attempt.live = attempt.copy = _pages_digest(restored)
        attempt.method = PAGES_METHOD
    else:
        attempt.live, attempt.copy = digest(live), digest(restored)


def _masked_header(fh) -> bytes:
    head = bytearray(fh.read(_HEADER))
    for start, end in _HEADER_MASK:
        head[start:end] = bytes(end - start)
    return bytes(head)


def same_pages(a: Path, b: Path) -> bool:
    """Do two database files hold the same bytes, page 1's volatile header fields
    (``_HEADER_MASK``) aside? Read side by side, stopping at the first difference."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        if _masked_header(fa) != _masked_header(fb):
            return False
        while chunk := fa.read(1 << 20):
            if chunk != fb.read(len(chunk)):
                return False
    return True


def _same_pages(db: Path, restored: Path, folder: Path) -> Digest | None:
    """The reading both databases share when the live one, copied through SQLite's backup
    API (one consistent state), holds the restored copy's pages byte for byte: its schema
    and row counts, and "pages" standing for every table's content. None when the pages
    differ (or cannot be read): then each table is compared row by row."""
    snapshot = folder / "live-pages"
    try:
        source = connect_readonly(db)
        try:
            target = sqlite3.connect(snapshot)
            try:
                # A scratch copy, removed below: no journal, no fsync.
                target.execute("PRAGMA journal_mode=OFF")
                target.execute("PRAGMA synchronous=OFF")
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()
        if not same_pages(snapshot, restored):
            return None
    except (sqlite3.Error, OSError):
        return None
    finally:
        snapshot.unlink(missing_ok=True)
    return _pages_digest(restored)


def _pages_digest(path: Path) -> Digest:
    """The reading two databases with the same pages share: the schema, and "pages" standing
    for every table's content (and rows: equal pages hold equal rows, so none are counted)."""
    con = connect_readonly(path)
    try:
        objects = con.execute(_OWN_OBJECTS).fetchall()
    finally:
        con.close()
    counts = {name: -1 for kind, name, sql in objects if kind == "table" and not _is_virtual(sql)}
    return Digest({f"{kind} {name}": sql or "" for kind, name, sql in objects}, counts,
                  dict.fromkeys(counts, "pages"))


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


# When the replica's owner record names this very database, another database's rows are
# the least likely reason for a difference; the causes in the order they are seen.
OWN_REPLICA_CAUSES = (
    ": the replica lacks changes this database committed; likely causes, most likely first: "
    "(1) rows committed while replication was off and a checkpoint restarted the WAL before "
    "it started again (litestream resumes past them), (2) objects deleted from the replica "
    "(a lifecycle rule, a person), (3) another database or process writing the same place "
    "(BACKUP_REPLICA_PATH; 'inv backup.doctor' checks); fix: 'inv backup.snapshot' (a fresh "
    "full copy), then 'inv backup.verify'"
)


def _content_check(live: Digest, copy: Digest, owned: Callable[[], bool] = lambda: False,
                   method: str = CONTENT_METHOD) -> Check:
    tables = sorted(set(live.sums) | set(copy.sums))
    differing = [t for t in tables if live.sums.get(t) != copy.sums.get(t)]
    if not differing:
        return Check("content", True, f"content identical in {len(tables)} table(s) ({method})")
    found = "content differs in " + ", ".join(_table_difference(t, live, copy) for t in differing)
    if owned():
        return Check("content", False, found + OWN_REPLICA_CAUSES)
    return Check("content", False, (
        found + ": the backup does not hold this database's data; check that no other database "
        "replicates to the same place (BACKUP_REPLICA_PATH) and run 'inv backup.doctor'"
    ))


def _owned_here(unit: Database) -> bool:
    """Does the replica's owner record name this very database file (its instance)?"""
    if not unit.replica.has_store:
        return False
    try:
        owner, local = read_owner(unit.replica.store()), read_local(unit.path)
    except BackupError:
        return False
    return owner is not None and local is not None and owner.instance == local.instance


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
    attempt: _Attempt, retried: str | None, result: VerifyResult, unit: Database, limit: float
) -> None:
    """Turn the last attempt into checks: content, or counts when the database kept moving."""
    db, replica = unit.path, unit.replica.where
    checks = attempt.checks
    if checks and checks[0].name == "sync" and checks[0].ok:
        checks[0] = Check("sync", True, checks[0].detail + (
            f"; both sides read at txid {attempt.point:016x}" if attempt.point is not None
            else f"; no one point to read both sides at ({attempt.unpinned})" if attempt.unpinned else ""))
    if retried:
        checks[0] = Check("sync", True, f"{checks[0].detail}; checked twice, because {retried}")
    result.checks += checks
    if attempt.live is None or attempt.copy is None:
        return  # a check above failed and says why

    result.replica_txid = f"{attempt.restored_txid:016x}"
    result.points.setdefault(unit.name, result.replica_txid)  # the txid restored, until a point says more
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
            result.compared[unit.name] = COUNTS
        elif not attempt.current and attempt.live.sums != attempt.copy.sums:
            # Changes the daemon has not captured yet look like foreign data.
            why = "the replica could not be made current"
            result.checks.append(_counts_check(attempt.live, attempt.copy, why))
            result.compared[unit.name] = COUNTS
        else:
            result.checks.append(_content_check(attempt.live, attempt.copy, lambda: _owned_here(unit),
                                                attempt.method))
            result.compared[unit.name] = CONTENT
        if attempt.point is not None:
            result.points[unit.name] = f"{attempt.point:016x}"

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
    workspace: Workspace, databases: tuple[Database, ...], max_age: float | None = None,
    require_running: bool = False, by: str | None = "verify", daemon_only: bool = False,
    temp_root: Path | None = None, restore_timeout: float | None = None,
) -> VerifyResult:
    """Restore each database's latest backup and compare it with the live one.

    ``by``: who asks, as the drills' record keeps each database's verdict (None: not kept);
    ``daemon_only``: sync through a running daemon or not at all (a drill never replicates
    on its own); ``temp_root``: where the temporary folder goes (the system's by default);
    ``restore_timeout``: seconds a restore may take (None: as long as it needs).
    """
    if not workspace.configured:
        return VerifyResult(configured=False)
    result = VerifyResult(configured=True)
    sync = _Syncer(workspace, daemon_only, restore_timeout)
    running = workspace.running
    for unit in databases:
        before = len(result.checks)
        running = _verify_one(unit, sync, result, max_age, running, temp_root)
        result.proofs[unit.path] = _proof(unit, result, result.checks[before:])
        if workspace.listed_apart(databases):
            for check in result.checks[before:]:
                check.database = unit.name
    if not databases:
        result.checks.append(Check("database", False, "no database to verify: BACKUP_DB names none that exists yet"))
    _continuity(result, running, require_running)
    # A verify that passes counts as a drill that passed; one that fails says so in its own
    # exit code, and leaves the drills' verdict as it was.
    kept = {path: proof for path, proof in result.proofs.items() if proof.ok or by != "verify"}
    if by is not None and kept:
        drills.remember(workspace.settings, kept, by)
    return result


def _proof(unit: Database, result: VerifyResult, checks: list[Check]) -> Proof:
    """One database's verdict, as the drills' record keeps it."""
    failed = next((c for c in checks if not c.ok), None)
    compared = next((c for c in checks if c.name in ("content", "rows")), None)
    said = failed or compared or (checks[-1] if checks else None)
    message = said.detail if said else "not checked"
    if failed is not None and failed.name not in message:
        message = f"{failed.name}: {message}"
    compared_how = result.compared.get(unit.name)
    ok = failed is None and bool(checks) and compared_how is not None
    if failed is None and compared_how is None:
        message = f"nothing compared: {message}"  # judged by its lag alone: no proof of content
    return Proof(ok, message, result.points.get(unit.name), compared_how)


def _verify_one(
    unit: Database, sync: _Syncer, result: VerifyResult, max_age: float | None, running: bool,
    temp_root: Path | None = None,
) -> bool:
    """One database: up to two rounds of sync, restore and comparison; whether a daemon runs."""
    db = unit.path
    if not db.is_file():
        result.checks.append(Check(
            "database", False, f"{db} does not exist: check BACKUP_DB, or restore it with 'inv backup.restore'"
        ))
        return running
    limit = default_max_age(unit.sync_interval) if max_age is None else max_age
    retried = None
    if temp_root is not None:
        private_dir(temp_root)
    folder = Path(tempfile.mkdtemp(prefix="chora-verify-", dir=temp_root))
    try:
        for n in (1, 2):
            attempt = _attempt(unit, sync, folder / str(n), running)
            running = attempt.running
            why = _why_again(attempt)
            if n == 2 or why is None:
                break
            retried = why
            sync.again()
            shutil.rmtree(folder / str(n), ignore_errors=True)  # a large copy need not wait
        _judge(attempt, retried, result, unit, limit)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return running
