"""Zero secrets in anything the tool printed or wrote during the reliability suite.

Every reliability workspace is scanned as its test ends, after its processes are
stopped (see ``scanned_workspace``): everything it printed, every file under its
root but the ``.env`` the test wrote, and every object in its bucket. A hit fails
that test's teardown, so the check holds in whatever process (pytest-xdist worker)
the test ran; the figures line sums every workspace scanned. This test proves the
scan itself can fail: it finds a secret wherever one is planted.
"""
from __future__ import annotations

from conftest import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Ledger, s3_client



def test_the_scan_finds_a_secret_in_an_output_a_file_and_a_replica_object(rws):
    ledger = Ledger()
    ledger.scan(rws, rws.bucket, rws.endpoint)
    assert ledger.hits == [] and ledger.workspaces == 1
    assert ledger.files >= 1  # the .env is skipped, the copied tasks.py is not

    rws.outputs.append(f"oops {ACCESS_KEY_ID}")
    (rws.path / "leak.log").write_text(f"key={SECRET_ACCESS_KEY}\n")
    s3_client(rws.endpoint).put_object(Bucket=rws.bucket, Key="chora.db/leak", Body=SECRET_ACCESS_KEY.encode())
    planted = Ledger()
    planted.scan(rws, rws.bucket, rws.endpoint)
    assert sorted(hit.split(" in ")[0] for hit in planted.hits) == [
        "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_SECRET_ACCESS_KEY"]
    assert not any(secret in hit for hit in planted.hits for secret in (ACCESS_KEY_ID, SECRET_ACCESS_KEY))

    # the workspace's own teardown scan would fail on these: take them back out
    rws.outputs.pop()
    (rws.path / "leak.log").unlink()
    s3_client(rws.endpoint).delete_object(Bucket=rws.bucket, Key="chora.db/leak")
