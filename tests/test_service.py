"""backup.install-service: the files each manager gets, the exact commands, and the
service's own command replicating, stopping cleanly and failing loudly for real."""
from __future__ import annotations

import json
import os
import plistlib
import re
import shlex
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest

from backup import config, service
from backup.errors import BackupError, ConfigError

from conftest import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Workspace, insert, make_db, wait_for

TASK_NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}


class FakeManager(service.Runner):
    """Records every command; answers like a reachable manager (``reachable=False``: like a container)."""

    def __init__(self, reachable: bool = True, loaded: bool = False):
        self.commands: list[list[str]] = []
        self.reachable, self.loaded = reachable, loaded

    def run(self, argv):
        self.commands.append(argv)
        if not self.reachable:
            return subprocess.CompletedProcess(argv, 1, "", "Failed to connect to bus: No medium found")
        if argv[:2] == ["launchctl", "print"] and argv[2].count("/") == 2:  # a job, not the domain
            return subprocess.CompletedProcess(argv, 0 if self.loaded else 113, "", "")
        return subprocess.CompletedProcess(argv, 0, "", "")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.setenv("USERPROFILE", str(folder))  # where Python finds ~ on Windows
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return folder


def settings_for(tmp_path: Path) -> config.Settings:
    ws = tmp_path / "my ws"
    ws.mkdir(exist_ok=True)
    (ws / ".env").write_text(f"R2_ACCESS_KEY_ID={ACCESS_KEY_ID}\nR2_SECRET_ACCESS_KEY='{SECRET_ACCESS_KEY}'\n"
                             "R2_BUCKET=chora-backup\nR2_ENDPOINT=http://127.0.0.1:9\n")
    return config.load(cwd=ws, environ={"BACKUP_STATE_DIR": str(tmp_path / "state")})


@pytest.mark.posix
def test_systemd_install_is_idempotent_and_uninstall_removes_only_its_file(tmp_path, home):
    settings = settings_for(tmp_path)
    unit = service.unit_for(settings, service.SYSTEMD, environ={"BACKUP_STATE_DIR": str(tmp_path / "state")})
    name = unit.name
    assert re.fullmatch(r"chora-backup-my-ws-[0-9a-f]{8}", name)
    assert unit.file == home / ".config" / "systemd" / "user" / f"{name}.service"
    # litestream's 30 s final sync, chora-backup's stop margin, then the manager's
    assert "\nTimeoutStopSec=60\n" in unit.text.decode()
    manager = FakeManager()
    first = service.install(settings, unit, manager)
    assert first.written and unit.file.read_bytes() == unit.text
    assert manager.commands == [
        ["systemctl", "--user", "show-environment"],
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", f"{name}.service"],
    ]
    assert any("loginctl enable-linger" in note for note in first.notes)
    again = service.install(settings, unit, FakeManager())
    assert not again.written and unit.file.read_bytes() == unit.text
    assert sorted(os.listdir(unit.file.parent)) == [f"{name}.service"]
    manager = FakeManager()
    service.install(settings, unit, manager, linger=True)
    assert manager.commands[-1][:2] == ["loginctl", "enable-linger"]

    manager = FakeManager()
    gone = service.uninstall(unit, manager)
    assert gone.removed and not unit.file.exists()
    assert manager.commands == [
        ["systemctl", "--user", "disable", "--now", f"{name}.service"],
        ["systemctl", "--user", "daemon-reload"],
    ]


def test_a_file_chora_backup_did_not_write_is_kept(tmp_path, home):
    settings = settings_for(tmp_path)
    unit = service.unit_for(settings, service.SYSTEMD)
    unit.file.parent.mkdir(parents=True)
    unit.file.write_text("[Service]\nExecStart=/bin/true\n")
    with pytest.raises(BackupError, match="was not written by chora-backup: re-run with --force"):
        service.install(settings, unit, FakeManager())
    with pytest.raises(BackupError, match="was not written by chora-backup: it was left"):
        service.uninstall(unit, FakeManager())
    assert unit.file.read_text() == "[Service]\nExecStart=/bin/true\n"
    forced = service.install(settings, unit, FakeManager(), force=True)
    assert forced.backup.read_text() == "[Service]\nExecStart=/bin/true\n"
    assert unit.file.read_bytes() == unit.text


def test_an_unreachable_manager_writes_nothing(tmp_path, home):
    settings = settings_for(tmp_path)
    unit = service.unit_for(settings, service.SYSTEMD)
    with pytest.raises(BackupError) as err:
        service.install(settings, unit, FakeManager(reachable=False))
    assert err.value.message.startswith("no systemd user instance to install into (Failed to connect")
    assert "nothing was written" in err.value.message
    assert not unit.file.exists() and not (home / ".config").exists()


def test_secrets_only_in_the_shell_are_refused(tmp_path, home):
    ws = tmp_path / "ws"
    ws.mkdir()
    settings = config.load(cwd=ws, environ={"R2_ACCESS_KEY_ID": ACCESS_KEY_ID,
                                            "R2_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY})
    with pytest.raises(ConfigError, match="come from this shell's environment"):
        service.install(settings, service.unit_for(settings, service.SYSTEMD), FakeManager())


@pytest.mark.posix
def test_launchd_plist_and_commands(tmp_path, home):
    settings = settings_for(tmp_path)
    unit = service.unit_for(settings, service.LAUNCHD, stop_timeout=45,  # chora-backup's own stop
                            environ={"BACKUP_STATE_DIR": str(tmp_path / "state"), "R2_SECRET_ACCESS_KEY": "x"})
    assert unit.file == home / "Library" / "LaunchAgents" / f"{unit.name}.plist"
    plist = plistlib.loads(unit.text)
    assert plist["Label"] == unit.name and plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ProgramArguments"][-1] == "start" and plist["WorkingDirectory"] == str(settings.workspace)
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(settings.logfile)
    assert plist["EnvironmentVariables"] == {"BACKUP_STATE_DIR": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1"}
    assert plist["ExitTimeOut"] == 45 + service.STOP_MARGIN == 60
    uid = os.getuid()
    manager = FakeManager()
    service.install(settings, unit, manager)
    assert manager.commands[-1] == ["launchctl", "bootstrap", f"gui/{uid}", str(unit.file)]
    manager = FakeManager(loaded=True)  # installed again: the loaded job is replaced
    service.install(settings, unit, manager)
    assert manager.commands[-2:] == [["launchctl", "bootout", f"gui/{uid}/{unit.name}"],
                                     ["launchctl", "bootstrap", f"gui/{uid}", str(unit.file)]]


def test_task_scheduler_xml_and_commands(tmp_path, home):
    settings = settings_for(tmp_path)
    unit = service.unit_for(settings, service.TASK_SCHEDULER)
    assert unit.file == settings.state_dir / f"{unit.name}.xml"
    task = ET.fromstring(unit.text.decode("utf-16").split("\n", 1)[1])
    assert task.find("t:Triggers/t:LogonTrigger/t:Enabled", TASK_NS).text == "true"
    exec_ = task.find("t:Actions/t:Exec", TASK_NS)
    assert exec_.find("t:Command", TASK_NS).text == service.start_command()[0]
    assert exec_.find("t:Arguments", TASK_NS).text == "start"
    assert exec_.find("t:WorkingDirectory", TASK_NS).text == str(settings.workspace)
    assert task.find("t:Settings/t:Hidden", TASK_NS).text == "true"
    assert task.find("t:Settings/t:RestartOnFailure/t:Count", TASK_NS).text == "999"
    manager = FakeManager()
    service.install(settings, unit, manager)
    assert manager.commands[1:] == [
        ["schtasks", "/Create", "/TN", unit.name, "/XML", str(unit.file), "/F"],
        ["schtasks", "/Run", "/TN", unit.name],
    ]
    manager = FakeManager()
    service.uninstall(unit, manager)
    assert manager.commands == [["schtasks", "/End", "/TN", unit.name],
                                ["schtasks", "/Delete", "/TN", unit.name, "/F"]]


def test_dry_run_prints_each_managers_file_and_changes_nothing(ws: Workspace):
    ws.write_env(BACKUP_LOCAL_DIR=str(ws.root / "backups"))
    assert ws.inv("backup.local", "--no-start").returncode == 0
    before = sorted(p for p in ws.root.rglob("*"))
    for manager, marker in (("systemd", "ExecStart="), ("launchd", "<key>KeepAlive</key>"),
                            ("task-scheduler", "<LogonTrigger>")):
        result = ws.inv("backup.install-service", "--dry-run", "--manager", manager)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("# would write ") and marker in result.stdout
    assert ws.inv("backup.uninstall-service", "--dry-run").returncode == 0
    assert sorted(p for p in ws.root.rglob("*")) == before
    bad = ws.inv("backup.install-service", "--dry-run", "--manager", "cron")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: --manager 'cron': use one of systemd, launchd, task-scheduler"
    )


@pytest.mark.posix
def test_without_a_user_systemd_install_says_why_and_writes_nothing(ws: Workspace):
    if shutil.which("systemctl") is None:
        pytest.skip("no systemctl here")
    ws.write_env(BACKUP_LOCAL_DIR=str(ws.root / "backups"))
    assert ws.inv("backup.local", "--no-start").returncode == 0
    reachable = subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True)
    if reachable.returncode == 0:
        pytest.skip("this machine has a user systemd instance")
    result = ws.inv("backup.install-service", "--manager", "systemd")
    assert result.returncode == 1
    assert result.stderr.startswith("error: no systemd user instance") and len(result.stderr.splitlines()) == 1
    assert not (ws.home / ".config").exists()


def unit_parts(text: str) -> tuple[list[str], Path, dict[str, str]]:
    """ExecStart, WorkingDirectory and Environment as systemd reads them (our quoting)."""
    lines = dict(re.findall(r"^(ExecStart|WorkingDirectory)=(.*)$", text, re.M))
    env = dict(shlex.split(v)[0].split("=", 1) for v in re.findall(r"^Environment=(.*)$", text, re.M))
    return shlex.split(lines["ExecStart"]), Path(lines["WorkingDirectory"]), env


class Systemd(service.Runner):
    """systemd for one unit, as far as chora-backup sees it: start runs the unit's ExecStart in
    its WorkingDirectory with its Environment (no shell, a bare PATH); stop sends SIGTERM to that
    process alone (KillMode=mixed) and waits; is-active tells whether it runs."""

    def __init__(self, ws: Workspace, text: str):
        self.ws, self.text, self.proc = ws, text, None

    def run(self, argv):
        verb = argv[2] if argv[:2] == ["systemctl", "--user"] else None
        if verb == "start":
            command, cwd, env = unit_parts(self.text)
            environ = {"HOME": str(self.ws.home), "PATH": "/usr/bin:/bin", "USER": "chora", **env}
            self.proc = subprocess.Popen(command, cwd=cwd, env=environ, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.ws.children.append(self.proc)
        elif verb == "stop" and self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(90)
        elif verb == "is-active":
            running = self.proc is not None and self.proc.poll() is None
            return subprocess.CompletedProcess(argv, 0 if running else 3, "active\n" if running else "inactive\n", "")
        elif verb == "is-enabled":
            return subprocess.CompletedProcess(argv, 0, "enabled\n", "")
        return subprocess.CompletedProcess(argv, 0, "", "")


@pytest.mark.posix
def test_the_unit_verifies_and_its_command_replicates_stops_cleanly_and_fails_loudly(
    r2ws: Workspace, s3_endpoint, monkeypatch
):
    make_db(r2ws.db)
    assert r2ws.inv("backup.setup").returncode == 0
    dry = r2ws.inv("backup.install-service", "--dry-run", "--manager", "systemd")
    text = dry.stdout.split("\n", 1)[1].split("# would run:")[0]
    assert ACCESS_KEY_ID not in text and SECRET_ACCESS_KEY not in text
    unit_file = r2ws.root / "chora-backup-test.service"
    unit_file.write_text(text)
    if shutil.which("systemd-analyze"):
        verified = subprocess.run(["systemd-analyze", "verify", str(unit_file)], capture_output=True, text=True)
        assert verified.returncode == 0, verified.stderr
    argv, cwd, env = unit_parts(text)
    assert cwd == r2ws.path and argv[-1] == "start"

    # Installed, started and stopped through the manager, as start-bg and stop do.
    monkeypatch.setenv("HOME", str(r2ws.home))
    settings = config.load(cwd=r2ws.path, environ=r2ws.env)
    systemd = Systemd(r2ws, text)
    unit = service.unit_for(settings, service.SYSTEMD, environ=r2ws.env)
    assert unit.text.decode() == text
    service.install(settings, unit, FakeManager())
    installed = service.find(settings, systemd)
    assert (installed.manager, installed.name, installed.active) == ("systemd", unit.name, False)
    started = service.start_service(settings, installed, 30, systemd)
    assert started.lines[0].startswith(f"started the systemd service {unit.name}: litestream pid ")
    insert(r2ws.db, "through the service")
    wait_for(lambda: r2ws.inv("backup.status").returncode == 0, 30, interval=0.5, what="a healthy status")
    shown = json.loads(r2ws.inv("backup.status", "--json").stdout)["service"]
    assert {k: shown[k] for k in ("manager", "name", "file")} == {
        "manager": "systemd", "name": unit.name, "file": str(unit.file)}
    daemon = r2ws.daemon_pid()
    service.stop_service(settings, service.find(settings, systemd), None, systemd)
    assert systemd.proc.returncode == 0  # a clean stop: Restart=on-failure leaves it stopped
    assert not psutil.pid_exists(daemon) and r2ws.daemon_pid() is None
    restored = r2ws.restore(r2ws.root / "restored.db")
    assert "through the service" in [body for _, body in restored]

    service.start_service(settings, installed, 30, systemd)
    psutil.Process(r2ws.daemon_pid()).kill()  # litestream dies: Restart=on-failure must fire
    assert systemd.proc.wait(30) == 128 + signal.SIGKILL
    r2ws.assert_no_secrets()


def test_doctor_warns_about_a_daemon_without_a_service(ws: Workspace):
    make_db(ws.db)
    ws.write_env(BACKUP_LOCAL_DIR=str(ws.root / "backups"))
    assert ws.inv("backup.local", "--background").returncode == 0
    doctor = ws.inv("backup.doctor", "--json")
    (check,) = [c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "service"]
    assert check["state"] == "warn" and "backups stop at the next reboot" in check["detail"]
    assert check["fix"] == "inv backup.install-service"
    status = ws.inv("backup.status")
    assert "service   none: replication stops at the next reboot" in status.stdout
    assert json.loads(ws.inv("backup.status", "--json").stdout)["service"] is None
    assert ws.inv("backup.stop").returncode == 0


def test_a_ping_url_only_in_the_shell_is_refused_and_never_copied_into_the_unit(tmp_path, home):
    ws = tmp_path / "ws"
    ws.mkdir()
    url = "https://hc-ping.com/91ab-token"
    settings = config.load(cwd=ws, environ={"BACKUP_HEARTBEAT_URL": url})
    with pytest.raises(ConfigError, match="BACKUP_HEARTBEAT_URL come from this shell's environment"):
        service.install(settings, service.unit_for(settings, service.SYSTEMD), FakeManager())
    assert "BACKUP_HEARTBEAT_URL" not in service.service_environment(settings, {"BACKUP_HEARTBEAT_URL": url})
    (ws / ".env").write_text(f"BACKUP_HEARTBEAT_URL={url}\n")
    in_env = config.load(cwd=ws, environ={})
    service.check_secrets_reachable(in_env)  # from .env, as the service will read it: fine


@pytest.mark.parametrize("arg, quoted", [
    ("start", "start"),
    ("C:\\Program Files\\py\\python.exe", '"C:\\Program Files\\py\\python.exe"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("tab\there", '"tab\there"'),
    ("ends in a backslash\\", '"ends in a backslash\\\\"'),
])
def test_task_scheduler_arguments_are_quoted_as_windows_splits_them(tmp_path, home, arg, quoted):
    settings = settings_for(tmp_path)
    text = service.task_xml(settings, "t", ["prog.exe", "-m", arg], 30)
    task = ET.fromstring(text.decode("utf-16").split("\n", 1)[1])
    assert task.find("t:Actions/t:Exec/t:Arguments", TASK_NS).text == f"-m {quoted}"
