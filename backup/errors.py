"""The project's error types and exit codes.

Nothing below the task layer prints or exits: library code raises a
``BackupError`` carrying one line a person can act on, and the task layer
turns it into ``invoke.Exit``.
"""
from __future__ import annotations

import errno
import re

# Exit codes, in one place. README.md documents them.
EXIT_OK = 0
EXIT_FAILED = 1  # the operation failed, or a check did not pass
EXIT_CONFIG = 2  # bad input: .env, variables, flags, paths
EXIT_NOT_RUNNING = 3  # status: no daemon runs for this workspace
EXIT_BROKEN_PIPE = 141  # our output's reader left ('| head'): what a shell reports for SIGPIPE

NO_CONFIG = ("no replicas configured: run 'inv backup.setup' (R2 or S3), or 'inv backup.local' "
             "(a local folder; --no-start only writes litestream.yml)")


class BackupError(Exception):
    """An expected failure with a message that names the fix."""

    code = EXIT_FAILED

    def __init__(self, message: str, code: int | None = None, details: tuple[str, ...] = ()):
        super().__init__(message)
        if code is not None:
            self.code = code
        # Lines worth showing before the message, such as a log's tail.
        self.details = details

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(BackupError):
    """The configuration (.env, environment, flags, litestream.yml) is unusable."""

    code = EXIT_CONFIG


class LitestreamError(BackupError):
    """litestream itself failed; the message is already translated."""


# The fix for a replica a restore cannot follow to the end (a hole, or nothing at all
# while litestream believes it uploaded everything): a fresh full copy.
SNAPSHOT_FIX = "run 'inv backup.snapshot' to take a fresh snapshot"


def missing_txids(first: int, last: int) -> str:
    """``first``..``last`` as people read it: one txid, or a range."""
    if first == last:
        return f"txid {first:016x} is missing"
    return f"txids {first:016x} to {last:016x} are missing"


def hole_problem(first: int, last: int) -> str:
    return f"the replica has a hole ({missing_txids(first, last)}), so no restore can reach the latest state"


def hole_message(first: int, last: int) -> str:
    """One line for a replica with a hole: what is missing and the fix."""
    return f"{hole_problem(first, last)}: {SNAPSHOT_FIX}"


# litestream's words for a hole: a restore's (replica.go's CalcRestorePlan), and a
# compaction's, logged at every tick of a level while files it merges straddle a hole.
_HOLE = re.compile(r"non-contiguous ltx files: have up to ([0-9a-f]{16}) but next file starts at ([0-9a-f]{16})")
_COMPACTION_HOLE = re.compile(
    r"non-contiguous transaction ids in input files: \([0-9a-f]{16},([0-9a-f]{16})\) -> \(([0-9a-f]{16}),"
)

NOTHING_TO_RESTORE = (
    "nothing to restore yet: the replica holds no backup for that point "
    "(start replication with 'inv backup.start-bg')"
)

# Known litestream failures, most specific first: (substring, what to do).
_TRANSLATIONS: tuple[tuple[str, str], ...] = (
    (
        # Before "connection refused" and the rest: this line is about the metrics port.
        "cannot start metrics server",
        "litestream cannot serve metrics at BACKUP_METRICS_ADDR (the port is in use, perhaps by "
        "another workspace's daemon, or not this machine's): choose another in .env, then "
        "regenerate litestream.yml ('inv backup.setup', or 'inv backup.local --no-start')",
    ),
    (
        "has no WithTransportOptions",
        "litestream could not load its AWS config because AWS_CA_BUNDLE reached it; "
        "this is a chora-backup bug, please report it",
    ),
    (
        "NoSuchBucket",
        "the bucket does not exist: create it, or fix R2_BUCKET in .env",
    ),
    (
        "InvalidAccessKeyId",
        "access denied: the access key id was refused; check R2_ACCESS_KEY_ID in .env",
    ),
    (
        "SignatureDoesNotMatch",
        "access denied: the secret key was refused; check R2_SECRET_ACCESS_KEY in .env",
    ),
    (
        "AccessDenied",
        "access denied: check that the API token has Object Read & Write permission "
        "on the bucket",
    ),
    (
        "no such host",
        "cannot resolve the storage endpoint: check R2_ACCOUNT_ID or R2_ENDPOINT",
    ),
    (
        "connection refused",
        "the storage endpoint refused the connection: check R2_ENDPOINT and your network",
    ),
    (
        "actively refused it",  # Windows' words for the same (WSAECONNREFUSED)
        "the storage endpoint refused the connection: check R2_ENDPOINT and your network",
    ),
    (
        "server gave HTTP response to HTTPS client",
        "the endpoint speaks plain HTTP: use an http:// R2_ENDPOINT",
    ),
    (
        "x509:",
        "the endpoint's TLS certificate was not trusted: check R2_ENDPOINT, or set "
        "SSL_CERT_FILE to your CA bundle",
    ),
    (
        "database is locked",
        "database locked: stop any process holding a write lock on the database",
    ),
    (
        "no matching backup files available",
        NOTHING_TO_RESTORE,
    ),
    (
        # A local LTX file the replica needs is gone: the replica's newest L0 file is
        # older than the oldest change litestream still keeps (L0 files deleted from
        # the replica, or all of it). "open ltx file <path>:" names a local file; a
        # remote one reads "open ltx file: ...".
        "open ltx file ",
        f"the replica lacks changes that litestream no longer keeps locally: {SNAPSHOT_FIX}",
    ),
    ("no replicas", NO_CONFIG),
)


def missing_bucket(buckets: list[str]) -> str | None:
    """The one line for a bucket that does not exist, naming it when it is known."""
    if len(buckets) != 1:
        return None
    return f"bucket '{buckets[0]}' does not exist: create it, or fix R2_BUCKET"


def translate(stderr: str, fallback: str) -> str:
    """Turn litestream's stderr into one actionable line.

    ``fallback`` is used when no known failure matches; the last ``Error:``
    line of litestream's own output is appended to it so nothing is hidden.
    """
    hole = _HOLE.search(stderr)
    if hole:
        have, starts = (int(t, 16) for t in hole.groups())
        return hole_message(have + 1, starts - 1)
    hole = _COMPACTION_HOLE.search(stderr)
    if hole:
        have, starts = (int(t, 16) for t in hole.groups())
        return (
            f"litestream's compaction fails on a hole in the replica "
            f"({missing_txids(have + 1, starts - 1)}): {SNAPSHOT_FIX}"
        )
    for needle, advice in _TRANSLATIONS:
        if needle.lower() in stderr.lower():
            return advice
    last = ""
    for line in stderr.splitlines():
        if line.strip():
            last = line.strip()
        if line.startswith("Error:"):
            last = line[len("Error:"):].strip()
            break
    return f"{fallback}: {last}" if last else fallback


# What to do about an OSError, by errno.
_OS_FIXES = {
    errno.EACCES: "check its permissions (or run as the user who owns it)",
    errno.EPERM: "check its permissions (or run as the user who owns it)",
    errno.ENOSPC: "free some disk space, then try again",
    errno.EROFS: "it is on a read-only file system: choose a writable place",
    errno.ENOTDIR: "a file stands where a folder is needed: move that file aside",
    errno.EISDIR: "a folder stands where a file is needed: move that folder aside",
    errno.EEXIST: "something is already there: move it aside",
    errno.ENOENT: "it does not exist: check the path",
    errno.EBUSY: "another program holds it: close that program, then try again",
}


_IN_USE = (32, 33)  # ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION (Windows; errno says EACCES)


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError that reached a task: what failed, on which file, the fix."""
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
    what = exc.strerror or type(exc).__name__
    fix = _OS_FIXES.get(exc.errno or 0, "check the path and try again")
    if getattr(exc, "winerror", None) in _IN_USE:
        fix = "another program has it open, and Windows cannot replace or remove a file in use: close that program, then try again"
    return f"{what}: {where}: {fix}" if where else f"{what}: {fix}"


def describe_sqlite_error(exc: Exception) -> str:
    """One line for a sqlite3.Error that reached a task."""
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return f"SQLite: {text}: the file is not an intact SQLite database — check BACKUP_DB, or restore it with 'inv backup.restore --force'"
    if "locked" in text or "busy" in text:
        return f"SQLite: {text}: another process holds a write lock on the database; let it finish, then try again"
    return f"SQLite: {text}: check the database file and try again"
