"""Knowing when backups stop: litestream's heartbeat and metrics, driven by a real daemon.

A local HTTP server stands in for the dead-man's-switch service (healthchecks.io
and the like); the ping URL's path is its token, so it must never show up in
anything the tool prints or writes, but the litestream.yml litestream reads
(0600) and the daemon's copy of it.
"""
from __future__ import annotations

import json
import socket
import stat
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from backup import config, doctor

from conftest import PingServer, Workspace, free_port, make_db, wait_for

TOKEN = "7f3e0b5c-ping-token-4411"


@pytest.fixture
def pings():
    server = PingServer(f"/ping/{TOKEN}")
    try:
        yield server
    finally:
        server.close()


def checks(ws: Workspace, *args: str) -> tuple[int, dict[str, dict]]:
    result = ws.inv("backup.doctor", "--json", *args)
    return result.returncode, {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def assert_token_nowhere(ws: Workspace) -> None:
    """Not in any output; on disk only in the two private copies of litestream.yml."""
    for text in ws.outputs:
        assert TOKEN not in text
    allowed = {ws.config, ws.state / "litestream.running.yml"}
    for path in ws.root.rglob("*"):
        if not path.is_file() or path.name == ".env":
            continue
        if path in allowed:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        else:
            assert TOKEN.encode() not in path.read_bytes(), f"the ping token is in {path}"


@pytest.mark.posix
def test_a_real_daemon_pings_the_heartbeat_and_serves_metrics(ws: Workspace, pings: PingServer):
    metrics_port = free_port()
    ws.write_env(BACKUP_HEARTBEAT_URL=pings.url, BACKUP_HEARTBEAT_INTERVAL="1m",
                 BACKUP_METRICS_ADDR=f"127.0.0.1:{metrics_port}", BACKUP_LOCAL_DIR=str(ws.root / "backups"))
    make_db(ws.db)
    setup = ws.inv("backup.local", "--no-start")
    assert setup.returncode == 0, setup.stderr
    assert "heartbeat      http://127.0.0.1:" in setup.stdout and "/**** every 1m" in setup.stdout
    pings.code = 500  # the first ping fails: litestream then logs the URL, which must be masked
    assert ws.inv("backup.start-bg").returncode == 0

    # litestream checks every 15 s and pings once every database has synced.
    wait_for(lambda: pings.paths, timeout=45, what="the daemon's first heartbeat")
    assert pings.paths[0] == f"/ping/{TOKEN}"
    log = ws.state / "litestream.log"
    wait_for(lambda: "heartbeat ping failed" in log.read_text(), timeout=10, what="the failed ping's log line")
    assert "url=****" in log.read_text()

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert f'litestream_sync_count{{db="{ws.db}"}}' in metrics

    status = ws.inv("backup.status", "--json")
    assert status.returncode == 0, status.stdout  # a failing heartbeat is not a failing backup
    data = json.loads(status.stdout)
    assert data["metrics_url"] == f"http://127.0.0.1:{metrics_port}/metrics"
    assert data["heartbeat"] == {"url": pings.url.split("/ping/")[0] + "/****", "interval": "1m"}
    assert f"metrics   http://127.0.0.1:{metrics_port}/metrics" in ws.inv("backup.status").stdout

    code, found = checks(ws)
    assert code == 1 and found["heartbeat"]["state"] == "fail"
    assert "the daemon's last ping failed (unexpected status code: 500)" in found["heartbeat"]["detail"]
    assert found["metrics"]["state"] == "ok"

    pings.code = 200
    sent = len(pings.paths)
    code, found = checks(ws, "--ping")
    assert len(pings.paths) == sent + 1  # exactly one test request
    assert found["heartbeat"]["state"] == "ok", found["heartbeat"]
    assert found["heartbeat"]["detail"].endswith("/**** answered HTTP 200 to a test ping")
    assert code == 0

    assert ws.inv("backup.stop").returncode == 0
    assert_token_nowhere(ws)


def test_a_metrics_port_in_use_fails_the_start_and_says_what_to_do(ws: Workspace):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        ws.write_env(BACKUP_METRICS_ADDR=f"127.0.0.1:{port}", BACKUP_LOCAL_DIR=str(ws.root / "backups"))
        make_db(ws.db)
        assert ws.inv("backup.local", "--no-start").returncode == 0
        start = ws.inv("backup.start-bg")
        assert start.returncode == 1
        assert "cannot serve metrics at BACKUP_METRICS_ADDR (the port is in use" in start.stderr
        assert "Traceback" not in start.stderr
        assert ws.daemon_pid() is None  # nothing left running
    finally:
        holder.close()


def test_ping_reports_an_unreachable_url_without_its_token(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/ping/{TOKEN}"
    settings = config.load(cwd=tmp_path, environ={"BACKUP_HEARTBEAT_URL": url})
    ok, what = doctor.ping(url, settings, timeout=5)
    assert not ok and what.startswith(f"could not reach http://127.0.0.1:{port}/****: ")
    assert TOKEN not in what


def test_doctor_ping_without_a_heartbeat_says_how_to_set_one(ws: Workspace):
    make_db(ws.db)
    ws.write_env(BACKUP_LOCAL_DIR=str(ws.root / "backups"))
    assert ws.inv("backup.local", "--no-start").returncode == 0
    code, found = checks(ws, "--ping")
    assert code == 1
    assert found["heartbeat"]["detail"] == "no heartbeat to ping: BACKUP_HEARTBEAT_URL is not set"
    code, found = checks(ws)
    assert found["heartbeat"]["state"] == "ok" and found["heartbeat"]["detail"].startswith("not configured")
    assert "metrics" not in found


def test_ping_reports_a_server_that_does_not_speak_http_without_a_traceback(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer_garbage() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=answer_garbage, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/ping/{TOKEN}"
        settings = config.load(cwd=tmp_path, environ={"BACKUP_HEARTBEAT_URL": url})
        ok, what = doctor.ping(url, settings, timeout=5)
    finally:
        thread.join(10)
        listener.close()
    assert not ok and what.startswith("could not reach http://127.0.0.1:") and TOKEN not in what


class _Metrics(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("served, state", [('litestream_sync_count{db="/elsewhere/other.db"} 3\n', "fail"),
                                           ('litestream_sync_count{db="%s"} 3\n', "ok")])
def test_the_metrics_check_wants_this_workspaces_database(tmp_path, served, state):
    """Another workspace's daemon on the configured port is not this one's metrics."""
    from types import SimpleNamespace

    db = tmp_path / "chora.db"
    db.write_bytes(b"")
    handler = type("Handler", (_Metrics,), {"body": (served.replace("%s", str(db))).encode()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/metrics"
        workspace = SimpleNamespace(configured=True, running=True, config=SimpleNamespace(metrics_url=url),
                                    databases=[SimpleNamespace(path=db)])
        check = doctor._metrics(workspace, workspace.config, config.load(cwd=tmp_path, environ={}))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert check.state == state, check
