"""litestream's local state for one database: the folder it keeps beside it
(``.<name>-litestream``), read and cleared here only.

Its level-0 folder holds one LTX file per captured transaction range, named by txid:
the newest is what ``litestream status`` reports as the local txid, the file times say
when litestream captured, and the files past the replica's txid are what it has not
uploaded yet. chora-backup's own record of the database (``owner``) lives in the same
folder and survives a clear.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import BackupError
from .files import mtime, private_dir, write_private


def folder(db: Path) -> Path:
    """Where litestream keeps its local state (LTX files) for database ``db``."""
    return db.parent / f".{db.name}-litestream"


def _level_0(db: Path) -> Path:
    return folder(db) / "ltx" / "0"


def _span(name: str) -> tuple[int, int] | None:
    """The txid range an LTX file name holds (``<min>-<max>.ltx``), else None."""
    low, _, high = name.removesuffix(".ltx").partition("-")
    try:
        first, last = int(low, 16), int(high, 16)
    except ValueError:
        return None  # a .tmp file being written, or not an LTX file
    return (first, last) if name.endswith(".ltx") and first <= last and last else None


def newest_l0(db: Path) -> tuple[int, Path] | None:
    """litestream's newest local level-0 file for ``db`` and its txid, or None before it
    captured anything."""
    where = _level_0(db)
    try:
        names = os.listdir(where)
    except OSError:
        return None
    newest: tuple[int, Path] | None = None
    for name in names:
        span = _span(name)
        if span and (newest is None or span[1] > newest[0]):
            newest = (span[1], where / name)
    return newest


def l0_file(db: Path, txid: int) -> Path | None:
    """litestream's local level-0 file that ends at ``txid``, or None when it has none (not
    captured here, or removed by its retention)."""
    where = _level_0(db)
    try:
        names = os.listdir(where)
    except OSError:
        return None
    return next((where / name for name in names if (span := _span(name)) and span[1] == txid), None)


def local_txid(db: Path) -> int | None:
    """The newest txid litestream has captured locally (as ``litestream status`` reads it),
    or None before it saw the database."""
    newest = newest_l0(db)
    return newest[0] if newest else None


def captured_at(db: Path) -> float:
    """When litestream last captured a change of ``db`` (0.0: never)."""
    return max((mtime(p) for p in _level_0(db).glob("*.ltx")), default=0.0)


def unsynced_since(db: Path, replica_txid: int) -> float | None:
    """When the oldest local change missing from the replica (past ``replica_txid``) was
    captured, if any is."""
    times = [mtime(ltx) for ltx in _level_0(db).glob("*.ltx")
             if (span := _span(ltx.name)) and span[0] > replica_txid]
    times = [t for t in times if t]  # a file litestream's retention removed meanwhile: not a time
    return min(times) if times else None


def exists(db: Path) -> bool:
    """Has litestream replicated this database file before (an LTX file at any level)?"""
    ltx = folder(db) / "ltx"
    return ltx.is_dir() and any(ltx.rglob("*.ltx"))


def clear(db: Path, keep: tuple[str, ...] = ()) -> Path | None:
    """Remove litestream's local state for ``db``, keeping the files named in ``keep``; the
    folder cleared, or None when litestream had none. litestream then starts a new history
    whose first file holds the whole database."""
    where = folder(db)
    if not exists(db):
        return None
    kept = {}
    for name in keep:
        try:
            kept[name] = (where / name).read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BackupError(f"cannot read {where / name}: {exc.strerror}") from None
    try:
        shutil.rmtree(where)
    except OSError as exc:
        raise BackupError(f"cannot clear litestream's local state {where}: {exc.strerror}") from None
    if kept:
        private_dir(where)
        for name, data in kept.items():
            write_private(where / name, data)
    return where
