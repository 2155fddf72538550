"""Every install command the README shows installs this project from the repository (issue
24.6): chora-backup is not on the package index, and a bare name would install whatever
someone registers under it."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

from conftest import REPO

PLACEHOLDER = "/path/to/chora-backup"


def install_targets() -> list[str]:
    """The argument of every 'pip install' in the README and docs/, as the shell would read it."""
    text = "".join(p.read_text("utf-8") for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    targets = []
    for match in re.finditer(r"pip install ((?:'[^']*'|\S)+)", text):
        (target,) = shlex.split(match.group(1).rstrip("`),"))
        targets.append(target)
    return targets


def test_every_readme_install_names_a_path_and_installs_this_project():
    targets = install_targets()
    assert len(targets) >= 5, targets
    for target in targets:
        assert target.startswith((".", PLACEHOLDER)), f"{target!r} is not a path: it would come from the index"
    # "." is this repository (the README's own commands run in it); the placeholder, a clone.
    resolved = {str(REPO) + (t[1:] if t.startswith(".") else t[len(PLACEHOLDER):]) for t in targets}
    for target in sorted(resolved):
        # What pip would install, resolved for real, without installing it.
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--quiet", "--report", "-", target],
            capture_output=True, text=True, timeout=300, cwd=REPO,
        )
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        names = [item["metadata"]["name"] for item in report["install"]]
        assert names == ["chora-backup"], (target, names)
