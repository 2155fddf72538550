"""Zero secrets in anything the tool printed or wrote during the whole reliability suite.

Every reliability workspace is scanned as its test ends, after its processes are
stopped (see ``scanned_workspace``): everything it printed, every file under its
root but the ``.env`` the test wrote, and every object in its bucket. This test
runs after all the others (``pytest_collection_modifyitems``) and checks the sum.
"""
from __future__ import annotations

import pytest


def test_no_secret_in_any_output_file_or_replica_object_of_the_suite(ledger, report):
    if not ledger.workspaces:
        pytest.skip("no reliability scenario ran in this session")
    assert ledger.hits == []
    assert ledger.outputs and ledger.files and ledger.objects
    report(
        f"secrets: 0 hits in {ledger.outputs} outputs, {ledger.files} files and "
        f"{ledger.objects} replica objects ({ledger.bytes / 1e6:.1f} MB) "
        f"of {ledger.workspaces} workspaces"
    )
