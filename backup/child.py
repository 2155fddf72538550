"""The one way a command runs a child to completion: output captured as text, stdin
closed unless given, and a timeout named by the caller (``None`` only where a comment
says why the child may take as long as it needs).

Long-lived children (the daemon, its log pump, a follower, the WAL pin) are started by
``process``/``litestream``/``wal`` and managed there; this is for a child a command waits
for.
"""
from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence

from .errors import BackupError


class ChildTimeout(BackupError):
    """The child did not finish within its timeout (it was killed)."""


def run(
    argv: Sequence[str], timeout: float | None, *, what: str | None = None, input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion; ChildTimeout (naming ``what``, else the program) after
    ``timeout`` seconds. OSError (no such program) is the caller's to word."""
    try:
        return subprocess.run(
            list(argv), input=input, stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout, env=None if env is None else dict(env),
        )
    except subprocess.TimeoutExpired:
        raise ChildTimeout(f"{what or argv[0]} did not answer within {timeout:g}s") from None
