"""litestream's log as typed events: the one place that knows its two formats and its words.

litestream 0.5 logs with Go's slog, as text (``time=… level=INFO msg="…" key=value``) or,
with ``logging: type: json`` in litestream.yml, as one JSON object a line; a command that
fails prints a bare ``Error: …`` line as it exits. Every module that needs to know what
litestream said (a start-up error, its shutdown, a failed sync, a failed heartbeat) asks
here, so the two formats and the wording cannot drift apart between them.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .timeparse import from_litestream

# What litestream 0.5 says, as its msg (main.go, db.go, store.go, server.go, heartbeat.go).
SHUT_DOWN = "litestream shut down"
SHUTDOWN_SYNC_NOT_DONE = ("shutdown sync failed after timeout", "shutdown sync skipped",
                          "shutdown sync interrupted")
SOCKET_FAILED = "failed to start control server"  # it replicates on without its socket
HEARTBEAT_FAILED = "heartbeat ping failed"
FOLLOWING = ("entering follow mode", "resuming follow mode")  # restore -f, its first restore done
APPLIED = "follow: applied updates"  # restore -f applied a change to the copy
FOLLOW_REFUSED = "cannot resume follow mode"  # restore -f: the saved txid is past the snapshots
METRICS_FAILED = "cannot start metrics server"
# Errors that say nothing about the replica: a dead-man's switch that does not answer, a
# metrics port in use (doctor reports the heartbeat's own).
NOT_SYNC_ERRORS = (HEARTBEAT_FAILED, METRICS_FAILED)

_PAIR = re.compile(r'(\w[\w.]*)=("(?:[^"\\]|\\.)*"|\S*)')


@dataclass(frozen=True)
class Event:
    """One line of litestream's output."""

    line: str
    msg: str = ""
    level: str = ""  # DEBUG, INFO, WARN, ERROR; "" for a bare line
    time: float | None = None  # seconds since the epoch
    attrs: dict[str, str] = field(default_factory=dict)

    @property
    def db(self) -> str | None:
        """The database it names (its path, or its file name alone), if any."""
        return self.attrs.get("db")

    @property
    def error(self) -> str | None:
        return self.attrs.get("error")

    @property
    def is_error(self) -> bool:
        """An ERROR-level line, or the bare ``Error: …`` litestream prints as it exits."""
        return self.level == "ERROR" or self.line.startswith("Error:")

    def says(self, *words: str) -> bool:
        """Is its message one of ``words`` (or does a bare line contain one)?"""
        text = self.msg or self.line
        return any(word in text for word in words)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except ValueError:
            return value[1:-1]
    return value


def _seconds(text: object) -> float | None:
    try:
        return from_litestream(str(text)).timestamp()
    except (ValueError, TypeError):
        return None


def _flat(data: dict, prefix: str = "") -> dict[str, str]:
    """slog's JSON groups (``{"txid": {"db": …}}``) as the text format's dotted keys."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


def parse(line: str) -> Event:
    """One line, in either format; a line in neither is a bare Event (msg and level empty)."""
    line = line.rstrip("\n")
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError:
            data = None
        if isinstance(data, dict):
            attrs = _flat({k: v for k, v in data.items() if k not in ("time", "level", "msg")})
            return Event(line, str(data.get("msg", "")), str(data.get("level", "")).upper(),
                         _seconds(data.get("time")), attrs)
    if "level=" not in line or "msg=" not in line:
        return Event(line)
    pairs = {key: _unquote(value) for key, value in _PAIR.findall(line)}
    msg, level, when = pairs.pop("msg", ""), pairs.pop("level", "").upper(), pairs.pop("time", None)
    return Event(line, msg, level, _seconds(when) if when else None, pairs)


def events(text: str) -> list[Event]:
    return [parse(line) for line in text.splitlines() if line.strip()]


def sync_errors(found: Iterable[Event]) -> list[Event]:
    """Timed ERROR lines about replication: not a heartbeat's or the metrics server's."""
    return [e for e in found if e.level == "ERROR" and e.time is not None and not e.says(*NOT_SYNC_ERRORS)]


def first_error(found: Iterable[Event]) -> Event | None:
    """The first error that means litestream could not start or replicate."""
    return next((e for e in found if e.is_error and not e.says(HEARTBEAT_FAILED)), None)


def shutdown(found: list[Event]) -> bool | None:
    """What litestream said of its own final sync on a stop: True once it logged its shutdown
    with no failed or skipped sync; False when it logged one; None when it logged no
    shutdown at all (it exited for another reason, or has not yet)."""
    if any(e.says(*SHUTDOWN_SYNC_NOT_DONE) for e in found):
        return False
    return True if any(e.says(SHUT_DOWN) for e in found) else None


def last_shutdown(found: Iterable[Event]) -> float | None:
    """When litestream last logged its clean shutdown."""
    times = [e.time for e in found if e.says(SHUT_DOWN) and e.time is not None]
    return times[-1] if times else None
