"""backup.snapshot: which files a snapshot makes redundant, and how it fails."""
from __future__ import annotations

import pytest

from backup import config
from backup.workspace import Workspace as Loaded
from backup.errors import LitestreamError
from backup.litestream import Litestream
from backup.snapshot import covered, take_snapshot
from backup.store import ltx_key

from conftest import Workspace, make_db, wait_for
from conftest import ltx_files as files


def test_what_a_snapshot_makes_redundant_keeps_the_newest_l0_file():
    listing = files("L9 1-2", "L1 1-4", "L0 5-5", "L0 7-7", "L9 1-8", "L0 8-8", "L0 9-9", "L2 1-4")
    assert {ltx_key(f, "file") for f in covered(listing, 8)} == {
        "ltx/1/0000000000000001-0000000000000004.ltx",
        "ltx/2/0000000000000001-0000000000000004.ltx",
        "ltx/0/0000000000000005-0000000000000005.ltx",
        "ltx/0/0000000000000007-0000000000000007.ltx",
        "ltx/0/0000000000000008-0000000000000008.ltx",
    }
    # Right after the snapshot the newest L0 file is the one it ends at: kept all the same.
    assert [ltx_key(f, "file") for f in covered(files("L0 5-5", "L0 8-8"), 8)] == [
        "ltx/0/0000000000000005-0000000000000005.ltx"
    ]


def test_keys_follow_litestream_s_layout_for_each_replica_type():
    (snapshot,) = files("L9 1-10")
    assert ltx_key(snapshot, "file") == "ltx/9/0000000000000001-000000000000000a.ltx"
    assert ltx_key(snapshot, "s3") == "0009/0000000000000001-000000000000000a.ltx"


# -- failures are one line, and never leave replication stopped ------------------------


class SnapshotFails(Litestream):
    """The real runner, except that the snapshot itself fails (as an outage would)."""

    def run(self, command, *args, **kwargs):
        if "-force-snapshot" in args:
            raise LitestreamError("litestream replicate failed: the storage endpoint went away")
        return super().run(command, *args, **kwargs)


def test_a_failed_snapshot_starts_the_stopped_daemon_again(ws: Workspace):
    make_db(ws.db)
    assert ws.inv("backup.local", "--background").returncode == 0
    pid = ws.daemon_pid()
    settings = config.load(cwd=ws.path, environ=ws.env)
    steps: list[str] = []
    with pytest.raises(LitestreamError, match="the storage endpoint went away"):
        take_snapshot(Loaded.load(settings, SnapshotFails(settings, environ=ws.env)), say=steps.append)
    again = ws.daemon_pid()
    assert again not in (None, pid)
    assert steps[-1] == f"the daemon runs again (pid {again})"
    wait_for(lambda: ws.inv("backup.status").returncode == 0, 30, interval=0.3, what="a healthy status")


def test_snapshot_errors_are_one_clean_line(ws: Workspace):
    result = ws.inv("backup.snapshot")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: no replicas configured: run 'inv backup.setup' (R2 or S3), or 'inv backup.local' (a local folder; --no-start only writes litestream.yml)"
    )
    assert ws.inv("backup.local", "--no-start").returncode == 0
    result = ws.inv("backup.snapshot")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: nothing to snapshot: {ws.db} does not exist yet"


def test_a_snapshot_refuses_a_config_that_now_names_another_replica(ws: Workspace):
    make_db(ws.db)
    ws.write_env(BACKUP_LOCAL_DIR=str(ws.root / "backups"))
    assert ws.inv("backup.local", "--background").returncode == 0
    pid = ws.daemon_pid()
    text = ws.config.read_text()
    ws.config.write_text(text.replace(str(ws.root / "backups"), str(ws.root / "elsewhere")))
    result = ws.inv("backup.snapshot")
    assert result.returncode == 1 and "names other databases or replicas" in result.stderr
    assert ws.daemon_pid() == pid and not (ws.root / "elsewhere").exists()
