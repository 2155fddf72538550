"""Settings: the one configuration object, loaded once per command.

Precedence, lowest first: built-in defaults < the workspace's ``.env`` <
the process environment < task flags (``overrides``). The workspace is the
nearest directory, from the current one upwards, that holds a ``.env``;
without one it is the current directory.

``load()`` validates everything in one place and reports every problem in a
single ``ConfigError``; the result is frozen and passed down.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field
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
)
SECRET_VARIABLES = ("R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY")

DEFAULT_DB = "chora.db"
DEFAULT_LOCAL_DIR = "~/.chora/backups"
DEFAULT_STATE_ROOT = "~/.chora/state"
START_WAIT = 30.0  # seconds start-bg waits for the first sync before leaving it to run on
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


@dataclass(frozen=True)
class Settings:
    workspace: Path
    env_file: Path | None
    db: Path
    replica_path: str
    sync_interval: str | None  # None: the mode's default
    local_dir: Path
    state_dir: Path
    litestream_bin: str | None = None
    account_id: str | None = None
    bucket: str | None = None
    endpoint: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)

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
        """The daemon's control socket, or None where there is none (Windows)."""
        if sys.platform == "win32":
            return None
        path = self.state_dir / "litestream.sock"
        if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
            return path
        # A deep state dir would overflow sockaddr_un: use a short, stable name, in a
        # folder of this user's own (the temp folder itself is writable by everyone).
        digest = hashlib.sha256(os.fsencode(self.state_dir)).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"chora-backup-{os.getuid()}" / f"{digest}.sock"

    @property
    def r2_endpoint(self) -> str | None:
        if self.endpoint:
            return self.endpoint
        if self.account_id:
            return f"https://{self.account_id}.r2.cloudflarestorage.com"
        return None

    def interval(self, mode: str) -> str:
        return self.sync_interval or DEFAULT_SYNC_INTERVAL[mode]

    def local_replica_dir(self) -> Path:
        return self.local_dir / self.replica_path

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.access_key_id, self.secret_access_key) if s)

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
    values: dict[str, str | None] = {}
    for name in VARIABLES:
        value = merged.get(name)
        if value is None:
            values[name] = None
        elif not value.strip():
            problems.append(f"{name} is empty (set a value or remove the line)")
            values[name] = None
        elif _CONTROL.search(value):
            problems.append(f"{name} contains a control character such as a newline")
            values[name] = None
        else:
            values[name] = value

    db = Path(values["BACKUP_DB"] or DEFAULT_DB).expanduser()
    db = db if db.is_absolute() else workspace / db
    if _URI_SPECIAL.search(str(db)):
        problems.append(
            f"BACKUP_DB {db} contains '#', '?' or '%XX': litestream 0.5 opens the database "
            "path as a URI and would open another file; rename the database or its folder"
        )
    if db.is_dir():
        problems.append(f"BACKUP_DB {db} is a directory: name the database file")

    replica_path = values["BACKUP_REPLICA_PATH"] or db.name
    if (
        replica_path.strip("/") != replica_path
        or "//" in replica_path
        or any(part in (".", "..") for part in replica_path.split("/"))
    ):
        problems.append(
            "BACKUP_REPLICA_PATH must be a key prefix without leading, trailing or double '/' "
            "and without '.' or '..' parts"
        )

    interval = values["BACKUP_SYNC_INTERVAL"]
    if interval is not None:
        try:
            if parse_duration(interval) <= 0:
                raise ValueError
        except ValueError:
            problems.append(
                f"BACKUP_SYNC_INTERVAL {interval!r} is not a positive duration (e.g. 10s, 1m)"
            )

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

    local_dir = Path(values["BACKUP_LOCAL_DIR"] or DEFAULT_LOCAL_DIR).expanduser()
    local_dir = local_dir if local_dir.is_absolute() else workspace / local_dir
    if not _can_be_folder(local_dir):
        problems.append(f"BACKUP_LOCAL_DIR {local_dir} is, or is inside, a file: name a folder")
    state_dir = (
        Path(values["BACKUP_STATE_DIR"]).expanduser()
        if values["BACKUP_STATE_DIR"]
        else _default_state_dir(workspace)
    )
    state_dir = state_dir if state_dir.is_absolute() else workspace / state_dir
    if not _can_be_folder(state_dir):
        problems.append(f"BACKUP_STATE_DIR {state_dir} is, or is inside, a file: name a folder")

    settings = Settings(
        workspace=workspace,
        env_file=env_path if env_path.exists() else None,
        db=db,
        replica_path=replica_path,
        sync_interval=interval,
        local_dir=local_dir,
        state_dir=state_dir,
        litestream_bin=values["LITESTREAM_BIN"],
        account_id=account,
        bucket=bucket,
        endpoint=endpoint,
        access_key_id=values["R2_ACCESS_KEY_ID"],
        secret_access_key=values["R2_SECRET_ACCESS_KEY"],
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
