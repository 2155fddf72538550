"""Private files: every file chora-backup writes is readable by its user alone.

The state dir holds the pidfile, the log (whose lines name paths and the
replica), the lock and the running config; none is anyone else's business,
and a log or pidfile another user can rewrite is a way in. So folders are
created 0700 and files 0600, whatever the umask, and a file is replaced
atomically (a temp file beside it, then a rename), never half-written.
"""
from __future__ import annotations

import ntpath
import os
import posixpath
import sys
import tempfile
from pathlib import Path
from typing import IO

FILE_MODE = 0o600
DIR_MODE = 0o700


# Paths, compared one way everywhere: ``spelling`` for names as written (a config's, a
# command line's), ``identity`` for the file a path reaches (links and ``..`` resolved).
def spelling(path: str | os.PathLike[str], platform: str = sys.platform) -> str:
    """A path as this system compares names: Windows' are case-insensitive and take either
    slash (C:\\Work\\chora.db is c:/work/chora.db); ``a/../b`` is ``b``."""
    flavour = ntpath if platform == "win32" else posixpath
    return flavour.normcase(flavour.normpath(os.fspath(path)))


def same_path(a: str | os.PathLike[str], b: str | os.PathLike[str], platform: str = sys.platform) -> bool:
    """Do two spellings name one file, as this system compares names?"""
    return spelling(a, platform) == spelling(b, platform)


def identity(path: str | os.PathLike[str]) -> str:
    """The file ``path`` reaches, for comparing: links resolved, then spelled as the system
    compares names. Not for opening (on Windows it is lower-cased)."""
    return spelling(os.path.realpath(path))


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Do ``a`` and ``b`` reach one file (another spelling, a link)?"""
    return identity(a) == identity(b)


def mtime(path: str | os.PathLike[str]) -> float:
    """``path``'s modification time, 0.0 when it cannot be read (gone meanwhile)."""
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute from the current folder (``~`` expanded), links kept as written."""
    return Path(os.path.abspath(Path(path).expanduser()))


def private_dir(path: Path, ours: bool = False) -> Path:
    """Create ``path`` (and missing parents) 0700.

    An existing folder is left as it is — a BACKUP_STATE_DIR may name a shared
    one — unless ``ours`` says chora-backup made it (then it is tightened).
    """
    if not path.is_dir():
        path.mkdir(parents=True, mode=DIR_MODE, exist_ok=True)
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered through the umask
    elif ours and hasattr(os, "getuid") and path.stat().st_uid == os.getuid():
        os.chmod(path, DIR_MODE)
    return path


def temp_beside(path: Path, data: bytes) -> Path:
    """A private temp file in ``path``'s folder holding ``data``, flushed to disk."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), FILE_MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, mode 0600."""
    temp = temp_beside(path, data)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def to_null(stream: IO[str]) -> None:
    """Point a stream whose reader has gone (a closed terminal, '| head') at the null device,
    so later writes and the interpreter's last flush cannot fail."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, stream.fileno())
    finally:
        os.close(null)


def open_private(path: Path, mode: str = "ab") -> IO[bytes]:
    """Open ``path`` for appending (created 0600; an existing one is made 0600)."""
    flags = os.O_CREAT | os.O_APPEND | (os.O_RDWR if "+" in mode else os.O_WRONLY)
    fd = os.open(path, flags | getattr(os, "O_BINARY", 0), FILE_MODE)
    if hasattr(os, "fchmod"):
        try:
            os.fchmod(fd, FILE_MODE)  # one left 0644 by an earlier version
        except PermissionError:
            pass  # not ours to change: still usable
    return os.fdopen(fd, mode)


def read_json(path: Path) -> dict:
    """A small JSON record of ours, or {} when it is missing or unreadable (a cache)."""
    import json

    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_json(path: Path, key: str, value: object) -> None:
    """Set ``key`` in a JSON record of ours (0600, atomic); a cache that cannot be written
    only costs a request next time."""
    import json

    data = read_json(path)
    data[key] = value
    try:
        if path.parent.is_dir():
            write_private(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
    except OSError:
        pass


def size_text(n: float | None) -> str:
    """A size for people: 610 B, 16.0 KB, 1.2 GB ("-" when unknown)."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
