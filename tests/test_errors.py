"""litestream's failures become one actionable line; the original stays in the debug log."""
from __future__ import annotations

import pytest

from backup.errors import translate

from conftest import SECRETS, Workspace, free_port, make_db

CASES = [
    ("Error: cannot open store: s3: cannot load aws config: unable to add custom RootCAs "
     "HTTPClient, has no WithTransportOptions, *http.Client", "AWS_CA_BUNDLE"),
    ("Error: ... StatusCode: 404 ... NoSuchBucket: The specified bucket does not exist",
     "the bucket does not exist: create it, or fix R2_BUCKET"),
    ("api error InvalidAccessKeyId: The AWS Access Key Id you provided does not exist",
     "check R2_ACCESS_KEY_ID"),
    ("api error SignatureDoesNotMatch: The request signature we calculated does not match",
     "check R2_SECRET_ACCESS_KEY"),
    ("api error AccessDenied: Access Denied", "Object Read & Write permission on the bucket"),
    ('dial tcp: lookup x.r2.cloudflarestorage.com: no such host', "cannot resolve the storage endpoint"),
    ("dial tcp 127.0.0.1:1: connect: connection refused", "refused the connection"),
    ("dial tcp 127.0.0.1:1: connectex: No connection could be made because the target machine "
     "actively refused it.", "refused the connection"),  # Go's words on Windows
    ("tls: failed to verify certificate: x509: certificate signed by unknown authority",
     "TLS certificate was not trusted"),
    ("http: server gave HTTP response to HTTPS client", "use an http:// R2_ENDPOINT"),
    ("Error: database is locked", "database locked"),
    ("Error: no matching backup files available", "nothing to restore yet"),
    ("Error: no replicas configured", "run 'inv backup.setup'"),
    ("Error: non-contiguous ltx files: have up to 000000000000000b but next file starts at "
     "000000000000000f", "the replica has a hole (txids 000000000000000c to 000000000000000e are "
     "missing), so no restore can reach the latest state: run 'inv backup.snapshot' to take a fresh snapshot"),
    ('level=ERROR msg="compaction failed" system=store db=chora.db level=1 error="write ltx file: '
     'extract timestamp from LTX header: non-contiguous transaction ids in input files: '
     '(0000000000000003,0000000000000003) -> (0000000000000005,0000000000000005)"',
     "litestream's compaction fails on a hole in the replica (txid 0000000000000004 is missing): "
     "run 'inv backup.snapshot'"),
    ("Error: sync replica for /ws/chora.db: open ltx file /ws/.chora.db-litestream/ltx/0/"
     "0000000000000001-0000000000000001.ltx: open …: no such file or directory",
     "the replica lacks changes that litestream no longer keeps locally: run 'inv backup.snapshot'"),
]


@pytest.mark.parametrize("stderr, expected", CASES, ids=[e for _, e in CASES])
def test_translate(stderr, expected):
    message = translate(stderr, "fallback")
    assert expected in message
    assert "\n" not in message


def test_unknown_errors_keep_litestream_s_own_words():
    assert translate("noise\nError: something new\n", "litestream ltx failed") == (
        "litestream ltx failed: something new"
    )


def test_refused_endpoint_fails_fast_with_the_fix(ws: Workspace):
    make_db(ws.db)
    ws.write_env(
        R2_ENDPOINT=f"http://127.0.0.1:{free_port()}", R2_BUCKET="chora-backup",
        R2_ACCESS_KEY_ID=SECRETS[0], R2_SECRET_ACCESS_KEY=SECRETS[1],
    )
    assert ws.inv("backup.setup").returncode == 0
    result = ws.inv("backup.restore", "--output", str(ws.root / "x.db"), timeout=30)
    assert result.returncode == 1
    assert "refused the connection: check R2_ENDPOINT" in result.stderr
    ws.assert_no_secrets()


def test_the_ca_bundle_failure_never_surfaces(r2ws: Workspace):
    """AWS_CA_BUNDLE set, SSL_CERT_FILE unset: every S3-touching command still works."""
    make_db(r2ws.db)
    env = {"AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt", "SSL_CERT_FILE": None}
    assert r2ws.inv("backup.setup", env=env).returncode == 0
    for argv in (["backup.start-bg"], ["backup.status"], ["backup.snapshots"], ["backup.verify"],
                 ["backup.doctor"], ["backup.stop"]):
        result = r2ws.inv(*argv, env=env)
        assert "WithTransportOptions" not in result.stdout + result.stderr
        assert "AWS_CA_BUNDLE" not in result.stderr
        assert result.returncode == 0, (argv, result.stdout, result.stderr)


def test_debug_log_has_the_original_text_without_secrets(r2ws: Workspace):
    r2ws.write_env(
        R2_ENDPOINT=_endpoint(r2ws), R2_BUCKET="no-such-bucket-0",
        R2_ACCESS_KEY_ID=SECRETS[0], R2_SECRET_ACCESS_KEY=SECRETS[1],
    )
    assert r2ws.inv("backup.setup").returncode == 0
    result = r2ws.inv("backup.snapshots", env={"CHORA_BACKUP_DEBUG": "1"})
    assert result.returncode == 1
    assert "debug: running" in result.stderr
    assert "NoSuchBucket" in result.stderr  # the original text, for the curious
    assert result.stderr.strip().splitlines()[-1] == "error: bucket 'no-such-bucket-0' does not exist: create it, or fix R2_BUCKET"
    r2ws.assert_no_secrets()


def _endpoint(ws: Workspace) -> str:
    text = (ws.path / ".env").read_text()
    return next(l.split("=", 1)[1] for l in text.splitlines() if l.startswith("R2_ENDPOINT="))


def test_start_bg_with_a_refused_endpoint_fails_at_once(ws: Workspace):
    make_db(ws.db)
    ws.write_env(
        R2_ENDPOINT=f"http://127.0.0.1:{free_port()}", R2_BUCKET="chora-backup",
        R2_ACCESS_KEY_ID=SECRETS[0], R2_SECRET_ACCESS_KEY=SECRETS[1],
    )
    assert ws.inv("backup.setup").returncode == 0
    result = ws.inv("backup.start-bg", timeout=20)
    assert result.returncode == 1
    assert "refused the connection" in result.stderr
    assert not ws.pidfile.exists()


def test_a_hand_written_config_with_a_bad_interval_is_named(ws: Workspace):
    make_db(ws.db)
    ws.config.write_text(
        f"dbs:\n  - path: {ws.db}\n    replica:\n      type: file\n      path: {ws.root / 'r'}\n"
        "      sync-interval: bogus\n"
    )
    result = ws.inv("backup.verify")
    assert result.returncode == 2
    assert "sync-interval 'bogus'" in result.stderr and "Traceback" not in result.stderr


def test_every_os_and_sqlite_error_reaching_a_task_is_one_line():
    import errno
    import sqlite3

    from invoke import Exit

    from backup.tasks import actionable

    cases = [
        (OSError(errno.EACCES, "Permission denied", "/srv/state/litestream.pid"),
         "error: Permission denied: /srv/state/litestream.pid: check its permissions"),
        (OSError(errno.ENOSPC, "No space left on device", "/ws/chora.db"),
         "error: No space left on device: /ws/chora.db: free some disk space, then try again"),
        (OSError(errno.ENOTDIR, "Not a directory", "/ws/state"),
         "error: Not a directory: /ws/state: a file stands where a folder is needed"),
        (sqlite3.DatabaseError("file is not a database"),
         "error: SQLite: file is not a database: the file is not an intact SQLite database"),
    ]
    for raised, expected in cases:
        def body():
            raise raised
        with pytest.raises(Exit) as err:
            actionable(body)()
        assert str(err.value.message).startswith(expected), err.value.message
        assert "\n" not in err.value.message and err.value.code == 1


def test_a_database_that_is_not_a_database_is_one_clean_line(ws: Workspace):
    make_db(ws.db)
    ws.write_env(BACKUP_LOCAL_DIR=str(ws.root / "backups"))
    assert ws.inv("backup.local", "--no-start").returncode == 0
    ws.db.write_bytes(b"not an SQLite database at all\n" * 200)
    for command in (("backup.verify",), ("backup.start-bg", "--timeout", "10"), ("backup.doctor",)):
        result = ws.inv(*command)
        # a start refuses the file before litestream runs (EXIT_CONFIG); the checks fail (1)
        assert result.returncode == (2 if command[0] == "backup.start-bg" else 1), command
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: "), (command, result.stderr)


@pytest.mark.posix
def test_output_to_a_reader_that_left_ends_quietly(ws: Workspace):
    import os
    import subprocess

    from conftest import BIN

    read_end, write_end = os.pipe()
    os.close(read_end)  # like '| head' that has already exited
    try:
        proc = subprocess.run([str(BIN / "chora-backup"), "local", "--dry-run"], cwd=ws.path,
                              env=ws.environ(), stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == ""


def test_the_debug_log_never_shows_the_access_key_of_an_s3_request(r2ws: Workspace):
    """boto3 logs request headers at debug level; the Authorization header names the key id."""
    make_db(r2ws.db)
    assert r2ws.inv("backup.setup").returncode == 0
    result = r2ws.inv("backup.start-bg", env={"CHORA_BACKUP_DEBUG": "1"})
    assert result.returncode == 0, result.stderr
    assert "debug: " in result.stderr and "Authorization" not in result.stderr
    r2ws.outputs.append(result.stderr)
    r2ws.assert_no_secrets()
