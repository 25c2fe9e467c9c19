"""User-facing error types: one line that names the file, key or value at fault.

Library code raises these; `cli_common.user_errors` turns them into Click exceptions and exit codes
(under mpirun, `distributed` prints them once per job).
This module is not for programming errors (those stay ValueError/TypeError with tracebacks).
"""

import contextlib


class CnnError(Exception):
    """A problem the user can fix; str(err) is the whole one-line message, printed after `prefix`.
    CLI exit status 1."""

    exit_code = 1
    prefix = "Error: "


class Stopped(CnnError):
    """A stop the user asked for (SIGINT, SIGTERM, SIGUSR1): not an error, so its line is printed
    as it is, without "Error: ". CLI exit status 130, as a shell gives a process ended by Ctrl-C."""

    exit_code = 130
    prefix = ""
    run_dir = None      # the run folder, when the stop came during or after training (cnn train prints it)


class ConfigError(CnnError):
    """A bad config file, key, value or command-line argument. CLI exit status 2."""

    exit_code = 2


class DataError(CnnError):
    """An unreadable image, an unusable data folder, classes that do not match."""


class CheckpointError(CnnError):
    """A checkpoint that is missing, corrupt, hostile or does not match the config."""


class TrainingDiverged(CnnError):
    """Loss or gradients became non-finite; the last good checkpoint is kept."""

    run_dir = None      # the run's folder (cnn train prints it, as after a stop)


def one_line(err: BaseException) -> str:
    """err's text on one line (its white space folded to single blanks), else its type's name: the
    reason a message quotes from an exception that is not ours (zipfile's, Pillow's, YAML's)."""
    return " ".join(str(err).split()) or type(err).__name__


@contextlib.contextmanager
def main_only():
    """Around work MPI rank 0 does alone for the run (its files, the test after training): a CnnError or
    OSError there is the run's, not rank 0's copy's, so under mpirun it is printed without "rank 0 of K"
    (distributed.fail reads err.main_only)."""
    try:
        yield
    except (CnnError, OSError) as err:
        err.main_only = True
        raise
