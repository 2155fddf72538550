"""backup.query: ask the replica, at any point in its window, with litestream's real VFS.

Two batches of rows with a moment between them, on a local folder replica and on the
local S3 server; the latest count, the earlier count, --txid, the JSON shape, a write
refused, a time before the window refused with the window named, no secret printed.
"""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from backup import query
from backup.errors import BackupError

from conftest import SECRETS, Workspace, insert, make_db, rows, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="litestream's VFS has no Windows build")


def settled(log) -> None:
    """Wait until the S3 server's access log stops growing: its last lines have landed."""
    size = -1
    while size != log.stat().st_size:
        size = log.stat().st_size
        time.sleep(0.3)


def two_batches(ws: Workspace) -> tuple[str, str]:
    """Three rows, then (a moment later) two more, both in the replica: (the moment between
    them, the txid of the first batch)."""
    make_db(ws.db, 3)
    started = ws.inv("backup.start-bg")
    assert started.returncode == 0, started.stdout + started.stderr
    first = ask(ws, "select count(*) from items", "--json")
    # Time itself is the condition: a moment more than a second after the first batch's
    # files and before the second's (the VFS travels by time, to the second).
    time.sleep(1.2)
    between = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(1.2)
    insert(ws.db, "four", "five")
    wait_for(lambda: ask(ws, "select count(*) from items", "--json")["rows"] == [[5]], 20, interval=0.3,
             what="the second batch in the replica")
    return between, first["txid"]


def ask(ws: Workspace, sql: str, *args: str, env: dict | None = None) -> dict:
    result = ws.inv("backup.query", sql, *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout) if "--json" in args else {"text": result.stdout}


def refused(ws: Workspace, *args: str, code: int = 1) -> str:
    """The one line a refused query prints; ``code`` as errors.py names it (2: bad input)."""
    result = ws.inv("backup.query", *args)
    assert result.returncode == code and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def check_time_travel(ws: Workspace) -> None:
    between, first_txid = two_batches(ws)
    latest = ask(ws, "select count(*) as n from items", "--json")
    assert set(latest) == {"columns", "rows", "txid", "timestamp", "via", "requests", "bytes"}
    assert latest["columns"] == ["n"] and latest["rows"] == [[5]]
    assert latest["via"] == "copy"  # the plan scans the table: a local copy answers
    in_place = ask(ws, "select count(*) as n from items", "--json", "--via", "vfs")
    assert in_place["via"] == "vfs" and in_place["rows"] == [[5]] and in_place["txid"] == latest["txid"]
    # The copy of the latest state is kept while the replica has not moved on: no restore.
    again = ws.inv("backup.query", "select count(*) from items", "--via", "copy", env={"CHORA_BACKUP_DEBUG": "1"})
    assert again.returncode == 0 and "'restore'" not in again.stderr, again.stderr
    assert len(list((ws.state / "query").glob("*.db"))) == 1
    if sys.platform != "win32":
        assert [oct(p.stat().st_mode & 0o777) for p in (ws.state / "query").glob("*.db")] == ["0o600"]
    earlier = ask(ws, "select count(*) from items", "--timestamp", between, "--json")
    assert earlier["rows"] == [[3]] and earlier["txid"] == first_txid < latest["txid"]
    by_txid = ask(ws, "select body from items order by id", "--txid", first_txid, "--json")
    assert [row[0] for row in by_txid["rows"]] == ["row 0", "row 1", "row 2"]
    table = ask(ws, "select id, body from items where id = 4")["text"]
    assert "four" in table and f"at txid {latest['txid']}" in table and "(1 row from the replica" in table
    # A point lookup, which the VFS would answer from a few pages: the kept copy answers it
    # (the replica has not moved on), with one LIST and nothing downloaded.
    assert "a local copy of it)" in table
    if (ws.path / "litestream.yml").read_text().count("type: s3"):  # requests are counted on S3
        assert "(asked the replica: 1 LIST; 0 B downloaded; $0.000005 at R2's list price)" in table
    else:
        assert "asked the replica" not in table and latest["requests"] is None and latest["bytes"] is None

    assert "only a statement that reads" in refused(ws, "delete from items")
    assert "only a statement that reads" in refused(ws, "create table x (y)")
    assert "one statement at a time" in refused(ws, "select 1; select 2")
    assert "SQL: no such table: nope" in refused(ws, "select * from nope")
    early = refused(ws, "select 1", "--timestamp", "2020-01-01T00:00:00Z")
    assert "is before the earliest backup: the replica can restore" in early and "txid 0000000000000001 to" in early
    assert "is not a point in time" in refused(ws, "select 1", "--timestamp", "yesterday-ish", code=2)
    assert "give the SQL to ask" in refused(ws, " ", code=2)
    assert len(rows(ws.db)) == 5  # the live database untouched


def test_query_a_local_replica_latest_and_in_the_past(ws):
    ws.write_env(BACKUP_LOCAL_DIR=str(ws.root / "backups"), BACKUP_SYNC_INTERVAL="1s")
    assert ws.inv("backup.local", "--no-start").returncode == 0
    try:
        check_time_travel(ws)
    finally:
        ws.inv("backup.stop")


def test_query_an_s3_replica_through_the_ca_bundle_bug_and_print_no_secret(r2ws):
    with (r2ws.path / ".env").open("a") as fh:
        fh.write("BACKUP_SYNC_INTERVAL=1s\n")
    assert r2ws.inv("backup.setup").returncode == 0
    # The VFS, like the binary, fails every S3 call when AWS_CA_BUNDLE reaches it.
    r2ws.env["AWS_CA_BUNDLE"] = "/etc/ssl/certs/ca-certificates.crt"
    try:
        check_time_travel(r2ws)
    finally:
        r2ws.inv("backup.stop")
    r2ws.assert_no_secrets()
    for text in r2ws.outputs:
        assert not any(secret in text for secret in SECRETS)


# -- without litestream ------------------------------------------------------------


def test_the_vfs_reads_the_replica_at_its_url():
    file_entry = SimpleNamespace(replica_type="file", location="/var/backups/chora db/x.db", path="/w/x.db")
    assert query.replica_url(file_entry) == "file:///var/backups/chora%20db/x.db"
    s3 = SimpleNamespace(replica_type="s3", bucket="b", location="ws/data/c.db", region=None,
                         endpoint="https://acct.r2.cloudflarestorage.com", path="/w/c.db")
    assert query.replica_url(s3) == ("s3://b/ws/data/c.db?region=auto&"
                                     "endpoint=https%3A%2F%2Facct.r2.cloudflarestorage.com")


def test_without_the_extra_or_on_windows_it_says_what_to_do(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "apsw" else real(name))
    assert query.missing() == "backup.query needs apsw (optional): pip install 'chora-backup[query]'"
    monkeypatch.setattr(sys, "platform", "win32")
    assert "no Windows build" in query.missing() and "inv backup.restore --output PATH" in query.missing()


def test_without_the_extra_the_task_names_the_install(ws, tmp_path):
    """A fresh environment without apsw: one line saying what to install, exit 2."""
    ws.write_env(BACKUP_LOCAL_DIR=str(ws.root / "backups"))
    blocker = tmp_path / "no-apsw"
    blocker.mkdir()
    (blocker / "apsw.py").write_text("raise ImportError('not installed')\n")
    (blocker / "sitecustomize.py").write_text(
        "import importlib.util, sys\n"
        "_real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'apsw' else _real(name, *a)\n"
    )
    result = ws.inv("backup.query", "select 1", env={"PYTHONPATH": str(blocker)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == "error: backup.query needs apsw (optional): pip install 'chora-backup[query]'"


@pytest.mark.parametrize("sql", [
    "select 1", "SELECT replace(body, 'a', 'b') FROM items", "with x as (select 1) select * from x",
    "select 'insert; drop' from t", 'select "update" from t', "pragma table_info(items)",
    "pragma main.table_info(items)", "pragma user_version", "select 1;", "select 1; -- done",
    "explain query plan select 1", "values (1)", "/* a note */ select 1",
])
def test_a_read_passes_the_screen(sql):
    query.screen(sql)


@pytest.mark.parametrize("sql, said", [
    ("delete from items", "not a read: delete"),
    ("with x as (select 1) insert into t select * from x", "not a read: insert"),
    ("pragma user_version = 3", "not a read: pragma user_version with a value"),
    ("pragma journal_mode(wal)", "not a read: pragma journal_mode with a value"),
    ("attach 'x.db' as y", "not a read: attach"),
    ("replace into t values (1)", "not a read: replace"),
    ("select begin from t", "where it is a name, quote it"),
    ("select 1; select 2", "one statement at a time"),
    ("select 1; drop table t", "one statement at a time"),
])
def test_a_write_or_two_statements_are_refused_by_the_screen(sql, said):
    with pytest.raises(BackupError) as caught:
        query.screen(sql)
    assert said in caught.value.message


def test_a_refused_statement_asks_nothing_of_the_replica(r2ws, s3_endpoint):
    """Refused before the replica is listed or a page fetched: no request to the bucket."""
    from conftest import MOTO_LOGS

    make_db(r2ws.db, 3)
    assert r2ws.inv("backup.setup").returncode == 0
    assert r2ws.inv("backup.snapshot").returncode == 0  # the replica holds the database

    def requests() -> int:
        text = MOTO_LOGS[s3_endpoint].read_text("utf-8", errors="replace")
        return sum(1 for line in text.splitlines() if f" /{r2ws.bucket}" in line)

    before = requests()
    assert "not a read: delete" in refused(r2ws, "delete from items")
    assert "one statement at a time" in refused(r2ws, "select 1; select 2")
    assert "not a read: pragma user_version with a value" in refused(r2ws, "pragma user_version = 1")
    assert requests() == before
    # A point outside the window is refused from the listing (one LIST): no object is read.
    text = MOTO_LOGS[s3_endpoint].read_text("utf-8", errors="replace")
    assert "is before the earliest backup" in refused(r2ws, "select 1", "--timestamp", "2020-01-01T00:00:00Z")
    settled(MOTO_LOGS[s3_endpoint])
    asked = [line for line in MOTO_LOGS[s3_endpoint].read_text("utf-8", errors="replace")[len(text):].splitlines()
             if f" /{r2ws.bucket}" in line]
    assert asked and all("list-type=2" in line for line in asked), asked


@pytest.mark.parametrize("detail, scan", [
    ("SCAN items", True),
    ("SCAN items USING COVERING INDEX items_kind", True),  # every page of the index
    ("SEARCH items USING INTEGER PRIMARY KEY (rowid=?)", False),
    ("SEARCH items USING INDEX items_kind (kind=?)", False),
    ("SCAN CONSTANT ROW", False),
    ("SCAN items USING INDEX items_kind", True),  # in index order: every row, and its page
    ("SCAN json_each VIRTUAL TABLE INDEX 1:", False),  # no table of the replica
    ("SEARCH items USING INTEGER PRIMARY KEY (rowid>?)", True),  # from one end to the other
    ("SEARCH items USING COVERING INDEX items_kind (kind<?)", True),
    ("SEARCH items USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)", True),  # a range, page by page
    ("SEARCH items USING INDEX items_kind (kind=? AND rowid>?)", False),  # narrowed by equality
])
def test_a_plan_that_scans_a_table_is_answered_from_a_copy(detail, scan):
    assert query.scans(detail) is scan


@pytest.mark.parametrize("details, many", [
    (["SEARCH t USING INDEX tags_tag (tag=?)", "SEARCH i USING INTEGER PRIMARY KEY (rowid=?)"], True),
    (["SEARCH i USING INTEGER PRIMARY KEY (rowid=?)", "SEARCH t USING INDEX tags_item (item_id=?)"], False),
    (["SEARCH i USING INTEGER PRIMARY KEY (rowid=?)"], False),  # one table: no join
    (["SEARCH t USING INDEX tags_tag (tag=?)"], False),
])
def test_a_join_that_looks_up_many_rows_is_answered_from_a_copy(details, many):
    assert query.joins_many(details) is many


def test_a_querys_own_subquery_is_not_a_scan_of_the_replica():
    recursive = ["CO-ROUTINE c", "SETUP", "SCAN CONSTANT ROW", "RECURSIVE STEP", "SCAN c", "SCAN c"]
    assert not query.too_many_pages(recursive)
    assert query.too_many_pages(["SCAN items"])


def test_the_time_of_the_latest_state_does_not_move_when_a_compaction_rewrites_its_files(r2ws):
    """The VFS names the newest file it read, which a level-1 merge writes later (on S3, the
    object's time); the answer's time is that of the first file that reached the txid, before
    and after the merge."""
    from test_holes import set_levels

    ws = r2ws
    make_db(ws.db, 3)
    assert ws.inv("backup.setup").returncode == 0
    set_levels(ws, "3s", "720h", "720h")  # level 1 merges every 3 s
    assert ws.inv("backup.start-bg").returncode == 0
    insert(ws.db, "four")
    wait_for(lambda: ask(ws, "select count(*) from items", "--json", "--via", "vfs")["rows"] == [[4]], 30,
             interval=0.5, what="the insert in the replica")
    before = ask(ws, "select body from items where id = 4", "--json", "--via", "vfs")
    txid = int(before["txid"], 16)

    def merged() -> bool:
        proc = ws.litestream("ltx", "-config", str(ws.config), "-level", "1", "-json", str(ws.db))
        return proc.returncode == 0 and any(int(f["max_txid"], 16) >= txid for f in json.loads(proc.stdout or "[]"))

    wait_for(merged, 30, interval=1, what="a level-1 file over the txid")
    after = ask(ws, "select body from items where id = 4", "--json", "--via", "vfs")
    assert after["txid"] == before["txid"] and after["timestamp"] == before["timestamp"], (before, after)
    assert ws.inv("backup.stop").returncode == 0


def test_requests_and_bytes_reported_are_the_ones_the_s3_server_answered(r2ws, s3_endpoint):
    """Each answer's `requests` (LIST, GET, HEAD) are the ones the S3 server logged for it, by
    either path, at the latest state and at a time; and a long query through the VFS makes no
    more requests than a short one: pinned to a time, the VFS does not poll for new files."""
    import re
    import shutil
    from urllib.parse import unquote

    from conftest import MOTO_LOGS

    ws = r2ws
    make_db(ws.db, 3)
    assert ws.inv("backup.setup").returncode == 0
    assert ws.inv("backup.start-bg").returncode == 0
    for batch in ("four", "five"):  # files at level 0 beside the snapshot
        insert(ws.db, batch)
        wait_for(lambda: ask(ws, "select count(*) from items", "--json", "--via", "copy")["rows"][0][0] >= 4
                 + (batch == "five"), 20, interval=0.5, what=f"{batch} in the replica")
    between = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(1.2)
    insert(ws.db, "six")
    assert ws.inv("backup.stop").returncode == 0  # its final sync: everything is in the replica
    log = MOTO_LOGS[s3_endpoint]
    line = re.compile(r'"(GET|HEAD) /' + re.escape(ws.bucket) + r'(\S*) HTTP')

    def served(mark: int) -> dict:
        settled(log)
        text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text("utf-8", errors="replace")[mark:])
        found = {"list": 0, "get": 0, "head": 0}
        for method, target in line.findall(text):
            path = unquote(target.partition("?")[0])
            kind = "head" if method == "HEAD" else "get" if path.strip("/") else "list"
            found[kind] += 1
        return found

    slow = "with recursive c(x) as (select 1 union all select x + 1 from c where x < 30000000) select count(*) from c"
    answers = {}
    for name, args in {
        "point": ("select body from items where id = 2", "--via", "vfs"),
        "point at a time": ("select count(*) from items", "--timestamp", between, "--via", "vfs"),
        "a copy at a time": ("select count(*) from items", "--timestamp", between, "--via", "copy"),
        "scan through the VFS": ("select count(*) from items", "--via", "vfs"),
        "a long query through the VFS": (slow, "--via", "vfs"),
        "scan from a copy": ("select count(*) from items", "--via", "copy"),
    }.items():
        shutil.rmtree(ws.state / "query", ignore_errors=True)  # no copy kept from before
        mark = len(log.read_text("utf-8", errors="replace"))
        answers[name] = ask(ws, *args, "--json")
        assert answers[name]["requests"] == served(mark), name
        assert answers[name]["bytes"] > 0, name
    assert answers["point"]["via"] == "vfs" and answers["scan from a copy"]["via"] == "copy"
    assert answers["point at a time"]["rows"] == answers["a copy at a time"]["rows"] == [[5]]
    assert answers["point at a time"]["requests"]["head"] > 0  # litestream reads each file's time
    # A query that runs for seconds asks no more than a quick one: no LIST a second while it
    # runs (unpinned, the seconds it runs would add two LISTs each; one poll may come before
    # the pin holds, on a busy machine).
    assert answers["a long query through the VFS"]["requests"]["list"] <= answers["point"]["requests"]["list"] + 2


@pytest.mark.parametrize("via, kept, download, chosen", [
    ("auto", False, 500 * 2**20, "vfs"),  # a large replica: the VFS reads a few pages
    ("auto", False, 10 * 2**20, "copy"),  # a small one restores faster than the VFS sets up
    ("auto", True, 500 * 2**20, "copy"),  # a kept copy answers at local speed
    ("vfs", True, 10 * 2**20, "vfs"), ("copy", False, 500 * 2**20, "copy"),  # forced
])
def test_the_first_choice_of_auto(via, kept, download, chosen):
    assert query.first_choice(via, kept, download) == chosen


def test_a_statement_still_reading_through_the_vfs_after_its_budget_is_stopped(r2ws):
    """A statement that reads every page through the VFS fetches the table page by page. Past
    its budget the child stops it and says so (auto then answers from a local copy); with no
    budget it answers."""
    import os
    import sqlite3

    from backup import config
    from backup.workspace import Workspace

    ws = r2ws
    make_db(ws.db, 3)
    with sqlite3.connect(ws.db) as con:
        con.executemany("insert into items (body) values (?)", [(os.urandom(500).hex(),) for _ in range(6000)])
    assert ws.inv("backup.setup").returncode == 0
    assert ws.inv("backup.snapshot").returncode == 0
    workspace = Workspace.load(config.load(ws.path, environ={**os.environ, **ws.env}))
    db = workspace.databases[0]
    files = db.replica.relist()
    # (auto's plan check would send this one to a copy first: here the budget alone is tried)
    request = {"sql": "select count(*) from items where id > 0", "time": query._rfc3339_ms(query.LATEST),
               "scan_to": False}
    stopped, stopped_asked = query._ask({**request, "budget": 0}, workspace, db, files)
    assert stopped.get("over_budget"), stopped
    answered, asked = query._ask({**request, "budget": None}, workspace, db, files)
    assert answered["rows"] == [[6003]] and asked.gets > 600, asked  # page by page: what the budget spares
    assert stopped_asked.gets < asked.gets, (stopped_asked, asked)


def test_the_plan_is_read_from_the_database_here_read_only(tmp_path):
    """auto plans from the database on this machine (its schema), which spares the VFS's
    set-up for a query a copy will answer; nothing there changes, and where it cannot plan
    (no file, a table it lacks) the VFS is asked instead."""
    db = tmp_path / "chora.db"
    make_db(db, 3)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    plan = query.plan_here(db, "select count(*) from items")
    assert plan and query.too_many_pages(plan)
    lookup = query.plan_here(db, "select body from items where id = 2")
    assert lookup and not query.too_many_pages(lookup)
    assert query.plan_here(db, "select * from not_yet") is None
    assert query.plan_here(tmp_path / "absent.db", "select 1") is None
    assert query.plan_here(db, "delete from items") is None  # the authorizer: no write, even planned
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
