"""The restore smoke test: restore the latest backup and compare it with the live database.

Used by ``inv backup.verify`` and the ``backup-restore-smoke`` pre-commit hook.
Everything it creates lives in one temp folder, removed on success, failure
and Ctrl-C alike.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import daemon
from .config import Settings
from .errors import NOTHING_TO_RESTORE, SNAPSHOT_FIX, BackupError
from .litestream import Litestream
from .restore import configured_database, connect_readonly, integrity_check, nothing_yet
from .status import local_txids, unsynced_since
from .status import max_age as default_max_age


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
    local_txid: str | None = None
    replica_txid: str | None = None
    lag_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)


def _schema_and_counts(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    con = connect_readonly(path)
    try:
        rows = con.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
            "AND name NOT LIKE '_litestream%' ORDER BY type, name"
        ).fetchall()
        schema = {f"{kind} {name}": sql or "" for kind, name, sql in rows}
        counts = {
            name: con.execute(f'SELECT count(*) FROM "{name.replace(chr(34), chr(34) * 2)}"').fetchone()[0]
            for kind, name, _ in rows
            if kind == "table"
        }
    finally:
        con.close()
    return schema, counts


def _sync(settings: Settings, litestream: Litestream, db: Path, socket: Path | None) -> str:
    """Make the replica hold the live state before comparing; say how."""
    state = daemon.check(settings)
    if state.running:
        if not socket:
            return "daemon running without a control socket: compared as replicated so far"
        litestream.run("sync", "-wait", "-json", "-socket", str(socket), str(db), timeout=120)
        return f"asked the daemon (pid {state.pid}) to sync"
    with daemon.exclusive(settings):
        if daemon.check(settings).running:  # one started meanwhile: it syncs on its own
            return "a daemon started meanwhile"
        litestream.run("replicate", "-once", timeout=300)
    return "no daemon running: synced once with 'litestream replicate -once'"


def verify(settings: Settings, litestream: Litestream, max_age: float | None = None) -> VerifyResult:
    if not settings.config_path.exists():
        return VerifyResult(configured=False)
    config, entry = configured_database(settings)
    result = VerifyResult(configured=True)
    db = entry.path
    if not db.is_file():
        result.checks.append(Check(
            "database", False, f"{db} does not exist: check BACKUP_DB, or restore it with 'inv backup.restore'"
        ))
        return result
    limit = default_max_age(entry.sync_interval) if max_age is None else max_age

    try:
        how = _sync(settings, litestream, db, config.socket)
        result.checks.append(Check("sync", True, how))
    except BackupError as exc:
        result.checks.append(Check("sync", False, f"could not sync: {exc.message}"))
        return result

    folder = Path(tempfile.mkdtemp(prefix="chora-verify-"))
    try:
        restored = folder / db.name
        try:
            summary = litestream.json("restore", "-o", str(restored), str(db), timeout=None)
        except BackupError as exc:
            # An empty replica: whether to start a daemon depends on whether one runs.
            why = nothing_yet(db, daemon.check(settings)) if exc.message == NOTHING_TO_RESTORE else exc.message
            result.checks.append(Check("restore", False, f"restore failed: {why}"))
            return result
        restored_txid = int(summary["txid"], 16) if summary.get("txid") else 0
        result.replica_txid = f"{restored_txid:016x}"
        result.checks.append(Check("restore", True, f"restored txid {result.replica_txid} from {entry.replica}"))

        verdict = integrity_check(restored)
        result.checks.append(Check(
            "integrity", verdict == "ok",
            f"PRAGMA integrity_check: {verdict}" + ("" if verdict == "ok" else f"; the backup is damaged: {SNAPSHOT_FIX}"),
        ))
        if verdict != "ok":
            return result

        local = local_txids(litestream).get(str(db))
        result.local_txid = f"{local:016x}" if local is not None else None
        behind = local is not None and local > restored_txid
        if behind:
            since = unsynced_since(db, restored_txid)
            result.lag_seconds = round(time.time() - since, 1) if since else None
        else:
            result.lag_seconds = 0.0

        live_schema, live_counts = _schema_and_counts(db)
        copy_schema, copy_counts = _schema_and_counts(restored)
        same_schema = live_schema == copy_schema
        differing = sorted(
            t for t in set(live_counts) | set(copy_counts) if live_counts.get(t) != copy_counts.get(t)
        )
        if behind:
            # The live database moved on: differences are lag, judged below.
            result.checks.append(Check("compare", True, "live database is ahead of the replica; judged by its lag"))
        else:
            result.checks.append(Check(
                "schema", same_schema,
                "same schema" if same_schema else "schema differs between the live database and the backup"
                + _MISMATCH_FIX.format(replica=entry.replica),
            ))
            detail = (
                f"row counts equal in {len(live_counts)} table(s)"
                if not differing
                else "row counts differ in " + ", ".join(
                    f"{t} (live {live_counts.get(t)}, backup {copy_counts.get(t)})" for t in differing
                ) + _MISMATCH_FIX.format(replica=entry.replica)
            )
            result.checks.append(Check("rows", not differing, detail))

        if result.lag_seconds is None:
            result.checks.append(Check(
                "lag", False, f"the replica is missing local changes of unknown age: {_LAG_FIX}"
            ))
        else:
            ok = result.lag_seconds <= limit
            result.checks.append(Check(
                "lag", ok,
                f"replica {'holds the live state' if not behind else f'behind by {result.lag_seconds:g}s'}"
                + ("" if ok else f", more than --max-age {limit:g}s: {_LAG_FIX}"),
            ))
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)
