"""Who a replica belongs to: the claim's decision table, on a real folder replica."""
from __future__ import annotations

import json
import socket

import pytest

from conftest import make_db
from backup import config, owner
from backup.errors import BackupError
from backup.ltconfig import Entry
from backup.store import FileStore


def workspace(tmp_path, name: str, replica) -> tuple[config.Settings, Entry]:
    folder = tmp_path / name
    folder.mkdir()
    settings = config.load(cwd=folder, environ={
        "BACKUP_STATE_DIR": str(tmp_path / f"state-{name}"), "BACKUP_LOCAL_DIR": str(replica),
    })
    entry = Entry(path=settings.db, replica_type="file", replica=str(replica / "chora.db"),
                     sync_interval="1s", location=str(replica / "chora.db"))
    return settings, entry


def claim(settings, entry, newest=None) -> owner.Claim:
    return owner.Ownership(settings, entry, replica_txid=(lambda: newest) if newest else None).claim()


def record(store: FileStore) -> dict:
    return json.loads(store.read(owner.RECORD))


@pytest.fixture
def replica(tmp_path):
    return tmp_path / "backups"


def test_an_empty_replica_is_claimed_and_then_continued(tmp_path, replica):
    settings, entry = workspace(tmp_path, "a", replica)
    make_db(entry.path)
    assert claim(settings, entry).action == "claimed"
    mine = owner.read_local(entry.path)
    theirs = record(FileStore(replica / "chora.db"))
    assert (theirs["lineage"], theirs["instance"]) == (mine.lineage, mine.instance)
    assert theirs["host"] == socket.gethostname() and theirs["database"] == str(entry.path)
    assert claim(settings, entry).action == "continued"


def test_a_database_that_does_not_exist_yet_claims_an_empty_replica(tmp_path, replica):
    settings, entry = workspace(tmp_path, "a", replica)
    assert claim(settings, entry).action == "claimed"
    assert owner.read_local(entry.path) is not None


def test_another_database_is_refused_naming_the_owner_and_the_fix(tmp_path, replica):
    a_settings, a = workspace(tmp_path, "a", replica)
    b_settings, b = workspace(tmp_path, "b", replica)
    make_db(a.path)
    make_db(b.path)
    claim(a_settings, a)
    before = FileStore(replica / "chora.db").read(owner.RECORD)
    with pytest.raises(BackupError) as err:
        claim(b_settings, b)
    message = err.value.message
    assert str(a.path) in message and socket.gethostname() in message
    assert "BACKUP_LOCAL_DIR" in message and "nothing was started" in message
    assert "\n" not in message
    assert FileStore(replica / "chora.db").read(owner.RECORD) == before
    assert owner.read_local(b.path) is None


def test_a_missing_database_is_told_to_restore_first(tmp_path, replica):
    a_settings, a = workspace(tmp_path, "a", replica)
    b_settings, b = workspace(tmp_path, "b", replica)
    make_db(a.path)
    claim(a_settings, a)
    with pytest.raises(BackupError) as err:
        claim(b_settings, b)
    # Claimed but nothing replicated yet: there is nothing to restore, so that is not the fix.
    assert "has not replicated there yet" in err.value.message and "restore" not in err.value.message
    history = replica / "chora.db" / "ltx" / "0"
    history.mkdir(parents=True)
    (history / "0000000000000001-0000000000000001.ltx").write_bytes(b"LTX1")
    with pytest.raises(BackupError) as err:
        claim(b_settings, b)
    assert "does not exist yet" in err.value.message and "inv backup.restore" in err.value.message


def test_a_moved_database_continues_and_the_record_follows(tmp_path, replica):
    a_settings, a = workspace(tmp_path, "a", replica)
    make_db(a.path)
    claim(a_settings, a)
    (tmp_path / "a").rename(tmp_path / "moved")
    settings, entry = workspace(tmp_path, "moved2", replica)
    moved = Entry(**{**entry.__dict__, "path": tmp_path / "moved" / "chora.db"})
    assert claim(settings, moved).action == "continued"
    assert record(FileStore(replica / "chora.db"))["database"] == str(moved.path)


def test_a_copy_beside_its_original_is_refused(tmp_path, replica):
    import shutil

    a_settings, a = workspace(tmp_path, "a", replica)
    make_db(a.path)
    claim(a_settings, a)
    b_settings, b = workspace(tmp_path, "b", replica)
    shutil.copytree(tmp_path / "a", tmp_path / "b", dirs_exist_ok=True)
    with pytest.raises(BackupError) as err:
        claim(b_settings, b)
    assert "is a copy of it" in err.value.message


def test_a_restored_copy_takes_over_only_while_the_replica_has_not_moved_on(tmp_path, replica):
    a_settings, a = workspace(tmp_path, "a", replica)
    b_settings, b = workspace(tmp_path, "b", replica)
    make_db(a.path)
    claim(a_settings, a)
    store = FileStore(replica / "chora.db")
    make_db(b.path)
    owner.record_restore(b.path, owner.read_owner(store), replica_txid=7, replica=store.where)
    with pytest.raises(BackupError) as err:
        claim(b_settings, b, newest=9)  # a wrote more after b's restore
    assert "moved on since" in err.value.message and "0000000000000007" in err.value.message
    taken = claim(b_settings, b, newest=7)
    assert taken.action == "took-over" and str(a.path) in taken.describe()
    assert record(store)["database"] == str(b.path)
    # Now a is the stale one: it has not been restored from b.
    with pytest.raises(BackupError) as err:
        claim(a_settings, a, newest=7)
    assert "has not been restored from it" in err.value.message


def test_a_replica_written_before_owner_records_is_adopted_by_its_database(tmp_path, replica):
    settings, entry = workspace(tmp_path, "a", replica)
    make_db(entry.path)
    store = FileStore(replica / "chora.db")
    store.write("ltx/0/0000000000000001-0000000000000001.ltx", b"history")
    # No litestream state beside the database: it never replicated there.
    with pytest.raises(BackupError) as err:
        claim(settings, entry)
    assert "no database has claimed" in err.value.message
    state = entry.path.parent / ".chora.db-litestream" / "ltx" / "0"
    state.mkdir(parents=True)
    (state / "0000000000000001-0000000000000001.ltx").write_bytes(b"history")
    assert claim(settings, entry).action == "adopted"
    assert claim(settings, entry).action == "continued"


def test_a_damaged_record_is_a_clean_error(tmp_path, replica):
    settings, entry = workspace(tmp_path, "a", replica)
    FileStore(replica / "chora.db").write(owner.RECORD, b"{not json")
    with pytest.raises(BackupError) as err:
        claim(settings, entry)
    assert "is damaged" in err.value.message


@pytest.mark.posix
def test_records_are_private(tmp_path, replica):
    settings, entry = workspace(tmp_path, "a", replica)
    make_db(entry.path)
    claim(settings, entry)
    assert owner.local_path(entry.path).stat().st_mode & 0o777 == 0o600
    assert (replica / "chora.db" / owner.RECORD).stat().st_mode & 0o777 == 0o600


def test_a_url_replica_is_not_taken_for_a_folder(tmp_path):
    from backup.ltconfig import read_config

    path = tmp_path / "litestream.yml"
    path.write_text("dbs:\n  - path: /x.db\n    replica:\n      url: s3://bucket/app.db\n")
    (db,) = read_config(path).databases
    assert db.replica_type == "url"


def test_a_record_from_another_replica_adopts_no_unclaimed_history(tmp_path, replica):
    settings, entry = workspace(tmp_path, "a", replica)
    make_db(entry.path)
    claim(settings, entry)  # a's record now names its own replica
    other = FileStore(tmp_path / "elsewhere" / "chora.db")
    other.write("ltx/0/0000000000000001-0000000000000001.ltx", b"someone else's history")
    moved = Entry(**{**entry.__dict__, "location": str(tmp_path / "elsewhere" / "chora.db")})
    with pytest.raises(BackupError) as err:
        claim(settings, moved)  # BACKUP_REPLICA_PATH pointed at a prefix from before owner records
    assert "no database has claimed" in err.value.message


def test_doctor_fails_when_the_replica_was_taken_over_under_a_running_daemon(tmp_path, replica, monkeypatch):
    from backup import daemon, doctor, process

    a_settings, a = workspace(tmp_path, "a", replica)
    make_db(a.path)
    claim(a_settings, a)
    store = FileStore(replica / "chora.db")
    record = owner.read_owner(store)
    store.write(owner.RECORD, owner._dump(owner.Owner(**{**record.__dict__, "instance": "elsewhere",
                                                         "host": "laptop"})))
    from backup.litestream import Litestream
    from backup.replica import Replica
    from backup.workspace import Database

    db = Database(a.path, "chora.db", a, Replica(a_settings, a, Litestream(a_settings), a_settings.config_path))
    monkeypatch.setattr(daemon, "check", lambda settings: process.ProcessState("running"))
    found = doctor._owner(a_settings, db)
    assert found.state == doctor.FAIL and "took this replica over" in found.detail
    monkeypatch.setattr(daemon, "check", lambda settings: process.ProcessState("stopped"))
    assert doctor._owner(a_settings, db).state == doctor.WARN


def test_history_without_a_record_restored_here_is_claimed_at_this_start_and_says_so(tmp_path, replica):
    """A database a folder entry found after its daemon started was never claimed; restored
    on a new machine, its start says what happened, not 'written before owner records'."""
    settings, entry = workspace(tmp_path, "a", replica)
    make_db(entry.path)
    history = replica / "chora.db" / "ltx" / "0"
    history.mkdir(parents=True)
    (history / "0000000000000001-0000000000000001.ltx").write_bytes(b"LTX1")
    owner.record_restore(entry.path, None, 1, str(replica / "chora.db"))
    made = claim(settings, entry)
    assert made.action == "adopted" and made.restored
    assert made.describe() == (f"claimed {replica / 'chora.db'} for this database at this start "
                               "(restored from it; its history had no owner record yet)")
