"""A database's replica, for one command: checked once, listed once.

``Replica`` answers what every command asks of a replica — its files (one
``ltx -level all`` listing, parsed into ``LtxFile`` and kept), the restore
chain and any hole in it, the restorable window, the newest txid, the store
that holds chora-backup's own records — and checks credentials and the
endpoint before the first request, so a command without R2 keys never signs
requests with whatever AWS profile the shell holds.

The files, the restore chain and the window are worked out in ``ltx``.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import Settings, require_r2
from .errors import BackupError
from .litestream import Litestream, check_endpoint
from .ltconfig import Entry
from .ltx import SNAPSHOT_LEVEL, LtxFile, Plan, Window, parse_files, plan, window
from .store import STORE_TYPES, Store, open_store
from .timeparse import iso_z

log = logging.getLogger("backup.replica")

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

            self.check()
            self._store = open_store(self.entry, self.settings)
        return self._store

    @property
    def has_store(self) -> bool:

        return self.kind in STORE_TYPES
