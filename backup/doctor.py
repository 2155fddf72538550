"""backup.doctor: every check a person would make, each with its fix."""
from __future__ import annotations

import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import daemon, drills, ltlog
from .config import LOCAL, OFF, R2, WARN_VERIFY_SECONDS, Settings, parse_duration
from .errors import SNAPSHOT_FIX, BackupError, hole_problem
from .litestream import Litestream
from .ltconfig import LitestreamConfig, settings_of
from .ping import PING_TIMEOUT, UNREACHABLE, get
from .ping import ping as pinging
from .owner import Ownership, read_local, read_owner
from .render import render
from .status import gather, is_wal
from .timeparse import epoch, from_litestream
from .wal import risk
from .workspace import Database, Workspace

OK, WARN, FAIL = "ok", "warn", "fail"
LOW_DISK = 1 << 30  # warn below 1 GiB free
NO_DISK = 100 << 20  # fail below 100 MiB free


@dataclass(frozen=True)
class Check:
    name: str
    state: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    checks: list[Check]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": all(c.state != FAIL for c in self.checks), "checks": [c.as_dict() for c in self.checks]}

    def as_lines(self) -> list[str]:
        return [
            f"  {c.state:<4}  {c.name:<20} {c.detail}" + (f" — {c.fix}" if c.fix else "")
            for c in self.checks
        ]


def _binary(litestream: Litestream) -> Check:
    try:
        binary = litestream.binary
    except BackupError as exc:
        return Check("litestream", FAIL, exc.message)
    version = litestream.run("version", timeout=30).stdout.strip()
    return Check("litestream", OK, f"{version} at {binary}")


def _env(settings: Settings, config: LitestreamConfig | None) -> Check:
    if config is not None and not config.uses_s3:
        return Check(".env", OK, "local mode: no R2 settings needed")
    missing = settings.missing_r2()
    if missing:
        return Check(
            ".env", FAIL, f"missing {', '.join(missing)} in {settings.env_location()}",
            f"set {'it' if len(missing) == 1 else 'them'} there (see .env.example), or back up to "
            "a local folder with 'inv backup.local'",
        )
    where = str(settings.env_file) if settings.env_file else "the environment"
    return Check(".env", OK, f"R2 settings complete (from {where})")


def _config(settings: Settings, workspace: Workspace | None, problem: BackupError | None) -> Check:
    if workspace is None or not workspace.configured:
        why = problem.message if problem else "no litestream.yml yet"
        fix = "run 'inv backup.setup' (R2 or S3), or 'inv backup.local' (a local folder)"
        if ": run 'inv backup." in why:  # the message names the fix already: say it once
            why, _, rest = why.partition(": run 'inv backup.")
            fix = "run 'inv backup." + rest
        return Check("config", FAIL, why, fix)
    path = settings.config_path
    from .render import is_generated

    if not is_generated(path):
        return Check("config", WARN, f"{path} was written by hand", "'inv backup.setup --force' regenerates it")
    mode = R2 if workspace.config.uses_s3 else LOCAL
    try:
        expected = render(settings, mode)
    except BackupError as exc:
        return Check("config", FAIL, f"cannot regenerate it: {exc.message}")
    text = path.read_text("utf-8")
    label = "R2" if mode == R2 else "local"
    if text == expected:
        return Check("config", OK, f"{path} matches .env ({label} mode)")
    command = "inv backup.setup" if mode == R2 else "inv backup.local --no-start"
    found, wanted = settings_of(text), settings_of(expected)
    if found is not None and found == wanted:
        return Check("config", OK, f"{path} matches .env ({label} mode; only its comments are older)")
    if found is not None and _without_timers(found) == _without_timers(wanted):
        what, why = ("the settings that cut the R2 bill", "to cut the bill") if mode == R2 else \
            ("the timer settings R2 mode uses", "to use them")
        return Check("config", WARN, f"{path} predates {what} (compaction levels, L0 expiry check, "
                     "checkpoint interval)", f"re-run '{command}' {why}")
    if workspace.running:
        # setup refuses to rewrite the file under a running daemon: stop it first.
        return Check("config", FAIL, f"{path} is stale: it no longer matches .env",
                     f"stop the daemon ('inv backup.stop'), re-run '{command}', then 'inv backup.start-bg'")
    return Check("config", FAIL, f"{path} is stale: it no longer matches .env", f"re-run '{command}'")


# Settings whose change decides only how often litestream asks the bucket (see backup.cost):
# a config that differs from the generated one in these alone is older, not wrong.
TIMER_KEYS = ("levels", "l0-retention-check-interval")
DB_TIMER_KEYS = ("checkpoint-interval",)


def _without_timers(data: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if k not in TIMER_KEYS}
    if isinstance(out.get("dbs"), list):
        out["dbs"] = [{k: v for k, v in db.items() if k not in DB_TIMER_KEYS} if isinstance(db, dict) else db
                      for db in out["dbs"]]
    return out


def _database(db: Path, name: str = "database") -> Check:
    return replace_name(_database_check(db), name)


def replace_name(check: Check, name: str) -> Check:
    return Check(name, check.state, check.detail, check.fix)


def _database_check(db: Path) -> Check:
    if not db.exists():
        return Check("database", WARN, f"{db} does not exist yet", "litestream replicates it once it does")
    wal = is_wal(db)
    if wal is None:
        return Check("database", FAIL, f"{db} is not an SQLite database", "check BACKUP_DB")
    try:
        con = sqlite3.connect(db, timeout=0.5)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            return Check("database", FAIL, f"{db} is locked by another writer", "stop the process holding a long write lock")
        return Check("database", FAIL, f"{db}: {exc}")
    if not wal:
        return Check("database", WARN, f"{db} is not in WAL mode", "litestream switches it to WAL when it starts")
    return Check("database", OK, f"{db} exists, WAL mode, not locked")


def _replica(db: Database) -> Check:
    replica = db.replica
    try:
        files = replica.files()
    except BackupError as exc:
        return Check("replica", FAIL, exc.message)
    hole = replica.plan().hole
    if hole:
        return Check("replica", FAIL, f"{hole_problem(hole.from_txid, hole.to_txid)} ({replica.where})", SNAPSHOT_FIX)
    what = "the bucket answers to these credentials" if replica.kind == "s3" else "the replica folder is readable"
    level0 = sum(1 for f in files if f.level == 0)
    return Check("replica", OK, f"{what} ({level0} L0 file(s) at {replica.where})")


def _owner(settings: Settings, db: Database) -> Check:
    """Does this database own its replica (one GET of the owner record)?"""
    replica = db.replica
    if not replica.has_store:
        return Check("owner", WARN, f"not checked: chora-backup keeps no owner record in a "
                     f"{replica.kind!r} replica", "use an S3 or file replica")
    try:
        store = replica.store()
        owner = read_owner(store)
        local = read_local(db.path)
    except BackupError as exc:
        return Check("owner", FAIL, exc.message)
    if owner is None:
        return Check("owner", OK, "no database has claimed the replica yet; the next start claims it")
    if (local is None or local.lineage != owner.lineage) and Ownership(settings, db.entry, store).never_replicated(owner):
        return Check("owner", OK, f"{owner.describe()} claimed the replica but never replicated "
                     "there; the next start claims it for this database")
    if local is None or local.lineage != owner.lineage:
        return Check(
            "owner", FAIL, f"the replica holds the backups of {owner.describe()}, not of {db.path}",
            "set BACKUP_REPLICA_PATH (local mode: BACKUP_LOCAL_DIR) to a place of its own, or "
            "restore that backup here with 'inv backup.restore --force' (this file is moved aside)",
        )
    if local.instance != owner.instance:
        if daemon.check(settings).running:
            # Another copy of this database took the replica over while this daemon ran:
            # both now write one history in turns.
            return Check("owner", FAIL, f"{owner.describe()} took this replica over while this "
                         "workspace's daemon still writes to it",
                         "stop one of them: 'inv backup.stop' here, or there")
        return Check("owner", WARN, f"the replica was last written by {owner.describe()}",
                     "the next start continues it only if nothing was written there since this restore")
    return Check("owner", OK, f"this database owns {store.where}")


def _daemon(workspace: Workspace) -> Check:
    settings = workspace.settings
    state = workspace.state
    if state.state == "unknown":
        return Check("daemon", FAIL, f"unknown: {state.reason}",
                     f"check that process as its owner; delete {settings.pidfile} only if it is not litestream")
    if state.state == "stale":
        return Check("daemon", WARN, f"stale pidfile ({state.reason})", "'inv backup.start-bg' replaces it")
    if not state.running:
        return Check("daemon", WARN, "not running", "start it with 'inv backup.start-bg'")
    status = gather(workspace)  # the replicas' listings are the ones read above
    if status.config_changed:
        return Check(
            "daemon", FAIL, f"pid {state.pid} still runs the litestream.yml it started with; the file changed since",
            "restart to apply: 'inv backup.stop', then 'inv backup.start-bg'",
        )
    for db in status.databases:
        if db.error:
            return Check("daemon", FAIL, f"pid {state.pid} running, but {db.error}")
        if db.failing:
            return Check(
                "daemon", FAIL, f"pid {state.pid} running, but the replica of {db.name or db.path} has "
                "not moved with the database", "see 'inv backup.logs'",
            )
    return Check("daemon", OK, f"pid {state.pid} running; the replica keeps up")


def _drill(workspace: Workspace, db: Database, record: drills.Record, now: float) -> Check:
    """Did the last restore drill (or verify) pass, and has one passed within twice the interval?"""
    from .status import DRILL_FIX, verified

    seen = verified(workspace.settings, record, db.path, workspace.running)
    if seen["ok"] is False:
        return Check("drill", FAIL, seen["message"], DRILL_FIX)
    interval = seen["interval"]
    if interval == OFF:
        return Check("drill", WARN, "restore drills are off (BACKUP_VERIFY_INTERVAL=off): nothing proves the "
                     "replica on a schedule", "remove BACKUP_VERIFY_INTERVAL=off (24h is the default) and restart")
    passed = record.of(db.path).get("passed_at")
    last = f"last passed {passed}" if passed else "none has passed yet"
    if not workspace.running:
        return Check("drill", OK if passed else WARN, f"{last}; drills run while the daemon runs",
                     "" if passed else "start it with 'inv backup.start-bg'")
    if not record.running:
        return Check("drill", FAIL, f"{last}, and no drill runner runs beside the daemon",
                     "restart the daemon ('inv backup.stop', then 'inv backup.start-bg'); 'inv backup.logs' says why")
    watching = record.schedule.get("watching_since") or record.schedule.get("started_at")
    since = max(epoch(passed) or 0.0, epoch(watching) or 0.0)
    limit = 2 * parse_duration(interval)
    if now - since > limit:
        return Check("drill", FAIL, f"{last}: no drill passed within twice the interval ({interval})",
                     "'inv backup.logs' shows the drills' lines (a daemon restarted more often than the "
                     "interval never drills: shorten BACKUP_VERIFY_INTERVAL); 'inv backup.verify' proves "
                     "the replica now")
    detail = f"{last} ({seen['compared'] or 'nothing'} compared); next {seen['next']}" if passed \
        else f"{last}: the first runs at {seen['next']} (every {interval})"
    if parse_duration(interval) < WARN_VERIFY_SECONDS:
        return Check("drill", WARN, f"{detail}; every {interval} downloads the whole database that often",
                     "a longer BACKUP_VERIFY_INTERVAL (24h is the default); 'inv backup.cost' counts it")
    return Check("drill", OK, detail)


def _service(workspace: Workspace) -> Check:
    from .service import find

    installed = find(workspace.settings)
    if installed is None:
        if workspace.running:
            return Check("service", WARN, "the daemon runs without a service: backups stop at the "
                         "next reboot", "inv backup.install-service")
        return Check("service", OK, "none installed ('inv backup.install-service' keeps replication running)")
    if installed.enabled is False:
        return Check("service", WARN, f"{installed.name} ({installed.manager}) is installed but "
                     "disabled", "inv backup.install-service enables it again")
    return Check("service", OK, f"{installed.name} ({installed.manager}) keeps replication running")


def ping(url: str, settings: Settings, timeout: float = PING_TIMEOUT) -> tuple[bool, str]:
    """One test request to ``url``, as litestream's heartbeat sends it (see ``backup.ping``)."""
    ok, what = pinging(url, settings, timeout)
    return ok, what + (": litestream's pings would fail too" if not ok and "answered HTTP" in what else "")


def _heartbeat(workspace: Workspace | None, config: LitestreamConfig | None, settings: Settings,
               send: bool) -> Check:
    """Is a heartbeat configured where litestream reads it; did the daemon's last ping fail;
    with ``send``, one test request."""
    from .config import DEFAULT_HEARTBEAT_INTERVAL, public_url
    from .status import log_errors

    running = workspace is not None and workspace.running
    url = (config.heartbeat_url if config is not None else None) or settings.heartbeat_url
    settings = settings.masking(url)
    if not url:
        if send:
            return Check("heartbeat", FAIL, "no heartbeat to ping: BACKUP_HEARTBEAT_URL is not set",
                         "set it in .env to a dead-man's-switch ping URL, then re-run 'inv backup.setup'")
        return Check("heartbeat", OK, "not configured: nothing alerts anyone when backups stop "
                     "(set BACKUP_HEARTBEAT_URL; see docs/commands.md, 'Know when backups stop')")
    interval = (config.heartbeat or {}).get("interval") if config is not None and config.heartbeat_url \
        else settings.heartbeat_interval
    where = f"{public_url(url)} every {interval or DEFAULT_HEARTBEAT_INTERVAL}"
    if send:
        ok, what = ping(url, settings)
        return Check("heartbeat", OK if ok else FAIL, what,
                     "" if ok else "check BACKUP_HEARTBEAT_URL in .env, and that this machine can reach it")
    if config is None or not config.heartbeat_url:
        return Check("heartbeat", WARN, f"BACKUP_HEARTBEAT_URL is set, but litestream.yml"
                     f"{' (as the daemon runs it)' if running else ''} has no heartbeat",
                     "re-run 'inv backup.setup' (or 'inv backup.local --no-start'), then restart the daemon")
    state = workspace.state if workspace is not None else None
    if running and state is not None and state.record:
        started = from_litestream(state.record.started_at).timestamp()
        # A failure older than an interval and a ping's timeout may have been followed by a
        # good ping: litestream logs those only at debug level.
        recent = time.time() - parse_duration(interval or DEFAULT_HEARTBEAT_INTERVAL) - 30
        failed = [e for e in log_errors(settings)
                  if e.says(ltlog.HEARTBEAT_FAILED) and (e.time or 0) >= max(started, recent)]
        if failed:
            why = settings.mask(failed[-1].error) if failed[-1].error else "see 'inv backup.logs'"
            return Check("heartbeat", FAIL, f"{where}: the daemon's last ping failed ({why})",
                         "check BACKUP_HEARTBEAT_URL; 'inv backup.doctor --ping' tries it now")
    return Check("heartbeat", OK, f"{where}, after successful syncs ('--ping' sends a test request)")


def _metric_label(value: str) -> str:
    """A Prometheus label value as the text format writes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _metrics(workspace: Workspace | None, config: LitestreamConfig | None, settings: Settings) -> Check | None:
    """Does the running daemon answer on its metrics address, for this workspace's database?"""
    url = (config.metrics_url if config is not None else None) or settings.metrics_url
    if not url:
        return None
    if workspace is None or not workspace.running:
        return Check("metrics", OK, f"{url} (served while the daemon runs)")
    try:
        code, body = get(url, timeout=5, limit=4 << 20)
    except UNREACHABLE as exc:
        return Check("metrics", FAIL, f"the daemon does not answer at {url}: {getattr(exc, 'reason', None) or exc}",
                     "see 'inv backup.logs' (is the port taken by another program?)")
    present = [db for db in workspace.databases if db.path.is_file()]
    text = body.decode("utf-8", "replace")
    mine = [db for db in present if f'litestream_sync_count{{db="{_metric_label(str(db.path))}"}}' in text]
    if code != 200 or (present and not mine):
        return Check("metrics", FAIL, f"{url} answers, but not with this workspace's databases",
                     "another program (another workspace's daemon?) holds that port: choose another "
                     "BACKUP_METRICS_ADDR, re-run setup and restart")
    return Check("metrics", OK, f"{url} answers with litestream's metrics for this workspace")


def _disk(settings: Settings, config: LitestreamConfig | None) -> list[Check]:
    places = {"state dir": settings.state_dir}
    if config is not None and not config.uses_s3:
        places["local backups"] = settings.local_dir
    checks = []
    for label, path in places.items():
        existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
        free = shutil.disk_usage(existing).free
        state = FAIL if free < NO_DISK else WARN if free < LOW_DISK else OK
        checks.append(Check(f"disk ({label})", state, f"{free / 2**30:.1f} GiB free at {path}",
                            "" if state == OK else "free some space"))
    return checks


def run_checks(
    settings: Settings, litestream: Litestream, workspace: Workspace | None,
    problem: BackupError | None = None, send_ping: bool = False,
) -> list[Check]:
    """Every check, in the order a person would make them; one set per database."""
    binary = _binary(litestream)
    config = workspace.config if workspace is not None and workspace.configured else None
    env = _env(settings, config)
    checks = [binary, env, _config(settings, workspace, problem)]
    if workspace is not None and config is not None:
        several = workspace.several
        record = drills.read(settings)
        for entry in config.databases:
            if entry.pattern and not entry.path.is_dir():
                checks.append(Check(f"folder ({entry.pattern})", FAIL,
                                    f"{entry.path} does not exist: litestream cannot watch it",
                                    f"create it (mkdir -p '{entry.path}'), or fix BACKUP_DB"))
        for db in workspace.databases:
            named = (lambda c, db=db: replace_name(c, f"{c.name} ({db.name})")) if several else (lambda c: c)
            checks.append(named(_database(db.path)))
            if not workspace.running and (why := risk(db.path)):
                checks.append(named(Check("wal", WARN, f"the next start takes a fresh full copy of "
                                          f"{db.path} first: {why}", "nothing to do: the start does it")))
            if binary.state == OK and env.state == OK:
                checks.append(named(_replica(db)))
                checks.append(named(_owner(settings, db)))
            if db.path.is_file():
                checks.append(named(_drill(workspace, db, record, time.time())))
        if binary.state == OK and env.state == OK:
            checks.append(_daemon(workspace))
        checks.append(_service(workspace))
    checks.append(_heartbeat(workspace, config, settings, send_ping))
    metrics = _metrics(workspace, config, settings)
    if metrics is not None:
        checks.append(metrics)
    checks += _disk(settings, config)
    return checks
