"""Templates shipped inside the wheel (installed as ``backup.templates``)."""
