"""restore.plan: litestream's restore plan for the latest state, over a parsed listing."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from backup.ltx import plan, window
from conftest import ltx_files as files

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)  # ltx_files' first timestamp


# (listing, newest txid a restore reaches, hole as (first, last) missing txid)
CASES = [
    ((), None, None),
    (("L0 1-1", "L0 2-2", "L0 3-3"), 3, None),
    (("L0 1-1", "L0 2-2", "L0 4-4", "L0 5-5"), 2, (3, 3)),
    (("L0 1-1", "L0 5-5", "L0 9-9"), 1, (2, 4)),
    (("L0 6-6", "L0 7-7"), None, (1, 5)),
    (("L9 1-5", "L0 6-6", "L0 7-7"), 7, None),
    (("L9 1-5", "L0 7-7"), 5, (6, 6)),
    (("L1 1-4", "L1 5-9", "L0 8-8", "L0 9-9", "L0 10-10"), 10, None),
    (("L1 1-4", "L0 5-5", "L0 6-6", "L1 5-9", "L0 11-11"), 9, (10, 10)),
    (("L9 1-2", "L9 1-20", "L0 3-3", "L0 5-5", "L0 21-21"), 21, None),
    (("L9 1-2", "L0 3-3", "L0 5-5", "L9 1-12", "L0 13-13"), 13, None),
    (("L2 1-8", "L1 1-3", "L1 4-8", "L1 9-9", "L0 9-9", "L0 12-12"), 9, (10, 11)),
    (("L3 1-100", "L2 101-150", "L0 151-151", "L1 160-170"), 151, (152, 159)),
]


@pytest.mark.parametrize(
    "listing, reach, hole", CASES, ids=[" ".join(c[0]) or "empty" for c in CASES]
)
def test_plan(listing, reach, hole):
    result = plan(files(*listing))
    assert result.max_txid == reach
    assert (None if result.hole is None else (result.hole.from_txid, result.hole.to_txid)) == hole
    assert result.restorable == (reach is not None and hole is None)


def test_the_chain_starts_at_the_newest_snapshot_and_takes_the_furthest_file():
    result = plan(files("L9 1-2", "L9 1-10", "L0 3-3", "L1 11-14", "L0 11-11", "L0 12-12"))
    assert [(f.level, f.min_txid, f.max_txid) for f in result.files] == [(9, 1, 10), (1, 11, 14)]


def test_the_window_ends_before_a_hole():
    span = window(files("L0 1-1", "L0 2-2", "L0 4-4"))
    assert span is not None
    assert span.max_txid == 2 and span.latest == T0 + timedelta(seconds=1)
    assert span.as_dict()["hole"] == {"from_txid": "0000000000000003", "to_txid": "0000000000000003"}
    assert "then txid 0000000000000003 is missing" in span.describe()
    whole = window(files("L0 1-1", "L0 2-2"))
    assert whole is not None and whole.hole is None and whole.as_dict()["hole"] is None
