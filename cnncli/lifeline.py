"""The process's stop policy: worker processes that end with their parent (PR_SET_PDEATHSIG, Linux),
stop signals held while a pool starts them, and what the stop lines share (ENDING, the signals
inherited ignored, switching, restoring and ignoring the stop handlers, a closed terminal, a reader
that left). Not a pool: it starts nothing, and says no stop's line (callbacks.py does).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

# the signals that stop a run gracefully (SIGHUP: its terminal closed; not on Windows)
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())


def silence_closed_terminal(signum) -> None:
    """On SIGHUP (the terminal closed): stdout and stderr that are that terminal go to /dev/null, so
    the steps to the stop and the save do not fail writing to it (EIO); a file or pipe stays."""
    if signum != getattr(signal, "SIGHUP", None):
        return
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                silence(fd)


def silence(fd: int) -> None:
    """Descriptor fd (1 or 2) to /dev/null: its reader left, and what is still written there (the exit's
    own flush too) fails no more."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)


def reader_left() -> None:
    """Standard error's reader is gone (`cnn train ... 2>&1 | head`): its lines go to /dev/null from
    now on, and where a stop handler is installed the run stops as when its terminal closes (SIGHUP:
    after the step, saved, resumable) instead of ending at the failed write, unsaved."""
    silence(2)
    sig = getattr(signal, "SIGHUP", None)
    if sig is not None and callable(signal.getsignal(sig)):
        signal.raise_signal(sig)


def die_with_parent(parent: int) -> None:
    """In a worker whose parent has pid `parent`: ask the kernel for SIGKILL when the parent dies,
    and exit now if it died already (before the request could be made)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)    # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


@contextlib.contextmanager
def stops_held():
    """Within: SIGINT, SIGTERM and SIGUSR1 wait for the block's end, then act as they would have
    (in the order they came). Around a pool's start and its submits: a stop raised as an
    exception between a worker's fork and the pool's record of it left a worker that no shutdown
    ends and that the process's exit waits for, forever. Outside the main thread (no handlers can
    be set there) and for a handler set outside Python, it holds nothing."""
    came, old = [], {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOPS:
            if signal.getsignal(sig) is not None:
                old[sig] = signal.signal(sig, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        restore(old)
        for signum in came:
            signal.raise_signal(signum)


def take_sigint(handler) -> dict:
    """handler for SIGINT in place of Python's own (KeyboardInterrupt) -> {SIGINT: the one it replaced},
    for restore(); {} and nothing done outside the main thread or when SIGINT has another handler (ignored
    since the process started, as in a script's background job)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return {}
    return {signal.SIGINT: signal.signal(signal.SIGINT, handler)}


ENDING = [False]    # cli.main sets it: the process is cnn's own (not a caller's Python, as under CliRunner), so
                    # a process whose stop's line is under way ends, and a second stop is ignored
INHERITED_IGNORED: set = set()   # cli.main: the stop signals the process started with ignored (SIGHUP under
                                 # nohup, SIGINT in a script's background job) stay ignored, as POSIX tools do


def note_inherited_ignored() -> None:
    """Remember which stop signals this process started with ignored (INHERITED_IGNORED)."""
    INHERITED_IGNORED.update(sig for sig in STOPS if signal.getsignal(sig) == signal.SIG_IGN)


def after_a_stop(old: dict) -> None:
    """What a stop handler's context does on leaving after a stop: in the `cnn` process (ENDING), the
    stop signals stay ignored (a second SIGTERM while the stop unwinds ended the process by the
    signal, after its line); elsewhere (the API, tests) the handlers `old` are put back."""
    if ENDING[0]:
        ignore_stops(sigint=True)
    else:
        restore(old)


def restore(old: dict) -> None:
    """Put back the handlers `old` ({signal: handler}) that a signal.signal call replaced."""
    for sig, handler in old.items():
        signal.signal(sig, handler)


def ignore_stops(sigint: bool = False) -> None:
    """SIGTERM, SIGUSR1 and SIGHUP ignored from now on (SIGINT too when `sigint`). For an MPI rank other
    than 0 whose part of `cnn train` is done: it only waits for rank 0 to test and report, then
    exits. A stop that mpirun forwards has nothing left to stop there (rank 0 says what it left
    undone), and the signal's default action would end the rank by it and fail the job. With sigint:
    for a command whose work is done and said, while the process ends (cli.main)."""
    for sig in STOPS:
        if sigint or sig != signal.SIGINT:
            signal.signal(sig, signal.SIG_IGN)
