"""One precedence rule for where a replica is: flags > environment > .env > defaults.

A command that only reads replicas (query, restore, snapshots) reads the one the settings
name now, even when litestream.yml, written by an earlier setup, names another: R2_ENDPOINT
set in the environment, here a forwarder in front of the same S3 server, is used, and a
note says litestream.yml still replicates elsewhere. Replication keeps to litestream.yml
until setup is re-run (status, the daemon's view, is unchanged).
"""
from __future__ import annotations

import json
from urllib.parse import urlsplit

from conftest import free_port, make_db

from .conftest import Forwarder, setup


def test_a_reading_command_follows_r2_endpoint_from_the_environment(rws):
    make_db(rws.db, 3)
    setup(rws)
    assert rws.inv("backup.snapshot").returncode == 0
    closed = {"R2_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    for argv in (["backup.query", "select count(*) from items", "--via", "copy"],
                 ["backup.restore", "--dry-run"], ["backup.snapshots"]):
        result = rws.inv(*argv, env=closed)
        assert result.returncode != 0 and closed["R2_ENDPOINT"] in result.stderr, (argv, result.stderr)
        assert "Traceback" not in result.stderr
    with Forwarder(urlsplit(rws.endpoint).port) as forwarder:
        env = {"R2_ENDPOINT": forwarder.url}
        for argv in (["backup.query", "select count(*) from items", "--json"],
                     ["backup.restore", "--dry-run"], ["backup.snapshots"]):
            before = forwarder.accepted
            result = rws.inv(*argv, env=env)
            assert result.returncode == 0, (argv, result.stderr)
            assert forwarder.accepted > before, argv  # it went where the environment said
            notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
            assert len(notes) == 1 and forwarder.url in notes[0] and rws.endpoint in notes[0], result.stderr
            assert "R2_ENDPOINT" in notes[0] and "inv backup.setup" in notes[0]
        assert json.loads(rws.inv("backup.query", "select count(*) from items", "--json", env=env).stdout)["rows"] == [[3]]
    # Without the variable, litestream.yml and the settings agree: no note.
    plain = rws.inv("backup.restore", "--dry-run")
    assert plain.returncode == 0 and "note:" not in plain.stderr
