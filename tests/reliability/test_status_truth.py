"""One listing, one truth (issue 24.2 and 24.3): what a command learns about a replica is what
the next status says; status's view is never older than 15 minutes; a daemon too busy to
answer its socket in time does not read as "no replica txid"."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

from conftest import make_db, s3_lists, wait_for
from test_holes import NEVER, commit, delete_middle_pending, listing, set_levels, status, txid, with_level1_files

from .conftest import setup, start_bg, stop, write_s3_env


def test_a_hole_verify_found_is_what_the_next_status_says(ws):
    with_level1_files(ws)
    set_levels(ws, *NEVER)
    assert ws.inv("backup.start-bg").returncode == 0
    for n in range(3):
        commit(ws, f"late {n}")
    code, _ = status(ws)
    assert code == 0
    missing = delete_middle_pending(ws, max(txid(f["max_txid"]) for f in listing(ws) if f["level"] == 1))
    verify = ws.inv("backup.verify")
    assert verify.returncode == 1 and f"txid {missing:016x} is missing" in verify.stderr
    code, data = status(ws)
    db = data["databases"][0]
    assert code == 1 and db["restorable"] is False, db
    assert db["hole"] == {"from_txid": f"{missing:016x}", "to_txid": f"{missing:016x}"}
    assert ws.inv("backup.stop").returncode == 0


def _age_listing(ws, seconds: float) -> None:
    """Make this workspace's remembered listing (and listing attempt) ``seconds`` old."""
    path = ws.state / "replica-listings.json"
    data = json.loads(path.read_text())
    for record in data.values():
        when = time.time() - seconds
        record["listed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(when))
    path.write_text(json.dumps(data))
    (ws.state / "listing-attempts.json").unlink(missing_ok=True)


def test_status_lists_again_when_its_listing_is_older_than_15_minutes_and_only_then(rws, s3_endpoint):
    write_s3_env(rws)
    setup(rws)
    make_db(rws.db, 3)
    start_bg(rws)
    assert status(rws)[0] == 0  # the first status lists once: it had no listing yet
    seen: list[int] = []
    wait_for(lambda: seen.append(s3_lists(s3_endpoint, rws.bucket)) or seen[-3:] == [seen[-1]] * 3,
             30, interval=1, what="the daemon's start-up listings to end")
    before = s3_lists(s3_endpoint, rws.bucket)
    for _ in range(3):
        assert status(rws)[0] == 0
    assert s3_lists(s3_endpoint, rws.bucket) == before  # a fresh listing stands
    _age_listing(rws, 16 * 60)
    for _ in range(3):
        code, data = status(rws)
        assert code == 0
    assert s3_lists(s3_endpoint, rws.bucket) == before + 1  # one LIST, however often polled
    listed_at = data["databases"][0]["listed_at"]
    assert time.time() - time.mktime(time.strptime(listed_at[:19], "%Y-%m-%dT%H:%M:%S")) + time.timezone < 120
    stop(rws)


def test_an_emptied_replica_under_a_running_daemon_fails_status(rws, s3_endpoint):
    from conftest import s3_client

    write_s3_env(rws)
    setup(rws)
    make_db(rws.db, 3)
    start_bg(rws)
    assert status(rws)[0] == 0
    client = s3_client(s3_endpoint)
    for obj in client.list_objects_v2(Bucket=rws.bucket)["Contents"]:
        if obj["Key"].endswith(".ltx"):
            client.delete_object(Bucket=rws.bucket, Key=obj["Key"])
    verify = rws.inv("backup.verify")
    assert verify.returncode == 1
    code, data = status(rws)
    db = data["databases"][0]
    assert code == 1 and "held nothing" in (db["error"] or ""), db
    stop(rws)


class SlowSocket:
    """Stands in front of the daemon's control socket: GET /list passes through at once,
    POST /sync is held past the client's timeout, as a daemon busy uploading holds it."""

    def __init__(self, path: Path, hold: float = 8.0):
        self.path, self.hold = path, hold
        self.real = path.with_name(path.name + ".real")
        os.rename(path, self.real)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(16)
        self.done = threading.Event()
        self.handlers: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            handler = threading.Thread(target=self._one, args=(conn,), daemon=True)
            self.handlers.append(handler)
            handler.start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            request = conn.recv(65536)
            if request.startswith(b"POST /sync"):
                self.done.wait(self.hold)
            if self.done.is_set():
                return  # the stand-in is closing: the asker gets no answer, as from a busy daemon
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream, contextlib.suppress(OSError):
                upstream.connect(str(self.real))
                upstream.sendall(request)
                upstream.shutdown(socket.SHUT_WR)
                while data := upstream.recv(65536):
                    conn.sendall(data)

    def close(self) -> None:
        self.done.set()
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone may not
        self.server.close()
        self.thread.join(10)
        for handler in self.handlers:
            handler.join(10)
        assert not any(t.is_alive() for t in (self.thread, *self.handlers)), "a stand-in thread still runs"
        self.path.unlink(missing_ok=True)
        os.rename(self.real, self.path)


def test_a_daemon_too_busy_to_answer_its_socket_is_not_read_as_no_replica_txid(rws):
    write_s3_env(rws)
    setup(rws)
    make_db(rws.db, 3)
    start_bg(rws)
    slow = SlowSocket(rws.socket())
    try:
        (rws.state / "daemon-sync.json").unlink(missing_ok=True)  # no earlier answer to fall back on
        code, data = status(rws)
        db = data["databases"][0]
        assert code == 0, db
        assert db["daemon_answered"] is False and db["replica_txid"] is not None
        human = rws.inv("backup.status")
        assert "did not answer in time" in human.stdout and human.returncode == 0
    finally:
        slow.close()
    stop(rws)


def test_status_reports_a_daemons_sync_errors_in_json_logs_too(rws, s3_endpoint):
    """litestream.yml's 'logging: type: json': the daemon's errors are read all the same."""
    from conftest import insert, s3_client

    write_s3_env(rws)
    setup(rws)
    make_db(rws.db, 3)
    rws.config.write_text(rws.config.read_text() + "\nlogging:\n  type: json\n")
    start_bg(rws)
    assert '"msg":' in (rws.state / "litestream.log").read_text()  # JSON lines, as configured
    client = s3_client(s3_endpoint)
    for obj in client.list_objects_v2(Bucket=rws.bucket).get("Contents", []):
        client.delete_object(Bucket=rws.bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=rws.bucket)
    insert(rws.db, "with nowhere to go")

    def failing() -> dict | None:
        code, data = status(rws)
        db = data["databases"][0]
        return db if code == 1 and db["error"] else None

    db = wait_for(failing, 30, interval=0.5, what="status to report the failing sync")
    assert f"bucket '{rws.bucket}' does not exist" in db["error"], db
    client.create_bucket(Bucket=rws.bucket)  # so the stop's final sync can finish
    stop(rws)
