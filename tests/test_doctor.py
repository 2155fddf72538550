"""backup.doctor: a line per check, the fix beside each failure, exit 1 on any failure."""
from __future__ import annotations

import json
import re

import pytest

from conftest import Workspace, make_db


def checks(ws: Workspace) -> tuple[int, dict[str, dict]]:
    result = ws.inv("backup.doctor", "--json")
    data = json.loads(result.stdout)
    return result.returncode, {c["name"]: c for c in data["checks"]}


def test_a_healthy_local_workspace(ws: Workspace):
    make_db(ws.db)
    assert ws.inv("backup.local", "--background").returncode == 0
    code, found = checks(ws)
    assert code == 0
    for name in ("litestream", ".env", "config", "database", "replica", "daemon", "disk (state dir)"):
        assert found[name]["state"] == "ok", found[name]
    human = ws.inv("backup.doctor")
    assert human.returncode == 0 and "ok    litestream" in human.stdout


def test_a_stale_config_fails_and_says_to_rerun_setup(r2ws: Workspace):
    make_db(r2ws.db)
    assert r2ws.inv("backup.setup").returncode == 0
    with (r2ws.path / ".env").open("a") as fh:
        fh.write("BACKUP_SYNC_INTERVAL=30s\n")
    code, found = checks(r2ws)
    assert code == 1
    assert found["config"]["state"] == "fail"
    assert "re-run 'inv backup.setup'" in found["config"]["fix"]
    human = r2ws.inv("backup.doctor")
    assert human.stderr.strip() == "error: 1 check(s) failed: config"
    r2ws.assert_no_secrets()


def test_a_config_from_before_the_cheaper_settings_says_to_rerun_setup(r2ws: Workspace):
    """The config an earlier chora-backup generated: the same replica, the old cost settings."""
    make_db(r2ws.db)
    assert r2ws.inv("backup.setup").returncode == 0
    text = r2ws.config.read_text()
    old = re.sub(r"(?m)^    checkpoint-interval: \S+\n", "", text)
    old = re.sub(r"levels:\n  - interval: \S+", "levels:\n  - interval: 5m", old)
    assert old != text
    r2ws.config.write_text(old)
    code, found = checks(r2ws)
    assert found["config"]["state"] == "warn", found["config"]
    assert "predates the settings that cut the R2 bill" in found["config"]["detail"]
    assert found["config"]["fix"] == "re-run 'inv backup.setup' to cut the bill"
    assert r2ws.inv("backup.setup").returncode == 0  # setup again: the new settings
    assert checks(r2ws)[1]["config"]["state"] == "ok"

    # Old timers and another bucket: stale, not merely older.
    r2ws.config.write_text(re.sub(r"(?m)^(      bucket: ).*$", r"\1someone-elses", old))
    assert "bucket: someone-elses" in r2ws.config.read_text()
    assert checks(r2ws)[1]["config"]["state"] == "fail"
    # Only the comments differ: it matches.
    r2ws.config.write_text(text.replace("# How often", "# How very often"))
    assert checks(r2ws)[1]["config"]["state"] == "ok"


def test_a_local_config_from_before_the_timer_settings_says_to_rerun_local(ws: Workspace):
    make_db(ws.db)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    text = ws.config.read_text()
    ws.config.write_text(re.sub(r"(?m)^    checkpoint-interval: \S+\n", "", text))
    code, found = checks(ws)
    assert found["config"]["state"] == "warn", found["config"]
    assert "predates the timer settings R2 mode uses" in found["config"]["detail"]
    assert found["config"]["fix"] == "re-run 'inv backup.local --no-start' to use them"


@pytest.mark.parametrize("dbs", ["5", "true"])
def test_a_config_whose_dbs_is_not_a_list_is_stale_not_a_crash(ws: Workspace, dbs):
    make_db(ws.db)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    text = ws.config.read_text()
    ws.config.write_text(text[:text.index("dbs:")] + f"dbs: {dbs}\n")
    result = ws.inv("backup.doctor", "--json")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1 and result.stderr.count("\n") <= 1, result.stderr


def test_a_missing_bucket_fails_the_replica_check(r2ws: Workspace):
    make_db(r2ws.db)
    text = (r2ws.path / ".env").read_text().replace(f"R2_BUCKET={r2ws.bucket}", "R2_BUCKET=not-there-at-all")
    (r2ws.path / ".env").write_text(text)
    assert r2ws.inv("backup.setup").returncode == 0
    code, found = checks(r2ws)
    assert code == 1
    assert found["replica"]["state"] == "fail"
    assert "bucket 'not-there-at-all' does not exist" in found["replica"]["detail"]


def test_no_config_at_all(ws: Workspace):
    code, found = checks(ws)
    assert code == 1
    assert found["config"]["state"] == "fail"
    assert "inv backup.setup" in found["config"]["fix"]


def test_a_malformed_env_is_a_failed_check_not_a_crash(ws: Workspace):
    (ws.path / ".env").write_text("this is not a setting\n")
    result = ws.inv("backup.doctor")
    assert result.returncode == 1
    assert "fail  .env" in result.stdout and "cannot parse line 1" in result.stdout
    assert "Traceback" not in result.stderr
