"""verify reads both sides at one txid (issue 26): under a writer committing every 50 ms, the
live database as it was at the txid the replica holds is compared with the replica restored
at that txid, content for content, every time."""
from __future__ import annotations

from conftest import make_db

from .conftest import Writer, setup, start_bg, stop


def test_verify_under_a_writer_every_50ms_compares_content_at_one_txid(rws):
    make_db(rws.db, 3)
    setup(rws)
    start_bg(rws)
    with Writer(rws.db, pause=0.05) as writer:
        writer.wait_commits(20)
        for _ in range(3):
            result = rws.inv("backup.verify")
            assert result.returncode == 0, result.stdout + result.stderr
            assert "both sides read at txid " in result.stdout, result.stdout
            assert "content identical in 1 table(s)" in result.stdout, result.stdout
            assert "row counts" not in result.stdout and "checked twice" not in result.stdout
            writer.wait_commits(5)
    stop(rws)
