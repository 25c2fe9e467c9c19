"""atomic.write_atomic: a whole file or the old one, a symlink written through (the link kept), a
FIFO or device written to as a shell's > does, not replaced by a plain file."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from cnncli.atomic import write_atomic


def test_a_new_file_and_a_replaced_one_are_whole_and_leave_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    write_atomic(path, lambda f: f.write("one"), text=True)
    write_atomic(path, lambda f: f.write(b"two"))
    assert path.read_text() == "two" and os.listdir(tmp_path) == ["a.txt"]

    def fails(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        write_atomic(path, fails)
    assert path.read_text() == "two" and os.listdir(tmp_path) == ["a.txt"]


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    (tmp_path / "real.csv").write_text("old")
    (tmp_path / "link.csv").symlink_to("real.csv")
    write_atomic(tmp_path / "link.csv", lambda f: f.write("new"), text=True)
    assert os.path.islink(tmp_path / "link.csv") and (tmp_path / "real.csv").read_text() == "new"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_written_to_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()))
    reader.start()
    write_atomic(fifo, lambda f: f.write("through the pipe"), text=True)
    reader.join(10)
    assert got == ["through the pipe"] and not os.path.isfile(fifo)


def test_a_file_where_a_folder_should_be_is_named_in_the_reason(tmp_path):
    from cnncli.atomic import why_unwritten

    (tmp_path / "bad.png").write_text("x")
    for target in (tmp_path / "bad.png" / "g.png", tmp_path / "bad.png" / "sub" / "g.png"):
        with pytest.raises(OSError) as info:
            write_atomic(target, lambda f: f.write(b"x"))
        assert why_unwritten(info.value, target) == f"{tmp_path / 'bad.png'} is a file, not a folder"
    err = OSError(errno.EBUSY, "Device or resource busy")          # errors without plain words: the OS's
    assert why_unwritten(err, tmp_path / "bad.png" / "g.png") == "Device or resource busy"
