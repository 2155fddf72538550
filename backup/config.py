"""Settings: the one configuration object, loaded once per command.

Precedence, lowest first: built-in defaults < the workspace's ``.env`` <
the process environment < task flags (``overrides``). The workspace is the
nearest directory, from the current one upwards, that holds a ``.env``;
without one it is the current directory.

``load()`` validates everything in one place and reports every problem in a
single ``ConfigError``; the result is frozen and passed down.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import re
import sys
import tempfile
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError

ENV_FILE = ".env"
CONFIG_FILE = "litestream.yml"

R2 = "r2"
LOCAL = "local"

# Every variable this tool reads. Anything else in .env is ignored.
VARIABLES = (
    "R2_ACCOUNT_ID",
    "R2_BUCKET",
    "R2_ACCESS_KEY_ID",
    "R2_SECRET_ACCESS_KEY",
    "R2_ENDPOINT",
    "BACKUP_DB",
    "BACKUP_REPLICA_PATH",
    "BACKUP_SYNC_INTERVAL",
    "BACKUP_LOCAL_DIR",
    "BACKUP_STATE_DIR",
    "LITESTREAM_BIN",
    "BACKUP_HEARTBEAT_URL",
    "BACKUP_HEARTBEAT_INTERVAL",
    "BACKUP_METRICS_ADDR",
    "BACKUP_METRICS_PUBLIC",
    "BACKUP_VERIFY_INTERVAL",
    "BACKUP_VERIFY_PING_URL",
)
# Never written to a file this tool makes (except litestream.yml's heartbeat-url,
# mode 0600), printed, or logged. A ping URL is a secret: its path is the token.
SECRET_VARIABLES = ("R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "BACKUP_HEARTBEAT_URL", "BACKUP_VERIFY_PING_URL")

DEFAULT_DB = "chora.db"
DEFAULT_LOCAL_DIR = "~/.chora/backups"
DEFAULT_STATE_ROOT = "~/.chora/state"
START_WAIT = 30.0  # seconds start-bg waits for the first sync before leaving it to run on
# litestream's heartbeat: its default interval, and the shortest it accepts.
DEFAULT_HEARTBEAT_INTERVAL = "5m"
MIN_HEARTBEAT_SECONDS = 60.0
# Restore drills (backup.drill): once a day proves the replica within a day of any silent
# loss, for a few requests and a download R2 does not charge for. Shorter than a minute
# is refused (a drill restores the whole database); shorter than an hour, warned about.
DEFAULT_VERIFY_INTERVAL = "24h"
MIN_VERIFY_SECONDS = 60.0
WARN_VERIFY_SECONDS = 3600.0
OFF = "off"
# The seed's interval for R2, chosen for cost; local copies are free.
DEFAULT_SYNC_INTERVAL = {R2: "10s", LOCAL: "1s"}

# A Unix socket path must fit in sockaddr_un (104 bytes on macOS, 108 on Linux).
_MAX_SOCKET_PATH = 100

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ACCOUNT_ID = re.compile(r"^[0-9a-fA-F]{32}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# litestream 0.5 builds a SQLite URI from the database path without escaping it.
_URI_SPECIAL = re.compile(r"[#?]|%[0-9A-Fa-f]{2}")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration (``10s``, ``1m30s``, ``500ms``); ValueError if not one."""
    pos, total = 0, 0.0
    text = text.strip()
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"not a duration: {text!r}")
    return total


MIN_MAX_AGE = 60.0  # seconds; see max_age()


def max_age(sync_interval: str) -> float:
    """How long a replica may miss local changes before it counts as failing."""
    return max(10 * parse_duration(sync_interval), MIN_MAX_AGE)


# What makes a BACKUP_DB file name a glob. Only '*' and '?': Go's filepath.Match (litestream)
# and Python's fnmatch read '[!x]' and '\\' differently, and 'app[1].db' is a real name.
_GLOB = re.compile(r"[*?]")


@dataclass(frozen=True)
class DbSpec:
    """One ``BACKUP_DB`` entry: a database file, or a glob of the databases in one folder."""

    written: str  # as in BACKUP_DB
    path: Path  # the database file; for a glob, the folder it searches
    replica_path: str  # key prefix in the bucket, or sub-folder of BACKUP_LOCAL_DIR
    pattern: str | None = None  # a glob's file-name pattern (litestream's folder replication)

    def matches(self, db: Path) -> bool:
        """Is ``db`` one of this entry's databases (by name; the header is not read)?"""
        if self.pattern is None:
            return db == self.path
        return db.parent == self.path and fnmatch.fnmatchcase(db.name, self.pattern)


@dataclass(frozen=True)
class Settings:
    workspace: Path
    env_file: Path | None
    db: Path  # the first BACKUP_DB entry (for a glob: its folder)
    replica_path: str  # the first entry's replica location
    sync_interval: str | None  # None: the mode's default
    local_dir: Path
    state_dir: Path
    litestream_bin: str | None = None
    account_id: str | None = None
    bucket: str | None = None
    endpoint: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    databases: tuple[DbSpec, ...] = ()  # every BACKUP_DB entry, the first one first
    heartbeat_url: str | None = field(default=None, repr=False)  # a secret: see secrets()
    heartbeat_interval: str = DEFAULT_HEARTBEAT_INTERVAL
    metrics_addr: str | None = None  # host:port of litestream's Prometheus endpoint
    # More values to mask: a ping URL litestream.yml holds that .env no longer names.
    extra_secrets: tuple[str, ...] = field(default=(), repr=False)
    # Restore drills: seconds between two (None: off), as written, and the URL told of each.
    verify_interval: float | None = 24 * 3600.0
    verify_interval_text: str = DEFAULT_VERIFY_INTERVAL
    verify_ping_url: str | None = field(default=None, repr=False)  # a secret: see secrets()
    warnings: tuple[str, ...] = ()  # settings that work but that a careful user should hear about

    def __post_init__(self) -> None:
        if not self.databases:  # built by hand (tests): one database, as before
            object.__setattr__(self, "databases", (DbSpec(str(self.db), self.db, self.replica_path),))

    @property
    def config_path(self) -> Path:
        return self.workspace / CONFIG_FILE

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "litestream.pid"

    @property
    def lockfile(self) -> Path:
        return self.state_dir / "litestream.lock"

    @property
    def running_config(self) -> Path:
        """A copy of the litestream.yml the running daemon was started with."""
        return self.state_dir / "litestream.running.yml"

    @property
    def logfile(self) -> Path:
        return self.state_dir / "litestream.log"

    @property
    def socket_path(self) -> Path | None:
        """The daemon's control socket: a Unix-domain socket, which Windows has too (10 1803 on)."""
        return socket_path(self.state_dir)

    @property
    def r2_endpoint(self) -> str | None:
        if self.endpoint:
            return self.endpoint
        if self.account_id:
            return f"https://{self.account_id}.r2.cloudflarestorage.com"
        return None

    def interval(self, mode: str) -> str:
        return self.sync_interval or DEFAULT_SYNC_INTERVAL[mode]

    def local_replica_dir(self, spec: DbSpec | None = None) -> Path:
        """The folder of a local replica: the first database's, or ``spec``'s."""
        location = spec.replica_path if spec else self.replica_path
        return self.local_dir.joinpath(*location.split("/")) if location else self.local_dir

    def secrets(self) -> tuple[str, ...]:
        """Every value masked in output and logs: the keys, and the ping URL with its parts."""
        found = [s for s in (self.access_key_id, self.secret_access_key) if s]
        for url in (self.heartbeat_url, self.verify_ping_url):
            if url:
                found += url_secrets(url)
        return tuple(found) + self.extra_secrets

    def masking(self, heartbeat_url: object) -> Settings:
        """These settings, masking too the ping URL a litestream.yml holds (written from an
        older .env, or by hand: litestream runs the file, not .env)."""
        if not heartbeat_url or str(heartbeat_url) in self.secrets():
            return self
        return replace(self, extra_secrets=self.extra_secrets + tuple(url_secrets(str(heartbeat_url))))

    @property
    def metrics_url(self) -> str | None:
        return metrics_url(self.metrics_addr) if self.metrics_addr else None

    def mask(self, text: str) -> str:
        """``text`` with every secret value replaced by ``****``."""
        for secret in sorted(self.secrets(), key=len, reverse=True):
            text = text.replace(secret, "****")
        return text

    def missing_r2(self) -> list[str]:
        """The R2 variables that must still be set for S3 replication."""
        needed = {
            "R2_ACCOUNT_ID": self.account_id or self.endpoint,
            "R2_BUCKET": self.bucket,
            "R2_ACCESS_KEY_ID": self.access_key_id,
            "R2_SECRET_ACCESS_KEY": self.secret_access_key,
        }
        return [name for name, value in needed.items() if not value]

    def env_location(self) -> str:
        return str(self.env_file) if self.env_file else f"{self.workspace / ENV_FILE} (not found)"


def url_secrets(url: str) -> list[str]:
    """What to mask of a ping URL: all of it, and each part that may carry its token.

    Go prints the URL in an error with its password replaced, so the path and
    query (where healthchecks.io, Better Stack and Uptime Kuma put the token)
    and the password are masked on their own too. The host is not secret.
    """
    found = [url]
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return found
    tail = url[len(f"{parts.scheme}://{parts.netloc}"):]
    if len(tail.strip("/")) >= 8:  # shorter ("/ping") holds no token, and is common text
        found.append(tail)
    if password and len(password) >= 4:
        found.append(password)
    return found


def public_url(url: str) -> str:
    """A ping URL as it may be shown: scheme and host, the rest masked."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/****"


def metrics_url(addr: str) -> str:
    """Where this machine reaches the metrics litestream serves at ``addr``: an address of
    every interface (``:9090``, ``0.0.0.0``, ``[::]``) is asked on the loopback one."""
    host, _, port = addr.rpartition(":")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
    return f"http://{host}:{port}/metrics"


def is_loopback(host: str) -> bool:
    import ipaddress

    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def find_workspace(start: Path) -> Path:
    """The nearest directory from ``start`` upwards holding a .env, else ``start``."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / ENV_FILE).exists():
            return folder
    return start


def read_env_file(path: Path) -> dict[str, str | None]:
    """Parse a .env with python-dotenv, without interpolation or side effects."""
    from dotenv.parser import parse_stream

    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a .env file: move it aside")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if "\x00" in text:
        raise ConfigError(f"{path} is not a text file (it holds NUL bytes)")
    values: dict[str, str | None] = {}
    bad: list[int] = []
    for binding in parse_stream(_StringStream(text)):
        if binding.error:
            bad.append(binding.original.line)
        elif binding.key is not None:
            values[binding.key] = binding.value
    if bad:
        lines = ", ".join(str(n) for n in bad)
        raise ConfigError(
            f"{path}: cannot parse line {lines}: write each setting as NAME=value"
        )
    return values


class _StringStream:
    """The minimal stream interface dotenv's parser reads from."""

    def __init__(self, text: str):
        self._text = text

    def read(self) -> str:
        return self._text


def _default_state_dir(workspace: Path) -> Path:
    # Outside any checkout, one folder per workspace so two workspaces never
    # share a pidfile.
    digest = hashlib.sha256(os.fsencode(workspace)).hexdigest()[:8]
    return Path(DEFAULT_STATE_ROOT).expanduser() / f"{workspace.name or 'root'}-{digest}"


def socket_path(state_dir: Path, platform: str = sys.platform) -> Path:
    """The control socket's path: in the state dir, or where a deep state dir would overflow
    sockaddr_un, a short stable name in a folder of this user's own (POSIX's temp folder is
    writable by everyone; Windows' is the user's own already)."""
    path = state_dir / "litestream.sock"
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:16]
    folder = "chora-backup" if platform == "win32" else f"chora-backup-{os.getuid()}"
    return Path(tempfile.gettempdir()) / folder / f"{digest}.sock"


def _can_be_folder(path: Path) -> bool:
    """Is ``path`` a folder, or could it be made one (its nearest existing parent is)?"""
    for existing in (path, *path.parents):
        if existing.is_symlink() and not existing.exists():
            return False  # a dangling link: mkdir would fail on it
        if existing.exists():
            return existing.is_dir()
    return True


def _check_endpoint(value: str) -> str | None:
    try:
        parts = urlsplit(value)
    except ValueError:
        return "R2_ENDPOINT must be an http(s) URL such as https://host:9000"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "R2_ENDPOINT must be an http(s) URL such as https://host:9000"
    try:
        port = parts.port
    except ValueError:
        return "R2_ENDPOINT has an invalid port (use 1-65535)"
    if port == 0:
        return "R2_ENDPOINT has an invalid port (use 1-65535)"
    return None


def _is_key_prefix(text: str) -> bool:
    return not (
        text.strip("/") != text
        or "//" in text
        or any(part in (".", "..") for part in text.split("/"))
    )


def _nested(outer: str, inner: str) -> str | None:
    """The first part of ``inner`` below ``outer`` ("" when equal); None when not under it."""
    a = [p for p in outer.split("/") if p]
    b = [p for p in inner.split("/") if p]
    if b[: len(a)] != a:
        return None
    return b[len(a)] if len(b) > len(a) else ""


def _database_entry(written: str, workspace: Path, problems: list[str]) -> tuple[Path, str | None] | None:
    """(file, None) or (folder, pattern) for one BACKUP_DB entry; None after a problem."""
    try:
        path = Path(written).expanduser()
    except RuntimeError:  # ~user that does not exist
        problems.append(f"BACKUP_DB {written}: no such user's home folder; write the full path")
        return None
    # Normalised, so x/../chora.db is chora.db (and cannot be listed twice unnoticed).
    path = Path(os.path.normpath(path if path.is_absolute() else workspace / path))
    pattern = None
    if _GLOB.search(path.name):
        if "**" in path.name or "[" in path.name or "\\" in path.name:
            problems.append(f"BACKUP_DB {written}: a glob may use only '*' and '?' in the file name, "
                            "such as data/*.db")
            return None
        pattern, path = path.name, path.parent
    if any(c in part for part in Path(written).parent.parts for c in "*?"):
        problems.append(f"BACKUP_DB {written}: only the file name may be a glob (data/*.db), not a folder")
        return None
    if _URI_SPECIAL.search(str(path)):
        problems.append(
            f"BACKUP_DB {path} contains '#', '?' or '%XX': litestream 0.5 opens the database "
            "path as a URI and would open another file; rename the database or its folder"
        )
    if pattern is None and path.is_dir():
        problems.append(f"BACKUP_DB {path} is a directory: name the database file, or a glob such as {written.rstrip('/')}/*.db")
    if pattern is not None and path.exists() and not path.is_dir():
        problems.append(f"BACKUP_DB {written}: {path} is not a folder")
    return path, pattern


def _databases(
    text: str, workspace: Path, replica_path: str | None, problems: list[str]
) -> list[DbSpec]:
    """Every BACKUP_DB entry with its replica location; problems are appended.

    The first database keeps the location a single-database workspace always had
    (BACKUP_REPLICA_PATH, default its file name); every other goes under the same
    workspace prefix (BACKUP_REPLICA_PATH's folder) by its path relative to the
    workspace. A glob's databases go under its folder's location by their names,
    as litestream's folder replication places them.
    """
    root = posixpath.dirname(replica_path) if replica_path else ""
    specs: list[DbSpec] = []
    for index, written in enumerate(part.strip() for part in text.split(",")):
        if not written:
            problems.append("BACKUP_DB has an empty entry: separate database paths with single commas")
            continue
        found = _database_entry(written, workspace, problems)
        if found is None:
            continue
        path, pattern = found
        if index == 0 and pattern is None:
            location = replica_path or path.name
        else:
            try:
                relative = path.relative_to(workspace).as_posix()
            except ValueError:
                problems.append(
                    f"BACKUP_DB {written} is outside the workspace {workspace}: "
                    + ("only a single database file may live elsewhere; move it into the workspace"
                       if index == 0 else
                       "only the first database may live elsewhere; move it into the workspace or list it first")
                )
                continue
            location = posixpath.join(root, relative) if relative != "." else root
            if pattern is not None and not location:
                problems.append(
                    f"BACKUP_DB {written}: a glob at the workspace's top would replicate to the top of "
                    "the bucket or backup folder, among other workspaces' backups: set "
                    "BACKUP_REPLICA_PATH to a prefix of this workspace's (myapp/chora.db), or move "
                    "the databases into a folder"
                )
                continue
        specs.append(DbSpec(written, path, location, pattern))
    _check_overlaps(specs, problems)
    return specs


def _check_overlaps(specs: list[DbSpec], problems: list[str]) -> None:
    """No database listed twice, and no two databases sharing a replica location."""
    for i, a in enumerate(specs):
        for b in specs[i + 1:]:
            if (a.path, a.pattern) == (b.path, b.pattern):
                problems.append(f"BACKUP_DB lists {a.written} twice: remove one")
            elif a.pattern is not None and b.pattern is not None and a.path == b.path:
                problems.append(
                    f"BACKUP_DB: {a.written} and {b.written} are two globs on one folder: a database "
                    "both match would be replicated twice; use one glob per folder"
                )
            elif a.pattern is None and b.pattern is None and a.path == b.path:
                problems.append(f"BACKUP_DB lists {a.path} twice ({a.written}, {b.written}): remove one")
            elif a.pattern is None and b.matches(a.path) or b.pattern is None and a.matches(b.path):
                file, glob = (a, b) if a.pattern is None else (b, a)
                problems.append(
                    f"BACKUP_DB: {file.written} is also matched by {glob.written}: litestream would "
                    "replicate it twice; narrow the glob or drop the entry"
                )
            elif _shares_location(a, b) or _shares_location(b, a):
                problems.append(
                    f"BACKUP_DB: {a.written} and {b.written} would share the replica location "
                    f"{a.replica_path or '(the root)'}: set BACKUP_REPLICA_PATH so the first "
                    "database has a location of its own"
                )


def _shares_location(a: DbSpec, b: DbSpec) -> bool:
    """Would some database of ``b`` replicate at or under a database of ``a``?"""
    if a.pattern is None:
        # b's own location (a file) or its databases (a folder) at or under a's.
        return _nested(a.replica_path, b.replica_path) is not None
    below = _nested(a.replica_path, b.replica_path)
    if below is None:
        return False
    return below == "" or fnmatch.fnmatchcase(below, a.pattern)


def _values(merged: Mapping[str, str], problems: list[str]) -> dict[str, str | None]:
    """Every variable's value, None where unset; empty and control-character values refused."""
    values: dict[str, str | None] = {}
    for name in VARIABLES:
        value = merged.get(name)
        if value is not None and not value.strip():
            problems.append(f"{name} is empty (set a value or remove the line)")
            value = None
        elif value is not None and _CONTROL.search(value):
            problems.append(f"{name} contains a control character such as a newline")
            value = None
        values[name] = value
    return values


def _check_r2(values: dict[str, str | None], problems: list[str]) -> None:
    """The shape of the R2 settings that are set (whether all are set is R2 mode's question)."""
    endpoint = values["R2_ENDPOINT"]
    if endpoint is not None:
        reason = _check_endpoint(endpoint)
        if reason:
            problems.append(reason)
    account = values["R2_ACCOUNT_ID"]
    if account is not None and endpoint is None and not _ACCOUNT_ID.match(account):
        problems.append(
            "R2_ACCOUNT_ID must be the 32 hex characters shown in the Cloudflare dashboard"
        )
    bucket = values["R2_BUCKET"]
    if bucket is not None and not _BUCKET.match(bucket):
        problems.append(
            "R2_BUCKET must be 3-63 lowercase letters, digits, hyphens or dots, "
            "starting and ending with a letter or digit"
        )


def _interval(value: str | None, problems: list[str]) -> str | None:
    if value is not None:
        try:
            if parse_duration(value) <= 0:
                raise ValueError
        except ValueError:
            problems.append(f"BACKUP_SYNC_INTERVAL {value!r} is not a positive duration (e.g. 10s, 1m)")
    return value


def _ping_url(name: str, url: str | None, problems: list[str]) -> str | None:
    """A ping URL (never echoed: it carries a token), or None when unset or refused."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a port that is not a number
        # litestream's own test is a case-sensitive prefix; and only plain URL characters,
        # so the URL appears in a log exactly as written here (and is masked there).
        valid = url.startswith(("http://", "https://")) and bool(parts.hostname) \
            and _URL_CHARS.fullmatch(url) is not None and not _BAD_ESCAPE.search(url)
    except ValueError:
        valid = False
    if not valid:
        problems.append(
            f"{name} must be an http:// or https:// URL of plain URL characters "
            "(non-ASCII and spaces %-encoded), such as a healthchecks.io ping URL (its value "
            "is not shown: ping URLs carry tokens)"
        )
        return None
    return url


def _drills(values: dict[str, str | None], problems: list[str], warnings: list[str]) -> tuple[float | None, str]:
    """BACKUP_VERIFY_INTERVAL: seconds between restore drills (None: off), and as written."""
    text = values["BACKUP_VERIFY_INTERVAL"] or DEFAULT_VERIFY_INTERVAL
    if text.strip().lower() == OFF:
        return None, OFF
    try:
        seconds = parse_duration(text)
    except ValueError:
        problems.append(f"BACKUP_VERIFY_INTERVAL {text!r} is not a duration (e.g. 24h, 6h, 30m) or 'off'")
        return 24 * 3600.0, DEFAULT_VERIFY_INTERVAL
    if seconds < MIN_VERIFY_SECONDS:
        problems.append(
            f"BACKUP_VERIFY_INTERVAL {text!r} is shorter than 1m: a drill restores the whole database, "
            "so use 1m or more (24h is the default), or 'off'"
        )
    elif seconds < WARN_VERIFY_SECONDS:
        warnings.append(
            f"BACKUP_VERIFY_INTERVAL {text} is shorter than 1h: each drill downloads the whole database "
            "(R2 request charges add up; see 'inv backup.cost'); 24h is the default"
        )
    return seconds, text.strip()


def _heartbeat(values: dict[str, str | None], problems: list[str]) -> tuple[str | None, str]:
    """BACKUP_HEARTBEAT_URL (never echoed: it carries a token) and its interval."""
    url = _ping_url("BACKUP_HEARTBEAT_URL", values["BACKUP_HEARTBEAT_URL"], problems)
    interval = values["BACKUP_HEARTBEAT_INTERVAL"] or DEFAULT_HEARTBEAT_INTERVAL
    try:
        seconds = parse_duration(interval)
    except ValueError:
        problems.append(f"BACKUP_HEARTBEAT_INTERVAL {interval!r} is not a duration (e.g. 5m, 1h)")
        return url, DEFAULT_HEARTBEAT_INTERVAL
    if seconds < MIN_HEARTBEAT_SECONDS:
        problems.append(
            f"BACKUP_HEARTBEAT_INTERVAL {interval!r} is shorter than litestream's minimum, 1m: use 1m or more"
        )
    return url, interval


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# RFC 3986's characters, without those Go or slog would print differently ('"', '\\').
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _metrics(values: dict[str, str | None], problems: list[str]) -> str | None:
    """BACKUP_METRICS_ADDR, host:port; a non-loopback host only with BACKUP_METRICS_PUBLIC=1."""
    public = values["BACKUP_METRICS_PUBLIC"]
    if public is not None and public.strip().lower() not in _TRUE + _FALSE:
        problems.append(f"BACKUP_METRICS_PUBLIC {public!r} must be 1 or 0")
    addr = values["BACKUP_METRICS_ADDR"]
    if addr is None:
        return None
    host, colon, port = addr.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if not colon or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536 \
            or (":" in host and not bracketed):
        problems.append(
            f"BACKUP_METRICS_ADDR {addr!r} must be host:port with a port from 1 to 65535, "
            "such as 127.0.0.1:9090 ([::1]:9090 for IPv6)"
        )
        return None
    if not is_loopback(host) and (public or "").strip().lower() not in _TRUE:
        problems.append(
            f"BACKUP_METRICS_ADDR {addr} can be reached from other machines, and the metrics name "
            "your database paths: use 127.0.0.1:" + port + ", or set BACKUP_METRICS_PUBLIC=1 to mean it"
        )
        return None
    return addr.strip()


def _folders(values: dict[str, str | None], workspace: Path, problems: list[str]) -> tuple[Path, Path]:
    """BACKUP_LOCAL_DIR and BACKUP_STATE_DIR, absolute; each must be, or can become, a folder."""
    local_dir = Path(values["BACKUP_LOCAL_DIR"] or DEFAULT_LOCAL_DIR).expanduser()
    local_dir = local_dir if local_dir.is_absolute() else workspace / local_dir
    if not _can_be_folder(local_dir):
        problems.append(f"BACKUP_LOCAL_DIR {local_dir} is, or is inside, a file: name a folder")
    state = values["BACKUP_STATE_DIR"]
    state_dir = Path(state).expanduser() if state else _default_state_dir(workspace)
    state_dir = state_dir if state_dir.is_absolute() else workspace / state_dir
    if not _can_be_folder(state_dir):
        problems.append(f"BACKUP_STATE_DIR {state_dir} is, or is inside, a file: name a folder")
    return local_dir, state_dir


def load(
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | None] | None = None,
    mode: str | None = None,
) -> Settings:
    """Build and validate the Settings for the workspace around ``cwd``.

    ``mode`` R2 also requires the R2 variables; LOCAL and None do not (runtime
    commands hand credentials to litestream only when they are present).
    """
    cwd = Path.cwd() if cwd is None else Path(cwd)
    environ = os.environ if environ is None else environ
    workspace = find_workspace(cwd)
    env_path = workspace / ENV_FILE
    dotenv = read_env_file(env_path) if env_path.exists() or env_path.is_symlink() else {}
    cli = {k: v for k, v in (overrides or {}).items() if v is not None}
    merged = ChainMap(cli, {k: environ[k] for k in VARIABLES if k in environ}, dotenv)

    problems: list[str] = []
    values = _values(merged, problems)
    replica_path = values["BACKUP_REPLICA_PATH"]
    if replica_path is not None and not _is_key_prefix(replica_path):
        problems.append(
            "BACKUP_REPLICA_PATH must be a key prefix without leading, trailing or double '/' "
            "and without '.' or '..' parts"
        )
        replica_path = None
    databases = _databases(values["BACKUP_DB"] or DEFAULT_DB, workspace, replica_path, problems)
    interval = _interval(values["BACKUP_SYNC_INTERVAL"], problems)
    _check_r2(values, problems)
    local_dir, state_dir = _folders(values, workspace, problems)
    heartbeat_url, heartbeat_interval = _heartbeat(values, problems)
    metrics_addr = _metrics(values, problems)
    warnings: list[str] = []
    verify_interval, verify_interval_text = _drills(values, problems, warnings)
    verify_ping_url = _ping_url("BACKUP_VERIFY_PING_URL", values["BACKUP_VERIFY_PING_URL"], problems)

    settings = Settings(
        workspace=workspace,
        env_file=env_path if env_path.exists() else None,
        db=databases[0].path if databases else workspace / DEFAULT_DB,
        replica_path=databases[0].replica_path if databases else DEFAULT_DB,
        sync_interval=interval,
        local_dir=local_dir,
        state_dir=state_dir,
        litestream_bin=values["LITESTREAM_BIN"],
        account_id=values["R2_ACCOUNT_ID"],
        bucket=values["R2_BUCKET"],
        endpoint=values["R2_ENDPOINT"],
        access_key_id=values["R2_ACCESS_KEY_ID"],
        secret_access_key=values["R2_SECRET_ACCESS_KEY"],
        databases=tuple(databases),
        heartbeat_url=heartbeat_url,
        heartbeat_interval=heartbeat_interval,
        metrics_addr=metrics_addr,
        verify_interval=verify_interval,
        verify_interval_text=verify_interval_text,
        verify_ping_url=verify_ping_url,
        warnings=tuple(warnings),
    )
    if mode == R2:
        named = {p.split(" ", 1)[0] for p in problems}
        missing = [m for m in settings.missing_r2() if m not in named]
        if missing:
            problems.insert(
                0,
                f"missing {', '.join(missing)} in {settings.env_location()} — see "
                ".env.example, or run 'inv backup.local' to back up without R2",
            )
    if problems:
        raise ConfigError("; ".join(problems))
    return settings


def require_r2(settings: Settings) -> None:
    """Raise when S3 replication is asked for without its credentials."""
    missing = settings.missing_r2()
    # The account id only builds the endpoint; litestream.yml already has it.
    missing = [m for m in missing if m in SECRET_VARIABLES]
    if missing:
        raise ConfigError(
            f"missing {', '.join(missing)} in {settings.env_location()}: litestream.yml "
            "replicates to S3 and needs them — see .env.example"
        )
