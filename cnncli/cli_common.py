"""What every `cnn` command shares: user errors turned into one line and an exit code, a command run
on every MPI rank, names made printable, JSON lists echoed item by item, a checkpoint argument resolved,
cnn predict's arguments checked before any work. No command lives here
(cli.py, cli_tools.py); nothing heavy is imported, so `cnn --help` stays instant.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

import click

from cnncli.errors import CnnError


class UserError(click.ClickException):
    """One line on stderr: "Error: " and the message (a requested stop: prefix "", the message alone)."""

    def __init__(self, message: str, exit_code: int = 1, prefix: str = "Error: "):
        super().__init__(message)
        self.exit_code = exit_code
        self.prefix = prefix

    def show(self, file=None):
        try:
            if self.prefix == "Error: ":
                return super().show(file)
            click.echo(self.prefix + self.format_message(), file=file or sys.stderr)
        except BrokenPipeError:   # (stderr's reader left: the exit status still says it, not click's 1)
            from cnncli.lifeline import silence

            silence(2)


def run_line(message) -> None:
    """A line of a training run (cnn train, cnn cv) on stderr; when its reader has left (`cnn train ...
    2>&1 | head`) the run stops as when its terminal closes: saved, resumable (lifeline.reader_left)."""
    try:
        click.echo(message, err=True)
    except BrokenPipeError:
        from cnncli.lifeline import reader_left

        reader_left()


def user_errors(fn):
    """Turn CnnError (and OS errors on user paths, Ctrl-C) into one line on stderr, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CnnError as err:
            raise UserError(printable(str(err)), err.exit_code, err.prefix) from None
        except KeyboardInterrupt:
            raise UserError("interrupted", 130) from None
        except MemoryError as err:   # (numpy says how much it could not allocate)
            raise UserError(f"out of memory ({str(err) or 'MemoryError'})", 1) from None
        except BrokenPipeError:  # `cnn predict ... | head`: the reader left; stop quietly, with the
            from cnncli.lifeline import silence

            silence(sys.stdout.fileno())   # status a shell gives a process SIGPIPE ended (141), not 1: that
            sys.exit(128 + 13)             # means some files failed
        except OSError as err:
            if _stdout_failed(err):      # `cnn predict ... > out.txt` on a full disk, or > /dev/full
                raise UserError(f"cannot write to standard output: {err.strerror or err}", 1) from None
            raise UserError(os_error_text(err), 1) from None

    return wrapper


def _stdout_failed(err: OSError) -> bool:
    """Whether err (naming no file) came from writing standard output: a frame it passed through was
    writing to a stream on stdout's descriptor (click.echo's `file`). Standard output then goes to
    /dev/null, so the exit's own flush of what is left adds no second error."""
    if err.filename is not None:
        return False
    try:
        out = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    tb = err.__traceback__
    while tb is not None:
        stream = tb.tb_frame.f_locals.get("file")
        try:
            if stream is not None and stream.fileno() == out:
                break
        except (AttributeError, OSError, ValueError):
            pass
        tb = tb.tb_next
    if tb is None:
        return False
    os.dup2(os.open(os.devnull, os.O_WRONLY), out)
    return True


def os_error_text(err: OSError) -> str:
    """An OS error no caller caught, as one line (atomic.os_error_line: the file, what is wrong in plain
    words). One that names no file, raised because the current folder has been deleted (a relative
    path cannot be resolved), says so."""
    from cnncli.atomic import os_error_line

    if err.filename is None and isinstance(err, FileNotFoundError):
        try:
            os.getcwd()
        except FileNotFoundError:
            return "the current folder no longer exists (deleted since this shell entered it): cd to a folder " \
                   "that exists and run the command again"
    return printable(os_error_line(err))


def other_rank() -> bool:
    """True in a process an MPI launcher started as rank 1, 2, ... (numpy-free when there is none)."""
    if not any(k.endswith("RANK") for k in os.environ):
        return False
    from cnncli.distributed import launcher_rank

    return launcher_rank() not in (None, 0)


def on_every_rank(fn, *args):
    """fn(comm, *args) with the MPI communicator (one process: distributed.Comm). Under mpirun a
    CnnError or OSError ends every rank with one line (distributed.fail) and a bug or a second
    Ctrl-C aborts the job rather than hang it; in one process errors go on to user_errors."""
    from cnncli import distributed

    comm = distributed.get_comm()
    try:
        return fn(comm, *args)
    except (CnnError, OSError) as err:
        if comm.size == 1:
            raise
        distributed.fail(comm, err)     # one rank's error ends the job; every rank's is printed once
    except (Exception, KeyboardInterrupt):
        if comm.size == 1:
            raise
        import traceback

        traceback.print_exc()           # a bug, or a second Ctrl-C: end every rank, do not hang
        comm.abort(1)


def printable(text: str) -> str:
    """Text for the terminal: bytes of names that are not valid UTF-8 shown as \\xNN (never UnicodeEncodeError)."""
    from cnncli.runfolder import printable as runfolder_printable

    return runfolder_printable(text)


def printable_strings(obj):
    """obj (JSON-ready: dicts, lists, strings, numbers) with every string, keys too, as printable()
    shows it: a name that is not valid UTF-8 prints \\xNN in --json as in the text, never a lone
    surrogate (which strict JSON readers refuse)."""
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {printable(k) if isinstance(k, str) else k: printable_strings(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [printable_strings(v) for v in obj]
    return obj


def json_text(obj) -> str:
    """json.dumps(obj, indent=2) of printable_strings(obj): what every --json prints."""
    return json.dumps(printable_strings(obj), indent=2)


def echo_json_list(items) -> None:
    """Echo json_text(list(items)), text for text, one item at a time. Each echo ends at a line's end:
    an item's last line ("  }") waits for the next item's comma, so what else writes to the terminal
    between items (cnn predict's decoding bar, redrawn while the next chunk decodes) finds the cursor at
    the start of a line and overwrites none of the list. A Ctrl-C closes the list before it goes on (what
    was echoed stays one JSON document); one while a piece is echoed comes once `held` matches it."""
    from cnncli.lifeline import restore, take_sigint

    held, echoing, came = None, [False], []     # held: the last line of the list so far, not yet echoed

    def ctrl_c(signum, frame):
        if not echoing[0]:
            raise KeyboardInterrupt
        came.append(signum)

    old = take_sigint(ctrl_c)
    try:
        try:
            for item in items:
                text = ("[\n  " if held is None else held + ",\n  ") + json_text(item).replace("\n", "\n  ")
                echoing[0] = True
                head, _, held = text.rpartition("\n")
                click.echo(head + "\n", nl=False)
                echoing[0] = False
                if came:
                    break
        except KeyboardInterrupt:
            came.append(signal.SIGINT)
        echoing[0] = True
        click.echo("[]" if held is None else held + "\n]")
        if came:
            raise KeyboardInterrupt
    finally:
        restore(old)


class ConfigCommand(click.Command):
    """A command that reads a training config: a config key given as an option (`--epochs 3`), or the
    config file given without --config, gets a hint naming the way that works."""

    def parse_args(self, ctx, args):
        given = list(args)                       # (the parser consumes `args`)
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as err:
            from cnncli.options import LEAVES

            name = err.option_name.lstrip("-").replace("-", "_")
            keys = [k for k in LEAVES if k.rsplit(".", 1)[-1] == name] or (["data.train"] if name == "data" else [])
            if keys:
                err.message = (f"No such option: {err.option_name}; config keys are set with "
                               + " or ".join(f"--set {k}=VALUE" for k in keys[:2]))
                err.possibilities = None         # (not click's "Did you mean '--help'?")
            raise
        except click.UsageError as err:
            files = [a for a in given if a.lower().endswith((".yaml", ".yml"))]
            extra = err.message.partition("(")[2][:-1].split(" ")           # (the extra arguments click names)
            folders = [a for a in extra if a in given and os.path.isdir(a)]
            if "unexpected extra argument" in err.message and files:
                err.message += f"; give a config file with --config {files[0]}"
            elif "unexpected extra argument" in err.message and folders:
                err.message += f"; give the data folder with --set data.train={folders[0]}"
            raise


def config_option(help_text: str):
    """The --config option of the commands that read a training config: repeatable, later files win."""
    return click.option("--config", "-c", "config_path", multiple=True, type=click.Path(), metavar="FILE",
                        help=help_text + " Repeatable: each file's keys override the same keys of the files "
                                         "before it.")


RUNS = "runs"      # where cnn train writes by default (options.py: out = runs/latest)
CHECKPOINT_HELP = ("A .npz checkpoint, or a run folder (its best.npz, else last.npz). Default: the newest run "
                   f"under ./{RUNS} (named on stderr).")


def checkpoints_or_newest(given, ensemble=False) -> tuple:
    """--checkpoint's values, or when none was given the newest run under ./runs (where cnn train
    writes by default), named on stderr; no run there is a one-line error. With ensemble (eval,
    predict), a fold of a finished cnn cv stands for its cv folder: all its folds, as
    `--checkpoint CV_FOLDER` would give."""
    if given:
        return tuple(given)
    from cnncli.runs import finished_cv, newest_run

    run = newest_run(RUNS)
    if run is None:
        raise UserError(f"no --checkpoint given, and no run with a checkpoint under ./{RUNS} to default to: give "
                        "--checkpoint (a .npz file or a run folder)")
    cv = finished_cv(run)
    if cv is not None and ensemble:
        click.echo(printable(f"Checkpoint: {cv} (the newest run under ./{RUNS} is its {run.name}: the cnn cv's "
                             "folds as an ensemble; --checkpoint picks another)"), err=True)
        return (str(cv),)
    fold = "" if cv is None else (f"; one fold of the cnn cv {cv}, whose other folds cnn predict and eval average "
                                  "with it by default")
    click.echo(printable(f"Checkpoint: {run} (the newest run under ./{RUNS}{fold}{_training_text(run)}; "
                         "--checkpoint picks another)"), err=True)
    return (str(run),)


def _training_text(run) -> str:
    """', which a process trains now: its checkpoint so far' when one does (two calls seconds apart
    took two models), or one naming a newer run in training that has no checkpoint yet; else ""."""
    from cnncli.runlock import training_now
    from cnncli.runs import find_runs

    if training_now(run):
        return ", which a process trains now: its checkpoint so far"
    starting = [r for r in find_runs([RUNS]) if training_now(r) and not any((r / n).is_file() for n in
                                                                             ("best.npz", "last.npz"))]
    return f"; {starting[0]}, in training, has no checkpoint yet" if starting else ""


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint file, or a run folder: its best.npz (else last.npz)."""
    from cnncli.predictor import BEST_FIRST, run_checkpoint

    return run_checkpoint(path, BEST_FIRST)


def report_run_dir(path: str) -> str:
    """cnn report's RUN_DIR: a run folder as given, or the run folder of a checkpoint file in one;
    a CnnError naming the file for an ONNX model, or a file with no run's checkpoint beside it."""
    from cnncli.checkpoint import is_onnx, load_meta

    if is_onnx(path) and os.path.isfile(path):       # (not its folder's run, unasked)
        raise CnnError(printable(f"{path}: an ONNX model holds no run to draw; give the run folder it was "
                                 "exported from (cnn eval --checkpoint MODEL.onnx --data FOLDER measures it)"))
    if not os.path.isfile(path):
        return path
    folder = os.path.dirname(os.path.abspath(path))  # runs/demo/best.npz: its run folder
    if not any(os.path.isfile(os.path.join(folder, n)) for n in ("best.npz", "last.npz")):
        load_meta(path)                              # (junk.npz: 'not a checkpoint')
        raise CnnError(printable(f"{path}: a checkpoint outside a run folder (no best.npz or last.npz beside "
                                 f"it) has no run to draw; give its run folder (cnn eval --checkpoint {path} "
                                 "--data FOLDER measures it)"))
    return folder


def predict_arguments(checkpoint, paths, top_k, as_json, csv_path) -> tuple:
    """cnn predict's arguments checked before any work -> (checkpoint, paths): the first PATH taken
    as the model when it names one (cnn predict model.npz image.png, or model.onnx), a mistyped model,
    a second model among the images, --csv over what it reads, stdin under mpirun, a closed standard
    output refused in one line."""
    from cnncli.checkpoint import is_onnx
    from cnncli.distributed import launched_by_mpi
    from cnncli.ensemble import holds_runs, is_a_model, mistyped_model, names_a_model
    from cnncli.predictions import refuse_csv_target
    from cnncli.process import require_stdout

    if csv_path in (None, "-"):
        require_stdout("the predictions")
    if as_json and csv_path:
        raise click.UsageError("--json and --csv: give one of them (--csv writes every class's probability "
                               "to a file; --json prints the top --top-k)")
    if csv_path is not None and not csv_path.strip():
        raise click.UsageError("--csv: the path is empty")
    if csv_path is not None and csv_path != "-":
        refuse_csv_target(csv_path, list(checkpoint) + list(paths))
    if csv_path is not None and top_k != 1:
        click.echo("note: --top-k does not change --csv's rows: they hold every class's probability", err=True)
    mistyped = None if checkpoint else mistyped_model(paths[0])
    if mistyped:                                            # (not the newest run's predictions, unasked)
        raise CnnError(mistyped)                            # (exit 1, as a missing --checkpoint file)
    if not checkpoint and names_a_model(paths[0]):          # cnn predict model.npz (or runs/x, m.onnx) image.png
        checkpoint, paths = paths[:1], paths[1:]
        if not paths:
            what = "an ONNX model" if is_onnx(checkpoint[0]) else "a checkpoint"
            raise click.UsageError(f"{checkpoint[0]} is {what}: give the images to classify after it")
    for p in paths:           # (a second model read as a folder of images: its report's PNGs classified)
        if is_onnx(p) and os.path.isfile(p):      # (not an image that fails to decode)
            raise click.UsageError(printable(f"{p} is an ONNX model, not images to classify; cnn predict runs one "
                                             "model (an ONNX model joins no ensemble): cnn predict MODEL IMAGES"))
        what = "is a checkpoint or run folder" if is_a_model(p) else "holds run folders" if holds_runs(p) else ""
        if what:
            raise click.UsageError(printable(f"{p} {what}, not images to classify; to average models, give each "
                                             "with --checkpoint (cnn predict --checkpoint A --checkpoint B IMAGES)"))
    if "-" in paths and launched_by_mpi():       # (this Open MPI never passes stdin's end on: a hang)
        raise click.UsageError("-: standard input does not reach a process mpirun starts; give the list of paths "
                               "as a file (cnn predict ... LIST.txt), or run cnn predict without mpirun")
    return checkpoint, paths
