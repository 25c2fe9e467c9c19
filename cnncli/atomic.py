"""Atomic file writes: a temporary file beside the target, fsync, then os.replace, so the target is
either whole or untouched, and a failed write leaves no temporary file behind.

Not a lock: of two concurrent writers the last one wins. Errors are re-raised naming the target
file; why_unwritten words any OSError of a write (errno -> plain words and what to do), for the
callers' own one-line messages and for cli_common's line for an OSError no caller caught.
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


def folder_problem(out) -> str | None:
    """Why the folder `out` goes into cannot take it, or None: it does not exist (a file a command
    writes gets no folders made for it: a typo would put it somewhere new), or it, or a folder
    above it, is a file."""
    parent = Path(out).parent
    for folder in (parent, *parent.parents):
        if os.path.lexists(folder) and not os.path.isdir(folder):
            return f"{str(folder)!r} is not a folder"
        if os.path.isdir(folder):
            return None if folder == parent else f"folder {str(parent)!r} does not exist"
    return f"folder {str(parent)!r} does not exist"


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
    except BaseException as err:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and err.filename in (None, tmp):   # (a write's error names no file;
            err.filename = path                                        # the temporary name means nothing)
        raise


TMP_EXTRA = len(".") + len(".tmp-4194304-") + 8      # what write_atomic's temporary name adds to the name

_WORDS = {       # errno -> (what is wrong, what to do) in plain words
    errno.ENOSPC: ("no space left on the device", "free some space, or write elsewhere"),
    errno.EROFS: ("the file system is read-only", "write elsewhere"),
    errno.EACCES: ("permission denied", "write where you may, or change the folder's permissions"),
    errno.EPERM: ("permission denied", "write where you may, or change the folder's permissions"),
    errno.EFBIG: ("the file is larger than this file system allows", "write elsewhere"),
    errno.EIO: ("the disk or network share failed (input/output error)", "check it, or write elsewhere"),
    errno.EISDIR: ("a folder of that name is in the way", "move it away, or write elsewhere"),
}
if hasattr(errno, "EDQUOT"):
    _WORDS[errno.EDQUOT] = ("the disk quota is used up", "free some space, or ask for a larger quota")
ROOM = tuple(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)   # no room


UNCHANGED = "the previous file there is unchanged"


def kept(path) -> str:
    """"; the previous file there is unchanged" when `path` is a file (call it before write_atomic: a
    failed write leaves it whole), else "": the end of a caller's line for a write that failed."""
    return f"; {UNCHANGED}" if os.path.isfile(path) else ""


def write_failed(err: OSError, path, had: bool, error):
    """The error to raise for a write of `path` that failed with `err`: error(words), words being
    "(why_unwritten); the previous file there is unchanged" (had: a file was there before) or "...;
    nothing was written", carrying err's errno (the caller's advice: once there is room, or elsewhere)."""
    fault = error(f"({why_unwritten(err, path)}); " + (UNCHANGED if had else "nothing was written"))
    fault.errno = err.errno
    return fault


def why_unwritten(err: OSError, path, todo: bool = True) -> str:
    """Why `path` could not be written, in plain words, and (todo=True) what to do: a full disk, a
    used-up quota, a read-only file system, permission denied, a name too long (which part, its length
    and the file system's limit), a file where one of its folders should be (the OS says only "File
    exists" or "Not a directory"), a link to nothing on the way; else the OS's own words. For the
    caller's one line, which names the file."""
    why, fix = _WORDS.get(err.errno, (None, None))
    if err.errno == errno.ENAMETOOLONG:
        why, fix = _too_long(os.fspath(path)), "choose a shorter name"
    elif err.errno in (errno.EEXIST, errno.ENOTDIR, errno.ENOENT):
        for folder in (Path(path), *Path(path).parents):
            if os.path.islink(folder) and not os.path.exists(folder):        # (a dangling link: no file)
                why, fix = f"{folder} is a link to {os.readlink(folder)}, which does not exist", None
                break
            if folder != Path(path) and err.errno != errno.ENOENT and os.path.lexists(folder) \
                    and not os.path.isdir(folder):
                why, fix = f"{folder} is a file, not a folder", None          # (which says what to do)
                break
    if why is None:
        return err.strerror or str(err)
    return f"{why}: {fix}" if todo and fix else why


def os_error_line(err: OSError) -> str:
    """An OSError no caller turned into its own line: the file it names, then why_unwritten's words and,
    where that is the same for a read and a write, what to do (not for permission denied, a failing disk,
    a folder in the way)."""
    if err.errno is None:
        return str(err)
    name = err.filename
    name = os.fsdecode(name) if isinstance(name, (str, bytes)) else None
    words = why_unwritten(err, name or ".", todo=err.errno not in (errno.EACCES, errno.EPERM, errno.EIO, errno.EISDIR))
    return f"{name}: {words}" if name else words


def _too_long(path: str) -> str:
    """Which part of `path` is too long for its file system: a name longer than the file system's
    limit (or within it, but not with write_atomic's temporary name), else the whole path."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):   # (pathconf needs a folder that
        folder = os.path.dirname(folder)                                       # exists; Path.is_dir raises here)
    try:
        limit, path_limit = os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        limit, path_limit = 255, 4096
    parts = Path(path).parts
    for part in parts:
        size = len(os.fsencode(part))
        if size > limit:
            return f"the name {_short(part)} is {_size(part, size)} long, more than the {limit} this file system allows"
    last = parts[-1] if parts else ""
    size = len(os.fsencode(last))
    if size + TMP_EXTRA > limit:
        return (f"the name {_short(last)} is {_size(last, size)} long: with the {TMP_EXTRA} a safe save's temporary "
                f"name adds, more than the {limit} this file system allows")
    return f"the path is {_size(path, len(os.fsencode(path)))} long, more than the {path_limit} this system allows"


def _short(name: str) -> str:
    return repr(name if len(name) <= 24 else name[:20] + "...")


def _size(name: str, size: int) -> str:
    """A name's length as the limit counts it: characters, or bytes when some take more than one."""
    return f"{size} characters" if size == len(name) else f"{size} bytes"
