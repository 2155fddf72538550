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

import json
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from . import child
from .errors import EXIT_CONFIG, BackupError
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

    def as_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows, "txid": self.txid, "timestamp": self.timestamp,
                "via": self.via}

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
        return lines + self.notes


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
VIA = (VFS, COPY, AUTO)


def run(workspace: Any, db: Any, sql: str, timestamp: datetime | None = None, txid: int | None = None,
        via: str = AUTO) -> Answer:
    """Ask ``sql`` of ``db``'s replica, as it was at ``timestamp`` or ``txid`` (default: latest).

    ``via``: VFS reads the replica in place, page by page (a point lookup fetches a few
    pages); COPY restores it to a local copy first (kept in the state dir for the next query
    while the replica has not moved on) and asks that; AUTO asks the VFS for the query plan
    (a few pages) and takes the copy when the plan scans a table, which through the VFS
    would fetch the table page by page.
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
    files = db.replica.files()
    args = point_args(files, db.path, timestamp, txid, lambda: workspace.state)  # restore's window and its errors
    when = None
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
    if via == COPY:
        return _from_copy(workspace, db, sql, args, files)
    request = {"sql": sql, "time": _rfc3339_ms(when) if when else None, "scan_to": via == AUTO}
    environ = {**workspace.litestream.environment(), "LITESTREAM_REPLICA_URL": replica_url(db.entry)}
    answer = _ask(request, environ, workspace.settings)
    if answer.get("scans"):
        return _from_copy(workspace, db, sql, args, files)
    if txid is not None and answer["txid"] != f"{txid:016x}":
        raise BackupError(
            f"the VFS shows the replica by time, and txid {txid:016x} shares its second with later "
            f"changes (it shows txid {answer['txid']}): 'inv backup.restore --txid {txid:016x} --output "
            "PATH' gives that txid exactly"
        )
    # The VFS names the time of the newest file it read, which a level-1 compaction rewrites
    # later: the point's own time is that of the first file that reached its txid.
    when_written = _time_of(files, str(answer["txid"])) or answer["time"]
    return Answer(db.name, answer["columns"], answer["rows"], answer["txid"], when_written)


def copies(settings: Any) -> Path:
    """Where local copies for queries are kept: the state dir, 0700, one per database."""
    return settings.state_dir / "query"


def _from_copy(workspace: Any, db: Any, sql: str, args: list[str], files: list[Any]) -> Answer:
    """Restore the point to a local copy (or reuse the one kept for the latest state while the
    replica has not moved on) and ask it, read-only, with the same screen and authorizer."""
    import hashlib
    import shutil
    import tempfile

    from .files import private_dir
    from .ltx import plan

    folder = private_dir(copies(workspace.settings))
    key = hashlib.sha256(str(db.path).encode("utf-8")).hexdigest()[:16]
    latest = plan(files).max_txid if not args else None
    kept = folder / f"{key}-{latest:016x}.db" if latest is not None else None
    work = None if kept is not None and kept.is_file() else Path(tempfile.mkdtemp(prefix="restore-", dir=folder))
    try:
        if work is None:
            path, txid = kept, f"{latest:016x}"
        else:
            path = work / "copy.db"
            # No timeout: a download of the whole database takes as long as its size and the link need.
            txid = str(db.replica.json("restore", "-o", str(path), *args, timeout=None).get("txid") or "")
            if kept is not None:
                for old in folder.glob(f"{key}-*.db"):  # one kept copy a database: bounded
                    old.unlink(missing_ok=True)
                os.replace(path, kept)
                path = kept
        answer = _answer_local(path, sql)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return Answer(db.name, answer["columns"], answer["rows"], txid, _time_of(files, txid), via=COPY)


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


def _ask(request: dict[str, Any], environ: dict[str, str], settings: Any) -> dict[str, Any]:
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
    return answer


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
    os.dup2(2, 1)
    request = json.load(sys.stdin)
    try:
        result = _answer(request["sql"], request.get("time"), bool(request.get("scan_to")))
    except _Refused as exc:
        result = {"error": exc.kind, "message": str(exc)}
    json.dump(result, answer_to)
    answer_to.close()
    return 0


class _Refused(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def scans(detail: str) -> bool:
    """Does a line of EXPLAIN QUERY PLAN read a whole table (``SCAN t``, not through an index
    that narrows it)? Through the VFS that fetches the table page by page."""
    words = detail.split()
    return words[:1] == ["SCAN"] and words[1:3] != ["CONSTANT", "ROW"] and "USING INDEX" not in detail \
        and "USING PRIMARY KEY" not in detail and "USING INTEGER PRIMARY KEY" not in detail


def _answer(sql: str, when: str | None, scan_to: bool = False) -> dict[str, Any]:
    import apsw
    import litestream_vfs

    try:
        loader = apsw.Connection(":memory:")
        loader.enable_load_extension(True)
        loader.load_extension(litestream_vfs.loadable_path())
        con = apsw.Connection("file:replica.db?vfs=litestream",
                              flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        if when:
            con.execute("SELECT litestream_set_time(?)", (when,)).fetchall()
        txid, time = con.execute("SELECT litestream_txid(), litestream_time()").fetchone()
    except apsw.Error as exc:
        raise _Refused("vfs", str(exc)) from None

    con.authorizer = authorizer(apsw)
    statements = 0

    def one_statement(_cursor: Any, _sql: str, _bindings: Any) -> bool:
        nonlocal statements
        statements += 1
        return statements == 1

    if scan_to:
        try:
            details = [str(row[-1]) for row in con.execute(f"EXPLAIN QUERY PLAN {sql}")]
        except apsw.Error:
            details = []  # the statement itself says what is wrong, below
        if any(scans(d) for d in details):
            return {"scans": True, "txid": txid, "time": time}

    cursor = con.cursor()
    cursor.exec_trace = one_statement
    try:
        cursor.execute(sql)
        columns = [d[0] for d in cursor.get_description()] if statements else []
        rows = [[_json_value(v) for v in row] for row in cursor]
    except apsw.ExecTraceAbort:
        raise _Refused("several", sql) from None
    except (apsw.AuthError, apsw.ReadOnlyError) as exc:
        raise _Refused("read-only", str(exc)) from None
    except apsw.ExecutionCompleteError:
        columns, rows = [], []
    except apsw.Error as exc:
        raise _Refused("sql", str(exc)) from None
    if statements > 1:
        raise _Refused("several", sql)
    return {"columns": columns, "rows": rows, "txid": txid, "time": time}


if __name__ == "__main__":
    sys.exit(_child())
