"""backup.localstate: the one reader of litestream's local state folder (issue 25)."""
from __future__ import annotations

import os

from backup import localstate


def l0(db, name: str, mtime: float) -> None:
    folder = localstate.folder(db) / "ltx" / "0"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"LTX1")
    os.utime(folder / name, (mtime, mtime))


def test_newest_txid_capture_time_and_what_the_replica_lacks(tmp_path):
    db = tmp_path / "chora.db"
    assert localstate.local_txid(db) is None and localstate.captured_at(db) == 0.0
    assert not localstate.exists(db)
    l0(db, "0000000000000001-0000000000000003.ltx", 1000)
    l0(db, "0000000000000004-0000000000000004.ltx", 2000)
    l0(db, "0000000000000005-0000000000000007.ltx", 3000)
    (localstate.folder(db) / "ltx" / "0" / "0000000000000008-0000000000000009.ltx.tmp").write_bytes(b"")
    assert localstate.local_txid(db) == 7 and localstate.captured_at(db) == 3000
    assert localstate.unsynced_since(db, 3) == 2000  # txid 4 is the oldest the replica lacks
    assert localstate.unsynced_since(db, 7) is None
    assert localstate.exists(db)


def test_clear_keeps_only_the_files_named(tmp_path):
    db = tmp_path / "chora.db"
    assert localstate.clear(db) is None  # nothing to clear
    l0(db, "0000000000000001-0000000000000001.ltx", 1000)
    (localstate.folder(db) / "chora-backup.json").write_text("{}")
    assert localstate.clear(db, keep=("chora-backup.json", "absent.json")) == localstate.folder(db)
    assert sorted(p.name for p in localstate.folder(db).iterdir()) == ["chora-backup.json"]
    assert oct(localstate.folder(db).stat().st_mode & 0o777) == "0o700"
    assert localstate.local_txid(db) is None


def test_a_file_removed_while_it_is_read_is_not_a_time(tmp_path, monkeypatch):
    """litestream's retention may delete an L0 file between the listing and its stat."""
    db = tmp_path / "chora.db"
    l0(db, "0000000000000004-0000000000000004.ltx", 2000)
    l0(db, "0000000000000005-0000000000000005.ltx", 3000)
    real = localstate.mtime
    monkeypatch.setattr(localstate, "mtime", lambda p: 0.0 if p.name.startswith("0000000000000004") else real(p))
    assert localstate.unsynced_since(db, 3) == 3000
