"""backup.child: the one runner of a child a command waits for (issue 25)."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from backup import child, query
from backup.errors import BackupError


def test_a_child_past_its_timeout_is_stopped_and_named():
    with pytest.raises(child.ChildTimeout, match=r"^the sleeper did not answer within 0.3s$"):
        child.run([sys.executable, "-c", "import time; time.sleep(30)"], 0.3, what="the sleeper")


def test_output_input_and_environment_reach_the_child():
    done = child.run([sys.executable, "-c", "import os, sys; print(sys.stdin.read() + os.environ['X'])"],
                     30, input="in-", env={"X": "env"})
    assert done.returncode == 0 and done.stdout == "in-env\n"


def test_a_query_that_outlives_its_hour_says_what_to_do_instead(monkeypatch):
    def stuck(argv, timeout, **kwargs):
        assert timeout == query.QUERY_TIMEOUT == 3600
        raise child.ChildTimeout(f"{kwargs['what']} did not answer within {timeout:g}s")

    monkeypatch.setattr(child, "run", stuck)

    class Settings:
        @staticmethod
        def mask(text):
            return text

    workspace = SimpleNamespace(settings=Settings(), litestream=SimpleNamespace(environment=dict))
    db = SimpleNamespace(entry=SimpleNamespace(replica_type="file", location="/nowhere"))
    with pytest.raises(BackupError, match=r"the query did not answer within 3600s \(it was stopped\): "
                                          r"narrow it .*'inv backup.restore --output PATH'"):
        query._ask({}, workspace, db, [])
