"""restore, snapshots and verify against real replicas."""
from __future__ import annotations

import json
import shlex
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from backup import config, timeparse
from backup.errors import ConfigError
from backup.litestream import Litestream
from backup.restore import restore as do_restore
from backup.workspace import Workspace as Loaded

from conftest import BIN, REPO, Workspace, insert, make_db, rows, wait_for


def caught_up(ws: Workspace, after: str | None = None) -> dict:
    """Wait until the replica holds the local txid (beyond ``after``); return status JSON."""

    def check():
        result = ws.inv("backup.status", "--json")
        data = json.loads(result.stdout)
        db = data["databases"][0]
        fresh = after is None or (db["local_txid"] or "") > after
        return fresh and db["local_txid"] and db["local_txid"] == db["replica_txid"] and data

    return wait_for(check, 30, interval=0.2, what="replica to catch up")


def replicated(ws: Workspace, n: int = 3) -> None:
    """A local-mode workspace with ``n`` rows replicated, daemon stopped."""
    make_db(ws.db, n)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    assert ws.inv("backup.start-bg").returncode == 0
    caught_up(ws)
    assert ws.inv("backup.stop").returncode == 0


def files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_point_in_time_restores_exactly_the_earlier_batches(ws: Workspace):
    make_db(ws.db, 0)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    assert ws.inv("backup.start-bg").returncode == 0
    empty = caught_up(ws)["databases"][0]["replica_txid"]
    insert(ws.db, "a1", "a2")
    first = caught_up(ws, after=empty)["databases"][0]["replica_txid"]
    # LTX timestamps have one-second resolution: leave a clear second either side.
    start = time.time()
    wait_for(lambda: time.time() > start + 1.5, 5, what="the clock")
    moment = datetime.now(timezone.utc)
    wait_for(lambda: time.time() > moment.timestamp() + 1.5, 5, what="the clock")
    insert(ws.db, "b1", "b2", "b3")
    caught_up(ws, after=first)
    assert ws.inv("backup.stop").returncode == 0
    batch_a = rows(ws.db)[:2]
    assert [b for _, b in batch_a] == ["a1", "a2"]

    forms = {
        "rfc3339": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "local": moment.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
    }
    for name, text in forms.items():
        out = ws.root / f"pit-{name}.db"
        result = ws.inv("backup.restore", "--output", str(out), "--timestamp", text, "--json")
        assert result.returncode == 0, result.stderr
        assert rows(out) == batch_a, name
        assert json.loads(result.stdout)["path"] == str(out)

    out = ws.root / "by-txid.db"
    result = ws.inv("backup.restore", "--output", str(out), "--txid", first)
    assert result.returncode == 0, result.stderr
    assert rows(out) == batch_a

    latest = ws.root / "latest.db"
    assert ws.inv("backup.restore", "--output", str(latest)).returncode == 0
    assert len(rows(latest)) == 5

    too_early = ws.inv("backup.restore", "--output", str(ws.root / "x.db"), "--timestamp", "1d")
    assert too_early.returncode == 1
    assert "is before the earliest backup: the replica can restore" in too_early.stderr
    assert " to " in too_early.stderr and "txid" in too_early.stderr
    assert not (ws.root / "x.db").exists()


def test_force_moves_the_old_database_aside_byte_for_byte(ws: Workspace):
    replicated(ws, 4)
    insert(ws.db, "written after the backup")  # the live file differs from the backup
    old = ws.db.read_bytes()
    refused = ws.inv("backup.restore")
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert ws.db.read_bytes() == old
    result = ws.inv("backup.restore", "--force", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("path", "txid", "timestamp", "integrity", "moved_aside"):
        assert key in data
    assert data["integrity"] == "ok"
    aside = Path(data["moved_aside"])
    assert aside.name.startswith("chora.db.pre-restore-")
    assert aside.read_bytes() == old
    assert len(rows(ws.db)) == 4


def test_restore_is_refused_while_the_daemon_replicates_it(ws: Workspace):
    make_db(ws.db)
    assert ws.inv("backup.local", "--background").returncode == 0
    before = ws.db.stat().st_ino
    result = ws.inv("backup.restore", "--force")
    assert result.returncode == 1
    assert "stop it first" in result.stderr
    assert ws.db.stat().st_ino == before
    assert not list(ws.path.glob("*.pre-restore-*"))


def test_restore_is_refused_while_another_process_holds_the_file(ws: Workspace):
    replicated(ws)
    holder = ws.spawn(
        sys.executable, "-c",
        f"import sqlite3,time; c=sqlite3.connect({str(ws.db)!r}); c.execute('select 1 from items').fetchall();"
        "print('open', flush=True); time.sleep(120)",
    )
    wait_for(lambda: holder.stdout.readline().strip() == b"open", 10, what="holder")
    result = ws.inv("backup.restore", "--force")
    assert result.returncode == 1
    assert f"is open in process {holder.pid}" in result.stderr
    assert not list(ws.path.glob("*.pre-restore-*"))


def test_stale_sidecars_beside_an_absent_target_are_moved_away(ws: Workspace):
    replicated(ws)
    out = ws.root / "fresh.db"
    Path(str(out) + "-wal").write_bytes(b"stale wal that sqlite would replay")
    Path(str(out) + "-shm").write_bytes(b"stale shm")
    result = ws.inv("backup.restore", "--output", str(out), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["moved_aside"] is None
    assert len(data["stale_sidecars_moved"]) == 2
    assert not Path(str(out) + "-wal").exists()
    assert rows(out) == rows(ws.db)


def test_dry_run_prints_the_plan_and_changes_nothing(ws: Workspace):
    replicated(ws)
    before = files_under(ws.path)
    result = ws.inv("backup.restore", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["files"] and plan["bytes"] > 0
    assert plan["min_txid"] and plan["max_txid"]
    human = ws.inv("backup.restore", "--dry-run")
    assert "bytes to download" in human.stdout
    assert files_under(ws.path) == before


BAD = [
    (["--timestamp", "yesterday-ish"], "is not a point in time"),
    (["--timestamp", "2999-01-01T00:00:00Z"], "is in the future"),
    (["--txid", "xyz"], "is not a txid"),
    (["--txid", "0000000000000099"], "is outside what the replica can reach"),
    (["--txid", "1", "--timestamp", "1m"], "not both"),
    (["--output", "/nonexistent-folder/x.db"], "does not exist; create it first"),
]


@pytest.mark.parametrize(
    "args, expected",
    [pytest.param(a, e, id=e, marks=pytest.mark.posix if "/nonexistent-folder/x.db" in a else ()) for a, e in BAD],
)
def test_bad_input_is_a_clear_error_with_nothing_written(ws: Workspace, args, expected):
    replicated(ws)
    before = files_under(ws.root)
    out = ["--output", str(ws.root / "out.db")] if "--output" not in args else []
    result = ws.inv("backup.restore", *args, *out)
    # errors.py: bad input is EXIT_CONFIG; a txid the replica cannot reach fails the restore.
    assert result.returncode == (1 if "outside what the replica can reach" in expected else 2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    after = {p: b for p, b in files_under(ws.root).items() if "state" not in p.parts}
    assert after == {p: b for p, b in before.items() if "state" not in p.parts}
    assert not Path("/nonexistent-folder").exists()


def test_nothing_in_the_replica_yet(ws: Workspace):
    make_db(ws.db)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    result = ws.inv("backup.restore", "--output", str(ws.root / "x.db"))
    assert result.returncode == 1
    assert "nothing to restore yet" in result.stderr


def test_missing_bucket_is_named(r2ws: Workspace):
    r2ws.write_env(
        R2_ENDPOINT=_endpoint(r2ws), R2_BUCKET="no-such-bucket-here",
        R2_ACCESS_KEY_ID="AKIAX", R2_SECRET_ACCESS_KEY="y",
    )
    assert r2ws.inv("backup.setup").returncode == 0
    make_db(r2ws.db)
    for command in (("backup.restore", "--output", str(r2ws.root / "x.db")), ("backup.snapshots",),
                    ("backup.verify",), ("backup.start-bg",), ("backup.status",), ("backup.doctor",),
                    ("backup.cost",)):
        result = r2ws.inv(*command)
        # status's 3 is "not running" (it says the bucket is missing per database); 1 elsewhere
        assert result.returncode == (3 if command == ("backup.status",) else 1), command
        said = result.stdout + result.stderr
        assert "bucket 'no-such-bucket-here' does not exist: create it, or fix R2_BUCKET" in said, (
            command, said)


def _endpoint(ws: Workspace) -> str:
    text = (ws.path / ".env").read_text()
    return next(l.split("=", 1)[1] for l in text.splitlines() if l.startswith("R2_ENDPOINT="))


def test_progress_is_reported_with_the_final_size(ws: Workspace):
    replicated(ws, 2000)
    settings = config.load(cwd=ws.path, environ=ws.env)
    seen: list[tuple[int, float]] = []
    workspace = Loaded.load(settings, Litestream(settings, environ=ws.env))
    result = do_restore(workspace, workspace.databases,
                        output=ws.root / "p.db", progress=lambda b, s: seen.append((b, s))).items[0]
    assert seen and seen[-1][0] == result.bytes > 0


def test_snapshots_and_window(ws: Workspace):
    replicated(ws)
    result = ws.inv("backup.snapshots", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"snapshots", "window"}
    for snap in data["snapshots"]:
        assert set(snap) == {"timestamp", "min_txid", "max_txid", "size"}
    assert data["window"]["earliest"] <= data["window"]["latest"]
    human = ws.inv("backup.snapshots")
    assert "restorable:" in human.stdout


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-25T14:00:00Z", datetime(2026, 11, 25, 14, tzinfo=timezone.utc)),
        ("2026-11-25T15:00:00+01:00", datetime(2026, 11, 25, 14, tzinfo=timezone.utc)),
        ("15m", datetime(2026, 11, 26, 11, 45, tzinfo=timezone.utc)),
        ("2h", datetime(2026, 11, 26, 10, tzinfo=timezone.utc)),
        ("1d", datetime(2026, 11, 25, 12, tzinfo=timezone.utc)),
        ("1h30m", datetime(2026, 11, 26, 10, 30, tzinfo=timezone.utc)),
    ],
)
def test_timeparse(text, expected):
    now = datetime(2026, 11, 26, 12, tzinfo=timezone.utc)
    assert timeparse.parse(text, now) == expected


def test_timeparse_local_time_is_in_the_local_zone():
    now = datetime.now(timezone.utc)
    local = (now - timedelta(hours=1)).astimezone().replace(microsecond=0, tzinfo=None)
    parsed = timeparse.parse(local.strftime("%Y-%m-%d %H:%M:%S"), now)
    assert parsed == local.astimezone().astimezone(timezone.utc)


@pytest.mark.parametrize("text", ["", "tomorrow", "15", "2026-13-01", "1y", "-5m"])
def test_timeparse_rejects(text):
    with pytest.raises(ConfigError, match="RFC 3339"):
        timeparse.parse(text)


# -- verify -----------------------------------------------------------------------


def test_verify_passes_on_a_good_replica_and_cleans_up(ws: Workspace):
    replicated(ws)
    tmp = ws.root / "tmp"
    tmp.mkdir()
    result = ws.inv("backup.verify", env={"TMPDIR": str(tmp)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verify: ok" in result.stdout
    assert list(tmp.iterdir()) == []


def test_verify_syncs_a_running_daemon_first(ws: Workspace):
    make_db(ws.db)
    assert ws.inv("backup.local", "--background").returncode == 0
    insert(ws.db, *[f"burst {i}" for i in range(50)])
    result = ws.inv("backup.verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "asked the daemon" in result.stdout


def test_verify_fails_on_a_damaged_replica(ws: Workspace):
    replicated(ws, 50)
    replica = ws.home / ".chora" / "backups" / "chora.db"
    for ltx in replica.rglob("*.ltx"):
        data = bytearray(ltx.read_bytes())
        for i in range(100, len(data), 7):
            data[i] ^= 0xFF
        ltx.write_bytes(bytes(data))
    tmp = ws.root / "tmp"
    tmp.mkdir()
    result = ws.inv("backup.verify", env={"TMPDIR": str(tmp)})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: verify failed at "), result.stderr
    assert list(tmp.iterdir()) == []


def test_verify_rejects_a_bad_max_age(ws: Workspace):
    replicated(ws)
    result = ws.inv("backup.verify", "--max-age", "bogus")
    assert result.returncode == 2 and "--max-age 'bogus' is not a duration" in result.stderr


def test_verify_without_backup_is_ok_unless_strict(ws: Workspace):
    result = ws.inv("backup.verify")
    assert result.returncode == 0
    assert "no backup configured" in result.stdout
    strict = ws.inv("backup.verify", "--strict")
    assert strict.returncode == 1 and "no backup configured" in strict.stderr


def test_pre_commit_hook_entry_runs_verify(ws: Workspace):
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "backup-restore-smoke"
    assert hook["pass_filenames"] is False and hook["always_run"] is True
    assert hook["require_serial"] is True
    assert set(hook["stages"]) <= {"pre-push", "manual", "pre-commit"}
    replicated(ws)
    argv = shlex.split(hook["entry"])
    assert argv[0] == "chora-backup"
    result = ws.run(*argv)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verify: ok" in result.stdout


def test_refused_credentials_are_named(ws: Workspace, strict_s3_endpoint):
    ws.write_env(
        R2_ENDPOINT=strict_s3_endpoint, R2_BUCKET="chora-backup",
        R2_ACCESS_KEY_ID="AKIANOTKNOWNHERE", R2_SECRET_ACCESS_KEY="wrong-secret",
    )
    assert ws.inv("backup.setup").returncode == 0
    result = ws.inv("backup.restore", "--output", str(ws.root / "x.db"))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: access denied: the access key id was refused; check R2_ACCESS_KEY_ID in .env"
    )
    assert "AKIANOTKNOWNHERE" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "text",
    ["2026-11-26T03:07:57.145869099Z", "2026-11-26T03:07:57Z", "2026-11-26T03:07:57.1+00:00"],
)
def test_litestream_timestamps_parse_on_every_supported_python(text):
    parsed = timeparse.from_litestream(text)
    assert parsed.tzinfo is not None
    assert parsed.replace(microsecond=0) == datetime(2026, 11, 26, 3, 7, 57, tzinfo=timezone.utc)


def test_two_forced_restores_in_one_second_keep_both_old_files(ws: Workspace):
    replicated(ws, 2)
    insert(ws.db, "only in the live file")
    original = ws.db.read_bytes()
    first = json.loads(ws.inv("backup.restore", "--force", "--json").stdout)
    second = json.loads(ws.inv("backup.restore", "--force", "--json").stdout)
    assert first["moved_aside"] != second["moved_aside"]
    assert Path(first["moved_aside"]).read_bytes() == original
    assert Path(second["moved_aside"]).exists()


@pytest.mark.parametrize("folder", ["o#x", pytest.param("q?y", marks=pytest.mark.posix), "p%41"])
def test_restore_into_a_folder_with_uri_characters_checks_the_right_file(ws: Workspace, folder):
    replicated(ws, 3)
    target_dir = ws.root / folder
    target_dir.mkdir()
    out = target_dir / "r.db"
    result = ws.inv("backup.restore", "--output", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert rows(out) == rows(ws.db)
    assert sorted(p.name for p in ws.root.iterdir()) == sorted(
        {"ws", "home", "state", folder} | {p.name for p in ws.root.iterdir() if p.name == "tmp"}
    )


def test_a_timestamp_after_the_newest_backup_reports_the_state_restored(ws: Workspace):
    replicated(ws, 2)
    data = json.loads(ws.inv("backup.restore", "--output", str(ws.root / "t.db"),
                             "--timestamp", "0s", "--json").stdout)
    window = json.loads(ws.inv("backup.snapshots", "--json").stdout)["window"]
    assert data["timestamp"] == window["latest"]


def test_another_spelling_of_the_live_database_is_still_refused(ws: Workspace):
    make_db(ws.db)
    assert ws.inv("backup.local", "--background").returncode == 0
    (ws.path / "sub").mkdir()
    result = ws.inv("backup.restore", "--output", str(ws.path / "sub" / ".." / "chora.db"), "--force")
    assert result.returncode == 1 and "stop it first" in result.stderr
    assert not list(ws.path.glob("*.pre-restore-*"))


def test_concurrent_forced_restores_to_one_output_keep_every_original(ws: Workspace):
    replicated(ws, 2)
    out = ws.root / "out.db"
    out.write_bytes(b"precious")
    procs = [ws.spawn(str(BIN / "inv"), "backup.restore", "--output", str(out), "--force")
             for _ in range(3)]
    codes = [p.wait(120) for p in procs]
    assert codes == [0, 0, 0]
    kept = sorted(ws.root.glob("out.db.pre-restore-*"))
    assert len(kept) == 3
    assert b"precious" in [k.read_bytes() for k in kept]


def test_user_timestamps_with_any_fraction_length():
    now = datetime(2026, 11, 26, 12, tzinfo=timezone.utc)
    assert timeparse.parse("2026-11-26T04:41:46.1Z", now) == datetime(
        2026, 11, 26, 4, 41, 46, 100000, tzinfo=timezone.utc
    )
