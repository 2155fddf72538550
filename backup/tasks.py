"""The ``backup`` task collection: one thin task per command.

Each task parses its flags, loads Settings once, calls one library function
and prints the result; a ``BackupError`` becomes ``Exit`` with its one-line
message and exit code, never a traceback.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from invoke import Collection, Exit, task

from . import config as cfg
from .errors import BackupError

F = TypeVar("F", bound=Callable[..., Any])


def actionable(body: F) -> F:
    """Turn the project's errors into Exit(message, code), details first."""

    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return body(*args, **kwargs)
        except BackupError as exc:
            for line in exc.details:
                print(line, file=sys.stderr)
            raise Exit(f"error: {exc.message}", code=exc.code) from None

    return wrapper  # type: ignore[return-value]


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")


def _write(settings: cfg.Settings, mode: str, force: bool, dry_run: bool) -> None:
    from .render import config_summary, render, write_config

    text = render(settings, mode)
    if dry_run:
        print(text, end="")
        return
    result = write_config(settings, text, force=force)
    if result.backup:
        print(f"kept the previous config as {result.backup}")
    verb = "wrote" if result.changed else "unchanged:"
    print(f"{verb} {result.path}")
    _print_rows(config_summary(settings, mode))


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
    _write(settings, cfg.LOCAL, force, dry_run)
    if dry_run or no_start:
        return
    if background:
        _start_background(settings)
    else:
        _run_foreground(settings)


def _run_foreground(settings: cfg.Settings) -> None:
    from .daemon import run_foreground
    from .litestream import Litestream
    from .render import read_config

    config = read_config(settings.config_path)
    for db in config.databases:
        if not db.path.exists():
            print(f"warning: {db.path} does not exist yet; litestream waits for it", file=sys.stderr)
    code = run_foreground(settings, Litestream(settings), sys.stdout, config=config)
    if code != 0:
        raise Exit(f"error: litestream exited with code {code}", code=code)


@task
@actionable
def start(c):
    """Replicate in the foreground until Ctrl-C (litestream makes a final sync)."""
    _run_foreground(cfg.load())


def _start_background(settings: cfg.Settings) -> None:
    from .daemon import start_background
    from .litestream import Litestream

    result = start_background(settings, Litestream(settings))
    if result.already_running:
        print(f"already running (pid {result.pid})")
        return
    if result.stale and result.stale.record:
        print(f"replaced a stale pidfile ({result.stale.reason})")
    for path in result.waiting:
        print(f"waiting for {path}: it does not exist yet; litestream replicates it once it does")
    print(f"started (pid {result.pid})")
    print(f"  log   {result.log}")
    print("  stop  inv backup.stop")


@task
@actionable
def start_bg(c):
    """Start replicating in the background; returns once the first sync is done."""
    _start_background(cfg.load())


@task(
    help={
        "timeout": "seconds to wait for litestream's final sync before killing it; default 30",
    }
)
@actionable
def stop(c, timeout=30.0):
    """Stop the background daemon gracefully (final sync first)."""
    from .daemon import stop as stop_daemon

    settings = cfg.load()
    result = stop_daemon(settings, timeout=float(timeout))
    if result.stale:
        print(f"removed a stale pidfile ({result.stale.reason})")
    if not result.was_running:
        print("not running")
    elif result.forced:
        print(f"killed (pid {result.pid}) after {float(timeout):g}s without a clean stop")
    else:
        print(f"stopped (pid {result.pid})")


@task(help={"json": "print JSON for scripts instead of a table; default off"})
@actionable
def status(c, json=False):
    """Show the daemon, the replica and how far behind it is; exit 0 only when healthy."""
    import json as jsonlib

    from .status import as_table, gather

    result = gather(cfg.load())
    if json:
        print(jsonlib.dumps(result.as_dict(), indent=2))
    else:
        print("\n".join(as_table(result)))
    if result.exit_code:
        raise Exit(code=result.exit_code)


@task(
    help={
        "n": "how many of the last lines to show; default 50",
        "follow": "keep printing new lines until Ctrl-C; default off",
    }
)
@actionable
def logs(c, n=50, follow=False):
    """Show the background daemon's log (secrets masked)."""
    from . import logfile

    settings = cfg.load()
    path = settings.logfile
    if not path.exists() and not follow:
        print(f"no log yet at {path}: start the daemon with 'inv backup.start-bg'")
        return
    end = logfile.size(path)  # one offset, so no line falls between tail and follow
    for line in logfile.tail(path, int(n), end=end):
        print(settings.mask(line))
    if follow:
        try:
            for line in logfile.follow(path, stop=lambda: False, offset=end):
                print(settings.mask(line), flush=True)
        except KeyboardInterrupt:
            pass


ns = Collection("backup")
for _task in (setup, local, start, start_bg, stop, status, logs):
    ns.add_task(_task)
