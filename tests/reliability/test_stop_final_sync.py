"""``inv backup.stop`` right after a commit: the commit is in the replica.

The sync interval is a minute, so after start-bg's first sync only stop's final
sync can carry the commit; a restore just before the stop proves it was not
there yet.
"""
from __future__ import annotations

import sqlite3
import time

import pytest

from conftest import insert, make_db, rows

from .conftest import Restores, setup, start_bg, stop, write_s3_env

COMMITS = {
    "one-row": lambda db: insert(db, "the last row"),
    "1000-rows": lambda db: insert(db, *(f"batch row {i}" for i in range(1000))),
    "4MB-blob": lambda db: insert_blob(db, 4 * 1024 * 1024),
}


def insert_blob(db, size: int) -> None:
    con = sqlite3.connect(db)
    try:
        con.execute("INSERT INTO items (body) VALUES (?)", (f"blob {size}:" + "x" * size,))
        con.commit()
    finally:
        con.close()


@pytest.mark.parametrize("commit", list(COMMITS), ids=list(COMMITS))
def test_stop_right_after_a_commit_ships_it(rws, report, commit):
    began = time.monotonic()
    write_s3_env(rws, interval="1m")
    setup(rws)
    make_db(rws.db, 3)
    start_bg(rws)
    restores = Restores(rws)
    before = rows(rws.db)

    COMMITS[commit](rws.db)
    expected = rows(rws.db)
    # Not yet replicated: the next sync is a minute away.
    assert restores() == before
    stop(rws)

    restored = restores()
    assert restored == expected
    assert len(restored) > len(before)
    rws.assert_no_secrets()
    report(
        f"stop-sync [{commit}]: commit absent from the replica before stop, present after "
        f"(sync interval 1m), {len(expected) - len(before)} new rows, 0 lost, "
        f"{time.monotonic() - began:.1f}s"
    )
