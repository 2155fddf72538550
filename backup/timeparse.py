"""Points in time a person types: RFC 3339, a local date-time, or an age."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from .errors import ConfigError

_AGE_PART = re.compile(r"(\d+)([smhdw])")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LOCAL_FORMATS = ("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d")
HINT = (
    "use RFC 3339 (2026-11-25T14:00:00Z), a local date-time (\"2026-11-25 14:00\") "
    "or an age (15m, 2h, 1d)"
)


def parse_age(text: str) -> timedelta | None:
    """``15m``, ``2h``, ``1d``, ``1h30m``; None when ``text`` is not an age."""
    pos, seconds = 0, 0
    for match in _AGE_PART.finditer(text):
        if match.start() != pos:
            return None
        seconds += int(match.group(1)) * _AGE_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        return None
    return timedelta(seconds=seconds)


def parse(text: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime for ``text``; ConfigError naming the accepted forms."""
    now = now or datetime.now(timezone.utc)
    raw = text.strip()
    try:
        age = parse_age(raw)
        if age is not None:
            return now - age
    except OverflowError:
        raise ConfigError(f"--timestamp {text!r} is further back than any backup can be: {HINT}") from None
    when = None
    try:
        when = datetime.fromisoformat(_normal_fraction(raw.replace("Z", "+00:00").replace("z", "+00:00")))
    except ValueError:
        for fmt in _LOCAL_FORMATS:
            try:
                when = datetime.strptime(raw, fmt)
                break
            except ValueError:
                continue
    if when is None:
        raise ConfigError(f"--timestamp {text!r} is not a point in time: {HINT}")
    try:
        if when.tzinfo is None:
            when = when.astimezone()  # a naive time is in the local zone
        when = when.astimezone(timezone.utc)
    except (OverflowError, ValueError, OSError):
        raise ConfigError(f"--timestamp {text!r} is out of range: {HINT}") from None
    if when > now + timedelta(seconds=1):
        raise ConfigError(f"--timestamp {text!r} is in the future: {HINT}")
    return when


_FRACTION = re.compile(r"\.(\d+)")


def from_litestream(text: str) -> datetime:
    """A timestamp litestream printed (RFC 3339, 'Z', 0-9 fractional digits) as an aware datetime.

    Python 3.10's fromisoformat takes no 'Z' and only 3 or 6 fractional digits.
    """
    return datetime.fromisoformat(_normal_fraction(text.strip().replace("Z", "+00:00")))


def _normal_fraction(text: str) -> str:
    """Seconds' fraction as exactly six digits, the only length Python 3.10 parses everywhere."""
    return _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text)


def iso_seconds(ts: float) -> str:
    """A POSIX time as RFC 3339 in UTC, to the second: how chora-backup's own records say when."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def epoch(text: object) -> float | None:
    """A time a record or litestream wrote, as POSIX seconds; None when it is not one."""
    try:
        return from_litestream(str(text)).timestamp()
    except (TypeError, ValueError):
        return None


def iso_z(when: datetime) -> str:
    """RFC 3339 in UTC with a 'Z', as litestream prints it."""
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def rfc3339(when: datetime) -> str:
    """The UTC form litestream accepts, e.g. 2026-11-25T14:00:00.250000Z."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_txid(text: str) -> int:
    """Litestream's 16-hex txid (shorter hex is accepted); ConfigError otherwise."""
    raw = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{1,16}", raw) or int(raw, 16) == 0:
        raise ConfigError(
            f"--txid {text!r} is not a txid: give litestream's 16 hex digits, "
            "e.g. 0000000000000003 (see 'inv backup.snapshots')"
        )
    return int(raw, 16)
