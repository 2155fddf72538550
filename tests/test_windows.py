"""Windows code paths, proven here with the platform calls faked (ctypes, creation flags,
msvcrt locking) and, where the logic is not Windows' own, with the real litestream: the
control socket through litestream's own client (what Windows uses, having no AF_UNIX in
Python), and a stop that syncs through the socket before its Ctrl-Break.

What only Windows can prove (the console attach, the job breakaway, the real Ctrl-Break)
runs in the Windows CI job: tests/test_windows_e2e.py.
"""
from __future__ import annotations

import errno
import json
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from backup import config, daemon, ltlog, process, terminal, winconsole
from backup.errors import describe_os_error
from backup.files import same_path
from backup.ltconfig import read_config
from backup.litestream import (
    CREATE_BREAKAWAY_FROM_JOB,
    CREATE_NEW_PROCESS_GROUP,
    CREATE_NO_WINDOW,
    ControlSocket,
    Litestream,
    is_replicate,
    start_process,
)

from conftest import Workspace, insert, make_db, rows, wait_for


class FakeKernel32:
    """The kernel32 calls the Ctrl-Break helper makes, recorded in order."""

    def __init__(self, attach: bool = True, generate: bool = True):
        self.calls: list[tuple] = []
        self._attach, self._generate = attach, generate

    def FreeConsole(self):  # noqa: N802 -- the Win32 names
        self.calls.append(("FreeConsole",))
        return 1

    def AttachConsole(self, pid):  # noqa: N802
        self.calls.append(("AttachConsole", pid))
        return int(self._attach)

    def SetConsoleCtrlHandler(self, handler, add):  # noqa: N802
        self.calls.append(("SetConsoleCtrlHandler", handler, add))
        return 1

    def GenerateConsoleCtrlEvent(self, event, group):  # noqa: N802
        self.calls.append(("GenerateConsoleCtrlEvent", event, group))
        return int(self._generate)


def test_the_helper_joins_the_daemons_console_ignores_the_event_and_sends_ctrl_break():
    kernel32 = FakeKernel32()
    assert winconsole.send_ctrl_break(4242, kernel32) == winconsole.DELIVERED
    assert kernel32.calls == [
        ("FreeConsole",),  # AttachConsole fails while attached to a console
        ("AttachConsole", 4242),
        ("SetConsoleCtrlHandler", None, True),  # the helper itself ignores the event
        ("GenerateConsoleCtrlEvent", winconsole.CTRL_BREAK_EVENT, 4242),  # its group: the daemon alone
        ("FreeConsole",),
    ]


def test_the_helper_says_what_failed():
    no_console = FakeKernel32(attach=False)
    assert winconsole.send_ctrl_break(7, no_console) == winconsole.NO_CONSOLE
    assert [c[0] for c in no_console.calls] == ["FreeConsole", "AttachConsole"]  # nothing sent
    assert winconsole.send_ctrl_break(7, FakeKernel32(generate=False)) == winconsole.NOT_SENT


def test_a_detached_child_leaves_the_callers_job_or_starts_inside_one_that_forbids_it():
    calls = []

    def popen(argv, **kwargs):
        calls.append(kwargs["creationflags"])
        if kwargs["creationflags"] & CREATE_BREAKAWAY_FROM_JOB:
            error = PermissionError(errno.EACCES, "Access is denied")
            error.winerror = 5  # what CreateProcess says in a job without JOB_OBJECT_LIMIT_BREAKAWAY_OK
            raise error
        return "started"

    assert start_process(["litestream"], True, platform="win32", popen=popen, stdin=None) == "started"
    detached = CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW
    assert calls == [detached | CREATE_BREAKAWAY_FROM_JOB, detached]


def test_only_a_refused_breakaway_is_retried():
    def missing(argv, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "not found")

    with pytest.raises(FileNotFoundError):
        start_process(["litestream"], True, platform="win32", popen=missing)
    calls = []

    def denied(argv, **kwargs):
        calls.append(kwargs)
        error = PermissionError(errno.EACCES, "Access is denied")
        error.winerror = 5
        raise error

    with pytest.raises(PermissionError):  # a foreground child asks for no breakaway: nothing to retry
        start_process(["litestream"], False, platform="win32", popen=denied)
    assert calls == [{"creationflags": CREATE_NEW_PROCESS_GROUP}]
    assert start_process(["x"], True, platform="linux", popen=lambda argv, **kw: kw) == {"start_new_session": True}


def test_windows_compares_paths_without_case_and_with_either_slash():
    assert same_path(r"C:\Work\chora.db", "c:/work/CHORA.db", platform="win32")
    assert same_path(r"C:\Work\.\data\..\chora.db", r"c:\work\chora.db", platform="win32")
    assert not same_path(r"C:\Work\chora.db", r"C:\Work\chora2.db", platform="win32")
    assert not same_path("/work/Chora.db", "/work/chora.db", platform="linux")
    assert same_path("/work/./chora.db", "/work/chora.db", platform="linux")


@pytest.mark.skipif(sys.platform == "win32", reason="spells a POSIX path")
def test_the_daemons_pidfile_check_follows_the_config_path_as_this_system_compares_it():
    argv = ["litestream", "replicate", "-config", "/w/litestream.yml", "-no-expand-env"]
    assert is_replicate(argv, "/w/./litestream.yml")
    assert not is_replicate(argv, "/W/litestream.yml")  # case matters here, not on Windows


def test_a_file_another_program_holds_open_on_windows_says_so():
    error = PermissionError(errno.EACCES, "The process cannot access the file", r"C:\w\litestream.pid")
    error.winerror = 32  # ERROR_SHARING_VIOLATION
    text = describe_os_error(error)
    assert r"C:\w\litestream.pid" in text and "another program has it open" in text
    plain = describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/w/x"))
    assert "check its permissions" in plain


def test_the_socket_has_a_short_path_on_windows_too(tmp_path):
    deep = tmp_path / ("d" * 120)
    path = config.socket_path(deep, platform="win32")
    assert path.parent.name == "chora-backup" and len(str(path)) < len(str(deep))
    assert config.socket_path(tmp_path, platform="win32") == tmp_path / "litestream.sock"


def test_stop_messages_say_whether_the_final_sync_is_known_done():
    done = daemon.StopResult(True, pid=9, final_sync=True)
    assert done.as_lines() == ["stopped (pid 9) after its final sync"]
    failed = daemon.StopResult(True, pid=9, final_sync=False).as_lines()[0]
    assert failed.startswith("stopped (pid 9); its final sync did not complete") and "nothing committed is lost" in failed
    killed = daemon.StopResult(True, pid=9, forced=True, timeout=45, final_sync=None).as_lines()[0]
    assert killed == ("killed (pid 9) after 45s without a final sync; nothing committed is lost: "
                      "the replica catches up at the next start")
    synced_then_killed = daemon.StopResult(True, pid=9, forced=True, final_sync=True).as_lines()[0]
    assert synced_then_killed.startswith("stopped (pid 9) after its final sync; it did not exit")


# -- with the real litestream ------------------------------------------------------


def started(ws: Workspace) -> int:
    make_db(ws.db, 3)
    result = ws.inv("backup.local", "--background")
    assert result.returncode == 0, result.stdout + result.stderr
    return ws.daemon_pid()


def litestream_of(ws: Workspace) -> Litestream:
    settings = config.load(cwd=ws.path, environ=ws.environ())
    return Litestream(settings, environ=ws.environ())


def test_litestreams_own_client_speaks_the_socket_as_python_does(ws):
    """Windows' way (no AF_UNIX in Python): `litestream list` / `sync -wait` give the same answers."""
    pid = started(ws)
    try:
        litestream = litestream_of(ws)
        python = litestream.control(ws.socket())
        cli = ControlSocket(ws.socket(), cli=litestream._control_cli)  # as on Windows
        assert not python.via_cli and cli.via_cli
        by_python, by_cli = python.get("/list"), cli.get("/list")
        assert [d["path"] for d in by_cli["databases"]] == [d["path"] for d in by_python["databases"]] == [str(ws.db)]
        insert(ws.db, "synced by litestream's client")
        answer = cli.sync(ws.db)  # it waits: the replicated txid comes only then
        assert answer["txid"] and answer["replicated_txid"] == answer["txid"], answer
        assert python.sync(ws.db)["replicated_txid"] == answer["replicated_txid"]
        assert ws.restore(ws.root / "now.db") == rows(ws.db)
        gone = ControlSocket(ws.root / "no.sock", cli=litestream._control_cli)
        assert gone.get("/list") is None and gone.sync(ws.db) is None  # no daemon: no answer, no error
    finally:
        assert ws.inv("backup.stop").returncode == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


class FlockMsvcrt:
    """msvcrt.locking over flock, so the Windows platform's lock really excludes here."""

    LK_NBLCK, LK_UNLCK = 2, 0

    def locking(self, fd, mode, nbytes):
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if mode == self.LK_NBLCK else fcntl.LOCK_UN)


class CtrlBreak:
    """The helper's run, as Windows would: delivered (here as litestream's SIGTERM, which it
    handles the same way as os.Interrupt), or not (a daemon with no console)."""

    def __init__(self, deliver: bool):
        self.deliver, self.pids = deliver, []

    def __call__(self, argv, **kwargs):
        pid = int(argv[-1])
        self.pids.append(pid)
        if self.deliver:
            psutil.Process(pid).send_signal(signal.SIGTERM)
        return subprocess.CompletedProcess(argv, 0 if self.deliver else winconsole.NO_CONSOLE)


@pytest.mark.posix
@pytest.mark.parametrize("deliver", [True, False], ids=["ctrl-break-delivered", "no-console"])
def test_a_windows_stop_syncs_through_the_socket_before_its_ctrl_break(ws, deliver):
    """The whole Windows stop on the real daemon: sync -wait through the socket, then the
    Ctrl-Break helper; a Ctrl-Break that cannot be delivered kills at once, and the commit
    is in the replica all the same."""
    pid = started(ws)
    # A minute between syncs: only the stop's own sync can carry the last commit.
    text = ws.config.read_text()
    ws.inv("backup.stop")
    ws.config.write_text(re.sub(r"sync-interval: \S+", "sync-interval: 1m", text))
    assert ws.inv("backup.start-bg").returncode == 0
    pid = ws.daemon_pid()
    insert(ws.db, "the last commit")
    settings = config.load(cwd=ws.path, environ=ws.environ())
    helper = CtrlBreak(deliver)
    began = time.monotonic()
    runner = json.loads((ws.state / "drill.pid").read_text())["pid"]
    result = daemon.stop(settings, platform=process.Windows(run=helper, msvcrt=FlockMsvcrt()))
    assert helper.pids == [runner, pid]  # the drill runner first: a drill in progress ends at once
    assert result.final_sync is True and result.forced is (not deliver), result
    assert result.as_lines()[0].startswith(f"stopped (pid {pid}) after its final sync")
    if not deliver:
        assert time.monotonic() - began < 10  # no wait for a Ctrl-Break that never comes
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10)
    assert not ws.pidfile.exists()
    assert ws.restore(ws.root / "after-stop.db") == rows(ws.db)


def test_a_config_without_a_control_socket_is_healthy_only_once_the_replica_holds_the_database(ws):
    """No socket to ask (a hand-written config): the first sync is proven from the replica."""
    make_db(ws.db, 4)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    text = ws.config.read_text()
    without = re.sub(r"(?m)^socket:\n(?:  .*\n)+", "", text)
    assert without != text and "\nsocket:" not in without
    ws.config.write_text(without)  # edited by hand: no longer chora-backup's own
    litestream = litestream_of(ws)
    proof = lambda: daemon._synced_by_replicas(litestream.settings, litestream, read_config(ws.config))  # noqa: E731
    assert proof() == set()  # nothing captured, nothing in the replica: not synced
    result = ws.inv("backup.start-bg")
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "\nsocket:" not in (ws.state / "litestream.running.yml").read_text()  # it runs without one
        assert "first sync of" not in result.stdout  # proven, not left "still in progress"
        # Returned healthy: the replica already holds what litestream had captured locally.
        assert ws.restore(ws.root / "first.db") == rows(ws.db)
        assert proof() == {ws.db}
        status = json.loads(ws.inv("backup.status", "--json").stdout)
        assert status["running"], status
    finally:
        ws.inv("backup.stop")


def test_a_killed_daemons_socket_file_is_removed_before_a_start_on_windows(tmp_path):
    left = tmp_path / "litestream.sock"
    left.write_bytes(b"")  # what Python sees of a Windows socket file: a file
    daemon._remove_socket(left, platform="linux")
    assert left.exists()  # elsewhere only a real socket is taken for one
    daemon._remove_socket(left, platform="win32")
    assert not left.exists()


def test_a_socket_litestream_cannot_open_falls_back_to_the_replicas_proof(ws):
    """litestream only warns when it cannot listen (a Windows before 10 1803, a path taken)
    and replicates on: start-bg then proves the first sync from the replica."""
    make_db(ws.db, 3)
    assert ws.inv("backup.local", "--no-start").returncode == 0
    ws.socket().parent.mkdir(parents=True, exist_ok=True)
    ws.socket().write_bytes(b"not a socket")  # litestream: "socket path exists but is not a socket"
    result = ws.inv("backup.start-bg", "--timeout", "20")
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "first sync of" not in result.stdout, result.stdout  # proven, not left pending
        assert ltlog.SOCKET_FAILED in (ws.state / "litestream.log").read_text()
        assert ws.restore(ws.root / "proven.db") == rows(ws.db)
    finally:
        assert ws.inv("backup.stop").returncode == 0


def test_the_stop_reads_litestreams_own_final_sync_from_its_log(tmp_path):
    settings = config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(tmp_path / "state")})
    settings.state_dir.mkdir()
    log = settings.logfile
    log.write_text("time=... msg=\"replicating\"\n")
    offset = log.stat().st_size
    assert daemon._shutdown_sync(settings, offset, wait=0.2) is None  # no shutdown logged: not known
    with log.open("a") as fh:
        fh.write('time=... level=INFO msg="signal received, litestream shutting down"\n'
                 'time=... level=INFO msg="litestream shut down"\n')
    assert daemon._shutdown_sync(settings, offset) is True
    with log.open("a") as fh:
        fh.write('time=... level=ERROR msg="shutdown sync failed after timeout" db=chora.db\n')
    assert daemon._shutdown_sync(settings, offset) is False


def test_a_ctrl_break_in_the_console_is_not_passed_on_a_second_time(monkeypatch):
    """Windows sends a console's Ctrl-Break to litestream's group as well: forwarding it
    again would make litestream skip its final sync."""

    class Platform:
        sent = 0

        def interrupt(self, proc):
            self.sent += 1
            return True

    monkeypatch.setattr(signal, "SIGBREAK", 21, raising=False)  # its number on Windows
    platform = Platform()
    stopper = terminal.Stopper(platform)
    stopper.attach(object())
    stopper(signal.SIGBREAK, None)
    assert stopper.requested and platform.sent == 0
    other = terminal.Stopper(platform)
    other.attach(object())
    other(signal.SIGINT, None)
    assert platform.sent == 1
