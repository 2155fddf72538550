"""A start that fails after claiming must not lock the workspace out of its own replica
(issue 24.1). The local state folder that cannot be written stands in for a read-only
workspace: the tests run as root, whom a folder's mode does not stop."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import make_db, s3_client

from .conftest import setup, start_bg, stop, write_s3_env

RECORD = "chora-backup-owner.json"


def owner_record(ws) -> dict | None:
    client = s3_client(ws.endpoint)
    try:
        body = client.get_object(Bucket=ws.bucket, Key=f"chora.db/{RECORD}")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return json.loads(body)


def blocked_start(ws) -> None:
    """start-bg fails: litestream's local state folder cannot be created."""
    blocker = ws.path / ".chora.db-litestream"
    blocker.write_text("in the way")
    result = ws.inv("backup.start-bg")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and ".chora.db-litestream" in result.stderr
    blocker.unlink()


def test_a_failed_first_start_leaves_no_claim_behind(rws, report):
    write_s3_env(rws)
    setup(rws)
    make_db(rws.db, 3)
    blocked_start(rws)
    assert owner_record(rws) is None, "nothing remote before the local record is written"
    _, output = start_bg(rws)
    assert "claimed" in output
    assert owner_record(rws)["database"] == str(rws.db)
    stop(rws)
    report("failed claim: a start that could not write its local record wrote nothing remote")


@pytest.mark.parametrize("command", ["backup.start-bg", "backup.verify", "backup.snapshot", "backup.doctor"])
def test_a_claim_left_by_an_earlier_version_is_taken_back(rws, command):
    """The state an earlier version left (the remote record written, the local one not):
    every command that used to refuse now works from it."""
    write_s3_env(rws)
    setup(rws)
    make_db(rws.db, 3)
    start_bg(rws)
    stop(rws)
    record = owner_record(rws)
    # The replica emptied of history, and this database's local record gone: the state of a
    # claim that no replication followed.
    client = s3_client(rws.endpoint)
    for obj in client.list_objects_v2(Bucket=rws.bucket)["Contents"]:
        if not obj["Key"].endswith(RECORD):
            client.delete_object(Bucket=rws.bucket, Key=obj["Key"])
    shutil.rmtree(rws.path / ".chora.db-litestream")
    result = rws.inv(command)
    assert result.returncode == 0, result.stdout + result.stderr
    if command == "backup.doctor":
        assert "never replicated there; the next start claims it" in result.stdout
    if command == "backup.start-bg":
        assert "(the earlier claim by" in result.stdout and "was never followed by replication" in result.stdout
    assert "another one" not in result.stdout + result.stderr
    if command != "backup.doctor":
        assert owner_record(rws)["instance"] != record["instance"]
    if command == "backup.start-bg":
        stop(rws)
