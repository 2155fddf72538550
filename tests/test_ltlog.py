"""litestream's log read in one place: tables of recorded lines, in its text and JSON formats."""
from __future__ import annotations

import pytest

from backup import ltlog

T = "2026-12-06T07:50:01.123456789Z"
SECONDS = 1796543401.123456  # T as epoch seconds (to the microsecond Python keeps)

# (text line, the same as litestream's JSON logging writes it)
PAIRS = [
    (f'time={T} level=INFO msg="litestream shut down"',
     f'{{"time":"{T}","level":"INFO","msg":"litestream shut down"}}'),
    (f'time={T} level=ERROR msg="sync error" db=chora.db error="s3: NoSuchBucket: \\"b\\" gone"',
     f'{{"time":"{T}","level":"ERROR","msg":"sync error","db":"chora.db","error":"s3: NoSuchBucket: \\"b\\" gone"}}'),
    (f'time={T} level=ERROR msg="heartbeat ping failed" system=store url=**** error="timeout"',
     f'{{"time":"{T}","level":"ERROR","msg":"heartbeat ping failed","system":"store","url":"****","error":"timeout"}}'),
    (f'time={T} level=WARN msg="failed to start control server" error="listen unix: bind: too long"',
     f'{{"time":"{T}","level":"WARN","msg":"failed to start control server","error":"listen unix: bind: too long"}}'),
    (f'time={T} level=INFO msg="replica sync" db="my data.db" txid.replica=0000000000000001 txid.db=0000000000000002',
     f'{{"time":"{T}","level":"INFO","msg":"replica sync","db":"my data.db","txid":{{"replica":"0000000000000001","db":"0000000000000002"}}}}'),
    (f'time={T} level=INFO msg="follow: applied updates" txid=0000000000000009',
     f'{{"time":"{T}","level":"INFO","msg":"follow: applied updates","txid":"0000000000000009"}}'),
]


@pytest.mark.parametrize("text, json_line", PAIRS, ids=[p[0].split('msg="')[1].split('"')[0] for p in PAIRS])
def test_both_formats_read_as_the_same_event(text, json_line):
    a, b = ltlog.parse(text), ltlog.parse(json_line)
    assert (a.msg, a.level, a.attrs) == (b.msg, b.level, b.attrs)
    assert a.time == pytest.approx(SECONDS, abs=1e-5) and b.time == pytest.approx(SECONDS, abs=1e-5)


def test_the_fields_everyone_asks_for():
    event = ltlog.parse(PAIRS[1][1])
    assert event.db == "chora.db" and event.error == 's3: NoSuchBucket: "b" gone' and event.is_error
    nested = ltlog.parse(PAIRS[4][1])
    assert nested.db == "my data.db" and nested.attrs["txid.db"] == "0000000000000002"


def test_a_bare_line_is_an_event_too():
    bare = ltlog.parse("Error: open config: no such file")
    assert bare.is_error and bare.level == "" and bare.time is None
    assert ltlog.parse("some other output").is_error is False


@pytest.mark.parametrize("form", [0, 1], ids=["text", "json"])
def test_what_each_reader_asks(form):
    lines = [pair[form] for pair in PAIRS]
    found = ltlog.events("\n".join(lines))
    assert [e.msg for e in ltlog.sync_errors(found)] == ["sync error"]  # not the heartbeat's
    assert ltlog.first_error(found).msg == "sync error"
    assert ltlog.shutdown(found) is True
    assert ltlog.last_shutdown(found) == pytest.approx(SECONDS, abs=1e-5)
    assert any(e.says(ltlog.SOCKET_FAILED) for e in found)
    assert any(e.says(ltlog.APPLIED) for e in found)


@pytest.mark.parametrize("said, expected", [
    (['time=2026-12-06T07:50:01Z level=ERROR msg="shutdown sync failed after timeout"',
      'time=2026-12-06T07:50:02Z level=INFO msg="litestream shut down"'], False),
    (['{"time":"2026-12-06T07:50:01Z","level":"WARN","msg":"shutdown sync skipped"}'], False),
    (['time=2026-12-06T07:50:01Z level=INFO msg="signal received, litestream shutting down"'], None),
    ([], None),
])
def test_a_stop_that_did_not_sync_is_told_apart(said, expected):
    assert ltlog.shutdown(ltlog.events("\n".join(said))) is expected
