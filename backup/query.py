"""backup.query: one read-only SQL statement against a replica, at any point in its
window, without restoring it.

litestream's VFS (the ``litestream-vfs`` wheel, a SQLite loadable extension) reads the
replica in place, fetching only the pages a query touches, and travels in time
(``litestream_set_time``). Three facts shape how it runs here:

- it reads the replica URL, the credentials and ``AWS_CA_BUNDLE`` from the environment
  the process *started* with, and once loaded it breaks every other SQLite connection of
  that process: so it runs in a child (``python -I -m backup.query``) that gets the very
  environment litestream gets (``Litestream.environment``: credentials as
  ``LITESTREAM_*``, no ``AWS_CA_BUNDLE``, no metadata lookups) plus the replica's URL,
  reads its request on stdin and writes its answer as JSON on its own stdout (the VFS
  logs to fd 1, which the child points at stderr);
- a point outside the replica's window gets only an opaque SQL error from it: the window
  is checked first, with restore's own words (``restore.point_args``);
- it travels by time only: ``--txid`` becomes the time of the file that ends at that
  txid, and the answer's txid is checked against it.

Read-only by construction: the connection is opened read-only, and an authorizer lets a
statement read, call functions and query pragmas, nothing else; one statement per call.
Python's ``sqlite3`` often cannot load extensions (pyenv, macOS): ``apsw`` can.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlencode

from . import child
from .errors import EXIT_CONFIG, BackupError
from .files import size_text
from .ltx import LISTS_PER_PLAN, LtxFile, plan
from .timeparse import iso_z

EXTRA = "pip install 'chora-backup[query]'"
# A query still reading after this is stuck, not slow (a scan of a 200 MB replica through
# the VFS took under 10 minutes): it is stopped, and the error says what to do instead.
QUERY_TIMEOUT = 3600.0
NOT_ON_WINDOWS = (
    "backup.query needs litestream's VFS, which has no Windows build: restore a copy with "
    "'inv backup.restore --output PATH' (with --timestamp or --txid for an earlier point) and "
    "query that"
)
# Pragmas whose argument names what to describe, not a value to set.
READING_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
})
READ_ONLY = ("only a statement that reads can be asked (SELECT, WITH, or a PRAGMA that reads): "
             "the backup is never changed")


@dataclass
class Answer:
    database: str
    columns: list[str]
    rows: list[list[Any]]
    txid: str
    timestamp: str
    notes: list[str] = field(default_factory=list)
    via: str = "vfs"  # what answered: the VFS reading the replica in place, or a local copy
    requests: Requests | None = None  # what it asked of an S3 replica (None: a folder, nothing billed)

    def as_dict(self) -> dict[str, Any]:
        asked = self.requests
        return {"columns": self.columns, "rows": self.rows, "txid": self.txid, "timestamp": self.timestamp,
                "via": self.via, "requests": asked.as_dict() if asked else None, "bytes": asked.bytes if asked else None}

    def as_lines(self) -> list[str]:
        cells = [[_cell(v) for v in row] for row in self.rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(self.columns)]
        lines = []
        if self.columns:
            lines.append("  ".join(c.ljust(w) for c, w in zip(self.columns, widths)).rstrip())
            lines.append("  ".join("-" * w for w in widths))
            lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
        count = f"{len(self.rows)} row{'s' if len(self.rows) != 1 else ''}"
        how = "read in place" if self.via == VFS else "a local copy of it"
        lines.append(f"({count} from the replica of {self.database} at txid {self.txid}, {self.timestamp}; {how})")
        if self.requests:
            lines.append(f"({self.requests.describe()})")
        return lines + self.notes


@dataclass(frozen=True)
class Requests:
    """What a query asked of the replica: LISTs (Class A on R2), GETs and HEADs (Class B),
    and the bytes of the objects (or parts of them) it downloaded; listings' own bytes aside."""

    lists: int = 0
    gets: int = 0
    heads: int = 0
    bytes: int = 0

    def __add__(self, other: Requests) -> Requests:
        return Requests(self.lists + other.lists, self.gets + other.gets, self.heads + other.heads,
                        self.bytes + other.bytes)

    def as_dict(self) -> dict[str, int]:
        return {"list": self.lists, "get": self.gets, "head": self.heads}

    def describe(self) -> str:
        counts = [f"{n} {what}{'s' if n != 1 else ''}" for n, what in
                  ((self.lists, "LIST"), (self.gets, "GET"), (self.heads, "HEAD")) if n]
        return (f"asked the replica: {', '.join(counts) or 'nothing'}; {size_text(self.bytes)} downloaded; "
                f"${self.price:.6f} at R2's list price")

    @property
    def price(self) -> float:
        """In US dollars on R2: LISTs are Class A, GETs and HEADs Class B, downloads free."""
        from .cost import PRICE_CLASS_A, PRICE_CLASS_B

        return self.lists * PRICE_CLASS_A + (self.gets + self.heads) * PRICE_CLASS_B


def _cell(value: Any) -> str:
    return "NULL" if value is None else str(value)


def _json_value(value: Any) -> Any:
    """A SQLite value as JSON: a blob as its SQL literal (x'0a1b')."""
    return f"x'{value.hex()}'" if isinstance(value, (bytes, bytearray, memoryview)) else value


def missing() -> str | None:
    """Why backup.query cannot run here, or None."""
    if sys.platform == "win32":
        return NOT_ON_WINDOWS
    import importlib.util

    absent = [name for name, module in (("apsw", "apsw"), ("litestream-vfs", "litestream_vfs"))
              if importlib.util.find_spec(module) is None]
    if absent:
        return f"backup.query needs {' and '.join(absent)} (optional): {EXTRA}"
    return None


def replica_url(entry: Any) -> str:
    """The replica's URL as the VFS reads it (LITESTREAM_REPLICA_URL)."""
    if entry.replica_type == "file":
        return "file://" + quote(str(Path(entry.location).resolve()))
    if entry.replica_type == "s3":
        params = {"region": entry.region or "auto"}
        if entry.endpoint:
            params["endpoint"] = entry.endpoint
        return f"s3://{entry.bucket}/{quote(entry.location.strip('/'))}?{urlencode(params)}"
    raise BackupError(f"{entry.path}: backup.query reads file and S3 replicas, not {entry.replica_type!r} ones")


# SQL's tokens, as far as telling a read from a write needs: strings, quoted names and
# comments are skipped whole, so no keyword inside them counts.
_TOKEN = re.compile(r"""
    '(?:[^']|'')*'                          # a string
  | "(?:[^"]|"")*" | \[[^\]]*\] | `(?:[^`]|``)*`   # a quoted name
  | --[^\n]* | /\*.*?(?:\*/|\Z)             # a comment
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<mark>[;=(.])
  | \S | \s+
""", re.S | re.X)
READS = frozenset({"SELECT", "WITH", "VALUES", "PRAGMA", "EXPLAIN"})
WRITES = frozenset({
    "INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "ATTACH", "DETACH", "VACUUM",
    "REINDEX", "ANALYZE", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "UPSERT",
})


def screen(sql: str) -> None:
    """Refuse, before anything is asked of the replica, what can never be a read: a statement
    that writes, or two statements. (The child's authorizer stays the last word.)"""
    tokens = [(m["word"].upper() if m["word"] else m["mark"]) for m in _TOKEN.finditer(sql) if m["word"] or m["mark"]]
    if ";" in tokens and any(t != ";" for t in tokens[tokens.index(";"):]):
        raise BackupError("one statement at a time: run each on its own")
    words = [t for t in tokens if t not in (";", "=", "(", ".")]
    if not words:
        return  # nothing but comments: SQLite says so
    written = next((w for i, w in enumerate(tokens) if w in WRITES
                    and not (w == "REPLACE" and tokens[i + 1:i + 2] == ["("])), None)  # replace(): a function
    if words[0] not in READS:
        raise BackupError(f"{READ_ONLY} (not a read: {words[0].lower()})")
    if written:
        raise BackupError(f"{READ_ONLY} (not a read: {written.lower()}; where it is a name, quote it: "
                          f"\"{written.lower()}\")")
    if words[0] == "PRAGMA":
        name = words[2] if tokens[2:3] == ["."] and len(words) > 2 else words[1] if len(words) > 1 else ""
        if "=" in tokens or ("(" in tokens and name.lower() not in READING_PRAGMAS):
            raise BackupError(f"{READ_ONLY} (not a read: pragma {name.lower()} with a value)")


VFS, COPY, AUTO = "vfs", "copy", "auto"
LATEST = datetime(2999, 12, 31, tzinfo=timezone.utc)  # the VFS's time for "every file there is"
VIA = (VFS, COPY, AUTO)


def run(workspace: Any, db: Any, sql: str, timestamp: datetime | None = None, txid: int | None = None,
        via: str = AUTO) -> Answer:
    """Ask ``sql`` of ``db``'s replica, as it was at ``timestamp`` or ``txid`` (default: latest).

    ``via``: VFS reads the replica in place, page by page (a point lookup fetches a few
    pages); COPY restores it to a local copy first (kept in the state dir for the next query
    while the replica has not moved on) and asks that. AUTO takes the kept copy when there is
    one, or a copy when the replica is small (``first_choice``); else the query plan (from the
    database here, or the VFS) sends a scan, a range or a many-row join to a copy
    (``too_many_pages``), and the VFS answers the rest, stopped for a copy when the statement
    is still reading after its budget.
    """
    from .restore import point_args

    if not sql.strip():
        raise BackupError("give the SQL to run, e.g. inv backup.query \"select count(*) from t\"", code=EXIT_CONFIG)
    if via not in VIA:
        raise BackupError(f"--via {via!r} is not one of {', '.join(VIA)}", code=EXIT_CONFIG)
    screen(sql)  # before any request to the replica: a write or two statements cost nothing
    reason = missing() if via != COPY else None
    if reason:
        raise BackupError(reason, code=EXIT_CONFIG)
    # chora-backup's own listing where it can open the replica (one LIST per 1,000 files;
    # litestream's asks once per level); requests are counted for S3 replicas only
    files = db.replica.relist() if db.replica.has_store else db.replica.files()
    listed = Requests(lists=_pages(len(files)))
    args = point_args(files, db.path, timestamp, txid, lambda: workspace.state)  # restore's window and its errors
    if txid is not None:
        # The VFS travels by time: the moment the file ending at that txid was written
        # (listed to the second, so the end of that second).
        written = _first_written(files, txid)
        if written is None:
            raise BackupError(f"--txid {txid:016x} is not the end of any file in the replica: give a txid "
                              "'inv backup.snapshots' or 'inv backup.restore --dry-run' names, or --timestamp")
        when = written + timedelta(milliseconds=999)
    elif timestamp is not None:
        when = timestamp
    else:
        # The latest state, pinned: while no time is set the VFS polls the replica for new
        # files every second (two LISTs), for as long as the query runs; pinned, a one-shot
        # query's requests are bounded. A time past any file's, not the newest listed one's:
        # the VFS compares the times litestream's writer stamped, on its own clock.
        when = LATEST
    copy = _Copy(_kept_copy(workspace.settings, db, files, args), _restore_requests(files, args))
    planned = plan_here(db.path, sql) if via == AUTO else None
    if first_choice(via, copy.kept is not None and copy.kept.is_file(), copy.restore.bytes) == COPY \
            or (planned is not None and too_many_pages(planned)):
        return _from_copy(workspace, db, sql, args, files, copy, listed)
    # auto's budget for the statement: half of what the restore would take at RESTORE_RATE
    request = {"sql": sql, "time": _rfc3339_ms(when), "scan_to": via == AUTO and planned is None,
               "budget": 0.5 * copy.restore.bytes / RESTORE_RATE if via == AUTO else None}
    answer, asked = _ask(request, workspace, db, files)
    asked += listed
    if answer.get("scans") or answer.get("over_budget"):
        return _from_copy(workspace, db, sql, args, files, copy, asked)
    if txid is not None and answer["txid"] != f"{txid:016x}":
        raise BackupError(
            f"the VFS shows the replica by time, and txid {txid:016x} shares its second with later "
            f"changes (it shows txid {answer['txid']}): 'inv backup.restore --txid {txid:016x} --output "
            "PATH' gives that txid exactly"
        )
    # The VFS names the time of the newest file it read (or the time it was set to), which a
    # level-1 compaction rewrites later: the point's own time is that of the first file that
    # reached its txid (listed again when that file came after the listing).
    written = _time_of(files, str(answer["txid"]))
    if not written and db.replica.has_store:
        files = db.replica.relist()
        asked += Requests(lists=_pages(len(files)))
        written = _time_of(files, str(answer["txid"]))
    return Answer(db.name, answer["columns"], answer["rows"], answer["txid"], written or answer["time"],
                  requests=asked if db.entry.replica_type == "s3" else None)


# auto's bounds, so a query takes little more than a restore plus the statement on the copy
# (bench/query_cost.py). A restore is guessed at 100 MB/s. Under COPY_UNDER bytes to
# download, a restore costs no more than the VFS's set-up (it plans twice and reads each
# file's page index and header: 0.8 s on the local S3 server, where 128 MB restore in
# 1.9 s): auto restores a copy straight away. Above it, a statement through the VFS gets
# half the guessed restore time (at least MIN_STATEMENT: a point lookup's few pages, each a
# ranged GET of up to 250 ms on the local S3 server) before it is stopped and a copy answers.
RESTORE_RATE = 100e6
COPY_UNDER = 128 * 2**20
MIN_STATEMENT = 1.0


def first_choice(via: str, kept: bool, download: int) -> str:
    """VFS or COPY, before anything is asked of the VFS: ``kept``, a copy of the point is
    kept (it answers at local speed); ``download``, the bytes a restore of it fetches."""
    if via != AUTO:
        return via
    return COPY if kept or download < COPY_UNDER else VFS


def plan_here(db: Path, sql: str) -> list[str] | None:
    """The statement's query plan from the database on this machine (its schema, read-only,
    under the same authorizer; no row is read), which spares the VFS's set-up when the plan
    sends the query to a copy. None when there is no such database or it cannot plan it
    (a table it does not have yet): then the VFS is asked."""
    import sqlite3

    if not db.is_file():
        return None
    try:
        # immutable: no lock, no -wal or -shm made (a plan needs only the schema; one in the
        # WAL alone is not seen, and then the VFS plans it)
        con = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error:
        return None
    try:
        con.set_authorizer(authorizer(sqlite3))
        return [str(row[-1]) for row in con.execute(f"EXPLAIN QUERY PLAN {sql}")]
    except sqlite3.Error:
        return None
    finally:
        con.close()


def _pages(count: int) -> int:
    """LISTs of a listing of ``count`` files: S3 answers 1,000 keys a page."""
    return max(1, -(-count // 1000))


def copies(settings: Any) -> Path:
    """Where local copies for queries are kept: the state dir, 0700, one per database."""
    return settings.state_dir / "query"


class _Copy(NamedTuple):
    """A local copy of the point: where it is kept (None: not kept, a point in the past), and
    what a restore of it asks of the replica."""

    kept: Path | None
    restore: Requests


def _from_copy(workspace: Any, db: Any, sql: str, args: list[str], files: list[LtxFile], copy: _Copy,
               asked: Requests) -> Answer:
    """Restore the point to a local copy (or reuse the one kept for the latest state while the
    replica has not moved on) and ask it, read-only, with the same screen and authorizer."""
    import shutil
    import tempfile

    from .files import private_dir

    folder = private_dir(copies(workspace.settings))
    kept = copy.kept
    work = None if kept is not None and kept.is_file() else Path(tempfile.mkdtemp(prefix="restore-", dir=folder))
    try:
        if work is None:
            path, txid = kept, kept.stem.rpartition("-")[2]
        else:
            path = work / "copy.db"
            # No timeout: a download of the whole database takes as long as its size and the link need.
            txid = str(db.replica.json("restore", "-o", str(path), *args, timeout=None).get("txid") or "")
            asked += copy.restore
            if kept is not None and txid:
                for old in folder.glob(f"{kept.stem.rpartition('-')[0]}-*.db"):  # one kept copy a database
                    with contextlib.suppress(OSError):  # (on Windows, one another query has open)
                        old.unlink()
                kept = kept.with_name(f"{kept.stem.rpartition('-')[0]}-{txid}.db")  # what it holds
                path.chmod(0o600)  # a copy of the data: as private as the database's own replica
                os.replace(path, kept)
                path = kept
        answer = _answer_local(path, sql)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return Answer(db.name, answer["columns"], answer["rows"], txid, _time_of(files, txid), via=COPY,
                  requests=asked if db.entry.replica_type == "s3" else None)


def _kept_copy(settings: Any, db: Any, files: list[LtxFile], args: list[str]) -> Path | None:
    """Where the copy of the latest state is kept, named by the database and the txid it
    holds (None for a point in the past: such copies are not kept)."""
    import hashlib

    latest = plan(files).max_txid if not args else None
    if latest is None:
        return None
    key = hashlib.sha256(f"{db.path}\n{db.entry.replica}".encode("utf-8")).hexdigest()[:16]
    return copies(settings) / f"{key}-{latest:016x}.db"


def _restore_requests(files: list[LtxFile], args: list[str]) -> Requests:
    """What ``litestream restore`` asks of the replica (cmd/litestream/restore.go, replica.go).
    At a txid it plans once. Otherwise it plans twice (once to name the txid, once to
    restore) and first compares the replica with an old v0.3 one: a LIST of generations and
    one of each level. A plan at a time HEADs every file for the time stamped on it. Then it
    GETs each file of its plan whole."""
    at_txid = args[:1] == ["-txid"]
    if at_txid:
        upto = int(args[1], 16)
        chain = plan(f for f in files if f.max_txid <= upto).files
    elif args[:1] == ["-timestamp"]:
        from .timeparse import parse

        at = parse(args[1])
        chain = plan(f for f in files if f.timestamp < at).files
    else:
        chain = plan(files).files
    plans = 1 if at_txid else 2
    lists = plans * LISTS_PER_PLAN + (0 if at_txid else 1 + LISTS_PER_PLAN)
    if at_txid and chain and len(chain) == 1 and chain[0].max_txid == upto:
        lists = 1  # the snapshot reaches the txid: litestream plans no further than its level
    heads = plans * len(files) if args[:1] == ["-timestamp"] else 0
    return Requests(lists, len(chain), heads, sum(f.size for f in chain))


def _first_written(files: list[Any], txid: int) -> datetime | None:
    """When the first file that reached ``txid`` was written (None: no file ends there)."""
    return min((f.timestamp for f in files if f.max_txid == txid), default=None)


def _time_of(files: list[Any], txid: str) -> str:
    """The time of the point ``txid``: when the first file that reached it was written, so a
    compaction that later merges it into a level-1 file does not move it (while litestream
    keeps that first file: an hour at the generated l0-retention)."""
    try:
        written = _first_written(files, int(txid, 16))
    except ValueError:
        return ""
    return iso_z(written) if written else ""


def authorizer(lib: Any) -> Any:
    """The one rule, for the VFS's connection (``lib``: apsw) and a local copy's (sqlite3),
    which name SQLite's action codes alike: a statement may read tables, call functions and
    read pragmas, nothing else."""
    allowed = {lib.SQLITE_SELECT, lib.SQLITE_READ, lib.SQLITE_FUNCTION, lib.SQLITE_RECURSIVE}

    def authorize(action: int, arg1: Any, arg2: Any, *_: Any) -> int:
        if action in allowed:
            return lib.SQLITE_OK
        if action == lib.SQLITE_PRAGMA and (arg2 is None or str(arg1).lower() in READING_PRAGMAS):
            return lib.SQLITE_OK  # a pragma read, or one that takes a name to describe
        return lib.SQLITE_DENY

    return authorize


def _answer_local(path: Path, sql: str) -> dict[str, Any]:
    """``sql`` asked of a local copy, read-only, one statement, the same authorizer's rules."""
    import sqlite3

    con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    con.set_authorizer(authorizer(sqlite3))
    try:
        cursor = con.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        rows = [[_json_value(v) for v in row] for row in cursor]
    except sqlite3.ProgrammingError as exc:
        raise BackupError("one statement at a time: run each on its own" if "one statement" in str(exc)
                          else f"SQL: {exc}") from None
    except sqlite3.DatabaseError as exc:
        if "not authorized" in str(exc):
            raise BackupError(f"{READ_ONLY} ({exc})") from None
        raise BackupError(f"SQL: {exc}") from None
    finally:
        con.close()
    return {"columns": columns, "rows": rows}


def _rfc3339_ms(when: datetime) -> str:
    """RFC 3339 in UTC to the microsecond, as litestream_set_time reads it."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ask(request: dict[str, Any], workspace: Any, db: Any, files: list[LtxFile]) -> tuple[dict[str, Any], Requests]:
    """Ask the VFS child; count what it asked of an S3 replica from the requests it saw."""
    settings = workspace.settings
    # litestream's environment, without the VFS's own switches a user may have set
    # (hydration would download the whole database unasked, write support would write)
    environ = {name: value for name, value in workspace.litestream.environment().items()
               if not name.startswith("LITESTREAM_") or name in VFS_KEEPS}
    environ["LITESTREAM_REPLICA_URL"] = replica_url(db.entry)
    if db.entry.replica_type == "s3":
        environ["LITESTREAM_S3_DEBUG"] = "request"  # read by the child, never passed on (see _Seen)
    try:
        proc = child.run(
            # -I: the workspace's folder on sys.path must not decide which backup.query runs.
            [sys.executable, "-I", "-m", "backup.query"], QUERY_TIMEOUT, what="the query",
            input=json.dumps(request), env=environ,
        )
    except child.ChildTimeout as exc:
        raise BackupError(f"{exc.message} (it was stopped): narrow it with WHERE or LIMIT, or "
                          "restore a copy with 'inv backup.restore --output PATH' and query that") from None
    try:
        answer = json.loads(proc.stdout or "null")
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        last = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise BackupError(settings.mask(f"the query process failed (exit {proc.returncode}): {last[0]}"))
    if "error" in answer:
        raise BackupError(settings.mask(_explain(answer)))
    return answer, _requests_of(answer.get("requests") or [], files)


VFS_KEEPS = frozenset({"LITESTREAM_ACCESS_KEY_ID", "LITESTREAM_SECRET_ACCESS_KEY"})


def _requests_of(seen: list[list[Any]], files: list[LtxFile]) -> Requests:
    """The child's requests ([kind, key, first byte, last byte]) as counts; a GET's bytes from
    its range (open-ended: to the end of the object, whose size the listing gives)."""
    from .store import ltx_key

    sizes = {ltx_key(f, "s3"): f.size for f in files}
    lists = gets = heads = downloaded = 0
    for kind, key, first, last in seen:
        if kind == "list":
            lists += 1
        elif kind == "head":
            heads += 1
        else:
            gets += 1
            end = last if last is not None else sizes.get(_key_tail(key), 0) - 1
            downloaded += max(0, end - (first or 0) + 1)
    return Requests(lists, gets, heads, downloaded)


def _key_tail(key: str) -> str:
    """How an object key ends: the part ``store.ltx_key`` names."""
    return "/".join(key.rsplit("/", 2)[-2:])


def _explain(answer: dict[str, Any]) -> str:
    kind, message = answer.get("error"), str(answer.get("message", ""))
    if kind == "read-only":
        return f"{READ_ONLY} ({message})"
    if kind == "several":
        return "one statement at a time: run each on its own"
    if kind == "vfs":
        return f"litestream's VFS could not read the replica: {message}"
    return f"SQL: {message}"


# -- the child -----------------------------------------------------------------


def _child() -> int:
    """Read the request on stdin, answer on the original stdout (the VFS logs to fd 1)."""
    answer_to = os.fdopen(os.dup(1), "w", encoding="utf-8")
    seen = _Seen() if os.environ.get("LITESTREAM_S3_DEBUG") else None
    if seen is None:
        os.dup2(2, 1)
    try:
        request = json.load(sys.stdin)
        try:
            result = _answer(request["sql"], request.get("time"), bool(request.get("scan_to")),
                             request.get("budget"))
        except _Refused as exc:
            result = {"error": exc.kind, "message": str(exc)}
    finally:
        requests = seen.close() if seen is not None else None  # the VFS's connections are closed
    if requests is not None:
        result["requests"] = requests
    json.dump(result, answer_to)
    answer_to.close()
    return 0


class _Seen:
    """The S3 requests the VFS makes, read from the AWS SDK's dump of each one on this
    process's stderr (LITESTREAM_S3_DEBUG=request). A dump is consumed here and never passed
    on (its Authorization line names the access key id); every other line, the VFS's own
    log (fd 1) included, goes on to the real stderr."""

    def __init__(self) -> None:
        self.requests: list[list[Any]] = []
        self._out = os.dup(2)
        read, self._write = os.pipe()
        os.dup2(self._write, 2)
        os.dup2(self._write, 1)
        sys.stderr = os.fdopen(os.dup(self._out), "w", encoding="utf-8")  # Python's own: not via the pipe
        self._thread = threading.Thread(target=self._read, args=(read,), daemon=True)
        self._thread.start()

    def _read(self, fd: int) -> None:
        dump: list[str] | None = None
        with os.fdopen(fd, "rb") as stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("SDK ") and line.endswith(" Request"):
                    if dump:
                        self._note(dump)
                    dump = []
                elif dump is not None:
                    if line:
                        dump.append(line)
                    else:  # the blank line after a request's headers
                        self._note(dump)
                        dump = None
                else:
                    os.write(self._out, raw)
        if dump:
            self._note(dump)

    def _note(self, dump: list[str]) -> None:
        method, _, rest = dump[0].partition(" ")
        path, _, query = rest.split(" ")[0].partition("?")
        kind = "head" if method == "HEAD" else "list" if "list-type=" in query else "get" if method == "GET" else ""
        if not kind:
            return
        first = last = None
        for header in dump[1:]:
            name, _, value = header.partition(":")
            span = re.match(r"\s*bytes=(\d+)-(\d*)", value) if name.strip().lower() == "range" else None
            if span:
                first, last = int(span[1]), int(span[2]) if span[2] else None
        self.requests.append([kind, unquote(path), first, last])

    def close(self) -> list[list[Any]]:
        """Every request seen, once the VFS is done: its stderr and stdout back as they were."""
        os.dup2(self._out, 2)
        os.dup2(self._out, 1)
        os.close(self._write)
        self._thread.join(timeout=10)
        return self.requests


class _Refused(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def scans(detail: str) -> bool:
    """Does a line of EXPLAIN QUERY PLAN read a table page by page through the VFS: a scan
    (``SCAN t``, in an index's order or not), or a range (``SEARCH t USING INTEGER PRIMARY
    KEY (rowid>?)``, bounded or not, with no equality to narrow it)? Each page is a request
    of its own (about four a second on the local S3 server), so only lookups by equality
    stay with the VFS."""
    words = detail.split()
    if words[:1] == ["SEARCH"]:
        found = re.search(r"\(([^()]*)\)\s*$", detail)
        constraint = (found[1] if found else "").replace(">=", ">").replace("<=", "<")
        return "=" not in constraint and (">" in constraint or "<" in constraint)
    return words[:1] == ["SCAN"] and words[1:3] != ["CONSTANT", "ROW"] and "VIRTUAL TABLE" not in detail


def too_many_pages(details: list[str]) -> bool:
    """Would this plan read many pages through the VFS (a scan, a range, a many-row join)?
    Its own subqueries (``CO-ROUTINE c``) and virtual tables (``json_each``) are not the
    replica's tables: they are left out."""
    own = frozenset(d.split()[1] for d in details if d.split()[:1] in (["CO-ROUTINE"], ["MATERIALIZE"])
                    and len(d.split()) > 1)
    tables = [d for d in details if d.split()[1:2] and d.split()[1] not in own and "VIRTUAL TABLE" not in d]
    return any(scans(d) for d in tables) or joins_many(tables)


def joins_many(details: list[str]) -> bool:
    """Does a plan look rows up in one table for each of many rows of another (a join whose
    outer loop is not a lookup of one row by its key)? Through the VFS each lookup is a page
    fetched, one request at a time."""
    tables = [d for d in details if d.split()[:1] in (["SCAN"], ["SEARCH"]) and "CONSTANT ROW" not in d]
    one_row = re.compile(r"USING (INTEGER )?PRIMARY KEY \((rowid|[^()]*)=\?\)\s*$")
    return len(tables) > 1 and not one_row.search(tables[0])


def _answer(sql: str, when: str | None, scan_to: bool = False, budget: float | None = None) -> dict[str, Any]:
    import apsw
    import litestream_vfs

    try:
        loader = apsw.Connection(":memory:")
        loader.enable_load_extension(True)
        loader.load_extension(litestream_vfs.loadable_path())
        con = apsw.Connection("file:replica.db?vfs=litestream",
                              flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    except apsw.Error as exc:
        raise _Refused("vfs", str(exc)) from None
    try:
        return _ask_vfs(apsw, con, sql, when, scan_to, budget)
    finally:
        con.close()  # the VFS stops its polling and its requests before they are counted
        loader.close()


def _ask_vfs(apsw: Any, con: Any, sql: str, when: str | None, scan_to: bool, budget: float | None) -> dict[str, Any]:
    con.authorizer = authorizer(apsw)
    if scan_to:
        # The plan, from the schema as it is now, before the point is set: setting it plans
        # the replica a second time, which a scan answered from a copy never needs.
        try:
            details = [str(row[-1]) for row in con.execute(f"EXPLAIN QUERY PLAN {sql}")]
        except apsw.Error:
            details = []  # the statement itself says what is wrong, below
        if too_many_pages(details):
            return {"scans": True}
    try:
        if when:
            con.execute("SELECT litestream_set_time(?)", (when,)).fetchall()
        txid, time = con.execute("SELECT litestream_txid(), litestream_time()").fetchone()
    except apsw.Error as exc:
        raise _Refused("vfs", str(exc)) from None

    statements = 0

    def one_statement(_cursor: Any, _sql: str, _bindings: Any) -> bool:
        nonlocal statements
        statements += 1
        return statements == 1

    cursor = con.cursor()
    cursor.exec_trace = one_statement
    # Over its budget, the statement is interrupted: the parent takes a local copy instead.
    timer = threading.Timer(max(MIN_STATEMENT, budget), con.interrupt) if budget is not None else None
    try:
        if timer:
            timer.start()
        cursor.execute(sql)
        columns = [d[0] for d in cursor.get_description()] if statements else []
        rows = [[_json_value(v) for v in row] for row in cursor]
    except apsw.InterruptError:
        return {"over_budget": True, "txid": txid, "time": time}
    except apsw.ExecTraceAbort:
        raise _Refused("several", sql) from None
    except (apsw.AuthError, apsw.ReadOnlyError) as exc:
        raise _Refused("read-only", str(exc)) from None
    except apsw.ExecutionCompleteError:
        columns, rows = [], []
    except apsw.Error as exc:
        raise _Refused("sql", str(exc)) from None
    finally:
        if timer:
            timer.cancel()
    if statements > 1:
        raise _Refused("several", sql)
    return {"columns": columns, "rows": rows, "txid": txid, "time": time}


if __name__ == "__main__":
    sys.exit(_child())
