"""The replica store: the same small interface on a folder and on the local S3 server."""
from __future__ import annotations

import threading

import pytest

from conftest import r2_settings
from backup.ltconfig import Entry
from backup.store import FileStore, S3Store, open_store
from backup.errors import BackupError


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path, s3_endpoint, bucket):
    if request.param == "file":
        return FileStore(tmp_path / "replica" / "chora.db")
    entry = Entry(path=tmp_path / "chora.db", replica_type="s3", replica="", sync_interval="1s",
                     endpoint=s3_endpoint, bucket=bucket, location="team/chora.db", region="auto")
    return S3Store(entry, r2_settings(tmp_path, R2_ENDPOINT=s3_endpoint, R2_BUCKET=bucket))


def test_read_create_write_delete(store):
    assert store.read("owner.json") is None
    assert store.has_history() is False
    assert store.create("owner.json", b"first") is True
    assert store.create("owner.json", b"second") is False
    assert store.read("owner.json") == b"first"
    store.write("owner.json", b"third")
    assert store.read("owner.json") == b"third"
    # Each store in litestream's own layout for it (see store.ltx_key).
    key = ("0000/" if isinstance(store, S3Store) else "ltx/0/") + "0000000000000001-0000000000000001.ltx"
    store.write("other/notes.txt", b"not litestream's")
    assert store.has_history() is False
    store.write(key, b"x")
    assert store.has_history() is True
    store.delete([key, "missing"])
    assert store.has_history() is False


def test_concurrent_creates_have_one_winner(store):
    results = []
    barrier = threading.Barrier(8)

    def claim(n: int) -> None:
        barrier.wait()
        results.append((store.create("owner.json", f"claim {n}".encode()), n))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for ok, n in results if ok]
    assert len(winners) == 1
    assert store.read("owner.json") == f"claim {winners[0]}".encode()


def test_a_missing_bucket_is_named(tmp_path, s3_endpoint):
    entry = Entry(path=tmp_path / "chora.db", replica_type="s3", replica="", sync_interval="1s",
                     endpoint=s3_endpoint, bucket="no-such-bucket", location="chora.db")
    settings = r2_settings(tmp_path, R2_ENDPOINT=s3_endpoint, R2_BUCKET="no-such-bucket")
    with pytest.raises(BackupError) as err:
        open_store(entry, settings).read("owner.json")
    assert err.value.message == "bucket 'no-such-bucket' does not exist: create it, or fix R2_BUCKET"


def test_an_unreachable_endpoint_is_one_line(tmp_path):
    entry = Entry(path=tmp_path / "chora.db", replica_type="s3", replica="", sync_interval="1s",
                     endpoint="http://127.0.0.1:9", bucket="chora-backup", location="chora.db")
    with pytest.raises(BackupError) as err:
        open_store(entry, r2_settings(tmp_path)).read("owner.json")
    assert "cannot reach the storage endpoint" in err.value.message


def test_aws_profile_of_the_shell_is_ignored(tmp_path, s3_endpoint, bucket, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    entry = Entry(path=tmp_path / "chora.db", replica_type="s3", replica="", sync_interval="1s",
                     endpoint=s3_endpoint, bucket=bucket, location="chora.db")
    store = open_store(entry, r2_settings(tmp_path, R2_ENDPOINT=s3_endpoint, R2_BUCKET=bucket))
    assert store.read("owner.json") is None
