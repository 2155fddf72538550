"""The replica's storage, for the few objects chora-backup itself reads or writes.

litestream writes and reads the LTX files; chora-backup only keeps its owner
record beside them (litestream ignores other objects under the prefix) and,
to repair a hole, removes LTX files a fresh snapshot covers. Both a folder
(local mode) and an S3 bucket offer the same small interface, with keys
relative to the replica's root (``chora-backup-owner.json``; an L0 file is
``ltx/0/<min>-<max>.ltx`` in a folder but ``0000/<min>-<max>.ltx`` in a bucket,
see ``ltx_key``; ``has_history`` and ``ltx_entries`` read the same layouts).

boto3 is imported only here and only when an S3 replica is opened, so the
commands that never touch the bucket themselves (status) do not pay for it.
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from .config import Settings, require_r2
from .errors import BackupError, missing_bucket, translate
from .files import private_dir, temp_beside
from .ltconfig import Entry
from .ltx import LtxFile

LtxEntry = tuple[int, int, int, int, datetime]  # level, min txid, max txid, size, modified
STORE_TYPES = ("s3", "file")  # the replica kinds chora-backup can open itself


def ltx_key(f: LtxFile, replica_type: str) -> str:
    """Where litestream keeps ``f``, relative to the replica's root.

    The layouts differ (litestream.go's LTXFilePath, s3/replica_client.go): a folder
    has ``ltx/<level>/<min>-<max>.ltx``, a bucket ``<level, 4 hex digits>/<min>-<max>.ltx``.
    """
    name = f"{f.min_txid:016x}-{f.max_txid:016x}.ltx"
    return f"{f.level:04x}/{name}" if replica_type == "s3" else f"ltx/{f.level}/{name}"

class Store(Protocol):
    where: str  # for people: the replica's root

    def read(self, key: str) -> bytes | None: ...

    def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` only if ``key`` does not exist; False when it did."""

    def write(self, key: str, data: bytes) -> None: ...

    def delete(self, keys: Iterable[str]) -> None: ...

    def has_history(self) -> bool:
        """Does the replica hold any LTX file (litestream's history), at any level?"""

    def ltx_entries(self) -> list[LtxEntry]:
        """Every LTX file, all levels, as ``(level, min txid, max txid, size, modified)``: one
        LIST per 1,000 files on S3 (litestream's own listing asks once per level)."""

    def children(self) -> list[str]:
        """The names of the folders (key prefixes) right under the root: where litestream's
        folder replication keeps each database it found."""


class FileStore:
    """A local folder (litestream's ``type: file`` replica)."""

    def __init__(self, root: Path):
        self.root = root
        self.where = str(root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackupError(f"cannot read {self._path(key)}: {exc.strerror}") from None

    def _temp(self, key: str, data: bytes) -> Path:
        path = self._path(key)
        private_dir(path.parent)
        return temp_beside(path, data)

    def create(self, key: str, data: bytes) -> bool:
        # A hard link never replaces an existing name: the record appears whole, once.
        try:
            temp = self._temp(key, data)
            try:
                os.link(temp, self._path(key))
                return True
            except FileExistsError:
                return False
            finally:
                temp.unlink(missing_ok=True)
        except OSError as exc:
            raise BackupError(f"cannot write in {self.root}: {exc.strerror}") from None

    def write(self, key: str, data: bytes) -> None:
        try:
            os.replace(self._temp(key, data), self._path(key))
        except OSError as exc:
            raise BackupError(f"cannot write in {self.root}: {exc.strerror}") from None

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink(missing_ok=True)
            except OSError as exc:
                raise BackupError(f"cannot delete {self._path(key)}: {exc.strerror}") from None

    def has_history(self) -> bool:
        # A folder replica keeps ltx/<level>/<min>-<max>.ltx.
        folder = self._path("ltx")
        return folder.is_dir() and any(folder.rglob("*.ltx"))

    def ltx_entries(self) -> list[LtxEntry]:
        found = []
        try:
            for level in self._path("ltx").iterdir():
                if not level.name.isdigit():
                    continue
                for f in level.iterdir():
                    txids = _ltx_name(f.name)
                    if txids:
                        info = f.stat()
                        modified = datetime.fromtimestamp(info.st_mtime, timezone.utc)
                        found.append((int(level.name), *txids, info.st_size, modified))
        except FileNotFoundError:
            return found
        except OSError as exc:
            raise BackupError(f"cannot read {self.root}: {exc.strerror}") from None
        return found

    def children(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackupError(f"cannot read {self.root}: {exc.strerror}") from None


class S3Store:
    """An S3 bucket and key prefix (Cloudflare R2, or any S3-compatible store)."""

    def __init__(self, entry: Entry, settings: Settings, client: Any = None):
        self.bucket = entry.bucket or ""
        self.prefix = entry.location.strip("/")
        self.where = f"s3://{self.bucket}/{self.prefix}"
        self._settings = settings
        self._client = client or _client(entry, settings)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, method)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404") and method == "get_object":
                return None
            if code in ("PreconditionFailed", "412") and method == "put_object":
                return False
            if code == "NoSuchBucket":
                raise BackupError(missing_bucket([self.bucket]) or "") from None
            message = translate(code, f"the storage endpoint refused {method} ({code})")
            raise BackupError(self._settings.mask(message)) from None
        except BotoCoreError as exc:
            raise BackupError(self._settings.mask(
                f"cannot reach the storage endpoint ({type(exc).__name__}): check R2_ENDPOINT "
                "and your network"
            )) from None

    def read(self, key: str) -> bytes | None:
        answer = self._call("get_object", Key=self._key(key))
        if answer is None:
            return None
        return self._call_body(answer["Body"])

    def _call_body(self, body: Any) -> bytes:
        from botocore.exceptions import BotoCoreError

        try:
            with contextlib.closing(body):
                return body.read()
        except (BotoCoreError, OSError) as exc:
            raise BackupError(
                f"the storage endpoint broke off a download ({type(exc).__name__}): check your "
                "network and try again"
            ) from None

    def create(self, key: str, data: bytes) -> bool:
        answer = self._call("put_object", Key=self._key(key), Body=data, IfNoneMatch="*")
        return answer is not False

    def write(self, key: str, data: bytes) -> None:
        self._call("put_object", Key=self._key(key), Body=data)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), 1000):  # the most one DeleteObjects takes
            batch = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
            self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})

    def has_history(self) -> bool:
        # A bucket keeps <prefix>/<level as 4 hex digits>/<min>-<max>.ltx: one LIST of
        # the "folders" under the prefix tells.
        root = self._key("")
        answer = self._call("list_objects_v2", Prefix=root, Delimiter="/")
        levels = [p["Prefix"][len(root):].rstrip("/") for p in answer.get("CommonPrefixes") or []]
        return any(_is_level(level) for level in levels)

    def ltx_entries(self) -> list[LtxEntry]:
        root = self._key("")
        found = []
        token: dict[str, str] = {}
        while True:
            answer = self._call("list_objects_v2", Prefix=root, **token)
            for obj in answer.get("Contents") or []:
                level, _, name = obj["Key"][len(root):].partition("/")
                txids = _ltx_name(name)
                if txids and _is_level(level):
                    found.append((int(level, 16), *txids, int(obj["Size"]), obj["LastModified"]))
            if not answer.get("IsTruncated"):
                return found
            token = {"ContinuationToken": answer["NextContinuationToken"]}


    def children(self) -> list[str]:
        root = self._key("")
        names: list[str] = []
        token: dict[str, str] = {}
        while True:
            answer = self._call("list_objects_v2", Prefix=root, Delimiter="/", **token)
            names += [p["Prefix"][len(root):].rstrip("/") for p in answer.get("CommonPrefixes") or []]
            if not answer.get("IsTruncated"):
                return sorted(names)
            token = {"ContinuationToken": answer["NextContinuationToken"]}


_LTX_NAME = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})\.ltx")
_LEVEL = re.compile(r"[0-9a-f]{4}")


def _is_level(name: str) -> bool:
    """A bucket's level folder: the level as four hex digits (``0000``, ``0009``)."""
    return _LEVEL.fullmatch(name) is not None


def _ltx_name(name: str) -> tuple[int, int] | None:
    """``<min>-<max>.ltx`` as its two txids; None for any other name (a .tmp, a record)."""
    match = _LTX_NAME.fullmatch(name)
    return (int(match.group(1), 16), int(match.group(2), 16)) if match else None


def _client(entry: Entry, settings: Settings) -> Any:
    """A boto3 S3 client that uses exactly our credentials, and nothing from the machine."""
    import boto3
    from botocore.config import Config

    require_r2(settings)
    if not entry.endpoint or "://" not in entry.endpoint:
        raise BackupError(
            f"the S3 endpoint {entry.endpoint!r} in litestream.yml is not an http(s) URL: fix it, "
            "or regenerate the file with 'inv backup.setup'"
        )
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        region_name=entry.region or "auto",
        botocore_session=_bare_session(),
    )
    return session.client(
        "s3",
        endpoint_url=entry.endpoint,
        config=Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"},
            # S3-compatible stores differ in the newer default checksums; send them only
            # where the API requires them (DeleteObjects).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def _bare_session() -> Any:
    """A botocore session blind to AWS_PROFILE: our credentials are explicit."""
    import botocore.session

    # (config file key, environment variable, default, converter): no variable to read.
    return botocore.session.Session(session_vars={"profile": (None, None, None, None)})


def open_store(entry: Entry, settings: Settings) -> Store:
    """The store behind one database's replica, as litestream.yml names it."""
    if entry.replica_type == "s3":
        return S3Store(entry, settings)
    if entry.replica_type == "file":
        return FileStore(Path(entry.location).expanduser())
    raise BackupError(f"replica type {entry.replica_type!r} is not supported by chora-backup")
