"""Bad input through ``inv`` and ``chora-backup``: one clean line, a non-zero exit, no
traceback, and nothing under the test's root changed. Hostile values that are
legitimate (a database named ``$(id).db`` is a valid file) must round-trip exactly.

Commands that take the workspace lock create the state dir and its lock file,
which hold nothing; those two are the only paths the snapshot ignores.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Workspace, insert, make_db, rows, s3_client

from .conftest import Ledger, Restores, scanned_workspace, setup, start_bg, stop, write_s3_env

Prepare = Callable[[Workspace], None]


# -- preparing a workspace -----------------------------------------------------------


def dotenv(*extra_lines: str, drop: tuple[str, ...] = (), **values: str) -> Prepare:
    """The workspace's valid S3 .env, with ``values`` written raw in place of (or after)
    its settings, the ``drop`` ones left out and ``extra_lines`` appended."""

    def prepare(ws: Workspace) -> None:
        settings = {
            "R2_ENDPOINT": ws.endpoint, "R2_BUCKET": ws.bucket,
            "R2_ACCESS_KEY_ID": ACCESS_KEY_ID, "R2_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "BACKUP_SYNC_INTERVAL": "1s", **values,
        }
        lines = [f"{k}={v}" for k, v in settings.items() if k not in drop]
        (ws.path / ".env").write_text("\n".join([*lines, *extra_lines]) + "\n", "utf-8")

    return prepare


def env_bytes(data: bytes) -> Prepare:
    def prepare(ws: Workspace) -> None:
        (ws.path / ".env").write_bytes(data)

    return prepare


def env_folder(ws: Workspace) -> None:
    (ws.path / ".env").unlink()
    (ws.path / ".env").mkdir()
    (ws.path / ".env" / "R2_BUCKET").write_text("chora\n")


def db_folder(ws: Workspace) -> None:
    dotenv()(ws)
    (ws.path / "chora.db").mkdir()


def local_dir_file(ws: Workspace) -> None:
    dotenv(BACKUP_LOCAL_DIR="backups")(ws)
    (ws.path / "backups").write_text("a file, not a folder\n")


def state_dir_file(ws: Workspace) -> None:
    dotenv()(ws)
    (ws.root / "state-file").write_text("a file, not a folder\n")


def configured(ws: Workspace) -> None:
    dotenv()(ws)
    setup(ws)


def config_text(text: str) -> Prepare:
    def prepare(ws: Workspace) -> None:
        dotenv()(ws)
        ws.config.write_text(text, "utf-8")

    return prepare


def config_folder(ws: Workspace) -> None:
    dotenv()(ws)
    ws.config.mkdir()


# -- the cases -----------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    id: str
    argv: tuple[str, ...]  # "inv" or "chora-backup", then its arguments
    expected: str | tuple[str, ...]  # in the one error line
    prepare: Prepare = field(default_factory=dotenv)
    environ: dict[str, str] | None = None
    code: int = 2  # bad input
    never_printed: str | None = None  # e.g. a malformed line's content

    def run(self, ws: Workspace):
        # Placeholders for paths known only once the workspace exists.
        places = {
            "ROOT": str(ws.root), "DB": str(ws.db), "OUT": str(ws.root / "restored.db"),
            "STATE_FILE": str(ws.root / "state-file"),
        }
        argv = [places.get(a, a) for a in self.argv[1:]]
        environ = {k: places.get(v, v) for k, v in (self.environ or {}).items()}
        command = ws.inv if self.argv[0] == "inv" else ws.cli
        return command(*argv, env=environ)


SETUP = ("inv", "backup.setup")
CLI_SETUP = ("chora-backup", "setup")

ENV_CASES = [
    # malformed .env lines: named by number, never echoed
    Bad("malformed-line", SETUP, "cannot parse line 6: write each setting as NAME=value",
        dotenv("this line is broken"), never_printed="broken"),
    Bad("unterminated-quote", CLI_SETUP, "cannot parse line 6",
        dotenv("R2_REGION='us-east"), never_printed="us-east"),
    Bad("missing-name", SETUP, "cannot parse line 6", dotenv("=orphan-value"),
        never_printed="orphan-value"),
    Bad("space-in-name", SETUP, "cannot parse line 6", dotenv("R2 BUCKET=chora")),
    # missing, empty, whitespace
    Bad("missing-bucket", SETUP, "missing R2_BUCKET in", dotenv(drop=("R2_BUCKET",))),
    Bad("name-without-value", SETUP, "missing R2_BUCKET in",
        dotenv("R2_BUCKET", drop=("R2_BUCKET",))),
    Bad("empty-env-file", CLI_SETUP,
        "missing R2_ACCOUNT_ID, R2_BUCKET, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY in",
        env_bytes(b"")),
    Bad("empty-value", SETUP, "R2_BUCKET is empty", dotenv(R2_BUCKET="")),
    Bad("whitespace-value", SETUP, "R2_SECRET_ACCESS_KEY is empty",
        dotenv(R2_SECRET_ACCESS_KEY='"   "')),
    Bad("empty-in-environment", SETUP, "BACKUP_DB is empty", environ={"BACKUP_DB": ""}),
    Bad("whitespace-in-environment", ("inv", "backup.status"), "BACKUP_SYNC_INTERVAL is empty",
        environ={"BACKUP_SYNC_INTERVAL": " \t "}),
    # wrong types
    Bad("interval-ten", SETUP, "BACKUP_SYNC_INTERVAL 'ten' is not a positive duration",
        dotenv(BACKUP_SYNC_INTERVAL="ten")),
    Bad("interval-zero", SETUP, "is not a positive duration", dotenv(BACKUP_SYNC_INTERVAL="0s")),
    Bad("interval-negative", CLI_SETUP, "is not a positive duration",
        dotenv(BACKUP_SYNC_INTERVAL="-5s")),
    Bad("port-abc", SETUP, "R2_ENDPOINT has an invalid port",
        dotenv(R2_ENDPOINT="http://127.0.0.1:abc")),
    Bad("port-99999", SETUP, "R2_ENDPOINT has an invalid port",
        dotenv(R2_ENDPOINT="http://127.0.0.1:99999")),
    Bad("endpoint-without-scheme", SETUP, "R2_ENDPOINT must be an http(s) URL",
        dotenv(R2_ENDPOINT="127.0.0.1:9000")),
    Bad("account-id-short", SETUP, "R2_ACCOUNT_ID must be the 32 hex characters",
        dotenv(R2_ACCOUNT_ID="abc", drop=("R2_ENDPOINT",))),
    # bad paths
    Bad("db-is-a-folder", SETUP, ("BACKUP_DB", "is a directory: name the database file"),
        db_folder),
    Bad("local-dir-is-a-file", ("inv", "backup.local", "--no-start"),
        ("BACKUP_LOCAL_DIR", "is, or is inside, a file"), local_dir_file),
    Bad("state-dir-is-a-file", ("inv", "backup.start-bg"),
        ("BACKUP_STATE_DIR", "is, or is inside, a file"), state_dir_file,
        environ={"BACKUP_STATE_DIR": "STATE_FILE"}),
    Bad("litestream-bin-missing", ("inv", "backup.start-bg"),
        "LITESTREAM_BIN /nonexistent/litestream is not an executable file", configured,
        environ={"LITESTREAM_BIN": "/nonexistent/litestream"}),
    # the .env file itself
    Bad("env-is-a-folder", SETUP, "is a directory, not a .env file", env_folder),
    Bad("env-not-utf8", CLI_SETUP, "is not UTF-8 text", env_bytes(b"R2_BUCKET=caf\xe9\n")),
    Bad("env-utf16", SETUP, "is not UTF-8 text",
        env_bytes("R2_BUCKET=chora\n".encode("utf-16"))),
    Bad("env-nul-bytes", SETUP, "is not a text file", env_bytes(b"R2_BUCKET=a\x00b\n")),
    # hostile values carrying YAML, shell metacharacters, newlines
    Bad("bucket-yaml-mapping", SETUP, "R2_BUCKET must be 3-63", dotenv(R2_BUCKET='"x: y"')),
    Bad("bucket-yaml-flow", SETUP, "R2_BUCKET must be 3-63", dotenv(R2_BUCKET="[a]")),
    Bad("bucket-yaml-anchor", SETUP, "R2_BUCKET must be 3-63", dotenv(R2_BUCKET="&anchor")),
    Bad("bucket-shell-subst", SETUP, "R2_BUCKET must be 3-63", dotenv(R2_BUCKET="$(id)")),
    Bad("bucket-shell-chain", CLI_SETUP, "R2_BUCKET must be 3-63",
        dotenv(R2_BUCKET="'chora; rm -rf ~'")),
    Bad("bucket-backticks", SETUP, "R2_BUCKET must be 3-63", dotenv(R2_BUCKET="`id`")),
    Bad("endpoint-yaml", SETUP, "R2_ENDPOINT must be an http(s) URL",
        dotenv(R2_ENDPOINT='"x: y"')),
    Bad("account-id-shell", SETUP, "R2_ACCOUNT_ID must be the 32 hex characters",
        dotenv(R2_ACCOUNT_ID="$(id)", drop=("R2_ENDPOINT",))),
    Bad("replica-path-absolute", SETUP, "BACKUP_REPLICA_PATH must be a key prefix",
        dotenv(BACKUP_REPLICA_PATH="/etc")),
    Bad("replica-path-double-slash", SETUP, "BACKUP_REPLICA_PATH must be a key prefix",
        dotenv(BACKUP_REPLICA_PATH="a//b")),
    Bad("bucket-newline", SETUP, "R2_BUCKET contains a control character",
        dotenv(R2_BUCKET='"chora\\nbackup"')),
    Bad("db-newline", SETUP, "BACKUP_DB contains a control character",
        dotenv(BACKUP_DB='"a\\nb.db"')),
    Bad("secret-newline", SETUP, "R2_SECRET_ACCESS_KEY contains a control character",
        dotenv(R2_SECRET_ACCESS_KEY='"hunter2\\nsecond-line"'), never_printed="hunter2"),
    Bad("db-newline-in-environment", SETUP, "BACKUP_DB contains a control character",
        environ={"BACKUP_DB": "a\nb.db"}),
    # litestream.yml
    Bad("config-missing", ("inv", "backup.start-bg"), "no replicas configured"),
    Bad("config-not-ours", SETUP, "was not generated by chora-backup",
        config_text("dbs: []\n")),
    Bad("config-not-yaml", ("inv", "backup.status"), "is not valid YAML",
        config_text("dbs: [\n")),
    Bad("config-is-a-folder", SETUP, "is a directory: move it aside", config_folder),
    # flags of the wrong type
    Bad("stop-timeout-abc", ("inv", "backup.stop", "--timeout", "abc"),
        "--timeout 'abc' is not a number"),
    Bad("logs-n-abc", ("chora-backup", "logs", "-n", "abc"), "-n 'abc' is not a number"),
    Bad("verify-max-age-ten", ("inv", "backup.verify", "--max-age", "ten"),
        "--max-age 'ten' is not a duration"),
]

MISSING = "/nonexistent-chora-folder"
RESTORE_CASES = [
    Bad("timestamp-words", ("inv", "backup.restore", "--timestamp", "yesterday-ish"),
        "is not a point in time"),
    Bad("timestamp-empty", ("inv", "backup.restore", "--timestamp", ""), "is not a point in time"),
    Bad("timestamp-feb-30", ("inv", "backup.restore", "--timestamp", "2024-02-30 10:00"),
        "is not a point in time"),
    Bad("timestamp-shell", ("chora-backup", "restore", "--timestamp", "$(id)"),
        "is not a point in time"),
    Bad("timestamp-future", ("inv", "backup.restore", "--timestamp", "2999-01-01T00:00:00Z"),
        "is in the future"),
    Bad("timestamp-before-backups", ("inv", "backup.restore", "--timestamp", "1d"),
        "is before the earliest backup", code=1),
    Bad("txid-words", ("inv", "backup.restore", "--txid", "xyz"), "is not a txid"),
    Bad("txid-zero", ("inv", "backup.restore", "--txid", "0000000000000000"), "is not a txid"),
    Bad("txid-17-digits", ("inv", "backup.restore", "--txid", "1" * 17), "is not a txid"),
    Bad("txid-shell", ("chora-backup", "restore", "--txid", "1; rm -rf ~"), "is not a txid"),
    Bad("txid-beyond-replica", ("inv", "backup.restore", "--txid", "ffffffffffffffff"),
        "is outside what the replica can reach", code=1),
    Bad("txid-and-timestamp", ("inv", "backup.restore", "--txid", "1", "--timestamp", "1m"),
        "not both"),
    Bad("output-in-missing-folder", ("inv", "backup.restore", "--output", f"{MISSING}/x.db"),
        "does not exist; create it first"),
    Bad("output-empty", ("inv", "backup.restore", "--output", " "), "--output is empty"),
    Bad("output-is-a-folder", ("inv", "backup.restore", "--output", "ROOT"), "is a folder"),
    Bad("output-exists", ("inv", "backup.restore", "--output", "DB"), "exists: pass --force",
        code=1),
]


# -- running them ----------------------------------------------------------------------


def snapshot(ws: Workspace) -> dict[str, bytes | None]:
    """Every path under the root with its bytes (None for a folder), but the lock."""
    ignored = {ws.state, ws.state / "litestream.lock"}
    return {
        str(p.relative_to(ws.root)): (p.read_bytes() if p.is_file() else None)
        for p in ws.root.rglob("*")
        if p not in ignored
    }


def assert_clean_error(result, case: Bad) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == case.code, out
    assert "Traceback" not in out
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in (case.expected,) if isinstance(case.expected, str) else case.expected:
        assert part in lines[0], lines[0]
    if case.never_printed:
        assert case.never_printed not in out


@dataclass
class Tally:
    rejected: int = 0
    round_trips: int = 0
    misread: int = 0  # names litestream would read as a URI and that got through
    began: float = field(default_factory=time.monotonic)


@pytest.fixture(scope="module")
def tally(ledger: Ledger) -> Iterator[Tally]:
    counts = Tally()
    yield counts
    ledger.summaries.append(
        f"bad-inputs: {counts.rejected} rejected with one 'error: ' line, a non-zero exit, "
        f"no traceback and no file changed; {counts.round_trips} hostile but legitimate values "
        f"round-tripped exactly; {counts.misread} names with '#', '?' or '%XX' misread; "
        f"{time.monotonic() - counts.began:.1f}s"
    )


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=pytest.mark.posix if c.id == "litestream-bin-missing" else ())
     for c in ENV_CASES],
)
def test_bad_configuration_is_refused_cleanly(rws, case, tally):
    case.prepare(rws)
    before = snapshot(rws)
    assert_clean_error(case.run(rws), case)
    assert snapshot(rws) == before
    rws.assert_no_secrets()
    tally.rejected += 1


@pytest.fixture(scope="module")
def replicated(tmp_path_factory, s3_endpoint, ledger) -> Iterator[Workspace]:
    """One S3 workspace with a replica, shared by the restore cases (none may change it)."""
    ws = Workspace(tmp_path_factory.mktemp("bad-restore-input"))
    ws.endpoint = s3_endpoint
    ws.bucket = f"chora-bad-input-{time.time_ns() % 10**9}"
    s3_client(s3_endpoint).create_bucket(Bucket=ws.bucket)
    write_s3_env(ws)
    setup(ws)
    make_db(ws.db, 5)
    start_bg(ws)
    stop(ws)
    yield from scanned_workspace(ws, ledger, s3_endpoint)


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=pytest.mark.posix if c.id == "output-in-missing-folder" else ())
     for c in RESTORE_CASES],
)
def test_bad_restore_input_is_refused_cleanly(replicated, case, tally):
    ws = replicated
    if "--output" not in case.argv:
        case = dataclasses.replace(case, argv=(*case.argv, "--output", "OUT"))
    before = snapshot(ws)
    assert_clean_error(case.run(ws), case)
    assert snapshot(ws) == before
    assert not Path(MISSING).exists()
    ws.assert_no_secrets()
    tally.rejected += 1


def test_at_least_thirty_bad_inputs():
    assert len(ENV_CASES) + len(RESTORE_CASES) >= 30
    ids = [c.id for c in ENV_CASES + RESTORE_CASES]
    assert len(ids) == len(set(ids))


# -- hostile but legitimate: exact round trips ----------------------------------------

# A valid file name on Linux and macOS, full of what a shell or a YAML parser would act
# on; litestream would expand $HOME and ${USER} without -no-expand-env.
# No '*', '?', '[…]' or ',': in BACKUP_DB those make a glob or a list (test_config covers them).
SHELL_YAML_NAME = "$(id); rm -rf ~ `id` $HOME ${USER} x: {b} &anchor !tag |pipe >gt.db"
# Quotes, a backslash and a Unicode line separator, which YAML must escape.
QUOTED_NAME = "it's \"quoted\" \\ back\u2028slash é.db"
REPLICA_PREFIX = "x: y/$(id)/[a] &b *c #d %41 ?e"


def round_trip(ws: Workspace, db: Path, prefix: str) -> None:
    """The config holds ``db`` and ``prefix`` literally, litestream reads the same path,
    and a daemon replicates exactly there: every row comes back, nothing lands elsewhere."""
    entry = yaml.safe_load(ws.config.read_text("utf-8"))["dbs"][0]
    assert entry["path"] == str(db)
    assert entry["replica"]["path"] == prefix
    # chora-backup always passes -no-expand-env; so does this.
    seen = ws.litestream("status", "-config", str(ws.config), "-no-expand-env", "-json")
    assert [row["database"] for row in json.loads(seen.stdout)] == [str(db)], seen.stderr

    make_db(db, 3)
    start_bg(ws)
    insert(db, "hostile but fine")
    stop(ws)
    assert Restores(ws)() == rows(db)
    keys = [
        obj["Key"]
        for page in s3_client(ws.endpoint).get_paginator("list_objects_v2").paginate(Bucket=ws.bucket)
        for obj in page.get("Contents", [])
    ]
    assert keys and all(k.startswith(prefix + "/") for k in keys), keys
    # Nothing but the database, its WAL index files, litestream's folder for it and ours.
    allowed = {".env", "tasks.py", "litestream.yml", db.name, f".{db.name}-litestream",
               f"{db.name}-wal", f"{db.name}-shm"}
    assert {p.name for p in ws.path.iterdir()} <= allowed


@pytest.mark.parametrize(
    "where, name, value",
    [
        pytest.param(".env", "BACKUP_DB", SHELL_YAML_NAME, id="db-name-with-shell-and-yaml-in-dotenv",
                     marks=pytest.mark.posix),
        pytest.param("environ", "BACKUP_DB", QUOTED_NAME, id="db-name-with-quotes-and-u2028-in-environment",
                     marks=pytest.mark.posix),
        pytest.param(".env", "BACKUP_REPLICA_PATH", REPLICA_PREFIX, id="replica-prefix-with-shell-and-yaml"),
    ],
)
def test_hostile_but_legitimate_values_round_trip_exactly(rws, tally, where, name, value):
    if where == ".env":
        # Single quotes: python-dotenv keeps the value literally.
        write_s3_env(rws, **{name: f"'{value}'"})
    else:
        rws.env[name] = value
    setup(rws)
    db = rws.path / value if name == "BACKUP_DB" else rws.db
    round_trip(rws, db, value if name == "BACKUP_REPLICA_PATH" else db.name)
    rws.assert_no_secrets()
    tally.round_trips += 1


# '?' in a BACKUP_DB file name makes it a glob; in a folder name it is refused (test_config).
@pytest.mark.parametrize("name", ["notes#1.db", "100%41.db"], ids=["hash", "percent-escape"])
def test_a_db_name_litestream_would_read_as_a_uri_round_trips_or_is_refused(rws, tally, name):
    """Either it works exactly, or setup refuses it cleanly before anything is written."""
    tally.misread += 1  # taken back below once it passes
    write_s3_env(rws, BACKUP_DB=f"'{name}'")
    before = snapshot(rws)
    result = rws.inv("backup.setup")
    if result.returncode == 0:
        round_trip(rws, rws.path / name, name)
        tally.round_trips += 1
    else:
        assert_clean_error(result, Bad(name, SETUP, "BACKUP_DB"))
        assert snapshot(rws) == before
        tally.rejected += 1
    tally.misread -= 1
    rws.assert_no_secrets()
