"""backup.cost: R2 prices in one place, a request model that matches measured counts."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import yaml

from backup import config, cost
from backup.replica import parse_files
from backup.render import render

from conftest import Workspace, insert, make_db, r2_settings, wait_for

DEFAULTS = cost.Timers.from_config({}, "10s")

# Class A requests an hour counted by bench/requests.py (litestream 0.5.17 against
# moto, 2026-11-26; see bench/README.md), with the writes an hour of each run.
MEASURED = [
    ("idle, litestream defaults", "defaults", 0, 482),
    ("seed workload, litestream defaults", "defaults", 137, 1267),
    ("seed workload, this project", "project", 137, 208),
]


def project_timers(tmp_path) -> cost.Timers:
    settings = r2_settings(tmp_path)
    return cost.Timers.from_config(yaml.safe_load(render(settings, config.R2)), "10s")


@pytest.mark.parametrize("label, variant, writes, measured", MEASURED, ids=[m[0] for m in MEASURED])
def test_model_agrees_with_measured_requests_within_15_percent(tmp_path, label, variant, writes, measured):
    timers = DEFAULTS if variant == "defaults" else project_timers(tmp_path)
    modelled = cost.requests_per_hour(timers, writes).class_a
    assert abs(modelled / measured - 1) <= 0.15, (label, modelled, measured)


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
    assert modelled["class_a_per_hour"] == pytest.approx(205, rel=0.05)
    assert set(modelled) >= {"total_usd", "class_a_per_month", "class_b_per_month", "storage_gb"}
    observed = json.loads(r2ws.inv("backup.cost", "--json").stdout)
    assert observed["writes_observed"] is True and observed["writes_per_month"] > 0
    human = r2ws.inv("backup.cost")
    assert "- Egress: FREE" in human.stdout and "Total: $" in human.stdout
    r2ws.assert_no_secrets()


def test_cost_of_a_local_replica_is_zero(ws: Workspace):
    assert ws.inv("backup.local", "--no-start").returncode == 0
    result = ws.inv("backup.cost", "--json")
    assert json.loads(result.stdout)["total_usd"] == 0.0


@pytest.mark.parametrize(
    "data",
    [{"l0-retention-check-interval": "0s"}, {"levels": [{"interval": "abc"}]}, {"levels": [{}]},
     {"snapshot": {"interval": "-1h"}}],
)
def test_hand_written_timers_that_are_not_durations_are_named(data):
    with pytest.raises(cost.ConfigError, match="litestream.yml: .*"):
        cost.Timers.from_config(data, "10s")
