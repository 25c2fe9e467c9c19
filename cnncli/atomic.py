"""Atomic file writes: a temporary file beside the target, fsync, then os.replace, so the target is
either whole or untouched, and a failed write leaves no temporary file behind.

Not a lock: of two concurrent writers the last one wins. Errors are re-raised as they come; the
callers turn them into their own one-line messages.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path


PICTURES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".pdf", ".svg")


def picture_target_problem(out, folders=()) -> str | None:
    """Why writing a picture at `out` would destroy something, or None: an existing file that is no
    picture (a config, a checkpoint, notes), or a path inside one of `folders` (the data folders,
    whose images it would replace or join). A message for the caller's one-line error."""
    out = Path(out)
    if out.is_file() and out.suffix.lower() not in PICTURES:
        return "exists and is no picture, so it is not overwritten: remove it first, or give another name"
    here = os.path.realpath(out)
    for folder in folders:
        if folder and os.path.isdir(folder) and here.startswith(os.path.join(os.path.realpath(folder), "")):
            return f"lies in the data folder {folder}, whose images it would replace or join; write it elsewhere"
    return None


def write_atomic(path, write, text: bool = False) -> None:
    """write(f) into `.NAME.tmp-PID-RANDOM` beside `path`, fsync, os.replace onto `path`.
    text=True opens it as UTF-8 text (name bytes that are not UTF-8 written as \\xNN).

    A symlink is written through: its target is replaced, the link stays. A path that exists and is
    no regular file (a FIFO, /dev/stdout, a terminal) is written to directly, as a shell's > does:
    replacing it would put a plain file where the pipe or device was."""
    path = os.path.realpath(os.fspath(path))
    if os.path.exists(path) and not os.path.isfile(path):
        opts = dict(encoding="utf-8", errors="backslashreplace", newline="") if text else {}
        with open(path, "w" if text else "wb", **opts) as f:
            write(f)
        return
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    opts = dict(encoding="utf-8", errors="backslashreplace", newline="") if text else {}
    try:
        with open(tmp, "x" if text else "xb", **opts) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def why_unwritten(err: OSError, path) -> str:
    """Why `path` could not be written, in words: a file where one of its folders should be named
    as such (the OS says only "File exists" or "Not a directory"), else the OS's own words."""
    if err.errno in (errno.EEXIST, errno.ENOTDIR):
        for folder in Path(path).parents:
            if os.path.lexists(folder) and not os.path.isdir(folder):
                return f"{folder} is a file, not a folder"
    return err.strerror or str(err)
