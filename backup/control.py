"""What keeps this workspace replicated, started and stopped as one: the installed service
when there is one (stopping its process alone would make the manager start it again), else
the daemon; followers on request. The tasks call these and print what they return; the
choice between service, daemon and followers is made here, not in the task layer.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import daemon, follow, service
from .config import Settings
from .errors import BackupError
from .workspace import Workspace


def start_background(settings: Settings, timeout: float) -> Any:
    """Start replicating in the background: through the service where one is installed and
    its manager answers (litestream.yml is the service's to read), else as the daemon, of
    the Workspace built here; returns once the first sync is done."""
    installed = service.find(settings)
    if installed is not None and installed.enabled is not None:
        return service.start_service(settings, installed, timeout)
    workspace = Workspace.load(settings)
    return daemon.start_background(workspace.settings, workspace.litestream, timeout=timeout)


def stop(settings: Settings, timeout: float | None, follower: Path | None = None,
         everything: bool = False) -> Iterator[Any]:
    """Stop the follower writing ``follower``; else the daemon (through its service, when one
    is active), after every follower when ``everything``. Yields what each stop returned as
    it happens, a BackupError in place of a follower's stop that failed (the rest go on).

    Settings alone, no Workspace: stopping must work whatever litestream.yml holds now (a
    running daemon is found by its pidfile, and its own copy of the config says how long
    its final sync may take)."""
    if follower is not None:
        yield follow.stop(settings, follower)
        return
    if everything:
        for slot, _ in follow.slots(settings):
            try:
                yield follow.stop(settings, slot.output)
            except BackupError as exc:  # the daemon is still to be stopped: say it, go on
                yield exc
    installed = service.find(settings)
    if installed is not None and installed.active:
        yield service.stop_service(settings, installed, timeout)
    else:
        yield daemon.stop(settings, timeout=timeout)
