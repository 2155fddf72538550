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

from .conftest import Forwarder, setup, start_bg, stop


def test_a_reading_command_follows_r2_endpoint_from_the_environment(rws):
    make_db(rws.db, 3)
    setup(rws)
    assert rws.inv("backup.snapshot").returncode == 0
    port = free_port()
    closed = {"R2_ENDPOINT": f"http://127.0.0.1:{port}"}  # nothing listens there
    for argv in (["backup.query", "select count(*) from items", "--via", "copy"],
                 ["backup.restore", "--dry-run"], ["backup.snapshots"]):
        result = rws.inv(*argv, env=closed)
        assert result.returncode != 0 and "Traceback" not in result.stderr, (argv, result.stderr)
        error = [line for line in result.stderr.splitlines() if not line.startswith("note: ")]
        assert error and f"127.0.0.1:{port} refused the connection" in error[-1], (argv, result.stderr)
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
    # While a daemon runs, every command describes what it runs: its replica is read, and
    # the note says how to move it.
    start_bg(rws)
    result = rws.inv("backup.restore", "--dry-run", env=closed)
    assert result.returncode == 0 and rws.endpoint in result.stdout, result.stdout + result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "the running daemon replicates to" in notes[0] and "inv backup.stop" in notes[0]
    stop(rws)


def test_a_config_setup_did_not_write_or_a_setting_left_unset_is_not_second_guessed(rws):
    """A bucket named in litestream.yml alone (not in .env), or a litestream.yml written by
    hand, is read as it is: no note, no other replica."""
    make_db(rws.db, 3)
    setup(rws)
    assert rws.inv("backup.snapshot").returncode == 0
    env = (rws.path / ".env").read_text()
    (rws.path / ".env").write_text("".join(line + "\n" for line in env.splitlines() if not line.startswith("R2_BUCKET=")))
    result = rws.inv("backup.restore", "--dry-run")
    assert result.returncode == 0 and "note:" not in result.stderr, result.stderr
    (rws.path / ".env").write_text(env)
    text = rws.config.read_text()
    rws.config.write_text(text[text.index("\n") + 1:] if text.startswith("#") else text)  # no longer setup's
    result = rws.inv("backup.restore", "--dry-run", env={"R2_ENDPOINT": "http://127.0.0.1:1"})
    assert result.returncode == 0 and "note:" not in result.stderr, result.stderr
