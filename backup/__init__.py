"""chora-backup: continuous, verifiable Litestream backups of a workspace's SQLite database."""
from importlib import metadata

try:
    __version__ = metadata.version("chora-backup")
except metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"
