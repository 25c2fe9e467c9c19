"""Atomic file writes: a temporary file beside the target, fsync, then os.replace, so the target is
either whole or untouched, and a failed write leaves no temporary file behind.

Not a lock: of two concurrent writers the last one wins. Errors are re-raised as they come; the
callers turn them into their own one-line messages.
"""

from __future__ import annotations

import os
import secrets


def write_atomic(path, write, text: bool = False) -> None:
    """write(f) into `.NAME.tmp-PID-RANDOM` beside `path`, fsync, os.replace onto `path`.
    text=True opens it as UTF-8 text (name bytes that are not UTF-8 written as \\xNN)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
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
