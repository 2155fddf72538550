"""litestream.yml: render it from Settings and write it safely.

Rendering returns a string and touches nothing; ``write_config`` is the only
writer (atomic, mode 0600, never clobbers a file it did not generate). Reading
it back is ``ltconfig``'s.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .config import R2, Settings
from .errors import BackupError, ConfigError
from .files import write_private
from .ltconfig import MARKER

log = logging.getLogger("backup.render")

# Each database's WAL checkpoint timer: each checkpoint ships one more L0 file (an R2
# PUT); litestream's 1m made a lightly written database upload half again as much.
CHECKPOINT_INTERVAL = "30m"

# Characters a YAML double-quoted scalar must not hold raw: they are escaped.
_LINE_BREAKS = {"\u0085", "\u2028", "\u2029", "\ufeff"}


def yaml_scalar(value: object) -> str:
    """``value`` as a YAML double-quoted scalar that parses back to str(value).

    Works the same for PyYAML and litestream's Go parser: only ``"``, ``\\``
    and non-printable characters are escaped, never by surrogate pairs.
    """
    out = ['"']
    for ch in str(value):
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch in _LINE_BREAKS:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


TEMPLATE = "litestream.yml.j2"


def _template_text() -> str:
    try:
        return resources.files("backup.templates").joinpath(TEMPLATE).read_text("utf-8")
    except ModuleNotFoundError:
        # Imported from a source checkout (inv in the repo root puts it first on
        # sys.path), where the template has not been packaged: read its source.
        return (Path(__file__).resolve().parent.parent / "templates" / TEMPLATE).read_text("utf-8")


def render(settings: Settings, mode: str) -> str:
    """The litestream.yml text for ``mode`` (R2 or LOCAL); nothing is written."""
    import jinja2

    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["yaml"] = yaml_scalar
    databases = [
        {"path": spec.path, "pattern": spec.pattern, "replica_path": spec.replica_path,
         "replica_dir": settings.local_replica_dir(spec)}
        for spec in settings.databases
    ]
    text = env.from_string(_template_text()).render(
        marker=MARKER,
        source=settings.env_location() if settings.env_file else "the environment",
        mode=mode,
        mode_name="Cloudflare R2 / S3" if mode == R2 else "local folder",
        socket=settings.socket_path,
        databases=databases,
        bucket=settings.bucket or "",
        endpoint=settings.r2_endpoint or "",
        interval=settings.interval(mode),
        checkpoint_interval=CHECKPOINT_INTERVAL,
        heartbeat_url=settings.heartbeat_url,
        heartbeat_interval=settings.heartbeat_interval,
        metrics_addr=settings.metrics_addr,
    )
    _check_shape(text, settings, mode)
    return text


def _expected(settings: Settings, mode: str) -> list[dict[str, Any]]:
    """Each dbs entry as litestream must read it."""
    entries = []
    for spec in settings.databases:
        entry: dict[str, Any] = (
            {"dir": str(spec.path), "pattern": spec.pattern, "watch": True}
            if spec.pattern else {"path": str(spec.path)}
        )
        if mode == R2:
            replica = {"type": "s3", "bucket": settings.bucket or "", "path": spec.replica_path,
                       "endpoint": settings.r2_endpoint or "", "region": "auto"}
        else:
            replica = {"type": "file", "path": str(settings.local_replica_dir(spec))}
        entry["replica"] = {**replica, "sync-interval": settings.interval(mode)}
        entry["checkpoint-interval"] = CHECKPOINT_INTERVAL
        entries.append(entry)
    return entries


def _check_shape(text: str, settings: Settings, mode: str) -> None:
    """Parse the rendered text back and insist it says exactly what we meant."""
    import yaml

    data = yaml.safe_load(text)
    try:
        ok = data["dbs"] == _expected(settings, mode)
        socket = settings.socket_path
        ok = ok and (socket is None or data["socket"]["path"] == str(socket))
        ok = ok and data.get("heartbeat-url") == settings.heartbeat_url
        ok = ok and data.get("addr") == settings.metrics_addr
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise BackupError("internal error: the rendered litestream.yml does not round-trip; please report it")


@dataclass(frozen=True)
class WriteResult:
    path: Path
    changed: bool
    backup: Path | None  # where a replaced foreign config was kept


def is_generated(path: Path) -> bool:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return fh.readline().startswith(MARKER)
    except OSError:
        return False


def write_config(settings: Settings, text: str, force: bool = False) -> WriteResult:
    """Write ``text`` to the workspace's litestream.yml, atomically, mode 0600.

    Unchanged input leaves the file untouched. A file this tool did not
    generate is replaced only with ``force``, and then kept as ``.bak``.
    """
    path = settings.config_path
    backup = None
    if path.is_dir():
        raise ConfigError(f"{path} is a directory: move it aside, then run setup again")
    if path.exists():
        if path.read_bytes() == text.encode("utf-8"):
            return WriteResult(path, changed=False, backup=None)
        if not is_generated(path):
            if not force:
                raise ConfigError(
                    f"{path} was not generated by chora-backup: re-run with --force to "
                    f"replace it (the old file is kept as {path.name}.bak)"
                )
            backup = path.with_name(path.name + ".bak")
            shutil.copy2(path, backup)
    write_private(path, text.encode("utf-8"))
    return WriteResult(path, changed=True, backup=backup)


@dataclass(frozen=True)
class Written:
    """What setup and local tell: the file written (or unchanged), the settings it holds
    (no secret, only whether each is set), and what to fix before replication starts."""

    result: WriteResult
    summary: list[tuple[str, str]]
    warnings: list[str]

    def as_lines(self) -> list[str]:
        lines = [f"kept the previous config as {self.result.backup}"] if self.result.backup else []
        lines.append(f"{'wrote' if self.result.changed else 'unchanged:'} {self.result.path}")
        width = max((len(k) for k, _ in self.summary), default=0)
        lines += [f"  {key.ljust(width)}  {value}" for key, value in self.summary]
        return lines + [f"warning: {w}" for w in self.warnings]

    def as_dict(self) -> dict[str, object]:
        return {"path": str(self.result.path), "changed": self.result.changed,
                "backup": str(self.result.backup) if self.result.backup else None,
                "summary": [list(row) for row in self.summary], "warnings": self.warnings}


def config_summary(settings: Settings, mode: str) -> list[tuple[str, str]]:
    """What setup tells the user: no secret, only whether each is set."""
    rows = []
    for spec in settings.databases:
        what = f"{spec.path / spec.pattern} (each database by its name)" if spec.pattern else str(spec.path)
        where = (
            f"s3://{settings.bucket}/{spec.replica_path} at {settings.r2_endpoint}" if mode == R2
            else str(settings.local_replica_dir(spec))
        )
        rows += [("database", what), ("replica", where)]
    if mode == R2:
        rows.append(("credentials", "R2_ACCESS_KEY_ID ****, R2_SECRET_ACCESS_KEY **** (from the environment at run time)"))
    rows.append(("sync interval", settings.interval(mode)))
    if settings.heartbeat_url:
        from .config import public_url

        rows.append(("heartbeat", f"{public_url(settings.heartbeat_url)} every {settings.heartbeat_interval} "
                                  "(BACKUP_HEARTBEAT_URL, masked)"))
    if settings.metrics_url:
        rows.append(("metrics", settings.metrics_url))
    rows.append(("config", str(settings.config_path)))
    return rows

