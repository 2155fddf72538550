"""A new destination after a restore in place (issue 24.4): the README's steps for a new
bucket start a new history, whole, and say so."""
from __future__ import annotations

import uuid

from conftest import insert, make_db, rows, s3_client

from .conftest import Restores, setup, start_bg, stop, write_s3_env


def test_a_new_bucket_after_a_restore_in_place_starts_a_whole_new_history(rws, report):
    write_s3_env(rws)
    setup(rws)
    make_db(rws.db, 3)
    start_bg(rws)
    insert(rws.db, "before the restore")
    stop(rws)
    restored = rws.inv("backup.restore", "--force")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    start_bg(rws)  # continues the same replica from the restored file
    for n in range(5):
        insert(rws.db, f"after the restore {n}")
    stop(rws)

    # The README's steps for a new bucket: stop (done), edit .env, setup, start-bg.
    rws.bucket = f"chora-{uuid.uuid4().hex[:12]}"
    s3_client(rws.endpoint).create_bucket(Bucket=rws.bucket)
    write_s3_env(rws)
    setup(rws)
    _, output = start_bg(rws)
    assert "holds nothing yet: cleared litestream's local state" in output
    assert "(a new history)" in output
    insert(rws.db, "in the new bucket")
    stop(rws)
    assert Restores(rws)() == rows(rws.db)
    verify = rws.inv("backup.verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report("new bucket after restore --force: a whole new history, restored row for row")
