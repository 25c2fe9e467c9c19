"""The `cnn` process around its commands: closed standard streams put back on /dev/null before
anything prints, and what ranks other than 0 of an MPI job do with Click's own output. No command
lives here (cli.py, cli_tools.py), and nothing heavy is imported.
"""

from __future__ import annotations

import os
import sys
import time

import click


CLOSED = set()      # the standard streams ("stdout", ...) cnn found closed and put on /dev/null


def open_standard_streams() -> None:
    """Closed standard streams (`cnn train ... 2>&-` under cron) on /dev/null: Python leaves
    sys.stderr None (a crash at the first progress line), and the next file the process opened
    would get descriptor 2, where C libraries' messages would then be written. Each is named in
    CLOSED (a command whose results go to standard output refuses to run into /dev/null). sys.stderr
    becomes a LossyStderr."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            if os.open(os.devnull, os.O_RDWR) == fd:           # (the lowest free descriptor: this one)
                setattr(sys, name, open(fd, mode, closefd=False))
                CLOSED.add(name)
    if sys.stderr is not None and not isinstance(sys.stderr, LossyStderr):
        sys.stderr = LossyStderr(sys.stderr)


class LossyStderr:
    """sys.stderr whose failing write (`2>/dev/full`, a full disk, an I/O error) puts descriptor 2 on
    /dev/null and goes on, as a closed stderr does: a run's lines are lost, not the run (which the
    error line, written to the same failing stream, ended with exit 1). A reader that left
    (BrokenPipeError) still raises: cnn train stops as when its terminal closes."""

    def __init__(self, stream):
        self._stream = stream

    def _lost(self) -> None:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())     # (the failed bytes still buffered: flushed into it)
            os.close(null)
        except (OSError, ValueError):                # (no descriptor: replaced, closed)
            pass

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError:
            self._lost()
            return len(text)

    def flush(self):
        try:
            return self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError:
            self._lost()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def escape_unencodable() -> None:
    """Standard output and error in an encoding other than UTF-8 (a Windows console's or redirected
    file's cp1252, PYTHONIOENCODING=latin-1) write a character it lacks as \\uXXXX: a path or class name
    with one (`runs/łódź`) ends no command in a UnicodeEncodeError after its work is done."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("_", "-")
        if encoding not in ("utf-8", "utf8") and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (OSError, ValueError):   # (a stream that cannot change: left as it is)
                pass


def require_stdout(what: str) -> None:
    """A one-line error when standard output was closed (`cnn predict ... >&-`): `what` (the
    predictions, the metrics) would go to /dev/null, and the command would end as if it had given them."""
    if "stdout" in CLOSED:
        raise click.ClickException(f"standard output is closed: {what} would be lost; redirect it to a file "
                                   "(> FILE)")


def other_rank_main(group) -> None:
    """cnn on rank 1, 2, ... of an MPI job: Click's own output (--help, --version, an unknown option
    or command) is rank 0's to print; the ranks still exit with its status. Everything else these
    ranks say goes to stderr (train and cv print on rank 0 alone), so their stdout is /dev/null.
    group: the `cnn` Click group."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    try:
        code = group.main(prog_name="cnn", standalone_mode=False)   # (an Exit's code: --help, the group's exit)
        code = code if isinstance(code, int) and not isinstance(code, bool) else 0
    except click.exceptions.Exit as done:                      # (Click versions that raise it instead)
        code = done.exit_code
    except click.ClickException as err:          # (the command line's own error: rank 0 shows it)
        code = err.exit_code
    except click.exceptions.Abort:
        code = 1
    if code:                                     # rank 0's line first: a failed rank gets the others killed
        from cnncli.distributed import LINE_WAIT

        time.sleep(LINE_WAIT)
    sys.exit(code)
