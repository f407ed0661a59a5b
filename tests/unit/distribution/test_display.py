"""display.py: a transfer's states and bytes become `transfer` events, its summary a
`notice`; quiet (or no receiver) sends nothing but keeps the states."""

from __future__ import annotations

import io

from stepbuild.distribution.display import TransferDisplay, blob_key
from stepbuild.progress import make_progress
from stepbuild.progress.events import Event, under_way

DIFF_ID = "sha256:" + "0123456789ab" + "cd" * 26


def test_the_key_of_a_blob_is_twelve_hex_digits() -> None:
    assert blob_key(DIFF_ID) == "0123456789ab"


def test_states_bytes_and_the_summary_are_events() -> None:
    sent: list[Event] = []
    display = TransferDisplay(sent.append)
    display.status("aaa", "compressing (gzip)")
    display.bytes("aaa", "pushing", 10, 100)
    display.bytes("bbb", "downloading", 10, 0)
    display.status("aaa", "pushed 100B")
    display.message("pushed reg/app:1")
    assert [(e.kind, e.key, e.text, e.current, e.total) for e in sent] == [
        ("transfer", "aaa", "compressing (gzip)", None, None),
        ("transfer", "aaa", "pushing", 10, 100),
        ("transfer", "bbb", "downloading", 10, None),  # the size unknown
        ("transfer", "aaa", "pushed 100B", None, None),
        ("notice", "", "pushed reg/app:1", None, None),
    ]
    assert [under_way(e) for e in sent] == [True, True, True, False, False]
    assert display.events == [("aaa", "compressing (gzip)"), ("aaa", "pushed 100B")]


def test_in_the_plain_log_each_state_is_a_line_and_bytes_are_not() -> None:
    out = io.StringIO()
    progress = make_progress("plain", out)
    display = TransferDisplay(progress.emit)
    display.status("aaa", "compressing (gzip)")
    display.bytes("aaa", "pushing", 10, 100)
    display.status("aaa", "pushed 100B")
    display.message("pushed reg/app:1")
    progress.close()
    assert out.getvalue() == "aaa: compressing (gzip)\naaa: pushed 100B\npushed reg/app:1\n"


def test_quiet_sends_nothing_but_keeps_the_states() -> None:
    sent: list[Event] = []
    display = TransferDisplay(sent.append, quiet=True)
    display.status("aaa", "exists")
    display.bytes("aaa", "pushing", 1, 2)
    display.message("pushed reg/app:1")
    assert sent == []
    assert display.events == [("aaa", "exists")]
    assert TransferDisplay().events == []  # no receiver at all


def test_notes_are_kept_and_shown_by_the_plain_log_only_when_verbose() -> None:
    quiet_stream, loud_stream = io.StringIO(), io.StringIO()
    for stream, verbose in ((quiet_stream, False), (loud_stream, True)):
        progress = make_progress("plain", stream)
        display = TransferDisplay(progress.emit, verbose=verbose)
        display.note("mirror m.example/a skipped: 503")
        progress.close()
        assert display.notes == ["mirror m.example/a skipped: 503"]
    assert quiet_stream.getvalue() == ""
    assert loud_stream.getvalue() == "mirror m.example/a skipped: 503\n"
