"""Healthy means restorable: an empty replica, a replica with a hole, and backup.snapshot.

Real litestream daemons, real replicas (a folder, and the local S3 server), real
compaction ticks: the level intervals are shortened in litestream.yml so that
ticks come within seconds (they fall on wall-clock multiples of each interval).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from conftest import Workspace, insert, make_db, rows, s3_client, wait_for

NON_CONTIGUOUS = "non-contiguous transaction ids in input files"


def set_levels(ws: Workspace, *intervals: str) -> None:
    """Replace the compaction intervals of the generated litestream.yml."""
    text = ws.config.read_text()
    block = "levels:\n" + "".join(f"  - interval: {i}\n" for i in intervals)
    new, n = re.subn(r"levels:\n(?:  - interval: \S+\n)+", block, text)
    assert n == 1
    ws.config.write_text(new)


def replica_dir(ws: Workspace) -> Path:
    return Path(yaml.safe_load(ws.config.read_text())["dbs"][0]["replica"]["path"])


def listing(ws: Workspace) -> list[dict]:
    proc = ws.litestream("ltx", "-config", str(ws.config), "-no-expand-env", "-level", "all", "-json", str(ws.db))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout or "[]")


def txid(text: str) -> int:
    return int(text, 16)


def once(ws: Workspace) -> None:
    """One sync with no daemon and no compaction: exactly the L0 files of these changes."""
    proc = ws.litestream("replicate", "-config", str(ws.config), "-no-expand-env", "-once")
    assert proc.returncode == 0, proc.stderr


def status(ws: Workspace) -> tuple[int, dict]:
    result = ws.inv("backup.status", "--json")
    assert result.stdout.lstrip().startswith("{"), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def healthy(ws: Workspace) -> dict:
    def check():
        code, data = status(ws)
        return code == 0 and data

    return wait_for(check, 30, interval=0.3, what="status to be healthy")


def commit(ws: Workspace, body: str) -> None:
    """Insert a row and wait until the replica holds it: one L0 file per call."""
    before = status(ws)[1]["databases"][0]["local_txid"] or ""
    insert(ws.db, body)

    def caught_up():
        db = status(ws)[1]["databases"][0]
        return db["local_txid"] and db["local_txid"] > before and db["local_txid"] == db["replica_txid"]

    wait_for(caught_up, 30, interval=0.2, what=f"the replica to hold {body!r}")


def doctor(ws: Workspace) -> tuple[int, dict[str, dict]]:
    result = ws.inv("backup.doctor", "--json")
    return result.returncode, {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def restored_rows(ws: Workspace, name: str) -> list[tuple]:
    out = ws.root / f"{name}.db"
    result = ws.inv("backup.restore", "--output", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return rows(out)


def log_since(ws: Workspace, offset: int) -> str:
    return (ws.state / "litestream.log").read_bytes()[offset:].decode("utf-8", "replace")


def compacted(text: str, level: int) -> bool:
    return re.search(rf'msg="compaction complete".* level={level} ', text) is not None


# -- an empty replica ---------------------------------------------------------------


def test_an_emptied_replica_is_failing_until_a_snapshot(ws: Workspace):
    make_db(ws.db, 5)
    assert ws.inv("backup.local", "--background").returncode == 0
    # litestream takes its first snapshot a moment after the first sync: let it land first.
    # (a listing: with a daemon running, status shows the snapshot as the last listing saw it)
    wait_for(lambda: json.loads(ws.inv("backup.snapshots", "--json").stdout)["snapshots"],
             30, interval=0.3, what="litestream's first snapshot")
    before = healthy(ws)["databases"][0]
    assert before["restorable"] is True and before["hole"] is None

    # Someone deletes the backup: the daemon believes it uploaded everything and
    # has nothing new to send, so the replica stays empty.
    for path in replica_dir(ws).iterdir():
        if path.is_dir():
            for f in path.rglob("*"):
                if f.is_file():
                    f.unlink()
    # The daemon cannot tell (it believes the replica holds it all): status shows it from
    # the last listing, which any listing command makes.
    assert ws.inv("backup.snapshots").returncode == 0
    code, data = status(ws)
    db = data["databases"][0]
    assert code == 1 and data["healthy"] is False
    assert db["restorable"] is False and db["hole"] is None
    assert "the replica held nothing when last listed" in db["error"] and "inv backup.snapshot" in db["error"]
    human = ws.inv("backup.status")
    assert human.returncode == 1 and "status: failing" in human.stdout
    assert "restorable     no" in human.stdout

    code, checks = doctor(ws)
    assert code == 1 and checks["daemon"]["state"] == "fail"
    assert "the replica held nothing when last listed" in checks["daemon"]["detail"]

    # verify says what to do, and never to start the daemon that runs.
    result = ws.inv("backup.verify")
    assert result.returncode == 1
    assert "inv backup.snapshot" in result.stderr and "start-bg" not in result.stdout + result.stderr

    pid = ws.daemon_pid()
    result = ws.inv("backup.snapshot")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"stopping the daemon (pid {pid})" in out
    assert "the replica holds nothing: cleared litestream's local state" in out
    assert "took a snapshot up to txid" in out
    assert "the daemon started again (pid" in out and ws.daemon_pid() not in (None, pid)

    after = healthy(ws)["databases"][0]
    assert after["restorable"] is True and after["error"] is None
    assert restored_rows(ws, "after") == rows(ws.db)
    verify = ws.inv("backup.verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_an_empty_replica_without_a_daemon_is_not_running_not_failing(ws: Workspace):
    make_db(ws.db)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    code, data = status(ws)
    assert code == 3 and data["databases"][0]["restorable"] is False
    result = ws.inv("backup.restore", "--output", str(ws.root / "x.db"))
    assert result.returncode == 1 and "start replication with 'inv backup.start-bg'" in result.stderr


# -- a hole ---------------------------------------------------------------------------


# Level intervals no tick reaches during a test (ticks fall on wall-clock multiples).
NEVER = ("720h", "720h", "720h")


def with_level1_files(ws: Workspace) -> int:
    """A local workspace whose replica has level-1 files; the newest txid they reach.

    Level-1 files from before a hole are what a snapshot alone leaves for level 2
    to trip over. The daemon is stopped afterwards.
    """
    make_db(ws.db, 3)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    set_levels(ws, "2s", *NEVER[1:])
    assert ws.inv("backup.start-bg").returncode == 0
    for n in range(3):
        commit(ws, f"early {n}")
    wait_for(lambda: any(f["level"] == 1 for f in listing(ws)), 30, interval=0.5, what="a level-1 file")
    assert ws.inv("backup.stop").returncode == 0
    return max(txid(f["max_txid"]) for f in listing(ws) if f["level"] == 1)


def delete_middle_pending(ws: Workspace, level1: int) -> int:
    """Delete the middle one of the L0 files no level-1 file covers; its txid."""
    pending = sorted(
        (f for f in listing(ws) if f["level"] == 0 and txid(f["min_txid"]) > level1),
        key=lambda f: txid(f["min_txid"]),
    )
    assert len(pending) >= 3, pending
    victim = pending[len(pending) // 2]
    assert victim["min_txid"] == victim["max_txid"]
    (replica_dir(ws) / "ltx" / "0" / f"{victim['min_txid']}-{victim['max_txid']}.ltx").unlink()
    return txid(victim["min_txid"])


def make_hole(ws: Workspace) -> tuple[int, list[tuple]]:
    """A replica with a hole and no daemon: the missing txid, and the rows written."""
    level1 = with_level1_files(ws)
    for n in range(3):
        insert(ws.db, f"late {n}")
        once(ws)
    return delete_middle_pending(ws, level1), rows(ws.db)


def test_a_hole_fails_everything_until_a_snapshot_repairs_it_across_compaction_ticks(ws: Workspace):
    with_level1_files(ws)
    # The daemon runs while a file disappears from under it: it neither notices
    # nor re-uploads, and no compaction tick comes (which could merge the files).
    set_levels(ws, *NEVER)
    assert ws.inv("backup.start-bg").returncode == 0
    for n in range(3):
        commit(ws, f"late {n}")
    missing = delete_middle_pending(ws, max(txid(f["max_txid"]) for f in listing(ws) if f["level"] == 1))
    written = rows(ws.db)
    hole = {"from_txid": f"{missing:016x}", "to_txid": f"{missing:016x}"}
    named = f"txid {missing:016x} is missing"

    # With a daemon running, status asks it, not the bucket: the hole shows once a
    # listing has seen it (here 'snapshots'), and from then on without listing again.
    assert ws.inv("backup.snapshots").returncode == 0
    code, data = status(ws)
    db = data["databases"][0]
    assert code == 1 and data["healthy"] is False
    assert db["restorable"] is False and db["hole"] == hole
    assert named in db["error"] and "run 'inv backup.snapshot'" in db["error"]
    debug = ws.inv("backup.status", env={"CHORA_BACKUP_DEBUG": "1"})
    assert debug.returncode == 1 and named in debug.stdout
    runs = [l for l in debug.stderr.splitlines() if l.startswith("debug: running")]
    assert sum("'ltx'" in l for l in runs) == 0, runs  # from the last listing, not a new one

    code, checks = doctor(ws)
    assert code == 1
    assert checks["replica"]["state"] == "fail" and named in checks["replica"]["detail"]
    assert checks["replica"]["fix"] == "run 'inv backup.snapshot' to take a fresh snapshot"
    assert checks["daemon"]["state"] == "fail"

    result = ws.inv("backup.restore", "--output", str(ws.root / "holed.db"))
    assert result.returncode == 1 and named in result.stderr and "inv backup.snapshot" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = ws.inv("backup.verify")
    assert result.returncode == 1
    assert named in result.stderr and "inv backup.snapshot" in result.stderr
    assert "start-bg" not in result.stdout + result.stderr

    # Compaction every few seconds at every level from the restart on, so that
    # ticks come within the test.
    set_levels(ws, "2s", "4s", "8s")
    log = ws.state / "litestream.log"
    offset = log.stat().st_size  # from here on, no compaction may trip over the hole
    pid = ws.daemon_pid()
    result = ws.inv("backup.snapshot")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"stopping the daemon (pid {pid})" in out and "after its final sync" in out
    assert named in out
    taken = txid(re.search(r"took a snapshot up to txid ([0-9a-f]{16})", out).group(1))
    deleted = int(re.search(r"deleted (\d+) file\(s\) the snapshot covers", out).group(1))
    assert deleted > 0
    new_pid = ws.daemon_pid()
    assert f"the daemon started again (pid {new_pid})" in out and new_pid != pid
    # Everything below the snapshot level that it covers is gone, but the newest L0 file
    # (which the restarted daemon may have compacted into higher levels already).
    below = [f for f in listing(ws) if f["level"] < 9 and txid(f["max_txid"]) <= taken]
    assert {(f["min_txid"], f["max_txid"]) for f in below} == {(f"{taken:016x}", f"{taken:016x}")}
    assert any(f["level"] == 0 for f in below)

    db = healthy(ws)["databases"][0]
    assert db["restorable"] is True and db["hole"] is None and db["error"] is None
    assert restored_rows(ws, "repaired") == written
    assert ws.inv("backup.verify").returncode == 0

    # Across compaction ticks at every level: none trips over the hole any more. The new row
    # reaches level 3 only through levels 1 and 2, each a compaction tick.
    commit(ws, "after the snapshot")
    last = txid(status(ws)[1]["databases"][0]["replica_txid"])
    wait_for(lambda: any(f["level"] == 3 and txid(f["max_txid"]) >= last for f in listing(ws)),
             60, interval=0.5, what=f"a level-3 compaction of txid {last:x}")
    assert all(compacted(log_since(ws, offset), level) for level in (1, 2, 3))
    assert NON_CONTIGUOUS not in log_since(ws, offset)
    healthy(ws)
    assert restored_rows(ws, "later") == rows(ws.db)
    verify = ws.inv("backup.verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_point_past_the_hole_is_refused_with_the_reason(ws: Workspace):
    missing, _ = make_hole(ws)
    result = ws.inv("backup.restore", "--output", str(ws.root / "x.db"), "--txid", f"{missing + 1:016x}")
    assert result.returncode == 1
    assert f"txid {missing:016x} is missing" in result.stderr
    before = ws.inv("backup.restore", "--output", str(ws.root / "y.db"), "--txid", f"{missing - 1:016x}")
    assert before.returncode == 0, before.stderr
    snapshots = json.loads(ws.inv("backup.snapshots", "--json").stdout)
    assert snapshots["window"]["max_txid"] == f"{missing - 1:016x}"
    assert snapshots["window"]["hole"]["from_txid"] == f"{missing:016x}"


def test_a_hole_in_an_s3_replica_is_repaired_by_a_snapshot(r2ws: Workspace, s3_endpoint):
    make_db(r2ws.db, 2)
    assert r2ws.inv("backup.setup").returncode == 0
    for n in range(3):
        insert(r2ws.db, f"row {n}")
        once(r2ws)
    client = s3_client(s3_endpoint)
    keys = sorted(
        o["Key"] for o in client.list_objects_v2(Bucket=r2ws.bucket, Prefix="chora.db/0000/")["Contents"]
    )
    assert len(keys) >= 3, keys
    client.delete_object(Bucket=r2ws.bucket, Key=keys[1])
    code, data = status(r2ws)
    assert code == 3 and data["databases"][0]["hole"] is not None

    result = r2ws.inv("backup.snapshot", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["hole"] == data["databases"][0]["hole"]
    assert report["deleted"] == len(keys) - 2 and report["stopped_pid"] is None and report["started_pid"] is None
    left = [o["Key"] for o in client.list_objects_v2(Bucket=r2ws.bucket, Prefix="chora.db/0000/")["Contents"]]
    assert left == [f"chora.db/0000/{report['txid']}-{report['txid']}.ltx"]
    code, data = status(r2ws)
    assert data["databases"][0]["restorable"] is True and data["databases"][0]["error"] is None
    assert restored_rows(r2ws, "s3") == rows(r2ws.db)
    r2ws.assert_no_secrets()
