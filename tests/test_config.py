"""Settings: discovery, precedence and every validation error, in-process and via the CLI."""
from __future__ import annotations

from pathlib import Path

import pytest

from backup import config
from backup.errors import ConfigError

ACCOUNT = "0123456789abcdef0123456789abcdef"
GOOD = {
    "R2_ACCOUNT_ID": ACCOUNT,
    "R2_BUCKET": "chora-backup",
    "R2_ACCESS_KEY_ID": "key-id",
    "R2_SECRET_ACCESS_KEY": "secret",
}


def write_env(folder: Path, values: dict[str, str]) -> None:
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()), "utf-8")


def test_workspace_is_nearest_folder_with_env(tmp_path):
    write_env(tmp_path, GOOD)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    settings = config.load(cwd=deep, environ={}, mode=config.R2)
    assert settings.workspace == tmp_path.resolve()
    assert settings.db == tmp_path.resolve() / "chora.db"
    assert settings.config_path == tmp_path.resolve() / "litestream.yml"


def test_without_env_the_workspace_is_the_current_folder(tmp_path):
    settings = config.load(cwd=tmp_path, environ={"HOME": str(tmp_path)})
    assert settings.workspace == tmp_path.resolve()
    assert settings.env_file is None


def test_precedence_defaults_then_env_file_then_environment_then_flags(tmp_path):
    write_env(tmp_path, {**GOOD, "BACKUP_SYNC_INTERVAL": "5s", "BACKUP_DB": "file.db"})
    environ = {"BACKUP_SYNC_INTERVAL": "7s"}
    settings = config.load(cwd=tmp_path, environ=environ, mode=config.R2)
    assert settings.sync_interval == "7s"  # environment beats .env
    assert settings.db.name == "file.db"  # .env beats the default
    flagged = config.load(cwd=tmp_path, environ=environ, overrides={"BACKUP_DB": "flag.db"})
    assert flagged.db.name == "flag.db"  # flags beat everything


def test_dollar_in_a_secret_survives(tmp_path):
    (tmp_path / ".env").write_text(
        f"R2_ACCOUNT_ID={ACCOUNT}\nR2_BUCKET=chora-backup\nR2_ACCESS_KEY_ID=id\n"
        "R2_SECRET_ACCESS_KEY=ab$HOME${USER}c\n",
        "utf-8",
    )
    settings = config.load(cwd=tmp_path, environ={"HOME": "/x", "USER": "u"}, mode=config.R2)
    assert settings.secret_access_key == "ab$HOME${USER}c"


def test_defaults(tmp_path):
    settings = config.load(cwd=tmp_path, environ={})
    assert settings.interval(config.R2) == "10s"
    assert settings.interval(config.LOCAL) == "1s"
    assert settings.replica_path == "chora.db"
    assert settings.local_dir == Path("~/.chora/backups").expanduser()
    # The default state dir lives outside the workspace (and any checkout).
    assert not settings.state_dir.is_relative_to(settings.workspace)


def test_state_dir_variable_is_honoured_exactly(tmp_path):
    state = tmp_path / "my state"
    settings = config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(state)})
    assert settings.state_dir == state
    assert settings.pidfile == state / "litestream.pid"
    assert settings.logfile == state / "litestream.log"


def test_long_state_dir_gets_a_short_socket(tmp_path):
    state = tmp_path / ("x" * 120)
    settings = config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(state)})
    assert settings.socket_path is not None
    assert len(str(settings.socket_path)) <= 100


def test_endpoint_replaces_account_id(tmp_path):
    values = {k: v for k, v in GOOD.items() if k != "R2_ACCOUNT_ID"}
    write_env(tmp_path, {**values, "R2_ENDPOINT": "http://127.0.0.1:9000"})
    settings = config.load(cwd=tmp_path, environ={}, mode=config.R2)
    assert settings.r2_endpoint == "http://127.0.0.1:9000"


def test_r2_endpoint_from_account_id(tmp_path):
    write_env(tmp_path, GOOD)
    settings = config.load(cwd=tmp_path, environ={}, mode=config.R2)
    assert settings.r2_endpoint == f"https://{ACCOUNT}.r2.cloudflarestorage.com"


def test_missing_variables_are_named_together(tmp_path):
    write_env(tmp_path, {"R2_ACCOUNT_ID": ACCOUNT, "R2_ACCESS_KEY_ID": "id"})
    with pytest.raises(ConfigError) as err:
        config.load(cwd=tmp_path, environ={}, mode=config.R2)
    assert err.value.message.startswith(
        f"missing R2_BUCKET, R2_SECRET_ACCESS_KEY in {tmp_path.resolve() / '.env'} — see "
        ".env.example, or run 'inv backup.local' to back up without R2"
    )


def test_every_problem_is_reported_at_once(tmp_path):
    write_env(tmp_path, {"R2_BUCKET": "Bad_Bucket", "BACKUP_SYNC_INTERVAL": "soon"})
    with pytest.raises(ConfigError) as err:
        config.load(cwd=tmp_path, environ={}, mode=config.R2)
    message = err.value.message
    for part in ("missing R2_ACCOUNT_ID", "R2_BUCKET must be", "BACKUP_SYNC_INTERVAL 'soon'"):
        assert part in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"R2_ACCOUNT_ID": "abc"}, "R2_ACCOUNT_ID must be the 32 hex characters"),
        ({"R2_ACCOUNT_ID": "g" * 32}, "R2_ACCOUNT_ID must be the 32 hex characters"),
        ({"R2_ENDPOINT": "ftp://host"}, "R2_ENDPOINT must be an http(s) URL"),
        ({"R2_ENDPOINT": "127.0.0.1:9000"}, "R2_ENDPOINT must be an http(s) URL"),
        ({"R2_ENDPOINT": "http://host:99999"}, "R2_ENDPOINT has an invalid port"),
        ({"R2_ENDPOINT": "http://host:abc"}, "R2_ENDPOINT has an invalid port"),
        ({"R2_ENDPOINT": "http://[::1"}, "R2_ENDPOINT must be an http(s) URL"),
        ({"BACKUP_REPLICA_PATH": "a/../b"}, "without '.' or '..' parts"),
        ({"R2_BUCKET": "ab"}, "R2_BUCKET must be 3-63"),
        ({"R2_BUCKET": "x" * 64}, "R2_BUCKET must be 3-63"),
        ({"R2_BUCKET": "UPPER"}, "R2_BUCKET must be 3-63"),
        ({"R2_BUCKET": "under_score"}, "R2_BUCKET must be 3-63"),
        ({"R2_BUCKET": "-leading"}, "R2_BUCKET must be 3-63"),
        ({"BACKUP_SYNC_INTERVAL": "0s"}, "not a positive duration"),
        ({"BACKUP_SYNC_INTERVAL": "-1s"}, "not a positive duration"),
        ({"BACKUP_SYNC_INTERVAL": "10"}, "not a positive duration"),
        ({"BACKUP_SYNC_INTERVAL": "10 s"}, "not a positive duration"),
        ({"R2_BUCKET": "   "}, "R2_BUCKET is empty"),
        ({"R2_SECRET_ACCESS_KEY": ""}, "R2_SECRET_ACCESS_KEY is empty"),
        ({"BACKUP_DB": '"a\\nb.db"'}, "BACKUP_DB contains a control character"),
        ({"BACKUP_REPLICA_PATH": "/abs"}, "BACKUP_REPLICA_PATH must be a key prefix"),
        ({"BACKUP_DB": "'notes#1.db'"}, "contains '#', '?' or '%XX'"),
        ({"BACKUP_DB": "what#.db"}, "contains '#', '?' or '%XX'"),
        ({"BACKUP_DB": "100%41.db"}, "contains '#', '?' or '%XX'"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_rejected_values(tmp_path, values, expected):
    write_env(tmp_path, {**GOOD, **values})
    with pytest.raises(ConfigError) as err:
        config.load(cwd=tmp_path, environ={}, mode=config.R2)
    assert expected in err.value.message


def test_empty_value_in_the_environment_is_rejected(tmp_path):
    write_env(tmp_path, GOOD)
    with pytest.raises(ConfigError, match="BACKUP_DB is empty"):
        config.load(cwd=tmp_path, environ={"BACKUP_DB": ""})


def test_database_path_that_is_a_directory(tmp_path):
    (tmp_path / "chora.db").mkdir()
    with pytest.raises(ConfigError, match="is a directory: name the database file"):
        config.load(cwd=tmp_path, environ={})


def test_env_that_is_not_utf8(tmp_path):
    (tmp_path / ".env").write_bytes(b"R2_BUCKET=caf\xe9\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        config.load(cwd=tmp_path, environ={})


def test_env_that_is_a_directory(tmp_path):
    (tmp_path / ".env").mkdir()
    with pytest.raises(ConfigError, match="is a directory, not a .env file"):
        config.load(cwd=tmp_path, environ={})


def test_malformed_env_line_is_named_without_its_content(tmp_path):
    (tmp_path / ".env").write_text("R2_BUCKET=chora\nthis line is broken topsecret\n", "utf-8")
    with pytest.raises(ConfigError) as err:
        config.load(cwd=tmp_path, environ={})
    assert "cannot parse line 2" in err.value.message
    assert "topsecret" not in err.value.message


@pytest.mark.parametrize(
    "text, seconds",
    [("10s", 10), ("1m30s", 90), ("500ms", 0.5), ("1h", 3600), ("1.5s", 1.5)],
)
def test_parse_duration(text, seconds):
    assert config.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10", "1x", "1s2", "abc"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        config.parse_duration(text)


def test_settings_repr_hides_secrets(tmp_path):
    write_env(tmp_path, {**GOOD, "R2_SECRET_ACCESS_KEY": "hunter2-secret"})
    settings = config.load(cwd=tmp_path, environ={}, mode=config.R2)
    assert "hunter2-secret" not in repr(settings)
    assert settings.mask("x hunter2-secret y key-id") == "x **** y ****"


def test_an_invalid_value_is_not_also_called_missing(tmp_path):
    write_env(tmp_path, {**GOOD, "R2_BUCKET": ""})
    with pytest.raises(ConfigError) as err:
        config.load(cwd=tmp_path, environ={}, mode=config.R2)
    assert err.value.message == "R2_BUCKET is empty (set a value or remove the line)"


def test_state_dir_inside_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="BACKUP_STATE_DIR .* is, or is inside, a file"):
        config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(tmp_path / "afile" / "sub")})


def test_a_dangling_link_as_state_dir_is_refused(tmp_path):
    link = tmp_path / "gone"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="BACKUP_STATE_DIR"):
        config.load(cwd=tmp_path, environ={"BACKUP_STATE_DIR": str(link)})


# -- heartbeat and metrics -------------------------------------------------------

PING = "https://hc-ping.com/3f2a9c1e-token-7d41"


def test_heartbeat_defaults_to_five_minutes_and_its_url_is_a_secret(tmp_path):
    settings = config.load(cwd=tmp_path, environ={"BACKUP_HEARTBEAT_URL": PING})
    assert settings.heartbeat_url == PING and settings.heartbeat_interval == "5m"
    assert PING in settings.secrets() and "/3f2a9c1e-token-7d41" in settings.secrets()
    assert settings.mask(f'url={PING} error="Get \\"{PING}\\": refused"') == 'url=**** error="Get \\"****\\": refused"'
    assert PING not in repr(settings)
    assert config.public_url(PING) == "https://hc-ping.com/****"


def test_a_ping_url_with_a_password_masks_it_even_as_go_redacts_the_url(tmp_path):
    url = "https://user:hunter22@ping.example/beat?key=abcdef"
    settings = config.load(cwd=tmp_path, environ={"BACKUP_HEARTBEAT_URL": url})
    # net/http names the URL with its password replaced: the path and query are still masked.
    assert settings.mask('Get "https://user:***@ping.example/beat?key=abcdef"') == 'Get "https://user:***@ping.example****"'
    assert "hunter22" not in settings.mask("auth hunter22")


@pytest.mark.parametrize("url", ["ftp://hc-ping.com/x", "hc-ping.com/abc", "https:///nohost", "https://h:port/x",
                                 "https://hc-ping.com/a b", "HTTPS://hc-ping.com/x", 'https://hc-ping.com/a"b',
                                 "https://hc-ping.com/é", "https://hc-ping.com/a\\b", "https://hc-ping.com/%zz"])
def test_a_bad_heartbeat_url_is_refused_without_showing_it(tmp_path, url):
    with pytest.raises(ConfigError) as err:
        config.load(cwd=tmp_path, environ={"BACKUP_HEARTBEAT_URL": url})
    assert "BACKUP_HEARTBEAT_URL must be an http:// or https:// URL" in err.value.message
    assert url not in err.value.message and "hc-ping.com" not in err.value.message


@pytest.mark.parametrize("interval, problem", [("30s", "shorter than litestream's minimum, 1m"),
                                               ("soon", "is not a duration")])
def test_heartbeat_interval_is_a_duration_of_at_least_a_minute(tmp_path, interval, problem):
    with pytest.raises(ConfigError, match=problem):
        config.load(cwd=tmp_path, environ={"BACKUP_HEARTBEAT_URL": PING, "BACKUP_HEARTBEAT_INTERVAL": interval})
    ok = config.load(cwd=tmp_path, environ={"BACKUP_HEARTBEAT_URL": PING, "BACKUP_HEARTBEAT_INTERVAL": "1m"})
    assert ok.heartbeat_interval == "1m"


@pytest.mark.parametrize("addr, url", [("127.0.0.1:9090", "http://127.0.0.1:9090/metrics"),
                                       ("0.0.0.0:9093", "http://127.0.0.1:9093/metrics"),
                                       (":9094", "http://127.0.0.1:9094/metrics"),
                                       ("[::]:9095", "http://[::1]:9095/metrics"),
                                       ("localhost:9091", "http://localhost:9091/metrics"),
                                       ("[::1]:9092", "http://[::1]:9092/metrics")])
def test_metrics_urls_are_where_this_machine_reaches_them(tmp_path, addr, url):
    settings = config.load(cwd=tmp_path, environ={"BACKUP_METRICS_ADDR": addr, "BACKUP_METRICS_PUBLIC": "1"})
    assert settings.metrics_url == url


def test_a_ping_url_only_litestream_yml_holds_is_masked_too(tmp_path):
    settings = config.load(cwd=tmp_path, environ={})
    old = "https://hc-ping.com/0ld-rotated-token"
    assert settings.mask(old) == old
    masking = settings.masking(old)
    assert masking.mask(f"url={old}") == "url=****" and masking.masking(old) is masking
    assert settings.masking(None) is settings and old not in repr(masking)


@pytest.mark.parametrize("addr", ["0.0.0.0:9090", ":9090", "192.168.1.5:9090", "metrics.lan:9090"])
def test_a_public_metrics_address_needs_backup_metrics_public(tmp_path, addr):
    with pytest.raises(ConfigError, match="set BACKUP_METRICS_PUBLIC=1 to mean it"):
        config.load(cwd=tmp_path, environ={"BACKUP_METRICS_ADDR": addr})
    settings = config.load(cwd=tmp_path, environ={"BACKUP_METRICS_ADDR": addr, "BACKUP_METRICS_PUBLIC": "1"})
    assert settings.metrics_addr == addr


@pytest.mark.parametrize("addr", ["9090", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "::1:9090", "h:x",
                                  "127.0.0.1:²", "127.0.0.1:٩٠"])
def test_a_metrics_address_needs_a_host_and_a_port(tmp_path, addr):
    with pytest.raises(ConfigError, match="must be host:port with a port from 1 to 65535"):
        config.load(cwd=tmp_path, environ={"BACKUP_METRICS_ADDR": addr})


def test_backup_metrics_public_is_a_yes_or_no(tmp_path):
    with pytest.raises(ConfigError, match="BACKUP_METRICS_PUBLIC 'maybe' must be 1 or 0"):
        config.load(cwd=tmp_path, environ={"BACKUP_METRICS_PUBLIC": "maybe"})


@pytest.mark.parametrize("addr", ["127.0.0.1:9090", "localhost:9091", "[::1]:9092", "127.0.0.2:9093"])
def test_loopback_metrics_addresses_need_no_flag(tmp_path, addr):
    assert config.load(cwd=tmp_path, environ={"BACKUP_METRICS_ADDR": addr}).metrics_addr == addr
