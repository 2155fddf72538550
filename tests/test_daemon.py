"""Background replication on the real litestream: start-bg, stop, pidfile, races, recovery.

Every daemon here is started through the CLI and stopped through the CLI or by
its own pid: the conftest ws fixture kills whatever the pidfile still names, and
this module's ws fixture any other litestream of the test's (unique) config.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from backup import config, daemon, logfile, ltconfig, process, terminal
from backup.errors import BackupError
from backup.litestream import Litestream
from backup.config import START_WAIT

from conftest import BIN, LITESTREAM, Workspace, insert, make_db, rows, wait_for

STARTED = re.compile(r"^started \(pid (\d+)\)$", re.M)
ALREADY = re.compile(r"^already running \(pid (\d+)\)$", re.M)
STOPPED = re.compile(r"^stopped \(pid (\d+)\) after its final sync$", re.M)


# -- helpers -----------------------------------------------------------------------


def litestreams(ws: Workspace) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line names this workspace's config."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if str(ws.config) in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_bg(ws: Workspace, *args: str) -> int:
    """``inv backup.start-bg`` (or ``args``) must start a daemon; its pid, proven live."""
    result = ws.inv(*(args or ("backup.start-bg",)))
    assert result.returncode == 0, result.stdout + result.stderr
    match = STARTED.search(result.stdout)
    assert match, result.stdout
    pid = int(match.group(1))
    assert ws.daemon_pid() == pid
    cmdline = psutil.Process(pid).cmdline()
    assert Path(cmdline[0]).name == "litestream" and "replicate" in cmdline
    assert str(ws.config) in cmdline
    assert [p.pid for p in litestreams(ws)] == [pid]
    return pid


def stop(ws: Workspace, pid: int) -> None:
    result = ws.inv("backup.stop")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"stopped (pid {pid}) after its final sync" in result.stdout
    assert not alive(pid)
    assert not ws.pidfile.exists()
    assert litestreams(ws) == []


class Restores:
    """Restores into fresh files, so one can be repeated while polling."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.n = 0

    def __call__(self) -> list[tuple] | None:
        """The restored rows, or None while litestream cannot restore yet."""
        self.n += 1
        out = self.ws.root / "restores" / f"r{self.n}.db"
        proc = self.ws.litestream("restore", "-config", str(self.ws.config), "-no-expand-env",
                                  "-o", str(out), str(self.ws.db))
        return rows(out) if proc.returncode == 0 else None


def plausible_record(
    ws: Workspace, pid: int, create_time: float, cmdline: list[str] | None = None
) -> None:
    """A pidfile as start-bg writes it, naming ``pid``."""
    binary = str(LITESTREAM.resolve())
    argv = [binary, "replicate", "-config", str(ws.config), "-no-expand-env"]
    ws.state.mkdir(parents=True, exist_ok=True)
    ws.pidfile.write_text(json.dumps({
        "pid": pid,
        "create_time": create_time,
        "cmdline": cmdline or argv,
        "config": str(ws.config),
        "started_at": "2024-01-01T00:00:00+00:00",
        "log": str(ws.state / "litestream.log"),
        "foreground": False,
    }))


@pytest.fixture
def ws(ws: Workspace):
    """The conftest workspace, plus: no litestream of its config outlives the test.

    The conftest teardown stops the daemon the pidfile names; a bug that starts
    a second one would leak it. The config path is unique to this test.
    """
    yield ws
    for proc in litestreams(ws):
        proc.kill()
        proc.wait(10)


@pytest.fixture
def sleeper():
    """An unrelated live process, stopped by its own pid."""
    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


# -- 1. start-bg, write, stop, restore ------------------------------------------


@pytest.mark.posix
@pytest.mark.parametrize(
    "commands",
    [
        pytest.param(
            (("backup.local", "--no-start"), ("backup.start-bg",)), id="local-then-start-bg"
        ),
        pytest.param((("backup.local", "--background"),), id="local-background"),
    ],
)
def test_local_daemon_keeps_every_row_through_stop(ws, commands):
    # A long interval: only stop's final sync can carry the last rows.
    ws.write_env(BACKUP_SYNC_INTERVAL="1m")
    make_db(ws.db, 3)
    for command in commands[:-1]:
        assert ws.inv(*command).returncode == 0
    pid = start_bg(ws, *commands[-1])
    insert(ws.db, "while running 1", "while running 2")
    insert(ws.db, "just before stop")
    stop(ws, pid)
    restored = ws.restore(ws.root / "restored.db")
    assert restored == rows(ws.db)
    assert restored[-1][1] == "just before stop" and len(restored) == 6


@pytest.mark.posix
def test_s3_daemon_keeps_every_row_through_stop(r2ws):
    assert r2ws.inv("backup.setup").returncode == 0
    make_db(r2ws.db, 3)
    pid = start_bg(r2ws)
    insert(r2ws.db, "while running")
    insert(r2ws.db, "just before stop")
    stop(r2ws, pid)
    restored = r2ws.restore(r2ws.root / "restored.db")
    assert restored == rows(r2ws.db)
    assert restored[-1][1] == "just before stop" and len(restored) == 5
    r2ws.assert_no_secrets()


# -- 2. stale pidfiles are never signalled --------------------------------------


def dead_pid() -> tuple[int, float]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    create_time = psutil.Process(proc.pid).create_time()
    proc.wait(10)
    assert not psutil.pid_exists(proc.pid)
    return proc.pid, create_time


def test_stop_removes_a_pidfile_naming_a_dead_pid(ws):
    assert ws.inv("backup.local", "--no-start").returncode == 0
    pid, created = dead_pid()
    plausible_record(ws, pid, created)
    result = ws.inv("backup.stop")
    assert result.returncode == 0, result.stderr
    assert f"removed a stale pidfile (process {pid} is gone)" in result.stdout
    assert "not running" in result.stdout
    assert not ws.pidfile.exists()


def test_start_bg_replaces_a_pidfile_naming_a_dead_pid(ws):
    assert ws.inv("backup.local", "--no-start").returncode == 0
    make_db(ws.db, 1)
    pid, created = dead_pid()
    plausible_record(ws, pid, created)
    result = ws.inv("backup.start-bg")
    assert result.returncode == 0, result.stderr
    assert f"replaced a stale pidfile (process {pid} is gone)" in result.stdout
    new = int(STARTED.search(result.stdout).group(1))
    assert new != pid and ws.daemon_pid() == new and alive(new)
    stop(ws, new)


@pytest.mark.posix
@pytest.mark.parametrize("forged_cmdline", [False, True], ids=["litestream-argv", "sleep-argv"])
def test_a_pidfile_naming_an_unrelated_live_process_is_never_signalled(ws, sleeper, forged_cmdline):
    """The pid is a live ``sleep``; the record claims a litestream, or even the sleep's own argv."""
    assert ws.inv("backup.local", "--no-start").returncode == 0
    make_db(ws.db, 1)
    me = psutil.Process(sleeper.pid)
    # Even the create time matches: only the command line tells them apart.
    cmdline = me.cmdline() if forged_cmdline else None
    plausible_record(ws, sleeper.pid, me.create_time(), cmdline)

    result = ws.inv("backup.stop")
    assert result.returncode == 0, result.stderr
    assert f"removed a stale pidfile (pid {sleeper.pid} " in result.stdout
    assert "not running" in result.stdout
    assert not ws.pidfile.exists()
    assert sleeper.poll() is None

    plausible_record(ws, sleeper.pid, me.create_time(), cmdline)
    result = ws.inv("backup.start-bg")
    assert result.returncode == 0, result.stderr
    assert f"replaced a stale pidfile (pid {sleeper.pid} " in result.stdout
    new = int(STARTED.search(result.stdout).group(1))
    assert ws.daemon_pid() == new != sleeper.pid
    stop(ws, new)
    assert sleeper.poll() is None and me.status() != psutil.STATUS_ZOMBIE


@pytest.mark.posix
@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param('{"pid": 1}', id="missing-fields"),
        pytest.param("RECORD:-1", id="negative-pid"),
        pytest.param('RECORD:"1"', id="pid-as-string"),
    ],
)
def test_a_damaged_pidfile_is_stale_not_a_traceback(ws, text):
    assert ws.inv("backup.local", "--no-start").returncode == 0
    make_db(ws.db, 1)
    if text.startswith("RECORD:"):
        plausible_record(ws, 0, 0.0)
        text = ws.pidfile.read_text().replace('"pid": 0', f'"pid": {text[len("RECORD:"):]}')
    ws.state.mkdir(parents=True, exist_ok=True)
    ws.pidfile.write_text(text)
    try:
        result = ws.inv("backup.stop")
        assert result.returncode == 0, result.stderr
        assert "removed a stale pidfile (unreadable pidfile" in result.stdout
        assert "not running" in result.stdout
        assert not ws.pidfile.exists()

        ws.pidfile.write_text(text)
        pid = start_bg(ws)
    finally:
        if ws.pidfile.exists() and ws.pidfile.read_text() == text:
            ws.pidfile.unlink()  # the teardown must not read it as a pid
    stop(ws, pid)


@pytest.mark.posix
def test_the_daemon_is_still_found_after_the_clock_steps(ws):
    """psutil's create time follows the wall clock: an NTP step must not orphan the daemon."""
    assert ws.inv("backup.local", "--no-start").returncode == 0
    make_db(ws.db, 1)
    pid = start_bg(ws)
    record = json.loads(ws.pidfile.read_text())
    record["create_time"] -= 3600  # what the record looks like after the clock stepped an hour
    ws.pidfile.write_text(json.dumps(record))
    result = ws.inv("backup.start-bg")
    assert result.returncode == 0, result.stderr
    assert f"already running (pid {pid})" in result.stdout
    assert [p.pid for p in litestreams(ws)] == [pid]
    stop(ws, pid)


@pytest.mark.posix
def test_a_daemon_no_pidfile_names_still_blocks_a_second_one(ws, tmp_path):
    """Another BACKUP_STATE_DIR means another pidfile, but the same config: refuse."""
    assert ws.inv("backup.local", "--no-start").returncode == 0
    make_db(ws.db, 1)
    pid = start_bg(ws)
    elsewhere = {"BACKUP_STATE_DIR": str(tmp_path / "other-state")}
    for command in ("backup.start-bg", "backup.start"):
        result = ws.inv(command, env=elsewhere, timeout=60)
        assert result.returncode == 1, result.stdout
        assert f"litestream (pid {pid}) already replicates {ws.config}" in result.stderr
        assert [p.pid for p in litestreams(ws)] == [pid]
    assert not (tmp_path / "other-state" / "litestream.pid").exists()
    stop(ws, pid)


# -- 3. the 20-way race ---------------------------------------------------------


def run_all(ws: Workspace, n: int, *args: str) -> list[tuple[int, str]]:
    procs = [ws.spawn(str(BIN / "inv"), *args) for _ in range(n)]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        text = out.decode("utf-8", errors="replace")
        ws.outputs.append(text)
        results.append((proc.returncode, text))
    return results


def test_twenty_concurrent_starts_leave_one_daemon_and_twenty_stops_leave_none(ws):
    assert ws.inv("backup.local", "--no-start").returncode == 0
    make_db(ws.db, 2)

    results = run_all(ws, 20, "backup.start-bg")
    assert [code for code, _ in results] == [0] * 20, results
    started = [int(m.group(1)) for _, out in results for m in STARTED.finditer(out)]
    already = [int(m.group(1)) for _, out in results for m in ALREADY.finditer(out)]
    assert len(started) == 1, results
    assert len(already) == 19, results
    pid = started[0]
    assert set(already) == {pid}
    assert [p.pid for p in litestreams(ws)] == [pid]
    assert ws.daemon_pid() == pid

    results = run_all(ws, 20, "backup.stop")
    assert [code for code, _ in results] == [0] * 20, results
    stopped = [int(m.group(1)) for _, out in results for m in STOPPED.finditer(out)]
    assert stopped == [pid], results
    assert sum("not running" in out for _, out in results) == 19, results
    assert litestreams(ws) == []
    assert not alive(pid)
    assert not ws.pidfile.exists()


# -- 4. recovery after kill -9 ---------------------------------------------------


@pytest.mark.posix
def test_start_bg_recovers_after_kill_9_and_loses_nothing(ws):
    assert ws.inv("backup.local", "--no-start").returncode == 0
    make_db(ws.db, 3)
    first = start_bg(ws)
    restore = Restores(ws)
    insert(ws.db, "before the kill")
    wait_for(lambda: restore() == rows(ws.db), 30, what="the row before the kill to be replicated")

    psutil.Process(ws.daemon_pid()).kill()
    wait_for(lambda: not alive(first), 10, what="the killed daemon to die")
    insert(ws.db, "while down 1", "while down 2")

    result = ws.inv("backup.start-bg")
    assert result.returncode == 0, result.stderr
    assert f"replaced a stale pidfile (process {first} " in result.stdout
    # litestream cut off mid-sync can skip a change on restart: a snapshot first holds them all.
    assert daemon.AFTER_CRASH in result.stdout
    snapshots = json.loads(ws.inv("backup.snapshots", "--json").stdout)["snapshots"]
    assert len(snapshots) == 2, snapshots
    second = int(STARTED.search(result.stdout).group(1))
    assert second != first and ws.daemon_pid() == second
    assert [p.pid for p in litestreams(ws)] == [second]

    insert(ws.db, "after the restart")
    expected = rows(ws.db)
    assert len(expected) == 7
    wait_for(lambda: restore() == expected, 30, what="the replica to catch up after the restart")
    stop(ws, second)
    assert restore() == rows(ws.db) == expected


# -- 5. start-up failures fail fast and leave nothing behind ------------------------


def test_start_bg_with_a_config_litestream_cannot_parse_fails_fast(ws):
    ws.config.write_text("dbs:\n  - path: x\n    replica:\n      type: nosuchtype\n")
    began = time.monotonic()
    result = ws.inv("backup.start-bg")
    took = time.monotonic() - began
    assert result.returncode == 1
    assert took < START_WAIT
    assert 'unknown replica type in config: "nosuchtype"' in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "nosuchtype" in result.stderr.strip().splitlines()[-1]
    assert not ws.pidfile.exists()
    assert litestreams(ws) == []


def test_start_bg_against_a_missing_bucket_fails_naming_the_bucket(r2ws):
    env = (r2ws.path / ".env").read_text()
    r2ws.write_env(env.replace(f"R2_BUCKET={r2ws.bucket}", "R2_BUCKET=no-such-bucket-here"))
    assert r2ws.inv("backup.setup").returncode == 0
    assert "no-such-bucket-here" in r2ws.config.read_text()
    make_db(r2ws.db, 1)
    began = time.monotonic()
    result = r2ws.inv("backup.start-bg")
    took = time.monotonic() - began
    assert result.returncode == 1
    assert took < START_WAIT
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: bucket 'no-such-bucket-here' does not exist: create it, or fix R2_BUCKET", result.stderr
    # Found while claiming the replica, before litestream was started at all.
    assert not (r2ws.state / "litestream.log").exists()
    assert not r2ws.pidfile.exists()
    assert litestreams(r2ws) == []
    r2ws.assert_no_secrets()


# -- 6. foreground start refuses while a daemon runs ---------------------------------


@pytest.mark.posix
def test_foreground_start_refuses_while_start_bg_daemon_runs(ws):
    assert ws.inv("backup.local", "--no-start").returncode == 0
    make_db(ws.db, 1)
    pid = start_bg(ws)
    result = ws.inv("backup.start")
    assert result.returncode == 1
    assert f"(pid {pid}, started by 'inv backup.start-bg')" in result.stderr
    assert "stop it first" in result.stderr
    assert ws.daemon_pid() == pid
    assert [p.pid for p in litestreams(ws)] == [pid]
    stop(ws, pid)


# -- 7. the Windows branches, with the platform calls faked ----------------------------


class FakeProc:
    def __init__(self, pid: int):
        self.pid = pid
        self.terminated = 0

    def terminate(self) -> None:
        self.terminated += 1


class FakeMsvcrt:
    """msvcrt.locking with Windows' constants; ``held`` makes a lock attempt fail."""

    LK_UNLCK, LK_LOCK, LK_NBLCK, LK_RLCK, LK_NBRLCK = 0, 1, 2, 3, 4

    def __init__(self):
        self.calls: list[tuple[int, int, int, int | None]] = []  # fd, mode, bytes, position
        self.handles: dict[int, object] = {}
        self.held = False

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        position = self.handles[fd].tell() if fd in self.handles else None
        self.calls.append((fd, mode, nbytes, position))
        if mode == self.LK_NBLCK and self.held:
            raise OSError(errno.EACCES, "Permission denied")


class FakeRun:
    """subprocess.run as the Ctrl-Break helper's caller sees it."""

    def __init__(self, returncode: int = 0, error: Exception | None = None):
        self.returncode, self.error, self.calls = returncode, error, []

    def __call__(self, argv, **kwargs):
        self.calls.append((argv, kwargs))
        if self.error is not None:
            raise self.error
        return subprocess.CompletedProcess(argv, self.returncode)


def test_windows_interrupt_runs_the_ctrl_break_helper_on_a_console_of_its_own():
    from backup.litestream import CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW

    run = FakeRun()
    assert process.Windows(run=run, msvcrt=FakeMsvcrt()).interrupt(FakeProc(4242)) is True
    [(argv, kwargs)] = run.calls
    assert argv == [sys.executable, "-I", "-m", "backup.winconsole", "4242"]
    assert kwargs["creationflags"] == CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW
    assert kwargs["timeout"] == process.Windows.HELPER_WAIT


def test_windows_interrupt_says_when_ctrl_break_could_not_be_delivered():
    proc = FakeProc(4242)
    assert process.Windows(run=FakeRun(returncode=3)).interrupt(proc) is False  # no console to attach to
    assert process.Windows(run=FakeRun(error=OSError(errno.ENOENT, "no python"))).interrupt(proc) is False
    assert process.Windows(run=FakeRun(error=subprocess.TimeoutExpired("helper", 15))).interrupt(proc) is False
    assert proc.terminated == 0  # stop decides what comes next, not the interrupt


def test_windows_lock_and_unlock_lock_the_first_byte(tmp_path):
    fake = FakeMsvcrt()
    platform = process.Windows(msvcrt=fake)
    path = tmp_path / "litestream.lock"
    path.write_bytes(b"left by someone")
    with open(path, "a+b") as fh:
        fake.handles[fh.fileno()] = fh
        platform.lock(fh)
        platform.unlock(fh)
        assert fake.calls == [
            (fh.fileno(), fake.LK_NBLCK, 1, 0),
            (fh.fileno(), fake.LK_UNLCK, 1, 0),
        ]


def test_windows_lock_turns_oserror_into_blocking_io_error(tmp_path):
    fake = FakeMsvcrt()
    fake.held = True
    platform = process.Windows(msvcrt=fake)
    with open(tmp_path / "litestream.lock", "a+b") as fh:
        fake.handles[fh.fileno()] = fh
        with pytest.raises(BlockingIOError):
            platform.lock(fh)


def test_a_held_windows_lock_times_out_with_an_actionable_error(tmp_path):
    fake = FakeMsvcrt()
    fake.held = True
    settings = config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(tmp_path / "state")})
    platform = process.Windows(msvcrt=fake)
    began = time.monotonic()
    with pytest.raises(BackupError, match="another chora-backup command has held .*lock"):
        with process.locked(settings.lockfile, settings.state_dir, platform, timeout=0.3):
            pytest.fail("the lock was taken while held")
    assert time.monotonic() - began < 5
    assert len(fake.calls) > 1  # it retried before giving up
    assert {mode for _, mode, _, _ in fake.calls} == {fake.LK_NBLCK}  # never unlocked


# -- 8. the log cap ---------------------------------------------------------------------


def test_rotate_moves_an_oversize_log_to_dot_1(tmp_path):
    log = tmp_path / "litestream.log"
    old = tmp_path / "litestream.log.1"
    old.write_text("older generation\n")
    log.write_bytes(b"x" * 101)
    logfile.rotate(log, max_bytes=100)
    assert not log.exists()
    assert old.read_bytes() == b"x" * 101


def test_rotate_keeps_a_log_within_the_cap(tmp_path):
    log = tmp_path / "litestream.log"
    log.write_bytes(b"x" * 100)
    logfile.rotate(log, max_bytes=100)
    assert log.read_bytes() == b"x" * 100
    assert not (tmp_path / "litestream.log.1").exists()
    logfile.rotate(tmp_path / "absent.log", max_bytes=100)  # nothing to do, no error


@pytest.mark.posix
def test_start_bg_rotates_a_huge_log(ws):
    assert ws.inv("backup.local", "--no-start").returncode == 0
    make_db(ws.db, 1)
    ws.state.mkdir(parents=True, exist_ok=True)
    log = ws.state / "litestream.log"
    with open(log, "wb") as fh:
        fh.write(b"old run\n")
        fh.truncate(logfile.MAX_BYTES + 1)  # sparse: big on paper, cheap on disk
    pid = start_bg(ws)
    rotated = ws.state / "litestream.log.1"
    assert rotated.stat().st_size == logfile.MAX_BYTES + 1
    assert rotated.read_bytes()[:8] == b"old run\n"
    assert log.stat().st_size < 64 * 1024
    assert "replicating to" in log.read_text()
    stop(ws, pid)


class _RecordingPlatform:
    def __init__(self):
        self.interrupted: list[int] = []

    def interrupt(self, proc, sig=None):
        self.interrupted.append(proc.pid)


class _FakeChild:
    pid = 4242


def test_a_stop_signal_before_the_child_exists_stops_it_once_it_does():
    platform = _RecordingPlatform()
    stopper = terminal.Stopper(platform)
    stopper(signal.SIGINT, None)  # Ctrl-C while the config is still being checked
    assert stopper.requested and platform.interrupted == []
    stopper.attach(_FakeChild())
    assert platform.interrupted == [4242]


@pytest.mark.posix
def test_only_the_first_stop_signal_reaches_litestream():
    platform = _RecordingPlatform()
    stopper = terminal.Stopper(platform)
    stopper.attach(_FakeChild())
    for sig in (signal.SIGHUP, signal.SIGCONT, signal.SIGTERM, signal.SIGINT):
        stopper(sig, None)  # a closing terminal sends several: a second would abort the final sync
    assert platform.interrupted == [4242]


@pytest.mark.posix
def test_the_stop_signals_include_a_closed_terminal():
    assert signal.SIGHUP in terminal.STOP_SIGNALS and signal.SIGINT in terminal.STOP_SIGNALS
    assert signal.SIGTERM in terminal.STOP_SIGNALS


@pytest.fixture
def unknown_pidfile(tmp_path, monkeypatch):
    """A pidfile naming a process we may not inspect (another user's; faked: we run as root)."""
    settings = config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(tmp_path / "state")})
    settings.state_dir.mkdir()
    argv = ["litestream", "replicate", "-config", str(settings.config_path), "-no-expand-env"]
    record = process.PidRecord(pid=os.getpid(), create_time=0.0, cmdline=argv,
                              config=str(settings.config_path), started_at="", log=None)
    settings.pidfile.write_text(json.dumps(dataclasses.asdict(record)))

    class Denied(psutil.Process):
        def cmdline(self):
            raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil, "Process", Denied)
    return settings


def test_a_pidfile_whose_process_cannot_be_inspected_is_unknown_not_stale(unknown_pidfile):
    settings = unknown_pidfile
    before = settings.pidfile.read_bytes()
    state = daemon.check(settings)
    assert state.state == "unknown" and not state.running
    assert "cannot be inspected (access denied)" in state.reason
    for act in (lambda: daemon.stop(settings, timeout=1),
                lambda: daemon.start_background(settings, Litestream(settings), timeout=5),
                lambda: daemon.replicate_once(settings, Litestream(settings))):
        with pytest.raises(BackupError) as err:
            act()
        assert "cannot be inspected (access denied)" in err.value.message
        assert "nothing was changed" in err.value.message
    assert settings.pidfile.read_bytes() == before  # never deleted as stale


@pytest.mark.posix
def test_status_says_unknown_and_is_not_healthy(unknown_pidfile, tmp_path):
    from backup import status

    settings = unknown_pidfile
    settings.config_path.write_text("dbs:\n  - path: /nonexistent/x.db\n    replica:\n      type: file\n      path: /nonexistent/r\n")
    from backup.workspace import Workspace as Loaded

    result = status.gather(Loaded.load(settings))
    assert result.exit_code == 1
    assert result.as_dict()["daemon"]["state"] == "unknown"
    assert "daemon    unknown (access denied)" in "\n".join(result.as_lines())


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.posix
def test_runtime_files_are_private_whatever_the_umask(ws):
    previous = os.umask(0o022)
    try:
        make_db(ws.db)
        assert ws.inv("backup.local", "--no-start").returncode == 0
        (ws.state / "litestream-version.json").unlink(missing_ok=True)
        assert ws.inv("backup.start-bg").returncode == 0
        assert mode(ws.state) == 0o700
        for name in ("litestream.pid", "litestream.log", "litestream.lock", "litestream-version.json",
                     "litestream.running.yml"):
            assert mode(ws.state / name) == 0o600, name
        assert mode(ws.config) == 0o600
        assert mode(ws.path / ".chora.db-litestream" / "chora-backup-owner.json") == 0o600
    finally:
        os.umask(previous)


@pytest.mark.posix
def test_a_log_left_readable_by_an_earlier_version_is_made_private(ws):
    make_db(ws.db)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    ws.state.mkdir(exist_ok=True)
    (ws.state / "litestream.log").write_text("old line\n")
    os.chmod(ws.state / "litestream.log", 0o644)
    assert ws.inv("backup.start-bg").returncode == 0
    assert mode(ws.state / "litestream.log") == 0o600
    assert (ws.state / "litestream.log").read_text().startswith("old line\n")


@pytest.mark.posix
def test_a_state_dir_left_open_by_an_earlier_version_is_tightened(ws):
    make_db(ws.db)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    os.chmod(ws.state, 0o755)
    assert (ws.state / "litestream.lock").exists()
    assert ws.inv("backup.start-bg").returncode == 0
    assert mode(ws.state) == 0o700


@pytest.mark.posix
def test_a_socket_outside_the_state_dir_gets_a_private_folder(tmp_path):
    deep = tmp_path / ("d" * 120)
    settings = config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(deep)})
    socket = settings.socket_path
    assert socket.parent.name == f"chora-backup-{os.getuid()}" and socket.parent.parent == Path(
        __import__("tempfile").gettempdir())
    daemon._private_socket_folder(settings, socket)
    assert mode(socket.parent) == 0o700


@pytest.mark.posix
def test_a_shared_socket_folder_is_refused(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o777)
    settings = config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(tmp_path / "state")})
    with pytest.raises(BackupError) as err:
        daemon._private_socket_folder(settings, folder / "x.sock")
    assert "is not private to you (mode 777)" in err.value.message


def test_a_failed_start_leaves_no_process_pidfile_or_socket(ws):
    assert ws.inv("backup.local", "--no-start").returncode == 0
    # SQLite's header, then garbage: chora-backup's header check passes it, litestream fails.
    ws.db.write_bytes(b"SQLite format 3\x00" + b"but damaged, as litestream only finds out once it runs" * 100)
    result = ws.inv("backup.start-bg", "--timeout", "20")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not ws.pidfile.exists()
    assert not ws.socket().exists()


def test_stop_waits_longer_than_litestreams_own_final_sync_retries(tmp_path):
    from backup.ltconfig import read_config

    settings = config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(tmp_path / "state")})
    body = "dbs:\n  - path: /x.db\n    replica:\n      type: file\n      path: /r\n"
    settings.config_path.write_text(body)
    stopped = process.ProcessState("stopped")
    assert daemon.stop_timeout(settings, stopped) == 30 + ltconfig.STOP_MARGIN
    settings.config_path.write_text("shutdown-sync-timeout: 2m\n" + body)
    assert read_config(settings.config_path).shutdown_sync_timeout == 120
    assert daemon.stop_timeout(settings, stopped) == 120 + ltconfig.STOP_MARGIN
    settings.config_path.write_text("shutdown-sync-timeout: soon\n" + body)
    with pytest.raises(BackupError) as err:
        read_config(settings.config_path)
    assert "shutdown-sync-timeout 'soon' is not a positive duration" in err.value.message
    assert daemon.stop_timeout(settings, stopped) == 30 + ltconfig.STOP_MARGIN


@pytest.mark.posix
def test_the_log_pump_bounds_the_log_without_losing_a_line(tmp_path):
    log = tmp_path / "litestream.log"
    lines = [f"time=... level=INFO msg=\"line {i:05d}\" {'x' * 60}\n".encode() for i in range(3000)]
    proc = subprocess.Popen([sys.executable, "-m", "backup.logfile", str(log), "20000"],
                            stdin=subprocess.PIPE)
    proc.communicate(b"".join(lines), timeout=60)
    assert proc.returncode == 0
    rotated = log.with_name(log.name + ".1")
    assert log.stat().st_size <= 20000 + 200 and rotated.stat().st_size <= 20000 + 200
    kept = (rotated.read_bytes() + log.read_bytes()).splitlines(keepends=True)
    assert kept == lines[-len(kept):]  # the newest lines, in order, none missing in between
    assert mode(log) == 0o600


def test_a_running_daemon_logs_through_the_pump_which_ends_with_it(ws):
    make_db(ws.db)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    assert ws.inv("backup.start-bg").returncode == 0
    pumps = [p for p in psutil.process_iter(["cmdline"])
             if (p.info["cmdline"] or [])[1:5] == ["-I", "-m", "backup.logfile", str(ws.state / "litestream.log")]]
    assert len(pumps) == 1
    assert "replicating to" in (ws.state / "litestream.log").read_text()
    assert ws.inv("backup.stop").returncode == 0
    pumps[0].wait(10)  # litestream closed its output: the pump is gone too
    assert (ws.state / "litestream.log").read_text().endswith('msg="litestream shut down"\n')


def test_the_log_pump_outlives_a_log_it_cannot_write(tmp_path):
    """A pump that stopped reading would kill litestream at its next line: it keeps reading."""
    log = tmp_path / "missing-folder" / "litestream.log"  # cannot be created
    proc = subprocess.Popen([sys.executable, "-m", "backup.logfile", str(log), "1000"],
                            stdin=subprocess.PIPE)
    proc.communicate(b"a line\n" * 10000, timeout=60)  # more than a pipe holds: all read
    assert proc.returncode == 0 and not log.exists()


def test_the_log_pump_masks_the_secrets_it_is_handed_through_its_environment(tmp_path):
    """litestream logs the heartbeat URL when a ping fails: the log file never holds it."""
    log = tmp_path / "litestream.log"
    url = "https://hc-ping.com/6c1d-token"
    line = (f'time=2026-11-26T10:00:00Z level=ERROR msg="heartbeat ping failed" system=store url={url} '
            f'error="http request: Get \\"{url}\\": dial tcp: connection refused"\n')
    read_end, write_end = os.pipe()
    proc = logfile.start_pump(log, read_end, dict(os.environ), secrets=(url, "/6c1d-token"))
    os.close(read_end)
    os.write(write_end, line.encode() + b"time=... level=INFO msg=ok\n")
    os.close(write_end)
    proc.wait(30)
    text = log.read_text()
    assert "6c1d-token" not in text and "hc-ping.com" not in text
    assert text.count("****") == 2 and text.endswith("msg=ok\n")
    assert "6c1d-token" not in " ".join(proc.args)  # never in an argv, which every user can read


def test_a_failed_heartbeat_during_start_is_not_a_failed_start(tmp_path):
    settings = config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(tmp_path / "state")})
    settings.state_dir.mkdir()
    settings.logfile.write_text(
        'time=2026-11-26T10:00:00Z level=ERROR msg="heartbeat ping failed" system=store url=**** '
        'error="unexpected status code: 500"\n'
    )
    assert daemon._startup_error(settings, 0, "fallback") is None
    with settings.logfile.open("a") as fh:
        fh.write('time=2026-11-26T10:00:01Z level=ERROR msg="cannot start metrics server" '
                 'error="listen tcp 127.0.0.1:9: bind: address already in use"\n')
    assert "cannot serve metrics at BACKUP_METRICS_ADDR" in daemon._startup_error(settings, 0, "fallback")
