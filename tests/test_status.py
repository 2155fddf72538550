"""backup.status: what runs, how far behind the replica is, and the exit code."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import pytest

from conftest import BIN, SECRETS, Workspace, insert, make_db, s3_client, s3_lists, wait_for
from backup import config


def status_json(ws: Workspace) -> tuple[int, dict]:
    result = ws.inv("backup.status", "--json")
    return result.returncode, json.loads(result.stdout)


def test_stopped_daemon_exits_3_with_the_documented_keys(ws: Workspace):
    make_db(ws.db)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    code, data = status_json(ws)
    assert code == 3
    assert data["running"] is False and data["pid"] is None
    assert data["config"] == str(ws.config)
    (db,) = data["databases"]
    for key in ("path", "replica", "local_txid", "replica_txid", "lag_seconds"):
        assert key in db
    assert db["path"] == str(ws.db)
    human = ws.inv("backup.status")
    assert human.returncode == 3 and "status: not running" in human.stdout


def test_running_and_caught_up_is_healthy(ws: Workspace):
    make_db(ws.db)
    assert ws.inv("backup.local", "--background").returncode == 0
    insert(ws.db, "more")

    def caught_up():
        code, data = status_json(ws)
        db = data["databases"][0]
        return code == 0 and db["local_txid"] == db["replica_txid"] and db["lag_seconds"] == 0 and data

    data = wait_for(caught_up, 20, interval=0.3, what="replica to catch up")
    assert data["running"] is True and data["pid"] == ws.daemon_pid()
    assert data["daemon"]["memory_bytes"] > 0
    assert data["databases"][0]["wal_mode"] is True
    assert "status: healthy" in ws.inv("backup.status").stdout


def test_changes_written_while_stopped_are_reported(ws: Workspace):
    make_db(ws.db)
    assert ws.inv("backup.local", "--background").returncode == 0
    assert ws.inv("backup.stop").returncode == 0
    code, data = status_json(ws)
    assert data["databases"][0]["lag_seconds"] == 0
    # Make the database newer than litestream's last capture by more than the slack.
    insert(ws.db, "unseen")
    future = time.time() + 5
    os.utime(ws.db, (future, future))
    code, data = status_json(ws)
    assert code == 3
    assert data["databases"][0]["unseen_changes"] is True


def test_unreadable_replica_is_failing(r2ws: Workspace, s3_endpoint):
    make_db(r2ws.db)
    assert r2ws.inv("backup.setup").returncode == 0
    assert r2ws.inv("backup.start-bg").returncode == 0
    client = s3_client(s3_endpoint)
    for obj in client.list_objects_v2(Bucket=r2ws.bucket).get("Contents", []):
        client.delete_object(Bucket=r2ws.bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=r2ws.bucket)
    # With a daemon running, status asks it rather than the bucket: the next change's
    # upload fails (within a sync interval), and status says so from then on.
    insert(r2ws.db, "after the bucket went")
    code, data = wait_for(lambda: (lambda r: r if r[0] == 1 else None)(status_json(r2ws)), 40,
                          interval=1, what="status to turn failing")
    assert f"bucket '{r2ws.bucket}' does not exist" in data["databases"][0]["error"], data
    listed = r2ws.inv("backup.snapshots")  # a listing says it at once
    assert listed.returncode == 1 and f"bucket '{r2ws.bucket}' does not exist" in listed.stderr
    r2ws.assert_no_secrets()


def test_missing_database_is_waiting_not_failing(ws: Workspace):
    assert ws.inv("backup.local", "--background").returncode == 0
    code, data = status_json(ws)
    assert code == 0
    assert data["databases"][0]["exists"] is False


def test_status_path_keeps_heavy_imports_away(ws: Workspace):
    make_db(ws.db)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    probe = (
        "import sys\n"
        "from backup import config, status\n"
        "from backup.workspace import Workspace\n"
        "status.gather(Workspace.load(config.load()))\n"
        "heavy = [m for m in ('jinja2', 'boto3', 'botocore') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = ws.run(sys.executable, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_logs_shows_the_tail(ws: Workspace):
    make_db(ws.db)
    assert ws.inv("backup.local", "--background").returncode == 0
    result = ws.inv("backup.logs", "-n", "3")
    assert result.returncode == 0
    assert 0 < len(result.stdout.strip().splitlines()) <= 3


@pytest.mark.posix
def test_logs_follow_prints_new_lines_masked(r2ws: Workspace):
    r2ws.state.mkdir(parents=True, exist_ok=True)
    log = r2ws.state / "litestream.log"
    log.write_text("old line\n")
    proc = r2ws.spawn(str(BIN / "inv"), "backup.logs", "--follow")
    seen: list[str] = []
    reader = threading.Thread(
        target=lambda: seen.extend(l.decode() for l in iter(proc.stdout.readline, b"")), daemon=True
    )
    reader.start()
    wait_for(lambda: any("old line" in l for l in seen), 10, what="the tail")
    with log.open("a") as fh:
        fh.write(f"new line with {SECRETS[1]}\n")
    wait_for(lambda: any("new line" in l for l in seen), 10, what="the followed line")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    reader.join(5)
    output = "".join(seen)
    r2ws.outputs.append(output)
    assert "new line with ****" in output
    assert SECRETS[1] not in output


def test_status_with_a_running_daemon_lists_nothing_and_costs_no_uploads(r2ws: Workspace, s3_endpoint):
    make_db(r2ws.db)
    assert r2ws.inv("backup.setup").returncode == 0
    assert r2ws.inv("backup.start-bg").returncode == 0
    assert status_json(r2ws)[0] == 0  # the first one lists once: no listing of it yet
    # litestream's own start-up compaction pass LISTs each level once: let it finish first.
    seen: list[int] = []
    wait_for(lambda: seen.append(s3_lists(s3_endpoint, r2ws.bucket)) or seen[-3:] == [seen[-1]] * 3,
             30, interval=1, what="the daemon's start-up listings to end")
    before = s3_lists(s3_endpoint, r2ws.bucket)
    for n in range(3):  # idle, then with a fresh write before each call
        code, data = status_json(r2ws)
        assert code == 0 and data["databases"][0]["replica_source"] == "daemon", data
        insert(r2ws.db, f"row {n}")
    code, data = status_json(r2ws)
    assert code == 0, data
    assert s3_lists(s3_endpoint, r2ws.bucket) == before
    # Asked at most once per sync interval (10s): the calls above asked the daemon once.
    record = json.loads((r2ws.state / "daemon-sync.json").read_text())
    assert list(record) == [str(r2ws.db)]


def test_heartbeat_and_metrics_errors_in_the_log_are_not_sync_errors(tmp_path):
    from backup.status import daemon_errors, log_errors

    settings = config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(tmp_path / "state")})
    settings.state_dir.mkdir()
    settings.logfile.write_text(
        'time=2026-11-26T10:00:00Z level=ERROR msg="heartbeat ping failed" system=store url=**** error="x"\n'
        'time=2026-11-26T10:00:01Z level=ERROR msg="cannot start metrics server" error="bind: address in use"\n'
        'time=2026-11-26T10:00:02Z level=ERROR msg="sync error" db=chora.db error="NoSuchBucket"\n'
    )
    assert len(log_errors(settings)) == 3
    assert [(e.db, "NoSuchBucket" in e.line) for e in daemon_errors(settings)] == [("chora.db", True)]


def test_status_lists_a_replica_at_most_four_times_an_hour_whatever_happens(tmp_path):
    """A failing endpoint, or a listing the daemon contradicts: polled every ten seconds for an
    hour, status still lists at most four times."""
    from types import SimpleNamespace

    from backup.errors import BackupError
    from backup.status import _current_listing

    settings = config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(tmp_path / "state")})
    settings.state_dir.mkdir()
    calls = []

    def relist():
        calls.append(1)
        raise BackupError("the endpoint refused it")

    replica = SimpleNamespace(has_store=True, where="s3://b/chora.db", relist=relist)
    unit = SimpleNamespace(path=settings.db, replica=replica)
    workspace = SimpleNamespace(settings=settings, state=SimpleNamespace(pid=42))
    start = 1_800_000_000.0
    for n in range(360):
        _current_listing(workspace, unit, start + 10 * n, replicated=7)
    assert len(calls) == 4
