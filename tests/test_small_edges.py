"""Smaller edges real clients found (issue 24.6): one test each, through inv."""
from __future__ import annotations

import json

from conftest import Workspace, make_db


def local_ws(ws: Workspace) -> None:
    ws.write_env(BACKUP_LOCAL_DIR=str(ws.root / "backups"))
    assert ws.inv("backup.local", "--no-start").returncode == 0


def doctor_checks(ws: Workspace) -> dict:
    result = ws.inv("backup.doctor", "--json")
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_a_file_that_is_not_sqlite_is_refused_in_one_line_before_anything_starts(ws: Workspace):
    local_ws(ws)
    ws.db.write_bytes(b"this is a text file, not a database\n" * 10)
    result = ws.inv("backup.start-bg")
    assert result.returncode == 2  # errors.py: a configuration to fix
    assert result.stderr.strip().splitlines() == [
        f"error: {ws.db} is not an SQLite database: check BACKUP_DB (the file to back up) — nothing was started"
    ]
    assert result.stdout == "" and ws.daemon_pid() is None
    assert not (ws.root / "backups" / "chora.db").exists()  # nothing claimed


def test_doctor_names_each_fix_once(ws: Workspace):
    ws.write_env(R2_ACCOUNT_ID="0123456789abcdef0123456789abcdef", R2_ACCESS_KEY_ID="k",
                 R2_SECRET_ACCESS_KEY="s")
    checks = doctor_checks(ws)
    env, config = checks[".env"], checks["config"]
    assert env["detail"].startswith("missing R2_BUCKET in ") and env["fix"].startswith("set it there")
    assert "inv backup.setup" in config["fix"] and "inv backup.setup" not in config["detail"]


def test_doctor_on_a_stale_config_under_a_daemon_says_to_stop_it_first(ws: Workspace):
    local_ws(ws)
    make_db(ws.db)
    assert ws.inv("backup.start-bg").returncode == 0
    try:
        ws.write_env(BACKUP_LOCAL_DIR=str(ws.root / "backups"), BACKUP_SYNC_INTERVAL="7s")
        config = doctor_checks(ws)["config"]
        assert config["state"] == "fail" and config["fix"].startswith("stop the daemon ('inv backup.stop')")
    finally:
        assert ws.inv("backup.stop").returncode == 0


def test_a_clean_stop_of_an_idle_database_is_no_unseen_change(ws: Workspace):
    import time

    from conftest import insert

    local_ws(ws)
    make_db(ws.db)
    assert ws.inv("backup.start-bg").returncode == 0
    time.sleep(3.5)  # idle: litestream's last capture is older than the stop by more than the slack
    assert ws.inv("backup.stop").returncode == 0
    db = json.loads(ws.inv("backup.status", "--json").stdout)["databases"][0]
    assert db["unseen_changes"] is False and db["lag_seconds"] == 0, db
    time.sleep(2.5)
    insert(ws.db, "written while nothing replicates")
    db = json.loads(ws.inv("backup.status", "--json").stdout)["databases"][0]
    assert db["unseen_changes"] is True, db
