"""The generated litestream.yml is cost-aware on R2 and still restores to a point in time.

The settings' measured effect (Class A requests an hour, litestream's defaults
next to these) is in bench/README.md; bench/requests.py reproduces it.
"""
from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from backup import config
from backup.config import parse_duration
from backup.render import render

from conftest import Workspace, insert, make_db, r2_settings, rows, wait_for

COST_SETTINGS = {
    "l0-retention": "1h",
    "l0-retention-check-interval": "6h",
    "levels": [{"interval": "15m"}, {"interval": "1h"}, {"interval": "6h"}],
    "snapshot": {"interval": "24h", "retention": "48h"},
}
CHECKPOINT_INTERVAL = "30m"  # on each database entry
# litestream 0.5.17's values for the same keys.
LITESTREAM_DEFAULTS = {
    "l0-retention-check-interval": "15s",
    "levels": [{"interval": "30s"}, {"interval": "5m"}, {"interval": "1h"}],
}


def idle_lists_per_hour(settings: dict) -> float:
    """The most LISTs an idle database costs an hour: two per L0 retention check and
    one per level tick (a level whose last file holds one txid skips even that)."""
    check = parse_duration(settings["l0-retention-check-interval"])
    return 2 * 3600 / check + sum(3600 / parse_duration(l["interval"]) for l in settings["levels"])


@pytest.mark.parametrize("mode", [config.R2, config.LOCAL])
def test_the_config_carries_the_cost_settings(tmp_path, mode):
    data = yaml.safe_load(render(r2_settings(tmp_path, BACKUP_DB="chora.db,data/*.db"), mode))
    assert {k: data[k] for k in COST_SETTINGS} == COST_SETTINGS
    assert [db["checkpoint-interval"] for db in data["dbs"]] == [CHECKPOINT_INTERVAL] * 2  # a glob's too


@pytest.mark.parametrize("mode", [config.R2, config.LOCAL])
@pytest.mark.parametrize("interval", [None, "1s", "10s", "2m"])
def test_the_sync_interval_is_untouched(tmp_path, mode, interval):
    values = {"BACKUP_SYNC_INTERVAL": interval} if interval else {}
    settings = r2_settings(tmp_path, **values)
    data = yaml.safe_load(render(settings, mode))
    expected = interval or {config.R2: "10s", config.LOCAL: "1s"}[mode]
    assert data["dbs"][0]["replica"]["sync-interval"] == expected
    assert {k: data[k] for k in COST_SETTINGS} == COST_SETTINGS


def test_every_cost_setting_is_explained_beside_it(tmp_path):
    lines = render(r2_settings(tmp_path), config.R2).splitlines()
    for key in COST_SETTINGS:
        (at,) = [i for i, line in enumerate(lines) if line.startswith(f"{key}:")]
        assert lines[at - 1].startswith("# "), f"{key} has no comment above it"


def test_idle_list_ticks_are_under_a_quarter_of_litestreams():
    ours, theirs = idle_lists_per_hour(COST_SETTINGS), idle_lists_per_hour(LITESTREAM_DEFAULTS)
    # Measured (bench/README.md): about 480 an hour for the defaults, 4 for ours.
    assert theirs == pytest.approx(613, abs=1)
    assert ours <= theirs / 4


def test_the_restorable_window_never_collapses():
    """With retention equal to the interval each new snapshot deletes the previous one."""
    snapshot = COST_SETTINGS["snapshot"]
    assert parse_duration(snapshot["retention"]) >= 2 * parse_duration(snapshot["interval"])
    # Every change stays restorable to the sync interval for longer than a level-1 tick.
    assert parse_duration(COST_SETTINGS["l0-retention"]) > parse_duration(COST_SETTINGS["levels"][0]["interval"])


# -- end to end: the real litestream, the local S3 server ----------------------

_MONITOR = re.compile(r'msg="starting compaction monitor".* level=(\d+) interval=(\S+)')
_L0_MONITOR = re.compile(r'msg="starting L0 retention monitor".* interval=(\S+) retention=(\S+)')


def caught_up(ws: Workspace, after: str | None = None) -> str:
    """Wait until the replica holds the local txid (beyond ``after``); return it."""

    def check():
        result = ws.inv("backup.status", "--json")
        db = json.loads(result.stdout)["databases"][0]
        txid = db["local_txid"] or ""
        fresh = after is None or txid > after
        return fresh and txid and txid == db["replica_txid"] and txid

    return wait_for(check, 60, interval=0.2, what="the replica to catch up")


def monitors(log: Path) -> dict | None:
    """The intervals litestream's start-up log says it runs with, once all are logged."""
    text = log.read_text(errors="replace") if log.exists() else ""
    levels = {int(level): parse_duration(iv) for level, iv in _MONITOR.findall(text)}
    l0 = _L0_MONITOR.findall(text)
    if len(levels) < 4 or not l0:
        return None
    (check, retention), = l0
    return {**levels, "check": parse_duration(check), "l0-retention": parse_duration(retention)}


def test_point_in_time_restore_with_the_generated_r2_config(r2ws: Workspace):
    make_db(r2ws.db, 0)
    # The cost settings exactly as generated; only the sync interval (not one of them) is
    # shortened from R2's 10s, so the three syncs below take seconds, not half a minute.
    with (r2ws.path / ".env").open("a") as fh:
        fh.write("BACKUP_SYNC_INTERVAL=2s\n")
    assert r2ws.inv("backup.setup").returncode == 0
    data = yaml.safe_load(r2ws.config.read_text())
    assert {k: data[k] for k in COST_SETTINGS} == COST_SETTINGS
    assert data["dbs"][0]["replica"]["sync-interval"] == "2s"
    assert r2ws.inv("backup.start-bg").returncode == 0

    # Unknown keys are silently ignored: the daemon's own log proves it took ours.
    logged = wait_for(lambda: monitors(r2ws.state / "litestream.log"), 30, what="start-up log")
    assert logged == {1: 900.0, 2: 3600.0, 3: 21600.0, 9: 86400.0, "check": 21600.0, "l0-retention": 3600.0}

    empty = caught_up(r2ws)
    insert(r2ws.db, "a1", "a2")
    first = caught_up(r2ws, after=empty)
    # LTX timestamps have one-second resolution: leave a clear second either side.
    start = time.time()
    wait_for(lambda: time.time() > start + 1.5, 5, what="the clock")
    moment = datetime.now(timezone.utc)
    wait_for(lambda: time.time() > moment.timestamp() + 1.5, 5, what="the clock")
    insert(r2ws.db, "b1", "b2", "b3")
    caught_up(r2ws, after=first)
    assert r2ws.inv("backup.stop").returncode == 0
    batch_a = rows(r2ws.db)[:2]
    assert [b for _, b in batch_a] == ["a1", "a2"]

    out = r2ws.root / "pit.db"
    result = r2ws.litestream(
        "restore", "-config", str(r2ws.config), "-no-expand-env",
        "-timestamp", moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "-o", str(out), str(r2ws.db),
    )
    assert result.returncode == 0, result.stderr
    assert rows(out) == batch_a

    latest = r2ws.restore(r2ws.root / "latest.db")
    assert [b for _, b in latest] == ["a1", "a2", "b1", "b2", "b3"]
    r2ws.assert_no_secrets()
