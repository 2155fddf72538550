"""LTX files as litestream lists them, and what follows from a listing alone.

``LtxFile`` is the one type for a file of a replica; ``plan`` is the restore chain
(mirroring litestream's replica.go CalcRestorePlan, so a hole is named before
litestream trips over it); ``window`` the restorable window. Pure: no I/O, so the
store, the replica and every capability can share it without importing each other.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import hole_message, missing_txids
from .timeparse import from_litestream, iso_z

SNAPSHOT_LEVEL = 9
# A restore plans from one listing of the snapshot level and of each of levels 8 to 0
# (replica.go's CalcRestorePlan), then reads each file of the plan.
LISTS_PER_PLAN = 10


@dataclass(frozen=True)
class LtxFile:
    level: int
    min_txid: int
    max_txid: int
    size: int
    timestamp: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "min_txid": f"{self.min_txid:016x}",
            "max_txid": f"{self.max_txid:016x}",
            "size": self.size,
            "timestamp": iso_z(self.timestamp),
        }


@dataclass(frozen=True)
class Hole:
    """Txids no file of the replica holds: a restore stops before them."""

    from_txid: int
    to_txid: int

    def message(self) -> str:
        return hole_message(self.from_txid, self.to_txid)

    def as_dict(self) -> dict[str, str]:
        return {"from_txid": f"{self.from_txid:016x}", "to_txid": f"{self.to_txid:016x}"}


@dataclass(frozen=True)
class Plan:
    """The files a restore of the latest state reads, and the hole it stops at, if any."""

    files: tuple[LtxFile, ...]
    hole: Hole | None

    @property
    def max_txid(self) -> int | None:
        return self.files[-1].max_txid if self.files else None

    @property
    def restorable(self) -> bool:
        return bool(self.files) and self.hole is None


def _reaches_further(new: LtxFile, old: LtxFile) -> bool:
    """litestream's restoreCandidateBetter: further, then wider, then higher level, then older."""
    return (new.max_txid, -new.min_txid, new.level, -new.timestamp.timestamp()) > (
        old.max_txid, -old.min_txid, old.level, -old.timestamp.timestamp()
    )


def plan(files: Iterable[LtxFile]) -> Plan:
    """How litestream plans a restore of the latest state (replica.go's CalcRestorePlan).

    The newest snapshot (level 9) starts the chain; then, again and again, the file
    from any level 0-8 that starts no later than the next txid and reaches furthest
    extends it. A file left over that starts past the chain's end is a hole:
    litestream refuses that restore ("non-contiguous ltx files"). Files the chain
    has passed are never useful again, so one walk in order of first txid suffices.
    Where litestream names the next file of the highest level, the hole here ends
    at the first file of any level: the txids really missing.
    """
    files = list(files)
    snapshots = [f for f in files if f.level == SNAPSHOT_LEVEL]
    chain = [max(snapshots, key=lambda f: (f.min_txid, f.max_txid))] if snapshots else []
    reach = chain[0].max_txid if chain else 0
    rest = sorted((f for f in files if f.level < SNAPSHOT_LEVEL), key=lambda f: (f.min_txid, f.max_txid))
    i = 0
    while True:
        best = None
        while i < len(rest) and rest[i].min_txid <= reach + 1:
            if rest[i].max_txid > reach and (best is None or _reaches_further(rest[i], best)):
                best = rest[i]
            i += 1
        if best is None:
            break
        chain.append(best)
        reach = best.max_txid
    hole = Hole(reach + 1, rest[i].min_txid - 1) if i < len(rest) else None
    return Plan(tuple(chain), hole)


@dataclass(frozen=True)
class Window:
    """The earliest and latest point a restore can reach, across all levels."""

    earliest: datetime
    latest: datetime
    min_txid: int
    max_txid: int
    hole: Hole | None = None  # the txids after ``max_txid`` that no file holds

    def describe(self) -> str:
        text = (
            f"{iso_z(self.earliest)} to {iso_z(self.latest)} "
            f"(txid {self.min_txid:016x} to {self.max_txid:016x})"
        )
        if self.hole:
            text += f"; then {missing_txids(self.hole.from_txid, self.hole.to_txid)}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "earliest": iso_z(self.earliest),
            "latest": iso_z(self.latest),
            "min_txid": f"{self.min_txid:016x}",
            "max_txid": f"{self.max_txid:016x}",
            "hole": self.hole.as_dict() if self.hole else None,
        }


def parse_files(raw: Iterable[dict[str, Any]]) -> list[LtxFile]:
    """``ltx -json`` elements as LtxFile: the one parser of litestream's listings."""
    return [
        LtxFile(
            level=int(f["level"]),
            min_txid=int(f["min_txid"], 16),
            max_txid=int(f["max_txid"], 16),
            size=int(f["size"]),
            timestamp=from_litestream(f["timestamp"]),
        )
        for f in raw
    ]


def window(files: list[LtxFile]) -> Window | None:
    """Restorable window: from the first file that starts the chain to the newest it reaches.

    Files past a hole are out of reach (see ``plan``): the window ends before it.
    """
    starts = [f for f in files if f.min_txid == 1]
    if not starts:
        return None
    hole = plan(files).hole
    reached = [f for f in files if hole is None or f.max_txid < hole.from_txid]
    first = min(starts, key=lambda f: (f.timestamp, f.max_txid))
    return Window(
        earliest=first.timestamp,
        latest=max(f.timestamp for f in reached),
        min_txid=first.max_txid,
        max_txid=max(f.max_txid for f in reached),
        hole=hole,
    )
