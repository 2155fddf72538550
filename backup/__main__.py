"""``python -m backup``: the ``chora-backup`` console script, where that script is not found."""
from .cli import main

main()
