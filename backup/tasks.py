"""The ``backup`` task collection: one thin task per command.

Each task parses its flags, loads Settings once, calls one library function
and prints the result; a ``BackupError`` becomes ``Exit`` with its one-line
message and exit code, never a traceback.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke import Collection, Exit, task

from . import config as cfg
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_CONFIG,
    EXIT_FAILED,
    BackupError,
    ConfigError,
    describe_os_error,
    describe_sqlite_error,
)
from .files import absolute, to_null

F = TypeVar("F", bound=Callable[..., Any])


DEBUG_VARIABLE = "CHORA_BACKUP_DEBUG"


def actionable(body: F) -> F:
    """Turn the project's errors into Exit(message, code), details first.

    A task run with ``--json`` that fails before printing its result prints a JSON
    error object on stdout too (``{"error", "exit_code", "details"}``), so a script
    reading stdout always gets JSON. With CHORA_BACKUP_DEBUG=1 the debug log (every
    litestream command, its exit code and its original stderr, secrets masked) goes
    to stderr.
    """

    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
            _debug_log()
        as_json = bool(kwargs.get("json"))
        _shown.clear()
        try:
            return body(*args, **kwargs)
        except BackupError as exc:
            for line in exc.details:
                print(line, file=sys.stderr)
            raise _failed(exc.message, exc.code, as_json, exc.details) from None
        except Exit as exc:
            if as_json and exc.message and not _shown:
                _json_error(str(exc.message).removeprefix("error: "), exc.code, ())
            raise
        except BrokenPipeError as exc:
            if exc.filename is not None:
                raise _failed(describe_os_error(exc), EXIT_FAILED, as_json) from None
            # Our output went to a reader that left ('| head'): end quietly, as SIGPIPE would.
            to_null(sys.stdout)
            raise Exit(code=EXIT_BROKEN_PIPE) from None
        except OSError as exc:  # the file system said no: name the file and the fix
            raise _failed(describe_os_error(exc), EXIT_FAILED, as_json) from None
        except sqlite3.Error as exc:
            raise _failed(describe_sqlite_error(exc), EXIT_FAILED, as_json) from None

    return wrapper  # type: ignore[return-value]


_shown: list[bool] = []  # not empty once this command printed its result


def _failed(message: str, code: int, as_json: bool, details: tuple[str, ...] = ()) -> Exit:
    """The Exit of a failed command: its line for stderr; with --json, the object on stdout."""
    if as_json and not _shown:
        _json_error(message, code, details)
    return Exit(f"error: {message}", code=code)


def _json_error(message: str, code: int, details: tuple[str, ...]) -> None:
    import json as jsonlib

    print(jsonlib.dumps({"error": message, "exit_code": code, "details": list(details)}, indent=2))
    sys.stdout.flush()


def _debug_log() -> None:
    """Our own debug lines to stderr — never the root logger's: boto3's debug output
    prints request headers, and the Authorization header names the access key id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("debug: %(message)s"))
    ours = logging.getLogger("backup")
    ours.addHandler(handler)
    ours.setLevel(logging.DEBUG)
    ours.propagate = False


def _number(value: Any, flag: str, minimum: float = 0) -> float:
    """A flag's numeric value; invoke would cast at parse time with a traceback."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise BackupError(f"{flag} {value!r} is not a number", code=EXIT_CONFIG)
    if number < minimum:
        raise BackupError(f"{flag} must be at least {minimum:g}", code=EXIT_CONFIG)
    return number


def _workspace(settings: cfg.Settings | None = None, draft: bool = False, remember: bool = True) -> Any:
    """The command's world, built once: settings, the config that runs, every database."""
    from .workspace import Workspace

    return Workspace.load(settings or cfg.load(), draft=draft, remember=remember)


def _from_replicas(settings: cfg.Settings, write_config: bool = True) -> Any:
    """The workspace of a command that reads the replicas, as on a new machine: litestream.yml
    written from .env when there is none (unless not ``write_config``), and a glob's databases
    that exist only in the replica. Remembers no listing."""
    workspace = _workspace(settings, draft=True, remember=False)
    if write_config and _ensure_config(settings, True, workspace.config if workspace.configured else None):
        workspace = _workspace(settings, remember=False)  # the config just written from .env
    elif not workspace.configured:
        workspace = _workspace(settings, remember=False)  # raises: how to write one
    return _as_settings_say(workspace).with_replicas()


def _as_settings_say(workspace: Any) -> Any:
    """A command that only reads replicas reads them where the settings put them now."""
    workspace, notes = workspace.where_settings_say()
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    return workspace


def _show(result: Any, as_json: bool) -> None:
    """The one place a task prints its result: JSON for scripts, or lines for people."""
    _shown.append(True)
    if as_json:
        import json as jsonlib

        print(jsonlib.dumps(result.as_dict(), indent=2))
    else:
        print("\n".join(result.as_lines()))


def _write(settings: cfg.Settings, mode: str, force: bool, dry_run: bool) -> None:
    from .daemon import rewrite_config
    from .render import Written, config_summary, render

    text = render(settings, mode)
    if dry_run:
        print(text, end="")
        return
    result = rewrite_config(settings, text, force=force)
    warnings = [f"the folder {spec.path} ({spec.written}) does not exist: create it before replication starts"
                for spec in settings.databases if spec.pattern and not spec.path.is_dir()]
    _show(Written(result, config_summary(settings, mode), warnings), False)


def _ensure_config(settings: cfg.Settings, write_missing: bool = False, config: Any = None) -> bool:
    """Write litestream.yml where .env alone must do (see daemon.ensure_config); True if written."""
    from .daemon import ensure_config

    note = ensure_config(settings, write_missing, config)
    if note:
        print(note)
    return bool(note)


@task(
    help={
        "force": "replace a litestream.yml that chora-backup did not generate "
        "(the old one is kept as litestream.yml.bak); default off",
        "dry-run": "print the rendered config instead of writing it; default off",
    }
)
@actionable
def setup(c, force=False, dry_run=False):
    """Generate litestream.yml from .env, replicating to Cloudflare R2 (or any S3)."""
    settings = cfg.load(mode=cfg.R2)
    _warn(settings)
    _write(settings, cfg.R2, force, dry_run)


@task(
    help={
        "no-start": "only write the config; do not start replicating; default off",
        "force": "replace a litestream.yml that chora-backup did not generate; default off",
        "dry-run": "print the rendered config instead of writing it; default off",
        "background": "start the daemon in the background (as backup.start-bg) "
        "instead of the foreground; default off",
    }
)
@actionable
def local(c, no_start=False, force=False, dry_run=False, background=False):
    """Back up to a local folder (BACKUP_LOCAL_DIR, default ~/.chora/backups): no R2 needed."""
    settings = cfg.load(mode=cfg.LOCAL)
    if dry_run or no_start:
        _warn(settings)  # a start below says it itself
    _write(settings, cfg.LOCAL, force, dry_run)
    if dry_run or no_start:
        return
    if background:
        _start_background(settings)
    else:
        _run_foreground(settings)


def _warn(settings: cfg.Settings) -> None:
    """Settings that work, but that a careful user should hear about (one line each)."""
    for line in settings.warnings:
        print(f"warning: {line}", file=sys.stderr)


def _run_foreground(settings: cfg.Settings) -> None:
    from .daemon import run_foreground

    _warn(settings)
    _ensure_config(settings)
    workspace = _workspace(settings)
    code = run_foreground(workspace.settings, workspace.litestream, sys.stdout)
    if code < 0:  # killed by a signal: the shell's convention, so a service manager restarts it
        raise Exit(f"error: litestream was killed by signal {-code}", code=128 - code)
    if code != 0:
        raise Exit(f"error: litestream exited with code {code}", code=code)


@task
@actionable
def start(c):
    """Replicate in the foreground until Ctrl-C or SIGTERM (final sync, exit 0); non-zero when litestream dies."""
    _run_foreground(cfg.load())


def _start_background(settings: cfg.Settings, timeout: float = cfg.START_WAIT) -> None:
    from .control import start_background

    _warn(settings)
    _ensure_config(settings)
    _show(start_background(settings, timeout), False)


@task(
    help={
        "timeout": f"seconds to wait for the first sync; a litestream still uploading then is "
        f"left running (exit 0) and status says when it is done; default {cfg.START_WAIT:g}",
    }
)
@actionable
def start_bg(c, timeout=str(cfg.START_WAIT)):
    """Start replicating in the background; returns once the first sync is done."""
    seconds = _number(timeout, "--timeout")
    _start_background(cfg.load(), seconds)


@task(
    help={
        "timeout": "seconds to wait for litestream's final sync before killing it; default: "
        "litestream's shutdown-sync-timeout (30s unless litestream.yml sets it) plus 15",
        "follower": "stop the follower writing this copy instead of the daemon (see backup.follow)",
        "all": "stop the daemon and every follower; default off",
    }
)
@actionable
def stop(c, timeout=None, follower=None, all=False):  # noqa: A002 -- the flag is --all
    """Stop the background daemon gracefully (final sync first); or a follower, or all."""
    from .control import stop as stop_replication

    seconds = None if timeout is None else _number(timeout, "--timeout")
    settings = cfg.load()
    if follower is not None and (not follower.strip() or all):
        raise BackupError("--follower needs the copy's path, and goes without --all", code=EXIT_CONFIG)
    chosen = None if follower is None else Path(follower).expanduser()
    for result in stop_replication(settings, seconds, chosen, everything=all):
        if isinstance(result, BackupError):
            sys.stdout.flush()
            print(f"error: {result.message}", file=sys.stderr)
        else:
            _show(result, False)


@task(
    help={
        "output": "the path of the read-only copy to keep (required); its folder must exist",
        "interval": "how often to look for new changes in the replica (a Go duration); default 1s. "
        "Each look lists the replica: on R2 a Class A request",
        "background": "run detached and return once it follows; default: in the foreground until Ctrl-C",
        "force": "replace an existing file that is not a follower's copy; it is moved aside to "
        "<name>.pre-follow-<UTC time>, never deleted; default off",
        "db": "the database to follow when there are several (as for restore); default: the only one",
        "json": "print the start as JSON (with --background); default off",
        "timeout": "with --background: seconds to wait for the first restore; a follower still "
        f"restoring then is left running (exit 0) and status says when its copy is ready; default {cfg.START_WAIT:g}",
    }
)
@actionable
def follow(c, output=None, interval="1s", background=False, force=False, db=None, json=False, timeout=None):
    """Keep a read-only copy of a database that applies the replica's changes as they arrive.

    It reads the replica the settings name now (flags > environment > .env > defaults),
    with a note when litestream.yml, which replication follows, names another; while a
    daemon runs, its replica, with a note.
    """
    from .follow import run_foreground, start

    if output is None or not output.strip():
        raise BackupError("--output is required: the path of the read-only copy to keep", code=EXIT_CONFIG)
    workspace = _from_replicas(cfg.load())
    chosen = workspace.database(db, "a follower keeps")
    if timeout is not None and not background:
        raise BackupError("--timeout goes with --background (in the foreground, Ctrl-C ends the wait)",
                          code=EXIT_CONFIG)
    seconds = cfg.START_WAIT if timeout is None else _number(timeout, "--timeout")
    target = Path(output).expanduser()
    if background:
        _show(start(workspace, chosen, target, interval, force, timeout=seconds), json)
        return
    code = run_foreground(workspace, chosen, target, interval, force, sys.stdout)
    if code:
        raise Exit(code=code)


@task(help={"json": "print JSON for scripts instead of a table; default off"})
@actionable
def status(c, json=False):
    """Show the daemon, each database's replica and how far behind it is; exit 0 only when healthy."""
    from .status import gather

    result = gather(_workspace())
    _show(result, json)
    if result.exit_code:
        raise Exit(code=result.exit_code)


def _masking_configs(settings):
    """``settings``, masking too the ping URLs litestream.yml and the daemon's copy hold."""
    from .ltconfig import read_config

    for path in (settings.running_config, settings.config_path):
        try:
            settings = settings.masking(read_config(path).heartbeat_url)
        except (BackupError, OSError):
            pass  # no such file, or one that does not parse: nothing more to mask
    return settings


@task(
    help={
        "n": "how many of the last lines to show; default 50",
        "follow": "keep printing new lines until Ctrl-C; default off",
        "follower": "show the log of the follower writing this copy instead of the daemon's",
    }
)
@actionable
def logs(c, n="50", follow=False, follower=None):
    """Show the background daemon's log, or a follower's (secrets masked)."""
    from . import logfile
    from .follow import slot_for

    count = int(_number(n, "-n"))
    settings = _masking_configs(cfg.load())
    path = settings.logfile
    if follower is not None:
        if not follower.strip():
            raise BackupError("--follower needs the copy's path", code=EXIT_CONFIG)
        path = slot_for(settings, absolute(follower)).logfile
        if not path.exists():
            print(f"no follower log for {follower}: start one with 'inv backup.follow --output {follower}'")
            return
    if not path.exists() and not follow:
        print(f"no log yet at {path}: start the daemon with 'inv backup.start-bg'")
        return
    end = logfile.size(path)  # one offset, so no line falls between tail and follow
    for line in logfile.tail(path, count, end=end):
        print(settings.mask(line))
    if follow:
        from .terminal import stop_requests

        with stop_requests() as asked:  # Ctrl-C, SIGTERM or a closed terminal: a clean end
            for line in logfile.follow(path, stop=lambda: bool(asked), offset=end):
                print(settings.mask(line), flush=True)


def _point_in_time(timestamp: str | None, txid: str | None) -> tuple[Any, int | None]:
    from .timeparse import parse, parse_txid

    if timestamp is not None and txid is not None:
        raise BackupError("give --timestamp or --txid, not both", code=EXIT_CONFIG)
    return (
        parse(timestamp) if timestamp is not None else None,
        parse_txid(txid) if txid is not None else None,
    )


def _show_progress(written: int, elapsed: float) -> None:
    print(f"  restoring… {written / 1e6:.1f} MB written, {elapsed:.1f}s", file=sys.stderr)


DB_HELP = ("one database: its path as written in BACKUP_DB, relative, or absolute; "
           "default: every database")


@task(
    help={
        "output": "restore to this path instead of the database's own; its folder must "
        "exist; needs --db when there are several databases; default: the database's own path",
        "timestamp": "point in time: RFC 3339 (2026-11-25T14:00:00Z), a local date-time "
        "(\"2026-11-25 14:00\") or an age (15m, 2h, 1d); every database is restored to the same "
        "one; default: the latest state",
        "txid": "restore up to this litestream txid (16 hex digits); default: the latest",
        "force": "replace an existing file; it is moved aside to "
        "<name>.pre-restore-<UTC time>, never deleted; default off",
        "dry-run": "print the plan (files, txid range, bytes to download) and change "
        "nothing; default off",
        "json": "print the result as JSON ({\"databases\": [...]} when there are several); default off",
        "db": DB_HELP,
    }
)
@actionable
def restore(c, output=None, timestamp=None, txid=None, force=False, dry_run=False, json=False, db=None):
    """Restore the databases from their replicas, each checked by SQLite before it replaces anything.

    It reads the replica the settings name now (flags > environment > .env > defaults),
    with a note when litestream.yml, which replication follows, names another; while a
    daemon runs, its replica, with a note.
    """
    from .restore import restore as do_restore

    when, upto = _point_in_time(timestamp, txid)
    if output is not None and not output.strip():
        raise BackupError("--output is empty: name the file to restore to", code=EXIT_CONFIG)
    # A refused restore changes nothing on disk, not even what status remembers of a listing.
    workspace = _from_replicas(cfg.load(), write_config=not dry_run)
    result = do_restore(
        workspace,
        workspace.select(db),
        output=Path(output).expanduser() if output is not None else None,
        timestamp=when,
        txid=upto,
        force=force,
        dry_run=dry_run,
        progress=None if json else _show_progress,
    )
    _show(result, json)


@task(
    positional=["sql"],
    help={
        "sql": "one statement that reads (SELECT, WITH, a PRAGMA that reads), asked of the "
        "replica, never of the live database",
        "timestamp": "ask the replica as it was then: the forms restore takes (RFC 3339, a local "
        "date-time, an age such as 2h); default: the latest state",
        "txid": "ask the replica as it was at this litestream txid (16 hex digits); default: the latest",
        "db": "the database to ask when there are several (as for restore); default: the only one",
        "json": "print {\"columns\", \"rows\", \"txid\", \"timestamp\", \"via\", \"requests\": {\"list\", "
        "\"get\", \"head\"}, \"bytes\"} instead of a table; default off",
        "via": "vfs (read the replica in place, page by page), copy (restore a local copy, kept in "
        "the state dir while the replica has not moved on, and ask that), or auto: the kept copy if "
        "there is one, a copy of a replica under 128 MB, else the VFS for a lookup by equality (a "
        "scan, range or many-row join goes to a copy, as does a statement still reading after "
        "half a restore's likely time); default auto",
    },
)
@actionable
def query(c, sql=None, timestamp=None, txid=None, db=None, json=False, via="auto"):
    """Ask the backup a read-only SQL question, at any point in time, without restoring it.

    Settings follow the one precedence rule of every command: task flags > the process
    environment > the workspace's .env > built-in defaults. The replica read is the one they
    name now (R2_ENDPOINT, R2_BUCKET, BACKUP_REPLICA_PATH, BACKUP_LOCAL_DIR), as for restore
    and snapshots; a note says so when litestream.yml, which replication follows until setup
    is re-run, names another. While a daemon runs, its replica is read, with a note.
    """
    from .query import missing, run

    if sql is None or not sql.strip():
        raise BackupError("give the SQL to ask, e.g. inv backup.query \"select count(*) from t\"", code=EXIT_CONFIG)
    if via != "copy" and missing():  # before anything is read: what to install comes first
        # (--via copy needs no VFS: it restores a local copy and asks that)
        raise BackupError(missing(), code=EXIT_CONFIG)
    when, upto = _point_in_time(timestamp, txid)
    workspace = _from_replicas(cfg.load())
    chosen = workspace.database(db, "a query asks")
    _show(run(workspace, chosen, sql, timestamp=when, txid=upto, via=via), json)


@task(help={
    "json": "print JSON (snapshots and window; {\"databases\": [...]} when there are several) "
    "instead of a table; default off",
    "db": DB_HELP,
})
@actionable
def snapshots(c, json=False, db=None):
    """List each replica's snapshots and the restorable window (earliest to latest).

    It reads the replica the settings name now (flags > environment > .env > defaults),
    with a note when litestream.yml, which replication follows, names another; while a
    daemon runs, its replica, with a note.
    """
    from .restore import snapshots as list_snapshots

    workspace = _as_settings_say(_workspace())
    _show(list_snapshots(workspace, workspace.select(db)), json)


@task(help={"json": "print the result as JSON instead of each step; default off"})
@actionable
def snapshot(c, json=False):
    """Take a fresh snapshot of every database now (stops and restarts a running daemon); repairs a replica with a hole."""
    from .snapshot import take_snapshot

    result = take_snapshot(_workspace(), say=None if json else print)
    _show(result, json)


@task(
    help={
        "max-age": "fail when the replica has missed local changes for longer than this "
        "(a duration: 90s, 10m); default ten sync intervals, at least a minute",
        "strict": "fail (exit 1) when no backup is configured in this workspace; default off",
        "require-running": "fail (exit 1) when no daemon replicates this workspace (continuous "
        "backup is off) instead of warning; default off",
        "db": DB_HELP,
    }
)
@actionable
def verify(c, max_age=None, strict=False, require_running=False, db=None):
    """Restore each database's latest backup to a temp dir and prove it holds the live database's data."""
    from .config import parse_duration
    from .verify import verify as run_verify

    limit = None
    if max_age is not None:
        try:
            limit = parse_duration(max_age)
        except ValueError:
            raise BackupError(f"--max-age {max_age!r} is not a duration (e.g. 90s, 10m)", code=EXIT_CONFIG) from None
    workspace = _workspace(draft=True)  # no litestream.yml: "nothing to verify", not an error
    result = run_verify(workspace, workspace.select(db), max_age=limit, require_running=require_running)
    if not result.configured and strict:
        raise Exit(f"error: {result.as_lines()[0]}", code=EXIT_FAILED)
    _show(result, False)
    sys.stdout.flush()  # the warning follows the checks even where both streams are one pipe
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    failure = result.failure()
    if failure:
        raise Exit(f"error: {failure}", code=EXIT_FAILED)
    if result.configured:
        print("verify: ok")


@task(help={"json": "print the checks as JSON; default off",
            "ping": "also send one test request to BACKUP_HEARTBEAT_URL and report the answer; default off"})
@actionable
def doctor(c, json=False, ping=False):
    """Check everything backups depend on, for every database; one line each with its fix; exit 1 on any failure."""
    from .doctor import FAIL, Check, Report, run_checks
    from .litestream import Litestream
    from .workspace import Workspace

    try:
        settings = cfg.load()
    except ConfigError as exc:
        # Nothing else can be checked without settings: report this one and stop.
        _show(Report([Check(".env", FAIL, exc.message)]), json)
        raise Exit("error: 1 check(s) failed: .env", code=EXIT_FAILED) from None
    litestream = Litestream(settings)
    workspace, problem = None, None
    try:
        workspace = Workspace.load(settings, litestream)
    except ConfigError as exc:
        problem = exc  # the config check reports it; the others run without it
    report = Report(run_checks(settings, litestream, workspace, problem, send_ping=ping))
    _show(report, json)
    failed = [c for c in report.checks if c.state == FAIL]
    if failed:
        raise Exit(f"error: {len(failed)} check(s) failed: {', '.join(c.name for c in failed)}", code=EXIT_FAILED)


@task(
    help={
        "writes-per-month": "model this many writes a month (the whole workspace's) instead of "
        "the rate observed in the replicas; default: observed",
        "json": "print JSON (total_usd and the parts; per database under \"databases\" when "
        "there are several) instead of the estimate; default off",
    }
)
@actionable
def cost(c, writes_per_month=None, json=False):
    """Project this workspace's monthly Cloudflare R2 bill from its replicas and config."""
    from .cost import project

    writes = None
    if writes_per_month is not None:
        writes = _number(writes_per_month, "--writes-per-month")
    _show(project(_workspace(), writes), json)


MANAGER_HELP = ("systemd, launchd or task-scheduler; default: this system's (with --dry-run any "
                "of them can be reviewed on any system)")


def _unit(settings: cfg.Settings, manager: str | None) -> Any:
    from . import service
    from .ltconfig import DEFAULT_STOP_TIMEOUT, read_config

    stop_after = DEFAULT_STOP_TIMEOUT
    if settings.config_path.exists():
        stop_after = read_config(settings.config_path).stop_timeout
    return service.unit_for(settings, manager or service.default_manager(), stop_after)


@task(
    help={
        "manager": MANAGER_HELP,
        "dry-run": "print the file that would be written and the commands that would run, and "
        "change nothing; default off",
        "force": "replace a file of that name that chora-backup did not write (kept as .bak); "
        "default off",
        "linger": "systemd: also run 'loginctl enable-linger', so it runs without a login "
        "session; default off",
        "json": "print the result as JSON; default off",
    }
)
@actionable
def install_service(c, manager=None, dry_run=False, force=False, linger=False, json=False):
    """Install replication as a per-user service that starts at login or boot and restarts on failure."""
    from . import service

    settings = cfg.load()
    if not dry_run and not settings.config_path.exists():
        raise ConfigError("no litestream.yml yet: run 'inv backup.setup' (or 'inv backup.local "
                          "--no-start') first — nothing was installed")
    unit = _unit(settings, manager)
    _show(service.install(settings, unit, service.Runner(), force=force, dry_run=dry_run,
                          linger=linger), json)


@task(
    help={
        "manager": MANAGER_HELP,
        "dry-run": "print the commands that would run, and change nothing; default off",
        "json": "print the result as JSON; default off",
    }
)
@actionable
def uninstall_service(c, manager=None, dry_run=False, json=False):
    """Stop and disable this workspace's service and remove its file (only one chora-backup wrote)."""
    from . import service

    settings = cfg.load()
    _show(service.uninstall(_unit(settings, manager), service.Runner(), dry_run=dry_run), json)


ns = Collection("backup")
for _task in (
    setup, local, start, start_bg, stop, status, logs, restore, snapshots, snapshot, verify, doctor,
    cost, install_service, uninstall_service, follow, query,
):
    ns.add_task(_task)
