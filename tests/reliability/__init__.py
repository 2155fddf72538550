"""The reliability suite: the real daemon under faults and load (issue 6).

A package, so its conftest.py is imported as ``reliability.conftest`` and does
not take the place of the top-level ``conftest`` the other test modules import.
"""
