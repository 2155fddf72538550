"""A failed command run with --json prints a JSON error object on stdout, as well as
its one line on stderr, so a script that reads stdout always gets JSON (issue 25)."""
from __future__ import annotations

import json

import pytest

from conftest import Workspace, make_db

# (the command, what the .env holds, the exit code errors.py defines, a word of the message)
CASES = [
    (("backup.status", "--json"), "BACKUP_SYNC_INTERVAL=often", 2, "BACKUP_SYNC_INTERVAL"),
    (("backup.restore", "--json", "--timestamp", "yesterday-ish"), "", 2, "--timestamp"),
    (("backup.restore", "--json", "--output", "out.db"), "", 2, "litestream.yml"),
    (("backup.snapshots", "--json"), "", 2, "litestream.yml"),
    (("backup.snapshot", "--json"), "", 2, "litestream.yml"),
    (("backup.query", "--json", "select 1"), "", 2, "litestream.yml"),
    (("backup.cost", "--json", "--writes-per-month", "lots"), "", 2, "--writes-per-month"),
    (("backup.install-service", "--json", "--manager", "upstart", "--dry-run"), "", 2, "upstart"),
    (("backup.follow", "--json", "--background", "--output", "copy.db"), "", 2, "litestream.yml"),
]


@pytest.mark.parametrize("argv, env, code, word", CASES, ids=[c[0][0] for c in CASES])
def test_a_failed_json_command_prints_a_json_error_and_its_line(ws: Workspace, argv, env, code, word):
    make_db(ws.db)
    ws.write_env(env)
    result = ws.inv_here(*argv)
    assert result.returncode == code, result.stdout + result.stderr
    error = json.loads(result.stdout)
    assert set(error) == {"error", "exit_code", "details"} and error["exit_code"] == code
    assert word in error["error"]
    assert f"error: {error['error']}" in result.stderr.splitlines()
    assert "Traceback" not in result.stderr


def test_doctor_reports_a_broken_env_as_its_one_failing_check(ws: Workspace):
    """doctor's JSON is its checks, a broken .env among them: the result, not an error object."""
    ws.write_env("BACKUP_SYNC_INTERVAL=often")
    result = ws.inv_here("backup.doctor", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and [c["name"] for c in report["checks"]] == [".env"]
    assert "BACKUP_SYNC_INTERVAL" in report["checks"][0]["detail"]
    assert result.stderr.strip() == "error: 1 check(s) failed: .env"
    human = ws.inv_here("backup.doctor")
    assert human.returncode == 1 and human.stdout.startswith("  fail  .env ")


def test_through_a_real_inv_too(ws: Workspace):
    """The table runs in this process (invoke's Program); the same through the inv binary."""
    ws.write_env("BACKUP_SYNC_INTERVAL=often")
    result = ws.inv("backup.status", "--json")
    assert result.returncode == 2 and json.loads(result.stdout)["exit_code"] == 2
    assert result.stderr.startswith("error: ") and "BACKUP_SYNC_INTERVAL" in result.stderr


def test_without_json_stdout_stays_free_of_it(ws: Workspace):
    ws.write_env("BACKUP_SYNC_INTERVAL=often")
    result = ws.inv("backup.status")
    assert result.returncode == 2 and result.stdout == ""


def test_a_result_printed_as_json_is_not_followed_by_an_error_object(ws: Workspace):
    """status prints its JSON and fails by exit code alone (3: no daemon runs): one object on stdout."""
    make_db(ws.db)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    result = ws.inv("backup.status", "--json")
    assert result.returncode == 3
    assert "databases" in json.loads(result.stdout)
