"""Root namespace: the ``backup`` collection from the installed chora-backup package.

Copy this file into any workspace that has chora-backup installed to get
``inv backup.setup``, ``inv backup.start-bg``, and the rest.
"""
from invoke import Collection

from backup.tasks import ns as backup

ns = Collection(backup)
