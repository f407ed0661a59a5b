"""display.py: a progress line per blob, printed once per state off a terminal, redrawn in
place on one; nothing but the events when quiet."""

from __future__ import annotations

import io

from stepbuild.distribution.display import TransferDisplay, blob_key

DIFF_ID = "sha256:" + "0123456789ab" + "cd" * 26


def test_the_key_of_a_blob_is_twelve_hex_digits() -> None:
    assert blob_key(DIFF_ID) == "0123456789ab"


def test_off_a_terminal_each_state_is_a_line_and_bytes_are_not_shown() -> None:
    out = io.StringIO()
    display = TransferDisplay(out, tty=False)
    display.status("aaa", "compressing (gzip)")
    display.bytes("aaa", "pushing", 10, 100)
    display.status("aaa", "pushed 100 B")
    display.message("pushed reg/app:1")
    assert out.getvalue() == ("aaa: compressing (gzip)\naaa: pushed 100 B\n"
                              "pushed reg/app:1\n")
    assert display.events == [("aaa", "compressing (gzip)"), ("aaa", "pushed 100 B")]


def test_on_a_terminal_the_lines_are_redrawn_in_place() -> None:
    out = io.StringIO()
    display = TransferDisplay(out, tty=True)
    display.status("aaa", "downloading")
    display.status("bbb", "downloading")
    display.status("aaa", "downloaded")
    written = out.getvalue()
    assert written.endswith("\x1b[2A\r\x1b[2Kaaa: downloaded\n\r\x1b[2Kbbb: downloading\n")
    display.message("pulled reg/app:1")
    assert out.getvalue().endswith("pulled reg/app:1\n")


def test_quiet_prints_nothing_but_keeps_the_events() -> None:
    out = io.StringIO()
    display = TransferDisplay(out, quiet=True, tty=True)
    display.status("aaa", "exists")
    display.message("pushed reg/app:1")
    assert out.getvalue() == ""
    assert not display.tty
    assert display.events == [("aaa", "exists")]


def test_notes_are_kept_and_shown_only_when_verbose() -> None:
    quiet_stream, loud_stream = io.StringIO(), io.StringIO()
    quiet = TransferDisplay(quiet_stream, tty=False)
    loud = TransferDisplay(loud_stream, tty=False, verbose=True)
    for display in (quiet, loud):
        display.note("mirror m.example/a skipped: 503")
    assert quiet.notes == loud.notes == ["mirror m.example/a skipped: 503"]
    assert quiet_stream.getvalue() == ""
    assert loud_stream.getvalue() == "mirror m.example/a skipped: 503\n"
