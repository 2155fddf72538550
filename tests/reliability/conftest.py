"""Fixtures and helpers of the reliability suite: workspaces on the local S3 server, a
writer that commits continuously, a TCP forwarder that can cut the network. Each
workspace is scanned for secrets as its test ends, into the suite-wide ledger
(``tests/conftest.py``) behind the figures printed at the end.

Every thread and process started here is stopped through its own handle, on
success and on failure.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conftest import (
    ACCESS_KEY_ID,
    LITESTREAM,
    SECRET_ACCESS_KEY,
    Ledger,
    Workspace,
    rows,
    wait_for,
)

# Random choices (kill moments, command orders) are reproducible: each summary line
# names the seed, and RELIABILITY_SEED replays it.
SEED = int(os.environ.get("RELIABILITY_SEED") or time.time_ns() % 1_000_000)


# -- workspaces ----------------------------------------------------------------------


def litestreams(ws: Workspace) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line names this workspace's config."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and str(ws.config) in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


def kill_leftovers(ws: Workspace) -> None:
    """Kill any litestream of this workspace's (unique) config that outlived its test."""
    for proc in litestreams(ws):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
            proc.wait(10)


def scanned_workspace(ws: Workspace, ledger: Ledger, endpoint: str | None) -> Iterator[Workspace]:
    """Yield ``ws``; afterwards stop what it left running and add it to the secret scan."""
    try:
        yield ws
    finally:
        kill_leftovers(ws)
        ws.cleanup()
        before = len(ledger.hits)
        ledger.scan(ws, getattr(ws, "bucket", None), endpoint)
        assert ledger.hits[before:] == [], "a secret was printed or written"


@pytest.fixture
def rws(r2ws: Workspace, s3_endpoint: str, ledger: Ledger) -> Iterator[Workspace]:
    """An S3 workspace (r2ws) with a 1 s sync interval, scanned for secrets at the end."""
    r2ws.endpoint = s3_endpoint
    write_s3_env(r2ws)
    yield from scanned_workspace(r2ws, ledger, s3_endpoint)


def write_s3_env(ws: Workspace, endpoint: str | None = None, interval: str = "1s", **extra: str) -> None:
    """The workspace's .env: the local S3 server (or ``endpoint``), its bucket, the credentials."""
    ws.write_env(
        R2_ENDPOINT=endpoint or ws.endpoint, R2_BUCKET=ws.bucket,
        R2_ACCESS_KEY_ID=ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        BACKUP_SYNC_INTERVAL=interval, **extra,
    )


def setup(ws: Workspace) -> None:
    result = ws.inv("backup.setup")
    assert result.returncode == 0, result.stdout + result.stderr


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_bg(ws: Workspace) -> tuple[int, str]:
    """``inv backup.start-bg`` must start a daemon: (its pid, proven the only one; the output)."""
    result = ws.inv("backup.start-bg")
    assert result.returncode == 0, result.stdout + result.stderr
    line = [l for l in result.stdout.splitlines() if l.startswith("started (pid ")]
    assert len(line) == 1, result.stdout
    pid = int(line[0][len("started (pid "):-1])
    assert ws.daemon_pid() == pid
    assert [p.pid for p in litestreams(ws)] == [pid]
    cmdline = " ".join(psutil.Process(pid).cmdline())
    assert ACCESS_KEY_ID not in cmdline and SECRET_ACCESS_KEY not in cmdline
    return pid, result.stdout


def stop(ws: Workspace) -> str:
    result = ws.inv("backup.stop")
    assert result.returncode == 0, result.stdout + result.stderr
    assert litestreams(ws) == [] and not ws.pidfile.exists()
    return result.stdout


def status(ws: Workspace) -> tuple[int, dict]:
    """``inv backup.status --json``: (exit code, the JSON)."""
    result = ws.inv("backup.status", "--json")
    assert result.stdout.lstrip().startswith("{"), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def integrity(path: Path) -> str:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return "; ".join(str(r[0]) for r in con.execute("PRAGMA integrity_check"))
    finally:
        con.close()


class Restores:
    """Restores through ``inv backup.restore --output`` into fresh files, so polling can repeat."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.count = 0

    def path(self) -> Path:
        self.count += 1
        folder = self.ws.root / "restores"
        folder.mkdir(exist_ok=True)
        return folder / f"r{self.count}.db"

    def __call__(self) -> list[tuple]:
        """The restored rows; the product's and SQLite's integrity checks must both say ok."""
        out = self.path()
        result = self.ws.inv("backup.restore", "--output", str(out), "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["integrity"] == "ok"
        assert integrity(out) == "ok"
        return rows(out)


# -- a writer that commits continuously ----------------------------------------------


class Writer:
    """Commits one row per transaction on its own thread, until the ``with`` block ends.

    ``committed`` holds every body whose COMMIT returned, in order.
    """

    def __init__(self, db: Path, pause: float = 0.02):
        self.db = db
        self.pause = pause  # pacing, so litestream and the CLI keep a share of two cores
        self.committed: list[str] = []
        self.error: sqlite3.Error | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer:{db}", daemon=True)

    def _run(self) -> None:
        con = sqlite3.connect(self.db, timeout=30)
        try:
            while not self._stop.wait(self.pause):
                body = f"writer {len(self.committed)}"
                con.execute("INSERT INTO items (body) VALUES (?)", (body,))
                con.commit()
                self.committed.append(body)
        except sqlite3.Error as exc:  # re-raised in the test by stop()
            self.error = exc
        finally:
            con.close()

    def wait_commits(self, n: int, timeout: float = 30) -> None:
        """Wait until ``n`` more rows are committed."""
        target = len(self.committed) + n

        def done() -> bool:
            assert self.error is None and self._thread.is_alive(), f"the writer died: {self.error}"
            return len(self.committed) >= target

        wait_for(done, timeout, interval=0.01, what=f"{n} more commits")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the writer did not stop"
        if self.error is not None:
            raise self.error

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


# -- a TCP forwarder with a switch -----------------------------------------------------


class _Pair:
    """One client connection and its upstream twin; closed when both directions end."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.sockets = (client, upstream)
        self._open = 2
        self._lock = threading.Lock()

    def shutdown(self) -> None:
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def pump(self, src: socket.socket, dst: socket.socket, throttle=None) -> None:
        try:
            while data := src.recv(16384 if throttle else 65536):
                if throttle:
                    throttle(len(data))
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with self._lock:
            self._open -= 1
            last = self._open == 0
        if last:
            for s in self.sockets:
                s.close()


class Forwarder:
    """127.0.0.1:``port`` forwarded to 127.0.0.1:``upstream_port``, on threads.

    ``cut()`` drops every open connection and closes the listening socket, so new
    connections are refused, as by a firewall that rejects; ``heal()`` listens on
    the same port again. ``close()`` stops every thread it started. ``rate`` (bytes
    a second) makes the uplink slow: every upload shares it, as on a home line;
    ``down`` makes the downlink slow too, at that rate.
    """

    def __init__(self, upstream_port: int, rate: float | None = None, down: float | None = None):
        self.upstream = ("127.0.0.1", upstream_port)
        self.rate = rate
        self.down = down
        self._next = {"up": 0.0, "down": 0.0}  # when each direction has room again
        self.port = 0
        self.accepted = 0
        self._pairs: set[_Pair] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.heal()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"forwarder:{self.port}")
        thread.start()
        self._threads.append(thread)

    def heal(self) -> None:
        assert self._listener is None, "already listening"
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept, listener)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut() or close() closed the listener
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = _Pair(client, upstream)
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    pair.shutdown()
                self.accepted += 1
                self._pairs.add(pair)
            up = (lambda size: self._throttle("up", self.rate, size)) if self.rate else None
            down = (lambda size: self._throttle("down", self.down, size)) if self.down else None
            self._spawn(pair.pump, client, upstream, up)
            self._spawn(pair.pump, upstream, client, down)

    def _throttle(self, direction: str, rate: float, size: int) -> None:
        """Hold the sender until the shared link has room for ``size`` more bytes."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next[direction])
            self._next[direction] = start + size / rate
        time.sleep(max(0.0, start - now))

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, set()
        if listener is not None:
            # shutdown() wakes the accept() blocked on another thread; close() alone may not.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for pair in pairs:
            pair.shutdown()

    def close(self) -> None:
        self.cut()
        for thread in self._threads:
            thread.join(10)
        assert not any(t.is_alive() for t in self._threads), "a forwarder thread is still running"

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# -- an unrelated process --------------------------------------------------------------


@pytest.fixture
def sentinel() -> Iterator[subprocess.Popen]:
    """A live ``sleep`` that no chora-backup command may ever signal; killed by its own pid."""
    proc = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def stale_pidfile(ws: Workspace, pid: int) -> None:
    """A pidfile as start-bg writes it, claiming that ``pid`` is this workspace's litestream."""
    argv = [str(LITESTREAM.resolve()), "replicate", "-config", str(ws.config), "-no-expand-env"]
    ws.state.mkdir(parents=True, exist_ok=True)
    ws.pidfile.write_text(json.dumps({
        "pid": pid,
        "create_time": psutil.Process(pid).create_time(),
        "cmdline": argv,
        "config": str(ws.config),
        "started_at": "2024-01-01T00:00:00+00:00",
        "log": str(ws.state / "litestream.log"),
        "foreground": False,
    }))
