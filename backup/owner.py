"""Who a replica belongs to: one database's history per replica, never two.

litestream cannot tell a foreign database from a restored one (both start
"behind the replica"), so two workspaces with the same settings would write
one history in turns, and a restore would return the other one's rows. Two
small records settle it:

- in the replica, ``chora-backup-owner.json``: the database *lineage* whose
  history it holds, and the *instance* (one database file) that writes it now,
  with the host, path and config of that writer, for people;
- beside the database, in litestream's own state folder (it moves with the
  database, and a restore moves it aside with the old file): the lineage and
  instance of this database file.

Every replicating start claims each replica first: an empty replica is
claimed with a conditional create (two starts at once: one wins); a replica of
another lineage is refused with its owner and the fix; a database of the same
lineage continues (a moved workspace), and takes over from another instance
(a new machine) only while that instance has written nothing since this
database was restored from it. Replicas written before these records existed
are adopted by the database that has litestream state for them.
"""
from __future__ import annotations

import json
import socket
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import localstate
from .config import Settings
from .errors import BackupError
from .files import private_dir, same_path, write_private
from .litestream import replicators
from .ltconfig import Entry
from .store import Store, open_store

RECORD = "chora-backup-owner.json"
FORMAT = 1


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Owner:
    """The replica's record: whose history it holds, and who writes it now."""

    lineage: str
    instance: str
    host: str
    database: str
    config: str
    since: str  # when this instance began writing
    format: int = FORMAT

    def describe(self) -> str:
        return f"{self.database} on host {self.host}"


@dataclass(frozen=True)
class Local:
    """The database's record: which lineage and instance this file is."""

    lineage: str
    instance: str
    # Set by a restore: the writer and the replica's newest txid it restored from.
    restored_from: str | None = None
    replica_txid: int | None = None
    replica: str | None = None  # the replica it last claimed or was restored from
    format: int = FORMAT


def _parse(cls: type, data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        fields = json.loads(data.decode("utf-8"))
        return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})
    except (ValueError, TypeError, UnicodeDecodeError):
        return "damaged"


def _dump(record: Owner | Local) -> bytes:
    return (json.dumps(asdict(record), indent=2) + "\n").encode("utf-8")


def local_path(db: Path) -> Path:
    return localstate.folder(db) / RECORD


def read_local(db: Path) -> Local | None:
    try:
        data = local_path(db).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackupError(f"cannot read {local_path(db)}: {exc.strerror}") from None
    record = _parse(Local, data)
    return None if record == "damaged" else record


def write_local(db: Path, record: Local) -> None:
    path = local_path(db)
    private_dir(path.parent)
    write_private(path, _dump(record))


def reset_litestream_state(db: Path) -> Path | None:
    """Clear litestream's local state for ``db``, keeping who this database is; the folder
    cleared, or None when there was none. litestream then starts a new history whose first
    file holds the whole database: what a replica that holds nothing needs, since litestream
    otherwise uploads from txid 1 changes it keeps locally only from a later txid on."""
    return localstate.clear(db, keep=(RECORD,))


def read_owner(store: Store) -> Owner | None:
    record = _parse(Owner, store.read(RECORD))
    if record == "damaged":
        raise BackupError(
            f"{store.where}/{RECORD} is damaged: move it aside in the bucket or folder, "
            "then start again (the next start claims the replica anew)"
        )
    return record


def _fix(settings: Settings, entry: Entry) -> str:
    if entry.replica_type == "s3":
        return "set BACKUP_REPLICA_PATH to a prefix of its own"
    return "set BACKUP_LOCAL_DIR (or BACKUP_REPLICA_PATH) to a folder of its own"


def _writer_alive(owner: Owner) -> bool:
    """Does the recorded writer's litestream run on this host right now?"""
    return owner.host == socket.gethostname() and bool(replicators(owner.config))


def _same_instance(db: Path, local: Local) -> bool:
    """Is the database at ``db`` (still there) the very instance ``local`` describes?"""
    try:
        other = read_local(db) if db.exists() else None
    except BackupError:
        return False
    return other is not None and other.instance == local.instance


@dataclass(frozen=True)
class Claim:
    replica: str
    action: str  # "claimed", "adopted", "continued", "took-over", "reclaimed"
    previous: Owner | None = None
    restored: bool = False  # adopted: this database was restored from that very replica

    def describe(self) -> str | None:
        """A line worth printing, or None when nothing changed hands."""
        if self.action == "claimed":
            return f"claimed {self.replica} for this database"
        if self.action == "adopted" and self.restored:
            return (f"claimed {self.replica} for this database at this start (restored from it; "
                    "its history had no owner record yet)")
        if self.action == "adopted":
            return f"recorded this database as the owner of {self.replica} (written before owner records)"
        if self.action == "reclaimed" and self.previous:
            return (f"claimed {self.replica} for this database (the earlier claim by "
                    f"{self.previous.describe()} was never followed by replication)")
        if self.action == "took-over" and self.previous:
            return f"continuing {self.replica}, last written by {self.previous.describe()}"
        return None


class Ownership:
    """Claims of one database's replica, for one workspace command."""

    def __init__(self, settings: Settings, entry: Entry, store: Store | None = None,
                 replica_txid: Any = None):
        self.settings = settings
        self.entry = entry
        self.store = store or open_store(entry, settings)
        # How to learn the replica's newest txid (a listing); only a takeover asks.
        self._replica_txid = replica_txid

    def _me(self, local: Local) -> Owner:
        return Owner(
            lineage=local.lineage,
            instance=local.instance,
            host=socket.gethostname(),
            database=str(self.entry.path),
            config=str(self.settings.config_path),
            since=_now(),
        )

    def _refuse(self, owner: Owner, why: str) -> BackupError:
        if not self.store.has_history():
            # Claimed but empty (a start elsewhere in progress or failed): nothing to restore.
            return BackupError(
                f"{self.store.where} is claimed by {owner.describe()}, which has not replicated "
                f"there yet; {why}: {_fix(self.settings, self.entry)} — nothing was started"
            )
        return BackupError(
            f"{self.store.where} holds the backups of {owner.describe()}; {why}: "
            f"{_fix(self.settings, self.entry)}, or restore that backup here with "
            "'inv backup.restore' — nothing was started"
        )

    def claim(self) -> Claim:
        """Make sure this database may write its replica; raise, naming the owner, if not."""
        db = self.entry.path
        where = self.store.where
        local = read_local(db)
        owner = read_owner(self.store)
        if owner is None:
            history = self.store.has_history()
            # History nobody claimed is adopted only by the database that wrote it (from
            # before owner records: it has litestream's state and no record of ours) or one
            # restored from that very replica.
            legacy = local is None and db.exists() and localstate.exists(db)
            if history and not (legacy or (local is not None and local.replica == where)):
                raise BackupError(
                    f"{where} holds backups that no database has claimed, and {db} has never "
                    f"replicated there: {_fix(self.settings, self.entry)}, or restore them here "
                    "with 'inv backup.restore' — nothing was started"
                )
            # Restored from this very replica (only record_restore sets replica_txid).
            restored = local is not None and local.replica == where and local.replica_txid is not None
            newest = self._moved_on(local) if restored and history else None
            if newest is not None:
                # Its old writer went on after this copy was restored: two writers of one
                # history would take turns being "the latest state".
                raise BackupError(
                    f"{where} moved on since {db} was restored from it (txid "
                    f"{local.replica_txid:016x}, now {newest:016x}): stop the database that "
                    "still writes there, then restore again with 'inv backup.restore --force' "
                    "— nothing was started"
                )
            local = local or Local(lineage=uuid.uuid4().hex, instance=uuid.uuid4().hex)
            # The local record first: a start that fails after the remote one is written (a
            # folder it cannot write) must still find its own claim next time.
            write_local(db, Local(local.lineage, local.instance, replica=where))
            if self.store.create(RECORD, _dump(self._me(local))):
                return Claim(where, "adopted" if history else "claimed", restored=history and restored)
            owner = read_owner(self.store)  # another start won the race
            if owner is None:
                raise BackupError(f"{where}/{RECORD} vanished while claiming it: try again")
        if (local is None or local.lineage != owner.lineage) and self.never_replicated(owner):
            # A claim no replication followed (a start that failed, here, by an earlier
            # version that wrote the remote record first): nothing to protect, so no lock-out.
            local = local or Local(lineage=uuid.uuid4().hex, instance=uuid.uuid4().hex)
            write_local(db, Local(local.lineage, local.instance, replica=where))
            self.store.write(RECORD, _dump(self._me(local)))
            return Claim(where, "reclaimed", previous=owner)
        if local is None or local.lineage != owner.lineage:
            if db.exists():
                why = "this database is another one"
            else:
                why = f"{db} does not exist yet"
            raise self._refuse(owner, why)
        if local.instance == owner.instance:
            # The writer itself, perhaps moved or renamed: refresh who and where.
            me = self._me(local)
            moved = owner.host != me.host or not same_path(owner.database, me.database)
            if moved and owner.host == me.host and _same_instance(Path(owner.database), local):
                raise self._refuse(owner, f"{db} is a copy of it (both are on this host)")
            if moved or not same_path(owner.config, me.config):
                self.store.write(RECORD, _dump(Owner(**{**asdict(me), "since": owner.since})))
            return Claim(where, "continued")
        self._check_takeover(owner, local)
        write_local(db, Local(local.lineage, local.instance, replica=where))
        self.store.write(RECORD, _dump(self._me(local)))
        return Claim(where, "took-over", previous=owner)

    def never_replicated(self, owner: Owner) -> bool:
        """Is ``owner`` this very database file's own claim that no replication followed: this
        host and path, no history under the prefix, and no litestream of its config running?"""
        return (owner.host == socket.gethostname() and same_path(owner.database, self.entry.path)
                and not _writer_alive(owner) and not self.store.has_history())

    def _check_takeover(self, owner: Owner, local: Local) -> None:
        """Another file of this lineage wrote last: continue only from its latest state."""
        if _writer_alive(owner) and not same_path(owner.database, self.entry.path):
            raise self._refuse(owner, f"its litestream is running ({owner.config})")
        if local.restored_from != owner.instance:
            raise self._refuse(
                owner, f"{self.entry.path} has not been restored from it since that database "
                "wrote there"
            )
        newest = self._moved_on(local)
        if newest is not None:
            raise self._refuse(
                owner, f"it moved on since {self.entry.path} was restored (txid "
                f"{local.replica_txid:016x}, now {newest:016x})"
            )

    def _moved_on(self, local: Local) -> int | None:
        """The replica's newest txid when it differs from the one ``local`` was restored at
        (its writer went on after the restore), else None. One listing, asked only here."""
        newest = self._replica_txid() if self._replica_txid else None
        if newest is not None and local.replica_txid is not None and newest != local.replica_txid:
            return newest
        return None


def foreign_owner(settings: Settings, entry: Entry, store: Store) -> Owner | None:
    """The replica's owner when it is another database (another lineage: a start here would
    be refused), else None. One GET of the owner record."""
    owner = read_owner(store)
    local = read_local(entry.path)
    if owner is None or (local is not None and local.lineage == owner.lineage):
        return None
    if Ownership(settings, entry, store).never_replicated(owner):
        return None  # this database's own claim that no replication followed
    return owner


def record_restore(db: Path, owner: Owner | None, replica_txid: int | None, replica: str | None) -> None:
    """A restored database file is a new instance of the replica's lineage."""
    write_local(db, Local(
        lineage=owner.lineage if owner else uuid.uuid4().hex,
        instance=uuid.uuid4().hex,
        restored_from=owner.instance if owner else None,
        replica_txid=replica_txid,
        replica=replica,
    ))
