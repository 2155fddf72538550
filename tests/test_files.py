"""backup.files: the one way paths are compared (issue 25)."""
from __future__ import annotations

import os

import pytest

from backup import files


def test_a_spelling_is_compared_as_the_system_compares_names():
    assert files.same_path("a/../chora.db", "chora.db")
    assert files.same_path(r"C:\Work\chora.db", "c:/work/CHORA.db", platform="win32")
    assert not files.same_path("/Work/chora.db", "/work/chora.db", platform="linux")


@pytest.mark.posix
def test_a_link_and_another_spelling_reach_the_same_file(tmp_path):
    db = tmp_path / "chora.db"
    db.write_bytes(b"")
    os.symlink(db, tmp_path / "link.db")
    assert files.same_file(tmp_path / "link.db", tmp_path / "sub" / ".." / "chora.db")
    assert not files.same_path(tmp_path / "link.db", db)  # as written, they differ
    assert files.identity(tmp_path / "link.db") == files.identity(db)


def test_absolute_keeps_links_and_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert files.absolute("x/copy.db") == tmp_path / "x" / "copy.db"
    assert files.absolute("~/copy.db") == tmp_path / "copy.db"
