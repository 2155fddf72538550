"""One replica holds one database's history: two workspaces sharing a bucket (or a
local folder) never mix, a new machine continues, a moved workspace continues, and
the config a daemon runs is the one every command describes. Real litestream, the
local S3 server, real files.
"""
from __future__ import annotations

import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Workspace, insert, make_db, rows, s3_client, wait_for

from .conftest import Restores, alive, litestreams, scanned_workspace, start_bg, status, stop, write_s3_env

# Same table, same count, different rows: a row count cannot tell them apart.
A_ROWS = ("alpha", "beta", "gamma")
B_ROWS = ("one", "two", "three")


def fill(ws: Workspace, bodies: tuple[str, ...]) -> None:
    make_db(ws.db, 0)
    insert(ws.db, *bodies)


@pytest.fixture
def other(tmp_path_factory, s3_endpoint, ledger) -> Iterator[Workspace]:
    """A second workspace on this machine: its own folder, HOME and state dir."""
    ws = Workspace(tmp_path_factory.mktemp("second"))
    ws.endpoint = s3_endpoint
    yield from scanned_workspace(ws, ledger, s3_endpoint)


def same_settings(a: Workspace, b: Workspace, mode: str, shared: Path) -> None:
    """Identical settings in both: the same bucket, or the same BACKUP_LOCAL_DIR."""
    for ws in (a, b):
        if mode == "r2":
            ws.bucket = a.bucket
            write_s3_env(ws, endpoint=a.endpoint)
        else:
            ws.bucket = None
            ws.write_env(BACKUP_LOCAL_DIR=str(shared))
        command = ("backup.setup",) if mode == "r2" else ("backup.local", "--no-start")
        result = ws.inv(*command)
        assert result.returncode == 0, result.stdout + result.stderr


def write_stop_and_restore(ws: Workspace, body: str) -> None:
    """One more row, the daemon stopped (final sync): a restore holds every row."""
    insert(ws.db, body)
    assert ws.inv("backup.stop").returncode == 0
    out = ws.root / "restored.db"
    assert ws.inv("backup.restore", "--output", str(out)).returncode == 0
    assert rows(out) == rows(ws.db)


def objects(ws: Workspace, mode: str, shared: Path) -> dict[str, int]:
    if mode == "r2":
        listing = s3_client(ws.endpoint).list_objects_v2(Bucket=ws.bucket)
        return {o["Key"]: o["Size"] for o in listing.get("Contents", [])}
    return {str(p.relative_to(shared)): p.stat().st_size for p in shared.rglob("*") if p.is_file()}


@pytest.mark.parametrize("mode", ["r2", "local"])
def test_two_workspaces_with_identical_settings_never_mix(rws, other, mode, tmp_path, report):
    shared = tmp_path / "shared-backups"
    same_settings(rws, other, mode, shared)
    fill(rws, A_ROWS)
    fill(other, B_ROWS)
    start_bg(rws)
    wait_for(lambda: status(rws)[0] == 0, 30, interval=0.3, what="first workspace healthy")
    before = objects(rws, mode, shared)

    # The second writer is refused: one line naming the replica, its owner, the fix.
    for command in (("backup.start-bg",), ("backup.verify",)):
        refused = other.inv(*command)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        line = refused.stderr.strip().splitlines()[-1]
        assert f"holds the backups of {rws.db} on host {socket.gethostname()}" in line
        assert ("BACKUP_REPLICA_PATH" if mode == "r2" else "BACKUP_LOCAL_DIR") in line
        assert litestreams(other) == [] and not other.pidfile.exists()
    assert set(objects(rws, mode, shared)) >= set(before)  # nothing of b's arrived or replaced a's
    restore_a = Restores(rws)
    assert restore_a() == rows(rws.db)

    # With a place of its own, the second one replicates; each restore is its own rows.
    if mode == "r2":
        write_s3_env(other, endpoint=rws.endpoint, BACKUP_REPLICA_PATH="second/chora.db")
        assert other.inv("backup.setup").returncode == 0
    else:
        other.write_env(BACKUP_LOCAL_DIR=str(shared), BACKUP_REPLICA_PATH="second")
        assert other.inv("backup.local", "--no-start").returncode == 0
    start_bg(other)
    insert(rws.db, "delta")
    insert(other.db, "four")
    stop(rws)
    stop(other)
    assert [b for _, b in restore_a()] == [*A_ROWS, "delta"]
    assert [b for _, b in Restores(other)()] == [*B_ROWS, "four"]
    report(f"shared-{mode}: second writer refused with its owner named; after BACKUP_REPLICA_PATH "
           "each restore returned exactly its own rows")


def test_two_starts_at_once_on_one_empty_replica_have_one_winner(rws, other):
    same_settings(rws, other, "r2", Path())
    fill(rws, A_ROWS)
    fill(other, B_ROWS)
    results = {}

    def start(ws: Workspace) -> None:
        results[ws.root.name] = ws.inv("backup.start-bg")

    threads = [threading.Thread(target=start, args=(ws,)) for ws in (rws, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.returncode for r in results.values())
    assert codes == [0, 1], {k: r.stdout + r.stderr for k, r in results.items()}
    winner, loser = (rws, other) if results[rws.root.name].returncode == 0 else (other, rws)
    # Refused while the winner's first sync runs (claimed, nothing to restore yet) or after.
    refusal = results[loser.root.name].stderr
    assert "holds the backups of" in refusal or "which has not replicated there yet" in refusal
    assert litestreams(loser) == []
    stop(winner)
    assert Restores(winner)() == rows(winner.db)


def test_a_new_machine_restores_without_setup_and_continues_the_history(rws, tmp_path_factory, s3_endpoint,
                                                                       ledger):
    write_s3_env(rws)
    assert rws.inv("backup.setup").returncode == 0
    fill(rws, A_ROWS)
    start_bg(rws)
    insert(rws.db, "last on the old machine")
    stop(rws)
    old_rows = rows(rws.db)
    old_txid = status(rws)[1]["databases"][0]["replica_txid"]

    # A new machine: another HOME, the workspace cloned into another parent folder,
    # the same .env, no database and no litestream.yml.
    new = Workspace(tmp_path_factory.mktemp("elsewhere") / "clone")
    new.endpoint, new.bucket = s3_endpoint, rws.bucket
    shutil.copy(rws.path / ".env", new.path / ".env")
    for _ in scanned_workspace(new, ledger, s3_endpoint):
        restored = new.inv("backup.restore")
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "wrote" in restored.stdout and new.config.exists()
        assert rows(new.db) == old_rows

        _, out = start_bg(new)
        assert f"last written by {rws.db}" in out
        insert(new.db, "first on the new machine")
        stop(new)
        latest = Restores(new)()
        assert latest == rows(new.db) and [b for _, b in latest][-2:] == [
            "last on the old machine", "first on the new machine"]
        # The old machine's last state is still a point the replica can reach.
        out = new.root / "at-old-txid.db"
        point = new.inv("backup.restore", "--output", str(out), "--txid", old_txid)
        assert point.returncode == 0, point.stdout + point.stderr
        assert rows(out) == old_rows


def test_a_moved_workspace_keeps_its_replica(ws, tmp_path):
    ws.write_env(BACKUP_LOCAL_DIR=str(tmp_path / "backups"))
    assert ws.inv("backup.local", "--no-start").returncode == 0
    fill(ws, A_ROWS)
    start_bg_ok = ws.inv("backup.start-bg")
    assert start_bg_ok.returncode == 0, start_bg_ok.stderr
    assert ws.inv("backup.stop").returncode == 0
    history = sorted(p.name for p in (tmp_path / "backups").rglob("*.ltx"))

    ws.path.rename(tmp_path / "renamed")
    ws.path = tmp_path / "renamed"
    moved = ws.inv("backup.start-bg")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "the workspace moved?" in moved.stdout
    write_stop_and_restore(ws, "after the move")
    # The same history went on: every file from before the move is still there.
    assert set(history) <= {p.name for p in (tmp_path / "backups").rglob("*.ltx")}
    record = json.loads((tmp_path / "backups" / "chora.db" / "chora-backup-owner.json").read_text())
    assert record["database"] == str(ws.db)


def test_a_replica_from_before_owner_records_keeps_replicating(ws, tmp_path):
    ws.write_env(BACKUP_LOCAL_DIR=str(tmp_path / "backups"))
    assert ws.inv("backup.local", "--no-start").returncode == 0
    fill(ws, A_ROWS)
    assert ws.inv("backup.start-bg").returncode == 0
    assert ws.inv("backup.stop").returncode == 0
    # As an earlier chora-backup left it: no owner record anywhere.
    (tmp_path / "backups" / "chora.db" / "chora-backup-owner.json").unlink()
    (ws.path / ".chora.db-litestream" / "chora-backup-owner.json").unlink()
    adopted = ws.inv("backup.start-bg")
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    assert "written before owner records" in adopted.stdout
    write_stop_and_restore(ws, "after the upgrade")


def test_a_config_change_under_a_running_daemon(ws, tmp_path):
    ws.write_env(BACKUP_LOCAL_DIR=str(tmp_path / "backups"))
    assert ws.inv("backup.local", "--no-start").returncode == 0
    fill(ws, A_ROWS)
    assert ws.inv("backup.start-bg").returncode == 0
    pid = ws.daemon_pid()
    wait_for(lambda: ws.inv("backup.status").returncode == 0, 30, interval=0.3, what="healthy")
    original = ws.config.read_bytes()

    # setup / local would point the config elsewhere: refused, nothing written, daemon untouched.
    ws.write_env(BACKUP_LOCAL_DIR=str(tmp_path / "elsewhere"))
    for command in (("backup.local", "--no-start"), ("backup.local", "--background")):
        refused = ws.inv(*command)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "stop it first with 'inv backup.stop'" in refused.stderr
        assert "nothing was written" in refused.stderr
        assert ws.config.read_bytes() == original and ws.daemon_pid() == pid and alive(pid)

    # Edited by hand anyway: every command still describes what the daemon runs.
    ws.config.write_text(original.decode().replace(str(tmp_path / "backups"), str(tmp_path / "elsewhere")))
    human = ws.inv("backup.status")
    assert human.returncode == 1 and "restart to apply" in human.stdout
    code, data = status(ws)
    assert code == 1 and data["config_changed"] is True and data["healthy"] is False
    assert data["databases"][0]["replica"].startswith(str(tmp_path / "backups"))
    insert(ws.db, "still replicated")
    out = tmp_path / "restored.db"
    wait_for(lambda: ws.inv("backup.restore", "--output", str(out), "--force").returncode == 0
             and rows(out) == rows(ws.db), 30, interval=0.5, what="restore from the daemon's replica")
    doctor = ws.inv("backup.doctor")
    assert doctor.returncode == 1 and "restart to apply" in doctor.stdout
    snapshots = ws.inv("backup.snapshots", "--json")
    assert json.loads(snapshots.stdout)["window"] is not None


def test_an_r2_replica_from_before_owner_records_is_adopted_by_its_own_database_only(rws, other):
    same_settings(rws, other, "r2", Path())
    fill(rws, A_ROWS)
    fill(other, B_ROWS)
    start_bg(rws)
    stop(rws)
    # As an earlier chora-backup left it: litestream's files in the bucket, no owner record.
    s3_client(rws.endpoint).delete_object(Bucket=rws.bucket, Key="chora.db/chora-backup-owner.json")
    (rws.path / ".chora.db-litestream" / "chora-backup-owner.json").unlink()
    refused = other.inv("backup.start-bg")
    assert refused.returncode == 1 and "holds backups that no database has claimed" in refused.stderr
    assert litestreams(other) == []
    adopted = rws.inv("backup.start-bg")
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    assert "written before owner records" in adopted.stdout
    write_stop_and_restore(rws, "after the upgrade")


def test_status_says_whose_backups_the_replica_holds(rws, other, tmp_path):
    """Another database's replica: status names its owner and the fix, as doctor does."""
    same_settings(rws, other, "r2", tmp_path)
    fill(rws, A_ROWS)
    start_bg(rws)
    stop(rws)
    make_db(other.db, 3)
    result = other.inv("backup.status", "--json")
    db = json.loads(result.stdout)["databases"][0]
    assert result.returncode == 3  # not running; the database's own entry says why it could not
    assert db["owner"] == f"{rws.db} on host {socket.gethostname()}"
    assert "holds the backups of" in db["error"] and "BACKUP_REPLICA_PATH" in db["error"]
    text = other.inv("backup.status").stdout
    assert f"restorable     yes (the backups of {rws.db} on host" in text
    mine = rws.inv("backup.status", "--json")
    assert json.loads(mine.stdout)["databases"][0]["owner"] is None  # its own replica


def test_a_second_workspace_naming_the_same_database_is_refused_and_touches_nothing(ws, tmp_path):
    """Two workspaces with BACKUP_DB at one file and replicas of their own: the second start
    must not start a second litestream on it, nor clear the first one's local state."""
    shared = tmp_path / "shared" / "app.db"
    shared.parent.mkdir()
    make_db(shared)
    second = Workspace(tmp_path / "second")
    try:
        for one, backups in ((ws, "backups-a"), (second, "backups-b")):
            one.write_env(BACKUP_DB=str(shared), BACKUP_LOCAL_DIR=str(tmp_path / backups))
            assert one.inv("backup.local", "--no-start").returncode == 0
        assert ws.inv("backup.start-bg").returncode == 0
        state = sorted(p.name for p in (shared.parent / ".app.db-litestream" / "ltx" / "0").iterdir())
        refused = second.inv("backup.start-bg")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "already replicates" in refused.stderr and "stop it there first" in refused.stderr
        assert sorted(p.name for p in (shared.parent / ".app.db-litestream" / "ltx" / "0").iterdir()) == state
        assert second.daemon_pid() is None
        insert(shared, "still replicated by the first")
        assert ws.inv("backup.stop").returncode == 0
        out = ws.root / "restored.db"
        assert ws.inv("backup.restore", "--output", str(out)).returncode == 0
        assert rows(out) == rows(shared)
    finally:
        second.cleanup()
