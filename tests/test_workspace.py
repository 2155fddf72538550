"""Several databases on one Workspace: BACKUP_DB entries, their replica places, --db, and
the promise that a command reads litestream.yml and lists each replica at most once."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from backup import config
from backup.errors import BackupError, ConfigError
from backup.render import render
from backup.workspace import Workspace as Loaded

from conftest import Workspace, insert, make_db, r2_settings, rows


def locations(tmp_path: Path, **values: str) -> list[tuple[str, str, str | None]]:
    settings = config.load(cwd=tmp_path, environ=values)
    return [(str(s.path.relative_to(tmp_path.resolve())), s.replica_path, s.pattern) for s in settings.databases]


def test_one_database_keeps_its_place_and_others_go_by_their_path(tmp_path):
    assert locations(tmp_path) == [("chora.db", "chora.db", None)]
    assert locations(tmp_path, BACKUP_DB="chora.db, data/*.db ,logs/app.db") == [
        ("chora.db", "chora.db", None), ("data", "data", "*.db"), ("logs/app.db", "logs/app.db", None),
    ]
    # The first keeps BACKUP_REPLICA_PATH; the others go under its folder, the workspace prefix.
    assert locations(tmp_path, BACKUP_DB="chora.db,data/*.db", BACKUP_REPLICA_PATH="team/app.db") == [
        ("chora.db", "team/app.db", None), ("data", "team/data", "*.db"),
    ]
    assert locations(tmp_path, BACKUP_DB="data/*.db", BACKUP_REPLICA_PATH="team/x") == [
        ("data", "team/data", "*.db"),
    ]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("chora.db,,x.db", "BACKUP_DB has an empty entry"),
        ("chora.db,chora.db", "BACKUP_DB lists chora.db twice"),
        ("data/chora.db,data/*.db", "data/chora.db is also matched by data/*.db"),
        ("a/*/b.db", "only the file name may be a glob"),
        ("data/**.db", "a glob may use only '*' and '?'"),
        ("chora.db,/elsewhere/x.db", "is outside the workspace"),
        ("x,x/*.db", "would share the replica location x"),
        ("data/*.db,data/a*", "are two globs on one folder"),
        ("chora.db,x/../chora.db", "BACKUP_DB lists chora.db twice"),
        ("*.db", "a glob at the workspace's top"),
        ("data/[!a]*.db", "a glob may use only '*' and '?'"),
    ],
)
def test_bad_backup_db_entries_are_one_clear_error(tmp_path, value, expected):
    with pytest.raises(ConfigError) as err:
        config.load(cwd=tmp_path, environ={"BACKUP_DB": value})
    assert expected in err.value.message


def test_brackets_name_a_file_and_a_prefix_makes_a_top_level_glob_safe(tmp_path):
    assert locations(tmp_path, BACKUP_DB="app[1].db") == [("app[1].db", "app[1].db", None)]
    assert locations(tmp_path, BACKUP_DB="*.db", BACKUP_REPLICA_PATH="myapp/x") == [(".", "myapp", "*.db")]


def test_a_glob_renders_as_litestreams_folder_replication(tmp_path):
    settings = r2_settings(tmp_path, BACKUP_DB="chora.db,data/*.db")
    s3 = yaml.safe_load(render(settings, config.R2))["dbs"]
    assert s3[0]["path"] == str(tmp_path.resolve() / "chora.db") and s3[0]["replica"]["path"] == "chora.db"
    assert {k: s3[1][k] for k in ("dir", "pattern", "watch")} == {
        "dir": str(tmp_path.resolve() / "data"), "pattern": "*.db", "watch": True,
    }
    assert s3[1]["replica"]["path"] == "data" and "path" not in s3[1]
    local = yaml.safe_load(render(settings, config.LOCAL))["dbs"]
    assert local[1]["replica"]["path"] == str(tmp_path / "backups" / "data")


def test_db_names_one_database_as_written_relative_or_absolute(ws: Workspace):
    ws.write_env(BACKUP_DB="chora.db,data/*.db", BACKUP_LOCAL_DIR=str(ws.root / "backups"))
    (ws.path / "data").mkdir()
    for db in (ws.db, ws.path / "data" / "x.db", ws.path / "data" / "y.db"):
        make_db(db)
    (ws.path / "data" / "notes.db").write_text("not a database")  # litestream skips it too
    assert ws.inv("backup.local", "--no-start").returncode == 0
    workspace = Loaded.load(config.load(cwd=ws.path, environ=ws.env))
    assert [db.name for db in workspace.databases] == ["chora.db", "data/x.db", "data/y.db"]
    x = ws.path / "data" / "x.db"
    for spelling in ("data/x.db", "data/./x.db", str(x), str(ws.path / "data" / ".." / "data" / "x.db")):
        assert workspace.database(spelling).path == x
    assert [db.name for db in workspace.select("data/*.db")] == ["data/x.db", "data/y.db"]
    assert [db.name for db in workspace.select("./data/*.db")] == ["data/x.db", "data/y.db"]
    assert workspace.database("data/x.db").replica.where == str(ws.root / "backups" / "data" / "x.db")
    with pytest.raises(BackupError) as err:
        workspace.database("nope.db")
    assert err.value.message == (
        "--db nope.db: no such database in this workspace (known: chora.db, data/x.db, data/y.db)"
    )


LITESTREAM_CALL = re.compile(r"^debug: running \[[^,]+, '(\w+)'(.*)\]$")


def calls(stderr: str) -> tuple[Counter, int]:
    """(litestream ``ltx`` listings per database path, readings of litestream.yml)."""
    listings: Counter = Counter()
    for line in stderr.splitlines():
        match = LITESTREAM_CALL.match(line)
        if match and match.group(1) == "ltx":
            listings[match.group(2).rsplit("'", 2)[-2]] += 1
    return listings, sum(1 for line in stderr.splitlines() if line.startswith("debug: reading "))


def test_each_command_lists_each_replica_once_and_reads_the_config_once(r2ws: Workspace):
    r2ws.write_env((r2ws.path / ".env").read_text(), BACKUP_DB="chora.db,data/*.db")
    (r2ws.path / "data").mkdir()
    dbs = [r2ws.db, r2ws.path / "data" / "x.db"]
    for db in dbs:
        make_db(db)
    assert r2ws.inv("backup.setup").returncode == 0
    assert r2ws.inv("backup.start-bg").returncode == 0
    insert(dbs[1], "later")
    debug = {"CHORA_BACKUP_DEBUG": "1"}
    each_once = Counter({str(db): 1 for db in dbs})
    # verify restores straight from each replica: litestream lists inside that restore.
    # status asks the running daemon, not the bucket (tests/test_status.py counts requests).
    for command, expected in [("backup.status", Counter()), ("backup.snapshots", each_once),
                              ("backup.doctor", each_once), ("backup.cost", each_once),
                              ("backup.verify", Counter())]:
        result = r2ws.inv(command, env=debug)
        assert result.returncode == 0, result.stdout + result.stderr
        listings, readings = calls(result.stderr)
        assert listings == expected, (command, listings)
        assert readings == 1, (command, result.stderr)
    assert r2ws.inv("backup.stop").returncode == 0
    out = r2ws.root / "x.db"
    result = r2ws.inv("backup.restore", "--db", "data/x.db", "--output", str(out), "--json", env=debug)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["integrity"] == "ok" and rows(out) == rows(dbs[1])
    listings, readings = calls(result.stderr)
    assert listings == Counter({str(dbs[1]): 1}) and readings == 1
    r2ws.assert_no_secrets()


def test_a_new_machine_restores_the_databases_a_glob_replicated(tmp_path):
    old, new = Workspace(tmp_path / "old"), Workspace(tmp_path / "new")
    try:
        for ws in (old, new):
            ws.write_env(BACKUP_DB="chora.db,data/*.db", BACKUP_LOCAL_DIR=str(tmp_path / "backups"))
        (old.path / "data").mkdir()
        for db in (old.db, old.path / "data" / "x.db", old.path / "data" / "y.db"):
            make_db(db)
            insert(db, db.name)
        assert old.inv("backup.local", "--background").returncode == 0
        assert old.inv("backup.stop").returncode == 0
        assert new.inv("backup.local", "--no-start").returncode == 0
        result = new.inv("backup.restore", "--json")
        assert result.returncode == 0, result.stderr
        restored = json.loads(result.stdout)["databases"]
        assert [d["path"] for d in restored] == [
            str(new.db), str(new.path / "data" / "x.db"), str(new.path / "data" / "y.db"),
        ]
        for name in ("chora.db", "data/x.db", "data/y.db"):
            assert rows(new.path / name) == rows(old.path / name)
    finally:
        old.cleanup()
        new.cleanup()


def test_a_restore_of_all_that_one_database_cannot_reach_restores_none(ws: Workspace):
    ws.write_env(BACKUP_DB="chora.db,data/*.db", BACKUP_LOCAL_DIR=str(ws.root / "backups"))
    (ws.path / "data").mkdir()
    make_db(ws.db)
    assert ws.inv("backup.local", "--background").returncode == 0
    assert ws.inv("backup.stop").returncode == 0
    make_db(ws.path / "data" / "late.db")  # never replicated
    before = ws.db.read_bytes()
    result = ws.inv("backup.restore", "--force")
    assert result.returncode == 1
    assert result.stderr.startswith("error: data/late.db: nothing to restore yet")
    assert result.stderr.rstrip().endswith("nothing was restored")
    assert ws.db.read_bytes() == before and not list(ws.path.glob("*.pre-restore-*"))
