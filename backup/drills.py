"""Restore drills as every command sees them: the record of each database's last proof,
the drill runner's process, and the folder a drill restores into.

A drill (``backup.drill``) restores each database from its replica while the daemon
replicates and compares it with the live one, one interval (``BACKUP_VERIFY_INTERVAL``)
after the start and every interval after; ``inv backup.verify`` makes the same proof on
demand. Both leave their verdict here, per database (``drills.json`` in the state dir, 0600):
when, whether it passed, at which txid, what was compared (``content`` or ``counts``), and
what it found. ``status`` and ``doctor`` read it at no cost to the bucket.

The runner is a process of its own (``python -m backup.drill``), started beside litestream by
every start (foreground, background, the service), its output going where litestream's goes.
It ends when litestream ends; a stop waits for it, and removes whatever a drill killed
outright left in its folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from . import process
from .config import Settings
from .files import read_json, write_private
from .process import ProcessState
from .timeparse import epoch
from .timeparse import iso_seconds as iso

MODULE = "backup.drill"
RECORD_LOCK_WAIT = 10.0  # seconds: a record is written in milliseconds
RUNNER_WAIT = 5.0  # seconds a stop gives the runner to end its drill and clean up; then it is killed


def record_path(settings: Settings) -> Path:
    return settings.state_dir / "drills.json"


def folder(settings: Settings) -> Path:
    """Where a drill restores and copies: inside the state dir, so what a killed drill left is
    found and removed by the next drill, start or stop."""
    return settings.state_dir / "drill"


def _pidfile(settings: Settings) -> Path:
    return settings.state_dir / "drill.pid"


def is_runner(cmdline: list[str]) -> bool:
    return MODULE in cmdline and any("python" in Path(arg).name.lower() for arg in cmdline[:1])


def runner(settings: Settings) -> process.Managed:
    """The drill runner as a managed process (its own pidfile; the workspace lock)."""
    return process.Managed(_pidfile(settings), settings.lockfile, settings.state_dir,
                           lambda record: is_runner(record.cmdline))


def argv(litestream_pid: int) -> list[str]:
    # -I: the workspace's folder on sys.path must not decide which backup.drill runs.
    return [sys.executable, "-I", "-m", MODULE, str(litestream_pid)]


# -- the record ----------------------------------------------------------------------


@dataclass(frozen=True)
class Proof:
    """One database's verdict from one drill or verify."""

    ok: bool
    message: str
    txid: str | None = None  # the txid compared at (or restored), hex
    compared: str | None = None  # "content" or "counts"; None: a check before the comparison failed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _write(settings: Settings, change: Any) -> None:
    """Change the record under its own short lock (the runner and verify both write it)."""
    path = record_path(settings)
    if not settings.state_dir.is_dir():
        return
    with contextlib.suppress(OSError), process.locked(
        settings.state_dir / "drills.lock", settings.state_dir, timeout=RECORD_LOCK_WAIT, marker=settings.lockfile,
    ):
        data = read_json(path)
        change(data)
        write_private(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))


def remember(settings: Settings, proofs: dict[Path, Proof], by: str, at: float | None = None) -> None:
    """Keep each database's verdict (``by``: "drill" or "verify"), and when it last passed."""
    when = iso(time.time() if at is None else at)

    def change(data: dict[str, Any]) -> None:
        databases = data.setdefault("databases", {})
        for path, proof in proofs.items():
            entry = {**proof.as_dict(), "at": when, "by": by}
            last = databases.get(str(path), {})
            entry["passed_at"] = when if proof.ok else last.get("passed_at")
            databases[str(path)] = entry

    _write(settings, change)


def schedule(settings: Settings, **fields: Any) -> None:
    """The runner's schedule: its pid, interval, start and next drill; and ``watching_since``,
    the first start of a runner with drills on, kept across restarts (a daemon restarted more
    often than its interval never drills: doctor counts from there)."""
    def change(data: dict[str, Any]) -> None:
        before = data.get("schedule") if isinstance(data.get("schedule"), dict) else {}
        since = before.get("watching_since") or fields.get("started_at")
        # Stopped for longer than an interval (a weekend): no drill was due meanwhile.
        if _seconds_between(before.get("stopped_at"), fields.get("started_at")) > (settings.verify_interval or 0):
            since = fields.get("started_at")
        data["schedule"] = {**fields, "watching_since": since if fields.get("next") else None}

    _write(settings, change)


def stopped(settings: Settings) -> None:
    """The runner ends: when, so the next start can tell a long stop from a restart."""
    def change(data: dict[str, Any]) -> None:
        if isinstance(data.get("schedule"), dict):
            data["schedule"]["stopped_at"] = iso(time.time())

    _write(settings, change)


def _seconds_between(earlier: object, later: object) -> float:
    first, last = epoch(earlier), epoch(later)
    return 0.0 if first is None or last is None else last - first


@dataclass(frozen=True)
class Record:
    """What the record says, read once."""

    databases: dict[str, dict[str, Any]]
    schedule: dict[str, Any]
    runner: ProcessState

    @property
    def running(self) -> bool:
        """The runner that wrote the schedule still runs: the one the pidfile names wrote it
        after it started. (Not by pid: on Windows a venv's python.exe starts the interpreter
        as a child, whose pid the schedule holds.)"""
        record = self.runner.record
        return self.runner.running and record is not None \
            and str(self.schedule.get("started_at") or "") >= record.started_at

    def next_at(self) -> str | None:
        return self.schedule.get("next") if self.running else None

    def of(self, db: Path) -> dict[str, Any]:
        return self.databases.get(str(db), {})


def read(settings: Settings) -> Record:
    data = read_json(record_path(settings))
    databases = data.get("databases") if isinstance(data.get("databases"), dict) else {}
    plan = data.get("schedule") if isinstance(data.get("schedule"), dict) else {}
    return Record(databases, plan, runner(settings).check())


# -- the runner's end ----------------------------------------------------------------


def leftovers(settings: Settings) -> list[psutil.Process]:
    """Restores still writing into the drill folder (their drill was killed outright)."""
    where = str(folder(settings)) + os.sep  # inside it: not drills.json or drill.pid beside it
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if any(arg.startswith(where) for arg in proc.info["cmdline"] or ()):
                found.append(proc)
    return found


def clean(settings: Settings) -> None:
    """Remove what a drill killed outright left: its restore, if still running, and its files."""
    for proc in leftovers(settings):
        process.kill(proc)
    shutil.rmtree(folder(settings), ignore_errors=True)


def stop_runner(settings: Settings, timeout: float = RUNNER_WAIT,
                platform: process.Posix | process.Windows | None = None) -> None:
    """Stop the runner: a drill in progress ends at once (its restore killed, its folder
    removed), a runner that does not end in ``timeout`` is killed (a drill cut short records
    nothing either way), and what it left is removed."""
    state = runner(settings).check()
    if state.running:
        process.stop(state, timeout, platform)
    if state.state in ("running", "stale"):
        process.remove_pidfile(_pidfile(settings), state.record)
    clean(settings)


def started(settings: Settings, proc: Any, foreground: bool = False) -> process.PidRecord | None:
    """Name the runner just started in its pidfile (so a stop finds it); None if it is gone."""
    if proc is None:
        return None
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        return None
    record = process.PidRecord(
        pid=proc.pid, create_time=create_time, cmdline=list(proc.args), config=str(settings.config_path),
        started_at=iso(time.time()), log=None if foreground else str(settings.logfile), foreground=foreground,
    )
    process.write_pidfile(_pidfile(settings), record)
    return record
