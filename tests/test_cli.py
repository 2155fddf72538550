"""The command line as users meet it: help, names, clean errors."""
from __future__ import annotations

import inspect
import re

import pytest

from backup import __version__
from backup.tasks import ns

from conftest import REPO, Workspace

TASKS = sorted(ns.task_names)


def test_the_collection_is_named_backup():
    assert ns.name == "backup"


@pytest.mark.parametrize("name", TASKS)
def test_every_task_has_help_for_itself_and_every_flag(name):
    task = ns[name]
    assert (task.__doc__ or task.body.__doc__ or "").strip(), f"{name} has no docstring"
    params = [p for p in inspect.signature(task.body).parameters if p != "c"]
    documented = {k.replace("-", "_") for k in task.help}
    assert set(params) <= documented, f"{name}: flags without help: {set(params) - documented}"


@pytest.mark.parametrize("name", TASKS)
def test_every_task_is_in_the_readme(name):
    readme = (REPO / "README.md").read_text("utf-8")
    assert f"inv backup.{name}" in readme
    assert f"chora-backup {name}" in readme


def test_inv_list_shows_every_task_with_help(ws: Workspace):
    result = ws.inv("--list")
    assert result.returncode == 0, result.stderr
    for name in TASKS:
        line = re.search(rf"^\s+backup\.{re.escape(name)}\s+(\S.*)$", result.stdout, re.M)
        assert line, f"backup.{name} missing or without help in inv --list"


def test_console_script_version_and_list(ws: Workspace):
    version = ws.cli("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"chora-backup {__version__}"
    listing = ws.cli("--list")
    for name in TASKS:
        assert re.search(rf"^\s+{re.escape(name)}\s+\S", listing.stdout, re.M)


def test_help_for_a_task(ws: Workspace):
    result = ws.inv("--help", "backup.setup")
    assert result.returncode == 0
    assert "--force" in result.stdout and "--dry-run" in result.stdout


def snapshot(ws: Workspace) -> dict:
    return {p: p.read_bytes() for p in ws.root.rglob("*") if p.is_file()}


BAD_ENVS = [
    ("R2_BUCKET=chora-backup\n", "missing R2_ACCOUNT_ID, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY"),
    ("R2_BUCKET\n", "missing R2_ACCOUNT_ID, R2_BUCKET"),
    ("'unterminated\n", "cannot parse line 1"),
    ("R2_BUCKET=   \n", "R2_BUCKET is empty"),
    ("BACKUP_SYNC_INTERVAL=fast\n", "BACKUP_SYNC_INTERVAL 'fast' is not a positive duration"),
    ("R2_ENDPOINT=localhost:9000\n", "R2_ENDPOINT must be an http(s) URL"),
]


@pytest.mark.parametrize("text, expected", BAD_ENVS, ids=[e for _, e in BAD_ENVS])
def test_bad_env_is_one_line_with_no_traceback_and_nothing_written(ws: Workspace, text, expected):
    (ws.path / ".env").write_text(text)
    before = snapshot(ws)
    result = ws.inv_here("backup.setup")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert snapshot(ws) == before


def test_not_utf8_env_via_cli(ws: Workspace):
    (ws.path / ".env").write_bytes(b"\xff\xfeR2_BUCKET=x\n")
    result = ws.cli("setup")
    assert result.returncode == 2
    assert "is not UTF-8 text" in result.stderr and "Traceback" not in result.stderr


def test_setup_dry_run_prints_and_writes_nothing(r2ws):
    result = r2ws.inv("backup.setup", "--dry-run")
    assert result.returncode == 0
    assert "type: s3" in result.stdout
    assert not r2ws.config.exists()


def test_setup_twice_is_byte_identical_and_says_unchanged(r2ws):
    assert r2ws.inv("backup.setup").returncode == 0
    first = r2ws.config.read_bytes()
    again = r2ws.inv("backup.setup")
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert r2ws.config.read_bytes() == first


def test_setup_refuses_a_foreign_config_then_keeps_it_with_force(r2ws):
    r2ws.config.write_text("dbs: []\n")
    refused = r2ws.inv("backup.setup")
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert r2ws.config.read_text() == "dbs: []\n"
    forced = r2ws.inv("backup.setup", "--force")
    assert forced.returncode == 0
    assert (r2ws.path / "litestream.yml.bak").read_text() == "dbs: []\n"
    assert "kept the previous config as" in forced.stdout


def test_setup_summary_masks_secrets(r2ws):
    result = r2ws.inv("backup.setup")
    assert "R2_SECRET_ACCESS_KEY ****" in result.stdout
    r2ws.assert_no_secrets()


BAD_FLAGS = [
    (["backup.logs", "-n", "abc"], "-n 'abc' is not a number"),
    (["backup.stop", "--timeout", "soon"], "--timeout 'soon' is not a number"),
    (["backup.stop", "--timeout", "-1"], "--timeout must be at least 0"),
    (["backup.restore", "--output", ""], "--output is empty"),
    (["backup.restore", "--timestamp", ""], "is not a point in time"),
    (["backup.restore", "--txid", ""], "is not a txid"),
    (["backup.verify", "--max-age", "old"], "--max-age 'old' is not a duration"),
    (["backup.logs", "-n", "inf"], "-n 'inf' is not a number"),
    (["backup.stop", "--timeout", "nan"], "--timeout 'nan' is not a number"),
    (["backup.cost", "--writes-per-month", "inf"], "is not a number"),
    (["backup.restore", "--timestamp", "999999999d"], "further back than any backup"),
    (["backup.restore", "--timestamp", "9999-12-31T23:59:59-14:00"], "--timestamp"),
]


@pytest.mark.parametrize("argv, expected", BAD_FLAGS, ids=[e for _, e in BAD_FLAGS])
def test_bad_flag_values_are_one_clean_line(ws: Workspace, argv, expected):
    before = snapshot(ws)
    result = ws.inv_here(*argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert snapshot(ws) == before


def test_inv_in_a_source_checkout_finds_the_template(ws: Workspace):
    """`inv` in the repo root imports backup/ from the checkout, not the wheel."""
    result = ws.inv("backup.local", "--dry-run", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "type: file" in result.stdout
