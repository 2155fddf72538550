"""The ``chora-backup`` console script: the backup collection through invoke's Program.

``chora-backup setup`` is ``inv backup.setup``; it is how a workspace without a
tasks.py (and the pre-commit hook) runs the tasks.
"""
from __future__ import annotations

from invoke import Program

from . import __version__
from .tasks import ns

program = Program(namespace=ns, name="chora-backup", binary="chora-backup", version=__version__)


def main() -> None:
    program.run()
