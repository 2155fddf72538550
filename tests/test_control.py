"""backup.control: what stop stops, and in which order it says so (issue 25)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from backup import control
from backup.errors import BackupError


def test_stop_all_hands_each_followers_result_over_before_the_daemon_stops(monkeypatch):
    said: list[str] = []
    slots = [(SimpleNamespace(output=Path(f"/copies/{n}.db")), None) for n in ("a", "b", "c")]

    def stop_follower(settings, output):
        said.append(f"follower {output.name}")
        if output.name == "b.db":
            raise BackupError("b would not stop")
        return f"stopped {output.name}"

    def stop_daemon(settings, timeout=None):
        said.append("daemon")
        raise BackupError("the daemon's lock is held")

    monkeypatch.setattr(control.follow, "slots", lambda settings: slots)
    monkeypatch.setattr(control.follow, "stop", stop_follower)
    monkeypatch.setattr(control.service, "find", lambda settings: None)
    monkeypatch.setattr(control.daemon, "stop", stop_daemon)
    results = control.stop(None, None, everything=True)
    assert next(results) == "stopped a.db" and said == ["follower a.db"]  # printed before the rest runs
    assert isinstance(next(results), BackupError)
    assert next(results) == "stopped c.db"
    with pytest.raises(BackupError, match="lock is held"):
        next(results)
    assert said == ["follower a.db", "follower b.db", "follower c.db", "daemon"]
