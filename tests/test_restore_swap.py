"""Restore's last steps: the replaced file's access, holders seen late, a swap that fails."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from conftest import Workspace, insert, make_db, rows
from backup import config, restore
from backup.workspace import Workspace as Loaded
from backup.errors import BackupError
from backup.litestream import Litestream


@pytest.fixture
def backed_up(ws: Workspace) -> Workspace:
    """A local-mode workspace with a replica of three rows, and no daemon running."""
    ws.write_env(BACKUP_LOCAL_DIR=str(ws.root / "backups"))
    make_db(ws.db)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    assert ws.inv("backup.start-bg").returncode == 0
    assert ws.inv("backup.stop").returncode == 0
    return ws


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.posix
def test_a_private_database_stays_private_after_a_forced_restore(backed_up):
    ws = backed_up
    os.chmod(ws.db, 0o600)
    assert ws.inv("backup.restore", "--force").returncode == 0
    assert mode(ws.db) == 0o600
    os.chmod(ws.db, 0o640)
    assert ws.inv("backup.restore", "--force").returncode == 0
    assert mode(ws.db) == 0o640


@pytest.mark.posix
def test_a_restore_to_a_new_path_is_no_looser_than_the_umask(backed_up):
    ws = backed_up
    out = ws.root / "copy.db"
    for umask, expected in (("077", 0o600), ("027", 0o640)):
        out.unlink(missing_ok=True)
        result = ws.run("sh", "-c", f"umask {umask}; exec inv backup.restore --output '{out}'")
        assert result.returncode == 0, result.stdout + result.stderr
        assert mode(out) == expected


@pytest.mark.posix
def test_a_copy_of_a_private_database_stays_private(backed_up):
    ws = backed_up
    out = ws.root / "copy.db"
    os.chmod(ws.db, 0o600)
    result = ws.run("sh", "-c", f"umask 022; exec inv backup.restore --output '{out}'")
    assert result.returncode == 0, result.stdout + result.stderr
    assert mode(out) == 0o600  # the database's mode, not the umask's 0644
    out.unlink()
    ws.db.rename(ws.root / "gone.db")  # a new machine: no database to take the mode from
    result = ws.run("sh", "-c", f"umask 022; exec inv backup.restore --output '{out}'")
    assert result.returncode == 0, result.stdout + result.stderr
    assert mode(out) == 0o600


def settings_of(ws: Workspace) -> config.Settings:
    return config.load(cwd=ws.path, environ=ws.environ())


def test_a_swap_that_fails_half_way_puts_the_original_back(backed_up, monkeypatch):
    ws = backed_up
    insert(ws.db, "only in the live database")
    before = ws.db.read_bytes()
    meta = ws.path / ".chora.db-litestream"
    real_replace = os.replace

    def full_disk(src, dst):
        if Path(src).parent.name.startswith(".chora.db.restoring"):  # the restored copy, in its folder
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(restore.os, "replace", full_disk)
    settings = settings_of(ws)
    with pytest.raises(BackupError) as err:
        _restore(settings, force=True)
    message = err.value.message
    assert "could not put the restored copy in place (No space left on device" in message
    assert f"{ws.db} is as it was" in message and "\n" not in message
    assert ws.db.read_bytes() == before and meta.is_dir()
    assert rows(ws.db)[-1][1] == "only in the live database"
    assert not [p for p in ws.path.iterdir() if "pre-restore" in p.name or "restoring" in p.name]


def test_an_unwritable_output_folder_is_refused_before_any_download(backed_up, monkeypatch):
    ws = backed_up
    settings = settings_of(ws)
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise PermissionError(errno.EACCES, "Permission denied", str(ws.root / "ro"))

    monkeypatch.setattr(restore, "temp_beside", refuse)
    (ws.root / "ro").mkdir()
    with pytest.raises(BackupError) as err:
        _restore(settings, output=ws.root / "ro" / "x.db")
    assert err.value.message.startswith(f"cannot write in {ws.root / 'ro'} (Permission denied)")
    assert not (ws.root / "ro" / "x.db").exists()


def test_a_process_that_opens_the_file_during_the_download_stops_the_swap(backed_up, monkeypatch):
    ws = backed_up
    before = ws.db.read_bytes()
    seen = iter([[], [4242]])  # nobody at the start; someone by the time of the swap
    monkeypatch.setattr(restore, "holders", lambda path: next(seen))
    settings = settings_of(ws)
    with pytest.raises(BackupError) as err:
        _restore(settings, force=True)
    assert "is open in process 4242 (opened during the restore)" in err.value.message
    assert ws.db.read_bytes() == before
    assert not [p for p in ws.path.iterdir() if "pre-restore" in p.name or "restoring" in p.name]


def test_a_restore_elsewhere_holds_up_no_start_or_stop(backed_up, monkeypatch):
    """A copy restored elsewhere locks its own path, not the workspace: start-bg and stop go on."""
    ws = backed_up
    settings = settings_of(ws)
    answers = []
    check = restore.integrity_check

    def meanwhile(path):  # runs while the restore holds its lock
        answers.append(ws.inv("backup.start-bg", "--timeout", "10").returncode)
        answers.append(ws.inv("backup.stop").returncode)
        return check(path)

    monkeypatch.setattr(restore, "integrity_check", meanwhile)
    _restore(settings, output=ws.root / "copy.db")
    assert answers == [0, 0]
    assert rows(ws.root / "copy.db") == rows(ws.db)


def _restore(settings, **kwargs):
    workspace = Loaded.load(settings, Litestream(settings))
    return restore.restore(workspace, workspace.databases, **kwargs)
