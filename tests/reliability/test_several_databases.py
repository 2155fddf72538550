"""Several databases per workspace (issue 11): ``BACKUP_DB=chora.db,data/*.db`` in
local mode, a 1 s sync interval. One daemon replicates them all, a database created
under the glob while it runs included; each has its own replica folder; status,
snapshots, restore and verify speak of each. Real litestream, real files, the CLI.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from conftest import Workspace, insert, make_db, rows, wait_for

from .conftest import kill_leftovers, start_bg, status, stop

NAMES = ("chora.db", "data/x.db", "data/y.db", "data/z.db")  # data/z.db appears while the daemon runs


def bodies(name: str, batch: str) -> list[str]:
    """Two rows no other database or batch has."""
    return [f"{name} {batch} 1", f"{name} {batch} 2"]


def fill(path: Path, name: str) -> None:
    make_db(path, 0)
    insert(path, *bodies(name, "base"))


def relative(ws: Workspace, path: str) -> str:
    """An absolute path a command printed, relative to the workspace (data/x.db)."""
    assert Path(path).is_absolute(), path
    return Path(path).resolve().relative_to(ws.path.resolve()).as_posix()


def named(name: str, text: str) -> bool:
    """Does ``text`` name the database ``name`` (relative or absolute), and not, say,
    its ``.chora.db-litestream`` state folder?"""
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-]|\.\w)", text) is not None


@pytest.fixture
def several(ws: Workspace, tmp_path: Path) -> Iterator[Workspace]:
    """chora.db, data/x.db and data/y.db, configured for local mode; stopped at the end."""
    ws.backups = tmp_path / "backups"
    ws.write_env(BACKUP_DB="chora.db,data/*.db", BACKUP_LOCAL_DIR=str(ws.backups),
                 BACKUP_SYNC_INTERVAL="1s")
    (ws.path / "data").mkdir()
    for name in NAMES[:3]:
        fill(ws.path / name, name)
    try:
        written = ws.inv("backup.local", "--no-start")
        assert written.returncode == 0, written.stdout + written.stderr
        yield ws
    finally:
        ws.inv("backup.stop")
        kill_leftovers(ws)


def replicated(ws: Workspace, after: dict[str, int] | None = None) -> dict[str, int] | None:
    """Each database's replica txid once ``status --json`` exits 0, is healthy, lists
    exactly the four databases, and each replica holds its local txid (and, with
    ``after``, one newer than ``after`` says); None until then."""
    code, data = status(ws)
    found = {relative(ws, db["path"]): db for db in data["databases"]}
    if code != 0 or data["healthy"] is not True or set(found) != set(NAMES):
        return None
    if any(not d["exists"] or d["error"] or d["replica_txid"] is None or d.get("lag_txids", 0) != 0
           for d in found.values()):
        return None
    txids = {name: int(d["replica_txid"], 16) for name, d in found.items()}
    if after and any(txids[name] <= after[name] for name in NAMES):
        return None
    return txids


def write_batch(ws: Workspace, batch: str) -> None:
    for name in NAMES:
        insert(ws.path / name, *bodies(name, batch))


def restored(ws: Workspace, *args: str) -> list[dict]:
    """``restore --json`` of every database: the items, one per database, by relative path."""
    result = ws.inv("backup.restore", "--json", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    items = json.loads(result.stdout)["databases"]
    assert sorted(relative(ws, item["path"]) for item in items) == sorted(NAMES)
    for item in items:
        assert {"path", "txid", "timestamp", "integrity", "moved_aside", "source"} <= item.keys(), item
        assert item["integrity"] == "ok", item
        assert item["moved_aside"] and Path(item["moved_aside"]).is_file(), item  # --force: moved, not deleted
    return items


def failed_databases(output: str) -> set[str]:
    """The databases verify's FAIL lines are about: the ones a line names, else the
    last one named on a line above it (a per-database heading)."""
    failed: set[str] = set()
    current: list[str] = []
    for line in output.splitlines():
        current = [n for n in NAMES if named(n, line)] or current
        if re.search(r"\bFAIL\b", line):
            assert current, f"a FAIL line that names no database: {line!r}"
            failed.update(current)
    return failed


def test_one_daemon_replicates_a_glob_and_restores_each_database(several, report):
    ws = several
    began = time.monotonic()
    start_bg(ws)  # one litestream for every database
    fill(ws.path / "data" / "z.db", "data/z.db")  # the glob's watch must pick it up, no restart
    before = wait_for(lambda: replicated(ws), 30, interval=0.3, what="the four databases listed and healthy")

    write_batch(ws, "old")
    replicated_old = wait_for(lambda: replicated(ws, before), 30, interval=0.3, what="the old rows replicated")
    time.sleep(2.5)  # the old rows' L0 files are older than the point in time, by more than a sync interval
    point = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    time.sleep(2)  # and the new rows' files newer
    write_batch(ws, "new")
    wait_for(lambda: replicated(ws, replicated_old), 30, interval=0.3, what="the new rows replicated")
    stop(ws)

    latest = {name: rows(ws.path / name) for name in NAMES}
    for name in NAMES:
        assert [b for _, b in latest[name]] == bodies(name, "base") + bodies(name, "old") + bodies(name, "new")

    # Each database in a folder of its own: chora.db where it always was, the others by their path.
    holders = {p.relative_to(ws.backups).as_posix().split("/ltx/")[0] for p in ws.backups.rglob("*.ltx")}
    assert holders == set(NAMES)

    listing = ws.inv("backup.snapshots", "--json")
    assert listing.returncode == 0, listing.stdout + listing.stderr
    windows = json.loads(listing.stdout)["databases"]
    assert sorted(relative(ws, w["path"]) for w in windows) == sorted(NAMES)
    assert all(isinstance(w["snapshots"], list) and w["window"] for w in windows), windows

    # One database, to another file: named by its relative path, then by its absolute one.
    out = ws.root / "out"
    out.mkdir()
    for flag, name in (("data/x.db", "data/x.db"), (str(ws.path / "chora.db"), "chora.db")):
        target = out / Path(name).name
        one = ws.inv("backup.restore", "--db", flag, "--output", str(target))
        assert one.returncode == 0, one.stdout + one.stderr
        assert rows(target) == latest[name]

    # Every database to its own path: existing files need --force.
    refused = ws.inv("backup.restore")
    assert refused.returncode == 1 and "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert {name: rows(ws.path / name) for name in NAMES} == latest

    restored(ws, "--force", "--timestamp", point)
    for name in NAMES:
        assert [b for _, b in rows(ws.path / name)] == bodies(name, "base") + bodies(name, "old"), name

    restored(ws, "--force")
    assert {name: rows(ws.path / name) for name in NAMES} == latest

    # One damaged replica: verify fails, naming that database and no other. With the daemon
    # running again (each restored database continues its replica), as verify usually meets it.
    start_bg(ws)
    damaged = list((ws.backups / "data" / "y.db").rglob("*.ltx"))
    assert damaged
    for ltx in damaged:  # past the header, as a bad disk would (deleted, verify's sync could upload anew)
        data = bytearray(ltx.read_bytes())
        for i in range(100, len(data), 7):
            data[i] ^= 0xFF
        ltx.write_bytes(bytes(data))
    check = ws.inv("backup.verify")
    output = check.stdout + check.stderr
    assert check.returncode == 1, output
    assert "Traceback" not in output
    assert failed_databases(output) == {"data/y.db"}, output
    assert all(named(name, check.stdout) for name in NAMES), check.stdout  # a line for each
    last = check.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and named("data/y.db", last), last
    assert not any(named(name, last) for name in NAMES if name != "data/y.db"), last
    stop(ws)
    report(f"several databases: chora.db + data/*.db (one created while running), 4 replica folders, "
           f"restored one, all, and all at a point in time; verify named the damaged one; "
           f"{time.monotonic() - began:.1f}s")


def test_restore_needs_one_known_database_for_an_output_path(several):
    out = several.root / "out.db"
    for args, words in (
        (("--output", str(out)), ["--db"]),
        (("--db", "nope.db", "--output", str(out)), ["nope.db", "chora.db", "data/x.db", "data/y.db"]),
    ):
        result = several.inv("backup.restore", *args)
        assert result.returncode == 2, result.stdout + result.stderr  # errors.py: EXIT_CONFIG
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        assert all(word in lines[0] for word in words), lines[0]
        assert not out.exists()


def test_the_glob_is_litestreams_folder_replication_and_one_database_keeps_its_place(several):
    glob = several.inv("backup.local", "--dry-run")
    assert glob.returncode == 0, glob.stdout + glob.stderr
    first, folder = yaml.safe_load(glob.stdout)["dbs"]
    assert first["path"] == str(several.db)
    assert first["replica"]["path"] == str(several.backups / "chora.db")
    assert (folder["dir"], folder["pattern"], folder["watch"]) == (str(several.path / "data"), "*.db", True)

    several.write_env(BACKUP_LOCAL_DIR=str(several.backups))  # BACKUP_DB unset: chora.db alone
    single = several.inv("backup.local", "--dry-run")
    assert single.returncode == 0, single.stdout + single.stderr
    (only,) = yaml.safe_load(single.stdout)["dbs"]
    assert only["path"] == str(several.db)
    assert only["replica"]["path"] == str(several.backups / "chora.db")
