"""What replication to Cloudflare R2 costs a month: prices, and a model of the requests.

Prices live here and nowhere else (bench/requests.py imports them).

The request model counts what litestream 0.5.17 does on its timers (read in
its store.go and db.go; the counts checked by bench/requests.py against a local
S3 server, in real time):

- every sync that carries a change uploads one L0 file (a PUT);
- so does a WAL checkpoint while writes happen (the database's
  ``checkpoint-interval``, 1m by default; litestream checkpoints once the
  database file is older than that and something was synced since): one more
  L0 file per interval, at most one per write;
- a level-1 tick with something new LISTs the L0 files, PUTs the merged file,
  then enforces the L0 retention: two more LISTs and, once files are past
  ``l0-retention``, a DeleteObjects (Class A: R2's price list does not name the
  bulk call). A level-2 or level-3 tick with something new LISTs once and PUTs;
- a tick with nothing new LISTs the level below once: litestream compares the
  level below's newest txid with the *first* txid of the level's newest file,
  so once that file merged more than one transaction every idle tick looks
  (612 LISTs an hour measured for an idle database at the defaults: 480 from the
  L0 retention check, 120 level 1, 12 level 2);
- the snapshot tick PUTs a snapshot when the database moved, and every tick
  enforces retention at the snapshot level and each level below (a LIST each,
  a DeleteObjects each when it removes something);
- every tick of the L0 retention check LISTs twice.

Writes are taken as evenly spread (the seed's "a write every 26 s"), so a
level is busy on a tick when at least one file reached the level below it
during that tick; a checkpoint's upload follows a write's, so it reaches level 1
in the same tick.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import parse_duration
from .errors import ConfigError
from .ltconfig import MISSING, LitestreamConfig, checkpoint_interval
from .ltx import LISTS_PER_PLAN

if TYPE_CHECKING:
    from .ltx import LtxFile
    from .workspace import Workspace

PRICES_CHECKED = "2026-11-26"  # developers.cloudflare.com/r2/pricing, Standard storage
PRICE_CLASS_A = 4.50 / 1e6  # PUT, LIST, multipart, CopyObject (and, to be safe, DeleteObjects)
PRICE_CLASS_B = 0.36 / 1e6  # GET, HEAD
PRICE_STORAGE_GB_MONTH = 0.015
FREE_CLASS_A = 1_000_000  # each month
FREE_CLASS_B = 10_000_000
FREE_STORAGE_GB = 10.0
HOURS_PER_MONTH = 730

LIST_PER_IDLE_TICK = 1  # every level but the snapshot's
LIST_PER_L0_RETENTION = 2  # the level-1 files, then the L0 files
# A restore drill's restore lists as every restore plans (LISTS_PER_PLAN), then GETs each
# file of the plan: the snapshot and what each level holds since (bench/drill.py counts them).
LIST_PER_RESTORE = LISTS_PER_PLAN


@dataclass(frozen=True)
class Drills:
    """Restore drills of one database (or the sum of several): how often, and what each costs."""

    per_hour: float  # 0: off
    interval: str
    gets: int  # GETs of one drill: the files a restore of the latest state reads now
    bytes: int  # downloaded by one drill (free on R2: egress costs nothing)
    lists: int = LIST_PER_RESTORE

    def as_dict(self) -> dict[str, Any]:
        return {"interval": self.interval, "per_month": round(self.per_hour * HOURS_PER_MONTH, 1),
                "class_a_per_drill": self.lists, "class_b_per_drill": self.gets,
                "bytes_per_drill": self.bytes}


def drills_of(interval: float | None, text: str, files: list[LtxFile]) -> Drills:
    """The drills of a database whose replica holds ``files``, every ``interval`` seconds."""
    from .ltx import plan

    chain = plan(files).files
    return Drills(0.0 if not interval else 3600 / interval, text, len(chain), sum(f.size for f in chain))


@dataclass(frozen=True)
class Timers:
    sync_interval: float  # seconds
    retention_check: float
    levels: tuple[float, ...]  # L1, L2, … then the snapshot level
    checkpoint: float = 60.0  # the database's checkpoint-interval; 0: no timed checkpoints

    @classmethod
    def from_config(cls, config: LitestreamConfig, sync_interval: str, checkpoint: object = None) -> Timers:
        """From litestream.yml's timers and one database's sync and checkpoint intervals
        (``checkpoint``: its ``checkpoint-interval``; default: the first database's)."""
        if checkpoint is None:
            checkpoint = config.databases[0].checkpoint_interval
        if any(interval is MISSING for interval in config.levels):
            raise ConfigError("litestream.yml: every entry under levels needs an interval")
        intervals = [*config.levels, config.snapshot_interval]
        return cls(
            sync_interval=positive_duration("sync-interval", sync_interval),
            retention_check=positive_duration("l0-retention-check-interval", config.l0_retention_check_interval),
            levels=tuple(positive_duration("levels/snapshot interval", i) for i in intervals),
            checkpoint=checkpoint_seconds(checkpoint),
        )


def checkpoint_seconds(value: object) -> float:
    """A checkpoint-interval in seconds as litestream takes it (ltconfig.checkpoint_interval):
    unset is 1m, zero is off."""
    try:
        return parse_duration(checkpoint_interval(value))
    except ValueError:
        return positive_duration("checkpoint-interval", value)  # raises, naming the key


def positive_duration(key: str, value: object) -> float:
    """Seconds in ``value``; ConfigError naming ``key`` when it is not a positive duration."""
    try:
        seconds = parse_duration(str(value))
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ConfigError(
            f"litestream.yml: {key} {value!r} is not a positive duration: fix it, or "
            "regenerate the file with 'inv backup.setup'"
        )
    return seconds


@dataclass(frozen=True)
class Requests:
    """Requests an hour, by R2 class and by operation; ``parts``: Class A an hour by what
    causes it (writes, checkpoints, each compaction level, L0 expiry, snapshot)."""

    put: float
    list: float
    delete: float
    get: float
    parts: tuple[tuple[str, float], ...] = ()

    @property
    def class_a(self) -> float:
        return self.put + self.list + self.delete

    @property
    def class_b(self) -> float:
        return self.get


def checkpoint_uploads(timers: Timers, writes_per_hour: float) -> float:
    """L0 uploads an hour that WAL checkpoints add: one per checkpoint that has pages to
    move, so no more than the writes, nor than the syncs."""
    if timers.checkpoint <= 0:
        return 0.0
    return min(3600 / timers.checkpoint, writes_per_hour, 3600 / timers.sync_interval)


def requests_per_hour(timers: Timers, writes_per_hour: float, drills: Drills | None = None) -> Requests:
    writes = min(writes_per_hour, 3600 / timers.sync_interval)  # syncs that carry a change
    checkpoints = checkpoint_uploads(timers, writes_per_hour)
    put, delete, get = writes + checkpoints, 0.0, 0.0
    parts = {"writes": writes, "checkpoints": checkpoints}
    timer = 3600 / timers.retention_check * LIST_PER_L0_RETENTION  # the L0 retention timer's LISTs
    lists, expiry = timer, timer
    arriving = writes  # times an hour that files reach the level below
    count = len(timers.levels)
    for n, interval in enumerate(timers.levels, start=1):
        ticks = 3600 / interval
        busy = ticks * min(1.0, arriving * interval / 3600)
        if n == count:  # the snapshot, then retention at every level
            level_put, level_list, level_delete = busy, ticks * count, busy * count
            name = "snapshot"
        else:
            level_put, level_list, level_delete = busy, busy + (ticks - busy) * LIST_PER_IDLE_TICK, 0.0
            name = f"compaction level {n}"
            if n == 1:  # each busy level-1 tick enforces the L0 retention
                expiry += busy * (LIST_PER_L0_RETENTION + 1)
                lists += busy * LIST_PER_L0_RETENTION
                delete += busy
        put += level_put
        lists += level_list
        delete += level_delete
        get += busy
        parts[name] = level_put + level_list + level_delete
        arriving = busy
    parts["L0 expiry"] = expiry
    if drills is not None and drills.per_hour:
        lists += drills.per_hour * drills.lists
        get += drills.per_hour * drills.gets
        parts["restore drills"] = drills.per_hour * drills.lists
    return Requests(put=put, list=lists, delete=delete, get=get, parts=tuple(parts.items()))


def writes_from_uploads(timers: Timers, uploads_per_hour: float) -> float:
    """The writes an hour behind ``uploads_per_hour`` L0 files (writes plus checkpoints):
    the inverse of what requests_per_hour adds."""
    if timers.checkpoint <= 0:
        return uploads_per_hour
    per_checkpoint = 3600 / timers.checkpoint
    if uploads_per_hour >= 2 * per_checkpoint:
        return uploads_per_hour - per_checkpoint  # a checkpoint every interval
    return uploads_per_hour / 2  # each write followed by its own checkpoint


@dataclass(frozen=True)
class Estimate:
    writes_per_hour: float
    requests: Requests
    stored_bytes: int
    drills: Drills | None = None

    @property
    def class_a_month(self) -> float:
        return self.requests.class_a * HOURS_PER_MONTH

    @property
    def class_b_month(self) -> float:
        return self.requests.class_b * HOURS_PER_MONTH

    @property
    def storage_gb(self) -> float:
        return self.stored_bytes / 1e9

    def usd(self, free_tier: bool) -> dict[str, float]:
        a, b, gb = self.class_a_month, self.class_b_month, self.storage_gb
        if free_tier:
            a, b, gb = max(0.0, a - FREE_CLASS_A), max(0.0, b - FREE_CLASS_B), max(0.0, gb - FREE_STORAGE_GB)
        parts = {"storage": gb * PRICE_STORAGE_GB_MONTH, "class_a": a * PRICE_CLASS_A, "class_b": b * PRICE_CLASS_B}
        parts["total"] = sum(parts.values())
        return parts

    def as_dict(self) -> dict[str, Any]:
        billed, listed = self.usd(free_tier=True), self.usd(free_tier=False)
        return {
            "total_usd": round(billed["total"], 4),
            "total_before_free_tier_usd": round(listed["total"], 4),
            "storage_gb": round(self.storage_gb, 6),
            "storage_usd": round(listed["storage"], 4),
            "class_a_per_hour": round(self.requests.class_a, 1),
            "class_a_per_month": round(self.class_a_month),
            "class_a_usd": round(listed["class_a"], 4),
            "class_b_per_hour": round(self.requests.class_b, 1),
            "class_b_per_month": round(self.class_b_month),
            "class_b_usd": round(listed["class_b"], 4),
            "class_a_per_hour_by_cause": {name: round(count, 1) for name, count in self.requests.parts},
            "writes_per_month": round(self.writes_per_hour * HOURS_PER_MONTH),
            "restore_drills": self.drills.as_dict() if self.drills else None,
            "prices_checked": PRICES_CHECKED,
        }

    def _drill_lines(self) -> list[str]:
        d = self.drills
        if d is None:
            return []
        if not d.per_hour:
            return ["- Restore drills: off (BACKUP_VERIFY_INTERVAL=off)"]
        month = d.per_hour * HOURS_PER_MONTH
        usd = month * (d.lists * PRICE_CLASS_A + d.gets * PRICE_CLASS_B)
        return [f"- Restore drills (every {d.interval}, {month:,.0f}/month): {d.lists} LISTs (Class A) and "
                f"{d.gets} GETs (Class B) each, {d.bytes / 1e6:,.1f} MB downloaded each (egress free): "
                f"${usd:.4f}/month, counted above"]

    def as_lines(self) -> list[str]:
        listed, billed = self.usd(free_tier=False), self.usd(free_tier=True)
        return [
            f"Cloudflare R2 pricing (checked {PRICES_CHECKED}):",
            f"- Storage: {self.storage_gb:.4f} GB x ${PRICE_STORAGE_GB_MONTH}/GB-month = ${listed['storage']:.4f}",
            f"- Class A ops (write, list): {self.requests.class_a:.0f}/hour = {self.class_a_month:,.0f}/month "
            f"x $4.50/million = ${listed['class_a']:.2f}",
            *(f"    {name}: {count:.1f}/hour" for name, count in self.requests.parts),
            f"- Class B ops (read): {self.requests.class_b:.0f}/hour = {self.class_b_month:,.0f}/month "
            f"x $0.36/million = ${listed['class_b']:.4f}",
            "- Egress: FREE",
            *self._drill_lines(),
            f"Workload: {self.writes_per_hour * HOURS_PER_MONTH:,.0f} writes/month",
            f"Total: ${listed['total']:.2f}/month at list price; ${billed['total']:.2f}/month after the "
            f"free tier (10 GB-month, 1M Class A, 10M Class B each month)",
        ]


def estimate(timers: Timers, writes_per_month: float, stored_bytes: int, drills: Drills | None = None) -> Estimate:
    per_hour = writes_per_month / HOURS_PER_MONTH
    return Estimate(per_hour, requests_per_hour(timers, per_hour, drills), stored_bytes, drills)


def observed_writes_per_month(files: list[LtxFile], l0_retention: float, now: float) -> float:
    """Syncs that carried a change, from the replica's L0 files of the retention window.

    Each such sync leaves one L0 file, kept for ``l0_retention``: their count
    over that window is the rate that drives the bill.
    """
    recent = sum(1 for f in files if f.level == 0 and f.timestamp.timestamp() > now - l0_retention)
    return recent * 3600 / l0_retention * HOURS_PER_MONTH


def combined(estimates: list[Estimate]) -> Estimate:
    """Several databases' estimates as one bill (the free tier applies to the sum)."""
    parts: dict[str, float] = {}
    for e in estimates:
        for name, count in e.requests.parts:
            parts[name] = parts.get(name, 0.0) + count
    drilled = [e.drills for e in estimates if e.drills is not None]
    drills = Drills(drilled[0].per_hour, drilled[0].interval, sum(d.gets for d in drilled),
                    sum(d.bytes for d in drilled), sum(d.lists for d in drilled)) if drilled else None
    return Estimate(
        writes_per_hour=sum(e.writes_per_hour for e in estimates),
        requests=Requests(*(sum(getattr(e.requests, k) for e in estimates) for k in ("put", "list", "delete", "get")),
                          parts=tuple(parts.items())),
        stored_bytes=sum(e.stored_bytes for e in estimates),
        drills=drills,
    )


@dataclass(frozen=True)
class Projection:
    estimate: Estimate | None  # None: a local replica, which costs nothing
    observed: bool  # the write rate came from the replica, not --writes-per-month
    config: Path
    each: tuple[tuple[str, Estimate], ...] = ()  # per database, where there are several

    def as_dict(self) -> dict[str, Any]:
        if self.estimate is None:
            return {"total_usd": 0.0, "replica": "local"}
        data = self.estimate.as_dict()
        data["writes_observed"] = self.observed
        if self.each:
            data["databases"] = [{"path": path, **e.as_dict()} for path, e in self.each]
        return data

    def as_lines(self) -> list[str]:
        if self.estimate is None:
            return ["local replica: no cloud cost (run 'inv backup.setup' to replicate to R2)"]
        lines = [f"Estimated monthly cost of {self.config}"]
        lines += self.estimate.as_lines()
        if self.each:
            lines.append("Per database (before the free tier):")
            for path, e in self.each:
                lines.append(f"- {path}: ${e.usd(free_tier=False)['total']:.2f}/month, "
                             f"{e.requests.class_a:.0f} Class A/hour, {e.storage_gb:.4f} GB")
        if self.observed:
            lines.append("(write rate observed from the replica's recent files; model another with "
                         "--writes-per-month)")
        return lines


def project(workspace: Workspace, writes_per_month: float | None = None) -> Projection:
    """This workspace's monthly bill from its config, its replicas and their write rates.

    ``writes_per_month`` (a model) is the workspace's total, spread evenly over its databases.
    """
    import time

    config = workspace.config
    if not config.uses_s3:
        return Projection(None, False, config.path)
    observed = writes_per_month is None
    retention = positive_duration("l0-retention", config.l0_retention)
    now = time.time()
    each = []
    databases = workspace.databases
    for db in databases:
        files = db.replica.files()
        timers = Timers.from_config(config, db.sync_interval, db.entry.checkpoint_interval)
        if observed:  # its L0 files are writes and checkpoints
            uploads = observed_writes_per_month(files, retention, now) / HOURS_PER_MONTH
            writes = writes_from_uploads(timers, uploads) * HOURS_PER_MONTH
        else:
            writes = (writes_per_month or 0.0) / max(1, len(databases))
        drills = drills_of(workspace.settings.verify_interval, workspace.settings.verify_interval_text, files)
        each.append((db.name, estimate(timers, writes, sum(f.size for f in files), drills)))
    total = combined([e for _, e in each])  # no database yet: litestream asks nothing
    return Projection(total, observed, config.path, tuple(each) if workspace.several else ())
