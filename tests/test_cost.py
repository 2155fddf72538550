"""backup.cost: R2 prices in one place, a request model that matches measured counts."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import yaml

from pathlib import Path

from backup import config, cost
from backup.ltconfig import parse_config
from backup.ltx import parse_files
from backup.render import render

from conftest import Workspace, insert, make_db, r2_settings, wait_for



def timers_of(data: dict, sync_interval: str, checkpoint: object = None) -> cost.Timers:
    """The timers of a litestream.yml mapping (a database with a file replica added where
    it names none: the model needs one)."""
    dbs = data.get("dbs") or [{"path": "/w/chora.db"}]
    dbs = [{"replica": {"type": "file", "path": "/r"}, **db} if isinstance(db, dict) else db for db in dbs]
    return cost.Timers.from_config(parse_config({**data, "dbs": dbs}, Path("litestream.yml")),
                                   sync_interval, checkpoint)


DEFAULTS = timers_of({}, "10s")

# Class A requests an hour counted by bench/requests.py against moto in real time
# (--speedup 1; litestream 0.5.17; bench/README.md), with the writes an hour of each run.
PROJECT_TIMERS = {
    "l0-retention": "1h", "l0-retention-check-interval": "1h",
    "snapshot": {"interval": "24h", "retention": "48h"},
}


def timers_for(level1: str, checkpoint: str, check: str = "1h") -> cost.Timers:
    data = {**PROJECT_TIMERS, "l0-retention-check-interval": check, "levels": [{"interval": level1}, {"interval": "1h"}, {"interval": "6h"}],
            "dbs": [{"path": "/w/chora.db", "checkpoint-interval": checkpoint}]}
    return timers_of(data, "10s")


REAL_TIME = [
    ("seed, levels 5m/1h/6h, checkpoint 1m (the config before)", timers_for("5m", "1m"), 136, 248),
    ("seed, level 1 at 15m", timers_for("15m", "1m"), 136, 216),
    ("seed, checkpoint 10m", timers_for("5m", "10m"), 136, 188),
    ("seed, levels 15m/1h/6h, checkpoint 10m (generated now)", timers_for("15m", "10m"), 136, 156),
    ("seed, the same, an hour", timers_for("15m", "10m"), 137, 164),
    ("idle, the same, an hour", timers_for("15m", "10m"), 0, 8),
    ("seed, checkpoint 30m, L0 check 6h (generated now), an hour", timers_for("15m", "30m", check="6h"), 137, 159),
    ("idle, litestream defaults", DEFAULTS, 0, 628),
    ("seed, litestream defaults", DEFAULTS, 136, 1340),
]


def project_timers(tmp_path) -> cost.Timers:
    settings = r2_settings(tmp_path)
    return timers_of(yaml.safe_load(render(settings, config.R2)), "10s")


@pytest.mark.parametrize("label, timers, writes, measured", REAL_TIME, ids=[m[0] for m in REAL_TIME])
def test_model_agrees_with_real_time_measurements_within_10_percent(label, timers, writes, measured):
    modelled = cost.requests_per_hour(timers, writes).class_a
    assert abs(modelled / measured - 1) <= 0.10, (label, modelled, measured)


def test_an_idle_database_with_the_generated_config_within_two_requests_an_hour():
    # Measured 7 in an hour (4 LISTs, and 3 PUTs of the warm-up's history moving up once).
    assert abs(cost.requests_per_hour(timers_for("15m", "30m", check="6h"), 0).class_a - 7) <= 2


def test_an_idle_level_looks_once_a_tick_and_the_snapshot_level_never():
    parts = dict(cost.requests_per_hour(DEFAULTS, 0).parts)
    assert parts["compaction level 1"] == 120 and parts["compaction level 2"] == 12
    assert parts["compaction level 3"] == 1
    assert parts["snapshot"] == pytest.approx(4 / 24)  # its retention LISTs the snapshot level and levels 1-3
    assert parts["L0 expiry"] == 480 and parts["writes"] == parts["checkpoints"] == 0


def test_a_busy_level_1_tick_also_expires_l0_files_and_upper_levels_list_once():
    timers = timers_of({"l0-retention-check-interval": "1h"}, "10s")
    requests = cost.requests_per_hour(timers, 3600)  # every tick of every level busy
    parts = dict(requests.parts)
    assert parts["compaction level 1"] == 120 * 2  # a LIST and a PUT
    assert parts["L0 expiry"] == 120 * 3 + 2  # two LISTs and a DeleteObjects, plus the hourly timer
    assert parts["compaction level 2"] == 12 * 2 and parts["compaction level 3"] == 1 * 2
    assert requests.delete == pytest.approx(120 + 4 / 24)  # level 1's, and the snapshot's retention


def test_the_generated_config_is_what_was_measured_and_meets_the_targets(tmp_path):
    generated = project_timers(tmp_path)
    assert generated == timers_for("15m", "30m", check="6h")
    floor = 3600 / (cost.HOURS_PER_MONTH * 3600 / 100_000)  # one upload per write of the seed
    seed = cost.requests_per_hour(generated, floor).class_a
    assert seed / floor <= 1.2  # the target, in real time
    assert cost.requests_per_hour(generated, 0).class_a <= 10  # idle


def test_uploads_are_capped_by_the_sync_interval():
    busy = cost.requests_per_hour(DEFAULTS, 100_000)
    assert busy.put < 3600 / 10 + 200  # one upload per sync, plus compactions


def test_free_tier_and_prices():
    estimate = cost.estimate(DEFAULTS, 100_000, stored_bytes=2 * 10**9)
    listed, billed = estimate.usd(free_tier=False), estimate.usd(free_tier=True)
    assert listed["storage"] == pytest.approx(2 * cost.PRICE_STORAGE_GB_MONTH)
    assert listed["class_a"] == pytest.approx(estimate.class_a_month * 4.50 / 1e6)
    assert billed["total"] == 0.0  # inside 10 GB and 1M Class A
    assert estimate.as_dict()["total_usd"] == 0.0
    assert estimate.as_dict()["total_before_free_tier_usd"] == pytest.approx(listed["total"], abs=1e-4)


def test_observed_write_rate_counts_recent_l0_files():
    now = 1_800_000_000.0

    def stamp(t: float) -> str:
        return datetime.fromtimestamp(t, timezone.utc).isoformat()

    def ltx(level: int, ts: float) -> dict:
        return {"level": level, "min_txid": "1", "max_txid": "1", "size": 1, "timestamp": stamp(ts)}

    files = [ltx(0, now - 60 * i) for i in range(10)] + [ltx(0, now - 7200), ltx(1, now)]
    files = parse_files(files)
    per_month = cost.observed_writes_per_month(files, 3600, now)
    assert per_month == pytest.approx(10 * cost.HOURS_PER_MONTH)


def test_cost_task_from_a_real_replica(r2ws: Workspace):
    make_db(r2ws.db)
    assert r2ws.inv("backup.setup").returncode == 0
    assert r2ws.inv("backup.start-bg").returncode == 0
    insert(r2ws.db, "one")
    wait_for(lambda: json.loads(r2ws.inv("backup.cost", "--json").stdout)["storage_gb"] > 0, 30,
             interval=0.5, what="replica files")
    modelled = json.loads(r2ws.inv("backup.cost", "--json", "--writes-per-month", "100000").stdout)
    assert modelled["writes_per_month"] == 100000
    timers = timers_of(yaml.safe_load(r2ws.config.read_text()), "10s")
    # A daily restore drill (the default): ten LISTs and a GET per file of the restore plan.
    drills = modelled["restore_drills"]
    assert drills["interval"] == "24h" and drills["per_month"] == round(730 / 24, 1)
    assert drills["class_a_per_drill"] == 10 and drills["class_b_per_drill"] >= 1 and drills["bytes_per_drill"] > 0
    daily = cost.Drills(1 / 24, "24h", drills["class_b_per_drill"], drills["bytes_per_drill"])
    expected = cost.requests_per_hour(timers, 100000 / 730, daily)
    assert modelled["class_a_per_hour"] == round(expected.class_a, 1)
    assert modelled["class_b_per_hour"] == round(expected.class_b, 1)
    assert modelled["class_a_per_hour_by_cause"]["restore drills"] == round(10 / 24, 1)
    assert 137 < modelled["class_a_per_hour"] <= 1.2 * 137
    assert set(modelled) >= {"total_usd", "class_a_per_month", "class_b_per_month", "storage_gb"}
    observed = json.loads(r2ws.inv("backup.cost", "--json").stdout)
    assert observed["writes_observed"] is True and observed["writes_per_month"] > 0
    human = r2ws.inv("backup.cost")
    assert "- Egress: FREE" in human.stdout and "Total: $" in human.stdout
    assert "- Restore drills (every 24h, 30/month): 10 LISTs (Class A) and " in human.stdout
    r2ws.assert_no_secrets()


def test_drills_off_cost_nothing_and_an_hourly_drill_costs_24_times_a_daily_one():
    timers = cost.Timers(10.0, 21600.0, (900.0, 3600.0, 21600.0, 86400.0), 1800.0)
    none = cost.requests_per_hour(timers, 137)
    off = cost.requests_per_hour(timers, 137, cost.Drills(0.0, "off", 25, 10**8))
    assert off == none
    daily = cost.requests_per_hour(timers, 137, cost.Drills(1 / 24, "24h", 25, 10**8))
    hourly = cost.requests_per_hour(timers, 137, cost.Drills(1.0, "1h", 25, 10**8))
    assert round(daily.class_a - none.class_a, 6) == round(10 / 24, 6)
    assert round(hourly.class_b - none.class_b, 6) == 25.0 == round(24 * (daily.class_b - none.class_b), 6)
    assert cost.Estimate(137, off, 0, cost.Drills(0.0, "off", 25, 10**8))._drill_lines() == \
        ["- Restore drills: off (BACKUP_VERIFY_INTERVAL=off)"]


def test_cost_of_a_local_replica_is_zero(ws: Workspace):
    assert ws.inv("backup.local", "--no-start").returncode == 0
    result = ws.inv("backup.cost", "--json")
    assert json.loads(result.stdout)["total_usd"] == 0.0


@pytest.mark.parametrize(
    "data",
    [{"l0-retention-check-interval": "0s"}, {"levels": [{"interval": "abc"}]}, {"levels": [{}]},
     {"snapshot": {"interval": "-1h"}}, {"levels": {"a": "1m"}}, {"levels": [5]},
     {"levels": [{"interval": None}]}],
)
def test_hand_written_timers_that_are_not_durations_are_named(data):
    with pytest.raises(cost.ConfigError, match="litestream.yml: .*"):
        timers_of(data, "10s")


def test_checkpoints_add_an_upload_each_while_writes_happen():
    every_minute = timers_of({}, "10s")
    assert every_minute.checkpoint == 60
    ten = timers_of({"dbs": [{"path": "/x", "checkpoint-interval": "10m"}]}, "10s")
    assert ten.checkpoint == 600
    # Measured in real time (bench/README.md): 51 L0 uploads for 35 writes in 15 minutes at
    # the default, 37 at 10m: per hour 140 writes plus 64 or 8 checkpoints, one per interval
    # plus the few seconds litestream takes to notice (the model counts 60 and 6).
    assert cost.checkpoint_uploads(every_minute, 140) == 60
    assert cost.checkpoint_uploads(ten, 140) == 6
    assert cost.checkpoint_uploads(every_minute, 20) == 20  # each write its own checkpoint
    assert cost.checkpoint_uploads(every_minute, 0) == 0  # idle: no checkpoint has pages to move


def test_the_model_names_where_each_request_comes_from():
    timers = timers_of({"dbs": [{"path": "/x", "checkpoint-interval": "10m"}]}, "10s")
    requests = cost.requests_per_hour(timers, 140)
    parts = dict(requests.parts)
    assert list(parts) == ["writes", "checkpoints", "compaction level 1", "compaction level 2",
                           "compaction level 3", "snapshot", "L0 expiry"]
    assert parts["writes"] == 140 and parts["checkpoints"] == 6
    assert sum(parts.values()) == pytest.approx(requests.class_a)
    lines = cost.estimate(timers, 100_000, 0).as_lines()
    assert any(line.strip().startswith("checkpoints: ") for line in lines)
    assert "class_a_per_hour_by_cause" in cost.estimate(timers, 100_000, 0).as_dict()


@pytest.mark.parametrize("writes", [0.5, 5, 30, 140, 1000])
def test_writes_are_recovered_from_the_l0_files_they_and_their_checkpoints_left(writes):
    for checkpoint in ("1m", "10m"):
        timers = timers_of({"dbs": [{"path": "/x", "checkpoint-interval": checkpoint}]}, "1s")
        uploads = writes + cost.checkpoint_uploads(timers, writes)
        assert cost.writes_from_uploads(timers, uploads) == pytest.approx(writes)


def test_a_database_entry_that_is_not_a_mapping_is_refused_before_any_model():
    for dbs in ([5], "x"):
        with pytest.raises(cost.ConfigError, match="dbs|no replicas configured"):
            timers_of({"dbs": dbs}, "10s")


def test_a_checkpoint_interval_that_is_not_a_duration_is_named():
    with pytest.raises(cost.ConfigError, match="checkpoint-interval"):
        timers_of({"dbs": [{"path": "/x", "checkpoint-interval": "soon"}]}, "10s")
