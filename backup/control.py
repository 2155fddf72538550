"""What keeps this workspace replicated, started and stopped as one: the installed service
when there is one (stopping its process alone would make the manager start it again), else
the daemon; followers on request. The tasks call these and print what they return; the
choice between service, daemon and followers is made here, not in the task layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from . import daemon, follow, service
from .config import Settings
from .errors import BackupError
from .workspace import Workspace


def start_background(workspace: Workspace, timeout: float) -> Any:
    """Start replicating in the background: through the service where one is installed and
    its manager answers, else as the daemon; returns once the first sync is done."""
    installed = service.find(workspace.settings)
    if installed is not None and installed.enabled is not None:
        return service.start_service(workspace.settings, installed, timeout)
    return daemon.start_background(workspace.settings, workspace.litestream, timeout=timeout)


def run_foreground(workspace: Workspace, out: IO[str]) -> int:
    """Replicate in the foreground until a stop signal; litestream's exit code."""
    return daemon.run_foreground(workspace.settings, workspace.litestream, out)


def stop(settings: Settings, timeout: float | None, follower: Path | None = None,
         everything: bool = False) -> list[Any]:
    """Stop the follower writing ``follower``; else the daemon (through its service, when one
    is active), after every follower when ``everything``. What each stop returned, in order,
    with a BackupError in place of a follower's stop that failed (the rest went on).

    Settings alone, no Workspace: stopping must work whatever litestream.yml holds now (a
    running daemon is found by its pidfile, and its own copy of the config says how long
    its final sync may take)."""
    if follower is not None:
        return [follow.stop(settings, follower)]
    results: list[Any] = []
    if everything:
        for slot, _ in follow.slots(settings):
            try:
                results.append(follow.stop(settings, slot.output))
            except BackupError as exc:  # the daemon is still to be stopped: say it, go on
                results.append(exc)
    installed = service.find(settings)
    if installed is not None and installed.active:
        results.append(service.stop_service(settings, installed, timeout))
    else:
        results.append(daemon.stop(settings, timeout=timeout))
    return results
