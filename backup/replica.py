"""A database's replica, for one command: checked once, listed once.

``Replica`` answers what every command asks of a replica — its files (one
``ltx -level all`` listing, parsed into ``LtxFile`` and kept), the restore
chain and any hole in it, the restorable window, the newest txid, the store
that holds chora-backup's own records — and checks credentials and the
endpoint before the first request, so a command without R2 keys never signs
requests with whatever AWS profile the shell holds.

The restore chain mirrors litestream's own planning (replica.go's
CalcRestorePlan), so a hole is named before litestream trips over it.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Settings, require_r2
from .errors import BackupError, hole_message, missing_txids
from .litestream import Litestream, check_endpoint
from .render import Entry
from .timeparse import from_litestream, iso_z

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("backup.replica")

SNAPSHOT_LEVEL = 9


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


def parse_files(raw: Iterable[dict[str, Any]]) -> list[LtxFile]:
    """``ltx -json`` elements as LtxFile: the one parser of litestream's listings."""
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


def listings_file(settings: Settings) -> Path:
    """What each replica's last listing in this workspace said (see Replica._remember)."""
    return settings.state_dir / "replica-listings.json"


def last_listing(settings: Settings, db: Path) -> dict[str, Any] | None:
    from .files import read_json

    found = read_json(listings_file(settings)).get(str(db))
    return found if isinstance(found, dict) else None


class Replica:
    """One database's replica, as the active litestream.yml names it, for one command.

    ``config`` is the file litestream reads for this database; for a database found
    by folder replication (which litestream's ``ltx``/``restore`` cannot look up by
    path) a one-database file is written for each call, privately, and removed after.
    """

    def __init__(self, settings: Settings, entry: Entry, litestream: Litestream,
                 config: Path, found: bool = False, remember: bool = True):
        self.settings = settings
        self.entry = entry
        self.litestream = litestream
        self._config = config
        self._found = found  # discovered in a folder entry's dir
        self._remember_listing = remember  # keep what a listing said, for status (see _remember)
        self._files: list[LtxFile] | BackupError | None = None
        self._checked: BackupError | bool = False
        self._store: Store | None = None

    @property
    def where(self) -> str:
        """For people: s3://bucket/prefix at endpoint, or a folder. Holds no secret."""
        return self.entry.replica

    @property
    def kind(self) -> str:
        return self.entry.replica_type

    def check(self) -> None:
        """Credentials present, endpoint reachable: asked once, the answer kept."""
        if self._checked is False:
            try:
                if self.kind == "s3":
                    require_r2(self.settings)
                check_endpoint(self.entry.endpoint)
                self._checked = True
            except BackupError as exc:
                self._checked = exc
        if isinstance(self._checked, BackupError):
            raise self._checked

    @contextlib.contextmanager
    def config(self) -> Iterator[Path]:
        """The litestream.yml to read this database's replica with."""
        if not self._found:
            yield self._config
            return
        from .files import private_dir, temp_beside

        folder = private_dir(self.settings.state_dir)
        path = temp_beside(folder / "litestream.database.yml", self.one_database_yaml())
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def one_database_yaml(self) -> bytes:
        """A litestream.yml naming this database and its replica alone (no credential)."""
        import yaml

        entry = self.entry
        if entry.replica_type == "s3":
            replica: dict[str, Any] = {"type": "s3", "bucket": entry.bucket, "path": entry.location,
                                       "endpoint": entry.endpoint, "region": entry.region or "auto"}
        elif entry.replica_type == "file":
            replica = {"type": "file", "path": entry.location}
        else:
            raise BackupError(
                f"{entry.path} is replicated by folder to a {entry.replica_type!r} replica, which "
                "chora-backup cannot read by itself: use an S3 or file replica"
            )
        replica["sync-interval"] = entry.sync_interval
        data = {"dbs": [{"path": str(entry.path), "replica": replica}]}
        return yaml.safe_dump(data, sort_keys=False).encode("utf-8")

    def json(self, command: str, *args: str, timeout: float | None = 120) -> Any:
        """Run a config-reading litestream command (ltx, restore) on this database."""
        self.check()
        with self.config() as config:
            return self.litestream.json(command, *args, str(self.entry.path), config=config, timeout=timeout)

    def files(self) -> list[LtxFile]:
        """Every LTX file of the replica, all levels: listed once per command."""
        if self._files is None:
            try:
                self._files = parse_files(self.json("ltx", "-level", "all") or [])
                if self._remember_listing:
                    self._remember(self._files)
            except BackupError as exc:
                self._files = exc  # asked again in this command: the same answer, not a second wait
        if isinstance(self._files, BackupError):
            raise self._files
        return self._files

    def _remember(self, files: list[LtxFile]) -> None:
        """Keep what this listing said, so status can tell it while a daemon runs, without
        listing the bucket again (a billed request on R2)."""
        from datetime import timezone

        from .files import update_json

        chain = plan(files)
        snapshots = [f.timestamp for f in files if f.level == SNAPSHOT_LEVEL]
        update_json(listings_file(self.settings), str(self.entry.path), {
            "listed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "replica": self.where,
            "newest_txid": f"{max(f.max_txid for f in files):016x}" if files else None,
            "newest_time": iso_z(max(f.timestamp for f in files)) if files else None,
            "latest_snapshot": iso_z(max(snapshots)) if snapshots else None,
            "restorable": chain.restorable,
            "hole": chain.hole.as_dict() if chain.hole else None,
        })

    def relist(self) -> list[LtxFile]:
        """List the replica now through chora-backup's own store (one LIST per 1,000 files;
        litestream's listing asks once per level) and remember it, as ``files`` does."""
        self.check()
        self._files = [LtxFile(level, low, high, size, modified)
                       for level, low, high, size, modified in self.store().ltx_entries()]
        if self._remember_listing:
            self._remember(self._files)
        return self._files

    def forget(self) -> None:
        """Drop the listing: this command has just changed the replica (a snapshot)."""
        self._files = None

    def plan(self) -> Plan:
        return plan(self.files())

    def window(self) -> Window | None:
        return window(self.files())

    def newest_txid(self) -> int | None:
        return max((f.max_txid for f in self.files()), default=None)

    def snapshots(self) -> list[LtxFile]:
        return sorted((f for f in self.files() if f.level == SNAPSHOT_LEVEL), key=lambda f: f.timestamp)

    def store(self) -> Store:
        """The bucket or folder, for chora-backup's own records (owner, repairs)."""
        if self._store is None:
            from .store import open_store  # boto3 only when a record is read or written

            self.check()
            self._store = open_store(self.entry, self.settings)
        return self._store

    @property
    def has_store(self) -> bool:
        from .store import STORE_TYPES

        return self.kind in STORE_TYPES
