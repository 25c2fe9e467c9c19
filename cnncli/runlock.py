"""Which process trains a run folder: the lock hold() takes on its .claimed marker (a second process
resuming the run meanwhile is refused), training_now() for those who only ask, and giving back a
claimed folder a run never wrote into. Not the folder's creation or its files (runfolder.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:             # (Windows: run folders are not locked)
    fcntl = None

from cnncli.errors import CnnError
from cnncli.runfolder import CREATED, printable


def release(folder: Path) -> None:
    """Give back a run folder this process claimed and wrote nothing into: its marker goes, and the
    folder too when this process made it (runfolder.CREATED; an empty folder the user made stays),
    so the next run of the same `out` gets the name (a folder with files stays)."""
    let_go(folder)
    try:
        if all(p.name == ".claimed" for p in folder.iterdir()):
            (folder / ".claimed").unlink(missing_ok=True)
            if os.path.realpath(folder) in CREATED:
                folder.rmdir()
    except OSError:
        pass


_HELD: dict = {}      # run folder (real path) -> its open .claimed file, whose lock this process holds


def discard_unstarted(folder: Path) -> None:
    """A new run with nothing to resume (stopped before its first step, or its first checkpoint not
    saved): the files its start and first epoch wrote (config.yaml, skipped.txt, metrics.csv) go,
    then the folder as release() gives it back. A folder with a checkpoint is left alone."""
    folder = Path(folder)
    if any((folder / name).exists() for name in ("last.npz", "best.npz")):
        return
    for name in ("config.yaml", "skipped.txt", "metrics.csv"):
        with contextlib.suppress(OSError):
            (folder / name).unlink(missing_ok=True)
    release(folder)


def release_all() -> None:
    """release() every run folder this process holds: after a set-up that did not finish (a stop, an
    error), a new run's folder that holds nothing but its marker goes; one with files stays."""
    for key in list(_HELD):
        release(Path(key))


def hold(folder: Path) -> None:
    """Lock the run folder for this process's training (an exclusive flock on its .claimed file,
    which then names this process), until let_go or the process's end: a second process resuming
    the run while it trains (or a first run still training) is refused, naming it, instead of both
    writing its checkpoints and metrics. Where files cannot be locked the folder is not held."""
    key = os.path.realpath(folder)
    if fcntl is None or key in _HELD:
        return
    try:
        f = open(Path(folder) / ".claimed", "a+", encoding="utf-8")
    except OSError:
        return
    try:
        for wait in (0.05, 0.1, 0.2, None):      # (cnn runs' training_now holds the lock for a moment)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if wait is None:
                    raise
                time.sleep(wait)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip()
        f.close()
        who = _holder_text(pid)
        how = f"Ctrl-C in its terminal, or kill -TERM {pid}: it saves" if pid.isdigit() else "Ctrl-C saves"
        raise CnnError(f"{printable(str(folder))}: {who} is training this run now; let it finish, or stop it "
                       f"({how}) and resume then") from None
    except OSError:                            # (a file system without locks)
        f.close()
        return
    f.seek(0)
    f.truncate()
    with contextlib.suppress(OSError):         # (a full disk: the lock holds all the same; the pid only
        os.write(f.fileno(), f"{os.getpid()}\n".encode())    # names the holder, and the run's next write
    _HELD[key] = f                                           # says what is wrong, naming its file)


def _holder_text(pid: str) -> str:
    """'another cnn process (pid N)' of the pid a .claimed file holds ('another cnn process' without one)."""
    return f"another cnn process (pid {pid})" if pid.isdigit() else "another cnn process"


def holder(folder: Path) -> str:
    """_holder_text of the process the run folder's .claimed names (the one that holds or last held it)."""
    try:
        pid = (Path(folder) / ".claimed").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return _holder_text(pid)


def training_now(folder: Path) -> bool:
    """Whether a process holds the run folder (hold()'s lock): it trains the run now."""
    if fcntl is None:
        return False
    try:
        f = open(Path(folder) / ".claimed", "rb")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:                            # (a file system without locks)
            return False
    return False


def let_go(folder: Path | None = None) -> None:
    """Give back hold()'s lock on the run folder, or on every folder this process holds (None);
    nothing when it holds none."""
    for key in list(_HELD) if folder is None else [os.path.realpath(folder)]:
        f = _HELD.pop(key, None)
        if f is not None:
            f.close()
