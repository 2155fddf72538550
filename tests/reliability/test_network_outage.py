"""The network to the S3 server is cut for 30 s mid-write, then healed.

litestream talks to the S3 server through a forwarder in this process. The cut
drops its open connections and refuses new ones. While it lasts, the daemon must
stay up and ``status`` must say replication is failing; once healed, the replica
must catch up on its own with every row written before, during and after.
"""
from __future__ import annotations

import time
from urllib.parse import urlsplit

from conftest import make_db, rows, wait_for

from .conftest import Forwarder, Restores, Writer, alive, setup, start_bg, status, stop, write_s3_env

OUTAGE = 30.0  # seconds, as the issue asks
STATUS_EVERY = 1.0  # seconds between status checks during the outage


def test_a_30s_network_outage_is_reported_survived_and_caught_up(rws, report):
    began = time.monotonic()
    with Forwarder(urlsplit(rws.endpoint).port) as forwarder:
        write_s3_env(rws, endpoint=forwarder.url)
        setup(rws)
        make_db(rws.db, 3)
        pid, _ = start_bg(rws)
        restores = Restores(rws)
        with Writer(rws.db) as writer:
            writer.wait_commits(20)
            code, data = status(rws)
            assert code == 0 and data["healthy"], data

            forwarder.cut()
            cut_at = len(writer.committed)
            checks = 0
            deadline = time.monotonic() + OUTAGE
            while (now := time.monotonic()) < deadline:
                code, data = status(rws)
                checks += 1
                db = data["databases"][0]
                assert alive(pid) and data["running"] and data["pid"] == pid, data
                # Running but failing (exit 1), saying why; never "no lag".
                assert code == 1 and not data["healthy"], data
                assert "refused the connection" in db["error"], data
                assert f"127.0.0.1:{forwarder.port}" in db["error"], data
                assert db["lag_seconds"] != 0, data
                time.sleep(max(0.0, min(now + STATUS_EVERY, deadline) - time.monotonic()))
            written_in_outage = len(writer.committed) - cut_at
            assert written_in_outage > 0

            forwarder.heal()
            healed = time.monotonic()
            writer.wait_commits(20)
        expected = rows(rws.db)
        assert [body for _, body in expected[3:]] == writer.committed

        # The same daemon catches up, with no restart and no stop's final sync.
        wait_for(lambda: restores() == expected, 90, interval=0.5, what="the replica to catch up")
        caught_up = time.monotonic() - healed
        code, data = status(rws)
        db = data["databases"][0]
        assert code == 0 and data["healthy"] and data["pid"] == pid, data
        assert db["error"] is None and db["lag_txids"] == 0 and db["lag_seconds"] == 0, data
        assert db["local_txid"] == db["replica_txid"], data
        stop(rws)
        assert restores() == expected
    rws.assert_no_secrets()
    report(
        f"network: {OUTAGE:.0f}s outage, daemon survived, {checks} status checks all exit 1 "
        f"naming the refused endpoint, {written_in_outage} rows written meanwhile, caught up "
        f"{caught_up:.1f}s after healing, {len(expected)} rows, 0 lost, "
        f"{time.monotonic() - began:.1f}s"
    )
