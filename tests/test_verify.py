"""verify proves the data, not the row count; says when it could not; warns when backup is not continuous."""
from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from backup import config
from backup.workspace import Workspace as Loaded
from backup.litestream import Litestream
from backup.verify import digest, verify

from conftest import BIN, REPO, Workspace, insert, make_db

WARNING = "warning: continuous backup is off"


def replicated_once(ws: Workspace, bodies: list[str]) -> None:
    """A local-mode workspace whose replica holds ``bodies`` in ``items``, no daemon running."""
    make_db(ws.db, 0)
    make_db(ws.db, 0, table="notes")
    insert(ws.db, "shared note", table="notes")
    insert(ws.db, *bodies)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    once = ws.litestream("replicate", "-config", str(ws.config), "-no-expand-env", "-once")
    assert once.returncode == 0, once.stderr


def replica_folder(ws: Workspace) -> Path:
    return ws.home / ".chora" / "backups" / "chora.db"


# -- content, not counts ------------------------------------------------------------


def test_equal_counts_with_different_content_fail_naming_the_table(tmp_path):
    ours, theirs = Workspace(tmp_path / "ours"), Workspace(tmp_path / "theirs")
    try:
        replicated_once(ours, ["a", "b", "c"])
        replicated_once(theirs, ["x", "y", "z"])
        # Another database's history where ours should be, at the very txid our
        # litestream last wrote: nothing tells litestream, and the counts agree.
        names = sorted(p.name for p in replica_folder(ours).rglob("*.ltx"))
        assert names == sorted(p.name for p in replica_folder(theirs).rglob("*.ltx"))
        shutil.rmtree(replica_folder(ours))
        shutil.copytree(replica_folder(theirs), replica_folder(ours))

        result = ours.inv("backup.verify")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "FAIL  content   content differs in items (same 3 rows, different content)" in result.stdout
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: verify failed at content: content differs in items (same 3 rows, ")
        assert "notes" not in last  # the table that matches is not blamed
        assert "BACKUP_REPLICA_PATH" in last and "inv backup.doctor" in last
        assert "ok    schema    same schema" in result.stdout
    finally:
        ours.cleanup()
        theirs.cleanup()


def test_an_unchanged_database_is_compared_by_content_and_says_so(ws: Workspace):
    replicated_once(ws, ["a", "b", "c"])
    result = ws.inv("backup.verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    content   content identical in 2 table(s) (page for page)" in result.stdout
    assert "checked twice" not in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "verify: ok"
    assert not list(ws.root.rglob("live-pages"))  # the page copy lives only in verify's temp folder


def test_pages_that_differ_are_compared_table_by_table(ws: Workspace, monkeypatch):
    """Where the page images differ (or cannot be read), each table's rows are compared."""
    from backup import verify as verifying

    replicated_once(ws, ["a", "b", "c"])
    monkeypatch.setattr(verifying, "same_pages", lambda live, restored: False)
    monkeypatch.setattr(verifying, "_same_pages", lambda db, restored, folder: None)
    result = ws.inv_here("backup.verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    content   content identical in 2 table(s) (sha256 per table, rowid order)" in result.stdout


def test_pages_compare_equal_but_for_page_1s_volatile_header_fields(tmp_path):
    from backup.verify import same_pages

    a, b = tmp_path / "a", tmp_path / "b"
    data = bytearray(range(256)) * 8192  # 2 MB: more than one read
    a.write_bytes(data)
    for volatile in (24, 27, 40, 43, 92, 99):
        changed = bytearray(data)
        changed[volatile] ^= 0xFF
        b.write_bytes(changed)
        assert same_pages(a, b), volatile
    for content in (0, 18, 28, 39, 44, 91, 100, 4000, (1 << 20) + 5, len(data) - 1):
        changed = bytearray(data)
        changed[content] ^= 0xFF
        b.write_bytes(changed)
        assert not same_pages(a, b), content
    b.write_bytes(data + b"\0")
    assert not same_pages(a, b)


def test_content_is_proven_on_an_s3_replica_too(r2ws: Workspace):
    make_db(r2ws.db, 4)
    assert r2ws.inv("backup.setup").returncode == 0
    result = r2ws.inv("backup.verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"from s3://{r2ws.bucket}/chora.db" in result.stdout
    assert "content identical in 1 table(s) (page for page)" in result.stdout
    r2ws.assert_no_secrets()


# -- continuous backup off ---------------------------------------------------------


def test_without_a_daemon_and_nothing_new_verify_does_not_run_litestream_to_sync(ws: Workspace):
    """The WAL is where litestream left it and the replica holds its txid: no replicate -once.
    A row written since makes it sync again (below)."""
    replicated_once(ws, ["a"])
    assert ws.inv("backup.verify").returncode == 0  # its own sync leaves the WAL where litestream read it
    result = ws.inv("backup.verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no daemon running: nothing to sync (the replica holds txid " in result.stdout
    assert "the WAL has not moved since" in result.stdout and "replicate -once" not in result.stdout
    assert "content identical" in result.stdout
    insert(ws.db, "one more")
    again = ws.inv("backup.verify")
    assert again.returncode == 0 and "synced once with 'litestream replicate -once'" in again.stdout


def test_without_a_daemon_verify_tests_the_replica_and_warns(ws: Workspace):
    replicated_once(ws, ["a"])
    insert(ws.db, "written while nothing replicates")
    result = ws.inv("backup.verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "synced once with 'litestream replicate -once'" in result.stdout
    assert "content identical" in result.stdout  # the new row was made current, then proven
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning.startswith(WARNING)
    assert "inv backup.start-bg" in warning and "--require-running" in warning


def test_require_running_makes_a_stopped_daemon_a_failure(ws: Workspace):
    replicated_once(ws, ["a"])
    result = ws.inv("backup.verify", "--require-running")
    assert result.returncode == 1
    assert "ok    content   content identical" in result.stdout  # still tested
    assert "warning:" not in result.stderr  # the failure says it once
    assert result.stderr.strip().splitlines()[-1] == (
        "error: verify failed at daemon: continuous backup is off: no daemon replicates this "
        "workspace (--require-running); start it with 'inv backup.start-bg'"
    )


def test_a_running_daemon_passes_require_running_without_a_warning(ws: Workspace):
    make_db(ws.db)
    assert ws.inv("backup.local", "--background").returncode == 0
    insert(ws.db, *[f"burst {i}" for i in range(20)])
    result = ws.inv("backup.verify", "--require-running")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "asked the daemon" in result.stdout and "content identical" in result.stdout
    assert "warning:" not in result.stderr
    assert "start-bg" not in result.stdout + result.stderr  # never suggest starting it again


# -- a live database that moves during the check --------------------------------------


class WritingLitestream(Litestream):
    """The real litestream; a writer touches the live database during the first ``times`` restores.

    That is the moment between the sync and the comparison, where an
    application's write makes the live database move on.
    """

    latest_only = False  # True: only restores of the latest state, not those at a txid

    def __init__(self, settings, environ, db: Path, sql: str, times: int):
        super().__init__(settings, environ)
        self.db, self.sql, self.times = db, sql, times

    def json(self, command, *args, **kwargs):
        if command == "restore" and self.times and not (self.latest_only and "-txid" in args):
            self.times -= 1
            con = sqlite3.connect(self.db)
            try:
                con.execute(self.sql)
                con.commit()
            finally:
                con.close()
        return super().json(command, *args, **kwargs)


UPDATE = "UPDATE items SET body = body || '!' WHERE id = 1"
INSERT = "INSERT INTO items (body) VALUES ('late')"


@pytest.mark.parametrize(
    "sql, times, ok, check, detail",
    [
        (UPDATE, 1, True, "content",
         "content identical in 2 table(s) (page for page)"),
        (UPDATE, 2, True, "rows",
         "live database changed during the check: compared row counts only; row counts equal in 2 table(s)"),
        (INSERT, 2, False, "rows",
         "live database changed during the check: compared row counts only; row counts differ in "
         "items (live 4, backup 3); run verify again once the database has been idle for a sync interval"),
    ],
    ids=["moved-once-then-content", "moved-twice-counts-equal", "moved-twice-counts-differ"],
)
def test_a_database_that_moves_is_checked_again_then_by_counts(ws: Workspace, monkeypatch, sql, times, ok,
                                                              check, detail):
    """Where no one point can be held for both sides (below), a database that moves during
    the check is checked again, then by row counts."""
    from backup import wal

    def no_point(self, txid, out):
        raise wal.NoImage("it has no WAL")

    monkeypatch.setattr(wal.Reading, "image", no_point)
    replicated_once(ws, ["a", "b"])
    settings = config.load(cwd=ws.path, environ=ws.env)
    litestream = WritingLitestream(settings, ws.env, ws.db, sql, times)
    litestream.latest_only = True  # not the restore at the point, which is discarded
    workspace = Loaded.load(settings, litestream)
    result = verify(workspace, workspace.databases)
    by_name = {c.name: c for c in result.checks}
    assert "checked twice, because the live database changed during the first check" in by_name["sync"].detail
    assert by_name[check].detail == detail
    assert by_name[check].ok is ok and result.ok is ok
    assert result.warnings and result.warnings[0].startswith("continuous backup is off")


@pytest.mark.parametrize("sql", [UPDATE, INSERT])
def test_both_sides_are_read_at_one_txid_however_the_database_moves(ws: Workspace, sql):
    """The live database as it was at the txid the replica holds (its file and the start of
    its WAL), against the replica restored at that txid: writes during the check are not
    part of the question, and the content is still compared exactly."""
    replicated_once(ws, ["a", "b"])
    settings = config.load(cwd=ws.path, environ=ws.env)
    litestream = WritingLitestream(settings, ws.env, ws.db, sql, 2)
    workspace = Loaded.load(settings, litestream)
    result = verify(workspace, workspace.databases)
    by_name = {c.name: c for c in result.checks}
    assert result.ok, result.as_lines()
    assert "both sides read at txid " in by_name["sync"].detail and "checked twice" not in by_name["sync"].detail
    assert by_name["content"].detail == "content identical in 2 table(s) (page for page)"
    assert result.compared == {"chora.db": "content"} and result.points["chora.db"] == result.replica_txid


def test_a_replica_that_cannot_be_made_current_is_not_called_foreign(ws: Workspace):
    # A daemon with no control socket (as on Windows) cannot be asked to sync,
    # and with an hour's monitor interval it has not captured the last change.
    make_db(ws.db, 2)
    ws.config.write_text(
        f"dbs:\n  - path: {ws.db}\n    monitor-interval: 1h\n    replica:\n      type: file\n"
        f"      path: {ws.root / 'replica'}\n      sync-interval: 1h\n"
    )
    once = ws.litestream("replicate", "-config", str(ws.config), "-no-expand-env", "-once")
    assert once.returncode == 0, once.stderr
    assert ws.inv("backup.start-bg").returncode == 0
    database(ws.db, "UPDATE items SET body = 'changed' WHERE id = 1")
    result = ws.inv("backup.verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "daemon running without a control socket" in result.stdout
    assert ("ok    rows      the replica could not be made current: compared row counts only; "
            "row counts equal in 1 table(s)") in result.stdout
    assert "warning:" not in result.stderr
    assert ws.inv("backup.stop").returncode == 0


# -- the digest ---------------------------------------------------------------------


def database(path: Path, *statements: str) -> Path:
    con = sqlite3.connect(path)
    try:
        for statement in statements:
            con.execute(statement)
        con.commit()
    finally:
        con.close()
    return path


@pytest.mark.parametrize(
    "left, right",
    [
        ("1", "1.0"),  # integer and real
        ("1", "'1'"),  # integer and text
        ("'a'", "x'61'"),  # text and blob with the same bytes
        ("0.1", "0.1000000000000001"),  # floats that differ in the 16th digit
        ("NULL", "''"),
    ],
    ids=["int-real", "int-text", "text-blob", "float", "null-empty"],
)
def test_the_checksum_tells_values_apart(tmp_path, left, right):
    a = database(tmp_path / "a.db", "CREATE TABLE t (v)", f"INSERT INTO t VALUES ({left})")
    b = database(tmp_path / "b.db", "CREATE TABLE t (v)", f"INSERT INTO t VALUES ({right})")
    assert digest(a).counts == digest(b).counts == {"t": 1}
    assert digest(a).sums != digest(b).sums


def test_the_checksum_follows_the_rowid_and_the_primary_key(tmp_path):
    schema = (
        "CREATE TABLE plain (body TEXT)",
        "CREATE TABLE keyed (k TEXT PRIMARY KEY, v) WITHOUT ROWID",
        'CREATE TABLE shadowed ("rowid" TEXT, body TEXT)',  # a column hides the rowid's first name
    )
    a = database(
        tmp_path / "a.db", *schema,
        "INSERT INTO plain VALUES ('x'), ('y')",
        "INSERT INTO keyed VALUES ('b', 2), ('a', 1)",
        "INSERT INTO shadowed VALUES ('z', 'first'), ('a', 'second')",
    )
    b = database(
        tmp_path / "b.db", *schema,
        "INSERT INTO plain VALUES ('y'), ('x')",  # same rows, other rowids
        "INSERT INTO keyed VALUES ('a', 1), ('b', 2)",  # same rows, other insert order
        "INSERT INTO shadowed VALUES ('z', 'first'), ('a', 'second')",
    )
    da, db_ = digest(a), digest(b)
    assert da.counts == db_.counts == {"plain": 2, "keyed": 2, "shadowed": 2}
    assert da.sums["plain"] != db_.sums["plain"]
    assert da.sums["keyed"] == db_.sums["keyed"]
    assert da.sums["shadowed"] == db_.sums["shadowed"]


def test_the_digest_leaves_out_bookkeeping_and_virtual_tables(tmp_path):
    statements = [
        "CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)",
        "CREATE TABLE xlitestream (v)",  # '_' in the filter is literal, not a wildcard
        "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, body)",
        "INSERT INTO items (body) VALUES (CAST(x'ff00' AS TEXT))",  # text that is not UTF-8
    ]
    virtual = fts5_available()
    if virtual:
        statements.append("CREATE VIRTUAL TABLE search USING fts5(body)")
    d = digest(database(tmp_path / "a.db", *statements))
    assert "_litestream_seq" not in d.counts and "sqlite_sequence" not in d.counts
    assert {"xlitestream", "items"} <= set(d.counts)
    if virtual:  # its rows are compared through its shadow tables; the table itself is schema
        assert "search" not in d.counts and "search_content" in d.counts
        assert "table search" in d.schema


def fts5_available() -> bool:
    con = sqlite3.connect(":memory:")
    try:
        con.execute("CREATE VIRTUAL TABLE probe USING fts5(body)")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()


# -- the pre-commit hook, through the real pre-commit client --------------------------


def readme_hook_config() -> tuple[str, dict]:
    """The documented pre-commit section and its .pre-commit-config.yaml example."""
    readme = (REPO / "docs" / "commands.md").read_text("utf-8")
    section = readme.split("#### As a pre-commit hook", 1)[1].split("\n### ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return section, yaml.safe_load(block)


def test_the_hook_definition_shows_its_output():
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["verbose"] is True
    section, example = readme_hook_config()
    (entry,) = example["repos"][0]["hooks"]
    assert entry["id"] == hook["id"] == "backup-restore-smoke"
    # The docs show a manual run: the example's stages must allow one.
    assert "pre-commit run --hook-stage manual backup-restore-smoke" in section
    assert set(entry["stages"]) == {"pre-push", "manual"}


def test_the_readme_hook_runs_through_pre_commit_and_shows_the_warning(ws: Workspace):
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the package is not a git checkout: pre-commit needs a repository to install from")
    hookrepo = ws.root / "hookrepo"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(hookrepo)], check=True, timeout=120)
    rev = subprocess.run(
        ["git", "-C", str(hookrepo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
    ).stdout.strip()

    replicated_once(ws, ["a", "b"])
    _, example = readme_hook_config()
    example["repos"][0].update(repo=str(hookrepo), rev=rev)
    env = {"PRE_COMMIT_HOME": str(ws.root / "pre-commit-home"), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid"}

    def run_hook(config: dict) -> subprocess.CompletedProcess:
        (ws.path / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config))
        assert ws.run("git", "add", ".pre-commit-config.yaml", env=env).returncode == 0
        return ws.run(str(BIN / "pre-commit"), "run", "--hook-stage", "manual", "backup-restore-smoke",
                      env=env, timeout=900)

    assert ws.run("git", "init", "--quiet", env=env).returncode == 0
    result = run_hook(example)  # installs the hook from the clone, with pip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Passed" in output and "verify: ok" in output
    assert any(line.startswith(WARNING) for line in output.splitlines()), output
    checks = [line for line in output.splitlines() if re.match(r"\s*(ok|FAIL) {2,}\S", line)]
    assert checks and all(line.startswith("  ") for line in checks), output  # pre-commit strips

    example["repos"][0]["hooks"][0]["args"] = ["--require-running"]
    strict = run_hook(example)
    output = strict.stdout + strict.stderr
    assert strict.returncode == 1, output
    assert "Failed" in output and "error: verify failed at daemon: continuous backup is off" in output
