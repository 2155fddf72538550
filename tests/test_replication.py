"""End to end: setup / local, then foreground replication on real litestream, then a restore."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import BIN, Workspace, insert, make_db, rows, wait_for

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def ca_bundle(ws: Workspace) -> str:
    """A CA bundle file for AWS_CA_BUNDLE: the system's, or any file (the endpoint is http)."""
    if SYSTEM_BUNDLE.is_file():
        return str(SYSTEM_BUNDLE)
    path = ws.root / "ca.pem"
    path.write_text("")
    return str(path)


def replicate_in_foreground(ws: Workspace, *command: str, env: dict | None = None) -> str:
    make_db(ws.db, 3)
    proc = ws.spawn(str(BIN / "inv"), *command, env=env)
    wait_for(lambda: ws.config.exists() and ws.synced(), 30, what="first sync")
    insert(ws.db, "after start 1", "after start 2")
    code, output = ws.finish(proc)
    assert code == 0, output
    assert not ws.pidfile.exists()
    return output


@pytest.mark.posix
def test_setup_then_start_replicates_to_s3_through_the_ca_bundle_bug(r2ws):
    """AWS_CA_BUNDLE is set here on purpose: without the workaround every S3 call fails."""
    setup = r2ws.inv("backup.setup")
    assert setup.returncode == 0, setup.stderr
    assert f"s3://{r2ws.bucket}/chora.db at http://127.0.0.1:" in setup.stdout
    output = replicate_in_foreground(
        r2ws, "backup.start", env={"AWS_CA_BUNDLE": ca_bundle(r2ws), "SSL_CERT_FILE": None}
    )
    assert "replicating to" in output
    restored = r2ws.restore(r2ws.root / "restored.db")
    assert restored == rows(r2ws.db)
    assert len(restored) == 5
    r2ws.assert_no_secrets()


@pytest.mark.posix
def test_chora_backup_console_script_runs_the_same_tasks(r2ws):
    assert r2ws.cli("setup").returncode == 0
    make_db(r2ws.db, 2)
    proc = r2ws.spawn(str(BIN / "chora-backup"), "start")
    wait_for(r2ws.synced, 30, what="first sync")
    code, output = r2ws.finish(proc, sig=__import__("signal").SIGTERM)
    assert code == 0, output
    assert r2ws.restore(r2ws.root / "r.db") == rows(r2ws.db)
    r2ws.assert_no_secrets()


@pytest.mark.posix
def test_local_replicates_to_the_default_folder_without_any_env(ws):
    assert not (ws.path / ".env").exists()
    replicate_in_foreground(ws, "backup.local")
    replica = ws.home / ".chora" / "backups" / "chora.db"
    assert replica.is_dir()
    assert ws.restore(ws.root / "restored.db") == rows(ws.db)


def test_setup_switches_a_local_workspace_back_to_r2(r2ws):
    assert r2ws.inv("backup.local", "--no-start").returncode == 0
    assert "type: file" in r2ws.config.read_text()
    assert r2ws.inv("backup.setup").returncode == 0
    assert "type: s3" in r2ws.config.read_text()


def test_start_without_config_says_what_to_run(ws):
    result = ws.inv("backup.start")
    assert result.returncode == 2  # errors.py: EXIT_CONFIG, nothing to replicate yet
    assert result.stderr.strip() == (
        "error: no replicas configured: run 'inv backup.setup' (R2 or S3), or 'inv backup.local' (a local folder; --no-start only writes litestream.yml)"
    )


@pytest.mark.posix
def test_start_warns_about_a_missing_database_and_waits(ws):
    assert ws.inv("backup.local", "--no-start").returncode == 0
    proc = ws.spawn(str(BIN / "inv"), "backup.start")
    wait_for(ws.pidfile.exists, 20, what="pidfile")
    wait_for(lambda: ws.litestream("list", "-json", "-socket", str(ws.socket())).returncode == 0,
             20, what="control socket")
    code, output = ws.finish(proc)
    assert code == 0
    assert f"warning: {ws.db} does not exist yet; litestream waits for it" in output


def test_start_with_s3_config_but_no_credentials(r2ws):
    assert r2ws.inv("backup.setup").returncode == 0
    (r2ws.path / ".env").write_text(f"R2_ENDPOINT=http://127.0.0.1:1\nR2_BUCKET={r2ws.bucket}\n")
    result = r2ws.inv("backup.start")
    assert result.returncode == 2
    assert "missing R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY" in result.stderr
