"""Workspace: everything one command works on, built once in the task layer.

The settings (.env and the environment), the litestream.yml that describes
replication now (a running daemon's own copy of it, else the file), the one
litestream runner, the daemon's state, the workspace lock, and one
``Database`` per database — a folder entry (``BACKUP_DB=data/*.db``) counts
each database it finds — each with its ``Replica``. Capability functions take
a Workspace or one of its databases; nothing below the tasks reads the config
or lists a replica on its own.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from . import process
from .config import Settings
from .errors import EXIT_CONFIG, NO_CONFIG, BackupError, ConfigError
from .files import identity, same_path, spelling
from .litestream import Litestream, is_replicate
from .ltconfig import Entry, LitestreamConfig, read_config
from .process import ProcessState
from .replica import Replica

# -- the daemon, as every command sees it ------------------------------------------


def replicator(settings: Settings) -> process.Managed:
    """The replicating daemon as a managed process: the workspace's pidfile and lock. A
    record that does not describe a replicate of its own config was not written by a
    start; whatever process it names is not ours to signal."""
    return process.Managed(settings.pidfile, settings.lockfile, settings.state_dir,
                           lambda record: is_replicate(record.cmdline, record.config))


@dataclass(frozen=True)
class Active:
    """The config that describes replication now, and whether the file has moved on."""

    config: LitestreamConfig
    state: ProcessState
    source: Path  # the file litestream reads for it: the running daemon's copy, or litestream.yml
    changed: bool = False  # litestream.yml differs from what the running daemon was started with


def active_config(settings: Settings, state: ProcessState | None = None) -> Active:
    """What the running daemon runs (its copy of litestream.yml), else litestream.yml itself."""
    state = state or replicator(settings).check()
    path = settings.config_path
    record = state.record if state.running else None
    if record and record.config_sha256:
        try:
            copy = settings.running_config.read_bytes()
        except OSError:
            copy = None
        if copy is not None and hashlib.sha256(copy).hexdigest() == record.config_sha256:
            try:
                current = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                current = None
            return Active(read_config(path, copy, "the running daemon's copy"), state,
                          settings.running_config, changed=current != record.config_sha256)
    return Active(read_config(path), state, path)


@contextlib.contextmanager
def exclusive(
    settings: Settings, platform: process.Posix | process.Windows | None = None, of: Path | None = None
) -> Iterator[None]:
    """Hold the workspace lock: no daemon starts or stops meanwhile.

    ``of`` a file other than the workspace's databases: a lock of that file's own,
    so minutes spent restoring a copy elsewhere hold up no start or stop.
    """
    path = None
    if of is not None:
        path = settings.state_dir / f"restore-{hashlib.sha256(os.fsencode(of)).hexdigest()[:16]}.lock"
    with process.locked(path or settings.lockfile, settings.state_dir, platform, remove=path is not None,
                        marker=settings.lockfile):
        yield


@dataclass(frozen=True)
class Database:
    """One database of the workspace, and its replica."""

    path: Path
    name: str  # for people: relative to the workspace where it lies inside it
    entry: Entry  # its litestream.yml entry (for a found one, resolved to it)
    replica: Replica
    folder: Entry | None = None  # the folder entry that found it, if any

    @property
    def sync_interval(self) -> str:
        return self.entry.sync_interval


def _databases(settings: Settings, config: LitestreamConfig, litestream: Litestream, source: Path,
               remember: bool, moved: set[Path] = frozenset()) -> tuple[Database, ...]:
    """Every database the config names, with its replica. ``moved``: entries whose replica is
    not the one ``source`` names (each read through a one-database file of its own)."""
    databases: list[Database] = []
    for entry in config.databases:
        if entry.pattern is None:
            replica = Replica(settings, entry, litestream, source, found=entry.path in moved, remember=remember)
            databases.append(Database(entry.path, _name(entry.path, settings.workspace), entry, replica))
            continue
        for resolved in entry.databases():
            replica = Replica(settings, resolved, litestream, source, found=True, remember=remember)
            databases.append(Database(resolved.path, _name(resolved.path, settings.workspace),
                                      resolved, replica, entry))
    return tuple(databases)


def _rendered(settings: Settings, mode: str) -> LitestreamConfig:
    """The litestream.yml setup would write now, in ``mode`` (not a reading of the file)."""
    import yaml

    from .ltconfig import parse_config
    from .render import render

    return parse_config(yaml.safe_load(render(settings, mode)), settings.config_path, generated=True)


def _changed(old: Entry, new: Entry, mode: str) -> str:
    """The settings that put a replica somewhere else than ``old`` ("" where they agree). A
    value the settings leave unset (a bucket only litestream.yml names) is no difference."""
    from .config import R2

    if old.replica_type != new.replica_type:
        return "R2 settings present" if new.replica_type == "s3" else "no R2 settings"
    named = []
    if new.endpoint and old.endpoint != new.endpoint:
        named.append("R2_ENDPOINT or R2_ACCOUNT_ID")
    if new.bucket and old.bucket != new.bucket:
        named.append("R2_BUCKET")
    if new.location and old.location.rstrip("/") != new.location.rstrip("/"):
        named.append("BACKUP_REPLICA_PATH" if mode == R2 else "BACKUP_LOCAL_DIR or BACKUP_REPLICA_PATH")
    return ", ".join(named)


def _name(path: Path, workspace: Path) -> str:
    try:
        return path.relative_to(workspace).as_posix()
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Workspace:
    settings: Settings
    config: LitestreamConfig
    litestream: Litestream
    state: ProcessState
    databases: tuple[Database, ...]
    source: Path  # the file litestream reads for this config (the running daemon's copy, or the file)
    configured: bool = True  # litestream.yml exists (else ``config`` is what .env would render)
    config_changed: bool = False  # litestream.yml moved on since the running daemon started

    @classmethod
    def load(cls, settings: Settings, litestream: Litestream | None = None, draft: bool = False,
             remember: bool = True) -> Workspace:
        """Read the daemon's state and the config once; find every database.

        Without a litestream.yml this raises the error that says how to write one;
        with ``draft`` it uses the config .env would render instead (``configured``
        then says so). ``remember=False``: listings are not kept for status (a command
        that changes nothing it refuses, such as restore).
        """
        litestream = litestream or Litestream(settings)
        state = replicator(settings).check()
        configured = settings.config_path.exists()
        if configured or not draft:
            active = active_config(settings, state)
            config, changed, source = active.config, active.changed, active.source
        else:
            config, changed, source = cls._unwritten(settings), False, settings.config_path
        databases = _databases(settings, config, litestream, source, remember)
        return cls(settings, config, litestream, state, databases, source, configured, changed)

    @staticmethod
    def _unwritten(settings: Settings) -> LitestreamConfig:
        """The config .env would render: with no R2 settings at all, local mode's."""
        from .config import LOCAL, R2

        try:
            return _rendered(settings, R2 if settings.bucket or settings.access_key_id else LOCAL)
        except BackupError:
            raise ConfigError(NO_CONFIG) from None

    def where_settings_say(self) -> tuple[Workspace, list[str]]:
        """This workspace reading each replica where the settings put it now (flags >
        environment > .env > defaults), for a command that only reads replicas. That is where
        litestream.yml replicates, unless a setting changed since setup wrote it (R2_ENDPOINT
        in the environment, say): then the replica the settings name is read, and a note
        names the difference. While a daemon runs, every command describes what it runs:
        its replica is read, and the note says how to move it. A litestream.yml setup did not
        write, and a setting left unset, are not second-guessed."""
        from .config import LOCAL, R2

        if not self.config.generated:
            return self, []
        mode = LOCAL if all(e.replica_type == "file" for e in self.config.databases) else R2
        try:
            rendered = _rendered(self.settings, mode)
        except BackupError:
            return self, []  # the settings name no replica of their own: litestream.yml's it is
        said = {(e.path, e.pattern): e for e in rendered.databases}
        command = "inv backup.setup" if mode == R2 else "inv backup.local --no-start"
        entries, notes, moved = [], [], set()
        for entry in self.config.databases:
            new = said.get((entry.path, entry.pattern))
            changed = _changed(entry, new, mode) if new is not None else ""
            if not changed:
                entries.append(entry)
                continue
            name = _name(entry.path, self.settings.workspace)
            if self.running:
                notes.append(f"{name}: the settings name {new.replica} ({changed}), but the running daemon "
                             f"replicates to {entry.replica}, which this command reads: to move it, "
                             f"'inv backup.stop', '{command}', then start it again")
                entries.append(entry)
                continue
            moved.add(entry.path)
            entries.append(replace(entry, replica_type=new.replica_type, replica=new.replica, endpoint=new.endpoint,
                                   bucket=new.bucket, location=new.location))
            notes.append(f"{name}: reading {new.replica}, where the settings put it ({changed}); "
                         f"litestream.yml replicates to {entry.replica} until '{command}' is re-run")
        if not moved:
            return self, notes
        config = replace(self.config, databases=tuple(entries))
        databases = _databases(self.settings, config, self.litestream, self.source, remember=False, moved=moved)
        return replace(self, config=config, databases=databases), notes

    @property
    def running(self) -> bool:
        return self.state.running

    @property
    def several(self) -> bool:
        """More than one database, or a folder entry (whose count may change)."""
        return len(self.databases) != 1 or any(e.pattern for e in self.config.databases)

    def with_replicas(self) -> Workspace:
        """This workspace plus each database a folder entry's replica holds that is not here
        (a new machine): one listing of each folder entry's place in the replica."""
        import fnmatch

        from .store import STORE_TYPES, open_store

        have = {db.path for db in self.databases}
        extra: list[Database] = []
        for entry in self.config.databases:
            if not entry.pattern or entry.replica_type not in STORE_TYPES:
                continue
            probe = Replica(self.settings, entry, self.litestream, self.source)
            probe.check()
            for name in open_store(entry, self.settings).children():
                path = entry.path / name
                if path in have or not fnmatch.fnmatchcase(name, entry.pattern):
                    continue
                resolved = entry.found(path)
                replica = Replica(self.settings, resolved, self.litestream, self.source,
                                  found=True, remember=False)
                extra.append(Database(path, _name(path, self.settings.workspace), resolved, replica, entry))
        return replace(self, databases=self.databases + tuple(extra)) if extra else self

    def database_at(self, path: Path) -> Database | None:
        """The database at ``path``: one found here, or one a folder entry's glob names that
        exists only in its replica (a new machine); None when no entry names it."""
        import fnmatch

        found = next((db for db in self.databases if same_path(db.path, path)), None)
        if found is not None:
            return found
        for entry in self.config.databases:
            if entry.pattern and same_path(entry.path, path.parent) and fnmatch.fnmatch(path.name, entry.pattern):
                resolved = entry.found(path)
                replica = Replica(self.settings, resolved, self.litestream, self.source,
                                  found=True, remember=False)
                return Database(path, _name(path, self.settings.workspace), resolved, replica, entry)
        return None

    def listed_apart(self, chosen: tuple[Database, ...]) -> bool:
        """Print ``chosen`` one by one (JSON: a "databases" list)? Yes for several, and for
        every database of a workspace that has several; one chosen by --db prints alone."""
        return len(chosen) > 1 or (self.several and chosen == self.databases)

    def lock(self, of: Path | None = None) -> contextlib.AbstractContextManager[None]:
        """The workspace lock: no daemon starts or stops meanwhile (see exclusive)."""
        return exclusive(self.settings, of=of)

    def select(self, name: str | None) -> tuple[Database, ...]:
        """Every database, or the ones ``--db name`` means (a glob as written: all it finds)."""
        if name is None:
            return self.databases
        if not name.strip():
            raise BackupError("--db is empty: name one of the databases", code=EXIT_CONFIG)
        spelled = spelling(name.strip())
        for entry in self.config.databases:
            if entry.pattern and spelled in {spelling(w) for w in self._written(entry)}:
                return tuple(db for db in self.databases if db.folder == entry)
        exact = tuple(db for db in self.databases if spelled in (spelling(db.name), spelling(str(db.path))))
        by_place = [
            tuple(db for db in self.databases if identity(db.path) == place)
            for place in self._candidates(name.strip())
        ]
        found = [c for c in by_place if c]
        if not exact and len(found) > 1:
            raise BackupError(
                f"--db {name} could mean {found[0][0].name} (in the workspace) or {found[1][0].name} "
                "(here): write it as BACKUP_DB does, or give an absolute path", code=EXIT_CONFIG,
            )
        chosen = exact or (found[0] if found else ())
        if not chosen:
            known = ", ".join(db.name for db in self.databases) or "none yet"
            raise BackupError(f"--db {name}: no such database in this workspace (known: {known})",
                              code=EXIT_CONFIG)
        return chosen

    def database(self, name: str | None, purpose: str | None = None) -> Database:
        """The one database ``--db name`` names, or with a ``purpose`` ("a follower keeps")
        the one there is without ``--db``; several: one line saying to pick one."""
        chosen = self.select(name)
        if len(chosen) != 1 and purpose is not None:
            raise BackupError(f"{purpose} one database: pick one of {', '.join(d.name for d in chosen)} "
                              "with --db", code=EXIT_CONFIG)
        if len(chosen) != 1:
            raise BackupError(
                f"--db {name} names {len(chosen)} databases ({', '.join(d.name for d in chosen)}): "
                "name one of them", code=EXIT_CONFIG,
            )
        return chosen[0]

    def _written(self, entry: Entry) -> set[str]:
        """How BACKUP_DB may spell a folder entry: as written, or its folder/pattern."""
        spelled = {str(entry.path / (entry.pattern or "")), f"{_name(entry.path, self.settings.workspace)}/{entry.pattern}"}
        spelled |= {s.written for s in self.settings.databases
                    if s.pattern == entry.pattern and s.path == entry.path}
        return spelled

    def _candidates(self, name: str) -> list[str]:
        """Where ``name`` may point: itself if absolute, else in the workspace, then here."""
        path = Path(os.path.expanduser(name))
        if path.is_absolute():
            return [identity(path)]
        places = [identity(self.settings.workspace / path), identity(Path.cwd() / path)]
        return places[:1] if places[0] == places[1] else places



