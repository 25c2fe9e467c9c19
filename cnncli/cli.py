"""`cnn`: the command line -- the group, the entry point and the train-evaluate-ship commands (train,
eval, predict, report, export); the other commands are cli_tools.py's, registered here. Each command
parses options and calls one library function; the one-line user errors are cli_common.py's; heavy
modules are imported inside the commands so `cnn --help` is instant.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import signal
import sys
import time
from pathlib import Path

import click

from cnncli import __version__, cli_tools
from cnncli.process import escape_unencodable, open_standard_streams, other_rank_main, require_stdout
from cnncli.cli_common import (CHECKPOINT_HELP, ConfigCommand, checkpoints_or_newest, config_option, echo_json_list,
                               json_text, on_every_rank, other_rank, predict_arguments, printable, report_run_dir,
                               resolve_checkpoint, run_line, user_errors)
from cnncli.errors import CnnError, ConfigError, Stopped, TrainingDiverged


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cnncli")
@click.pass_context
def cli(ctx):
    """Train, evaluate and run small CNN classifiers for grayscale images.

    \b
    Quick start (built-in demo data, nothing to download), in the repository's folder:
      cnn train --config configs/demo.yaml
      cnn eval --checkpoint runs/demo --data data/demo/test
      cnn predict --checkpoint runs/demo data/demo/test/circle
    Anywhere else (an installed package; the default recipe instead of the demo config's):
      cnn train --set data.demo=true --set data.train=data/demo/train --out runs/demo
    """
    if ctx.invoked_subcommand not in ("train", "cv") and other_rank():
        ctx.exit(0)             # under mpirun the one-process commands run (and print, and write) on rank 0


@cli.command(cls=ConfigCommand, short_help="Train a network on an image folder or a labels CSV.")
@config_option("YAML config file. Without it the built-in defaults are used (then data.train is required); "
               "with --resume, its keys override the run's saved config.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (dotted path, value parsed as YAML), e.g. --set train.epochs=3. Repeatable.")
@click.option("--resume", type=click.Path(), default=None,
              help="Continue a run: a checkpoint file or a run folder (uses its last.npz). Its config is reused; "
                   "--config and --set still apply over it.")
@click.option("--init-from", type=click.Path(), default=None,
              help="Start a new run from a checkpoint's weights (fine-tuning): a .npz or a run folder; same as "
                   "--set train.init_from=PATH. Classes are matched by name.")
@click.option("--out", "-o", type=click.Path(), default=None,
              help="Run folder (overrides the config's `out`).")
@click.option("--strict", is_flag=True, help="Refuse to start if any image is unreadable (same as --set data.strict=true).")
@click.option("--no-cache", is_flag=True, help="Decode every image again; do not read or write the dataset cache "
              "(same as --set data.cache=false).")
@click.option("--print-config", is_flag=True, help="Print the resolved config (every default filled in) and exit.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars (decoding, epochs; both are also off when "
              "stderr is not a terminal) and no first-run line saying the kernels compile.")
@click.option("--no-report", is_flag=True, help="Do not render the report pictures at the end of the run.")
@user_errors
def train(config_path, overrides, resume, init_from, out, strict, no_cache, print_config, quiet, no_report):
    """Train a network on an image folder (one subfolder per class) or a labels CSV (path and label
    columns). Under `mpirun -n K` the K processes train one run together (docs/distributed.md in
    the repository)."""
    on_every_rank(_train, config_path, overrides, resume, init_from, out, strict, no_cache, print_config, quiet,
                  no_report)


def _train(comm, config_path, overrides, resume, init_from, out, strict, no_cache, print_config, quiet, no_report):
    from cnncli.distributed import everyone

    cfg = everyone(comm, _train_config, config_path, overrides, resume, init_from, out, strict, no_cache,
                   print_config)
    if print_config:
        if comm.is_main:
            from cnncli import config as config_mod

            click.echo(config_mod.dump(cfg), nl=False)
        return
    from cnncli.train import train as run_training

    from cnncli.callbacks import StopAfterTraining
    from cnncli.lifeline import ENDING, ignore_stops

    started = time.time()
    try:
        run_dir = run_training(cfg, resume=resume, quiet=quiet, echo=run_line, out=out,
                               comm=comm, hand_off=True)
        if run_dir is None:             # (nothing to do for a checkpoint outside its run: no folder to name)
            return
        if not comm.is_main:
            ignore_stops()              # (it waits for rank 0's test and report, then exits)
        else:                           # (a stop between the report's steps: the line, not a silent death)
            with StopAfterTraining(run_dir, "nothing left undone" if no_report else
                                   f"before drawing its report (cnn report {run_dir} draws it)") as after:
                after.last = ENDING[0]          # (then stops are ignored in cnn's own process: its last line comes)
                if not no_report:
                    _report_after_training(run_dir, new=not _untouched_since(run_dir, started))
    except (Stopped, TrainingDiverged) as stop:    # its folder on stdout too, so a script can go on from it
        if comm.is_main and stop.run_dir is not None:
            try:
                click.echo(str(stop.run_dir))
            except BrokenPipeError:       # (`cnn train ... 2>&1 | head` stopped it: the stop's status, 130)
                from cnncli.lifeline import silence

                silence(sys.stdout.fileno())
        raise
    if comm.is_main:
        click.echo(str(run_dir))


def _train_config(config_path, overrides, resume, init_from, out, strict, no_cache, print_config) -> dict:
    """The config `cnn train` runs: the file (or the resumed checkpoint's) with --set and the flags."""
    from cnncli import config as config_mod

    if init_from is not None and resume is not None:
        raise ConfigError("--init-from starts a new run from a checkpoint's weights, --resume continues a run: "
                       "give one of them")
    if init_from is not None and not init_from.strip():
        raise ConfigError("--init-from: the path is empty")
    if out is not None and not out.strip():
        raise ConfigError("--out: the path is empty")
    overrides = list(overrides) + (["data.strict=true"] if strict else []) + (["data.cache=false"] if no_cache else [])
    if resume is not None:
        from cnncli.resume import resumed_config

        cfg = resumed_config(resume, overrides, config_path)
    else:
        cfg = config_mod.load_config(config_path, overrides)
    if init_from is not None:
        cfg = {**cfg, "train": {**cfg["train"], "init_from": init_from}}
    if print_config and (out is not None or resume is not None):     # where the run goes, as train() takes it
        from cnncli.predictor import run_checkpoint

        cfg = {**cfg, "out": str(out) if out is not None else str(run_checkpoint(resume).parent)}
    if not print_config:
        config_mod.require_train(cfg)
    return cfg


def _untouched_since(run_dir, t0: float) -> bool:
    """Whether no file of the run folder changed since t0 (a resumed run that had nothing to do)."""
    return all(f.stat().st_mtime < t0 for f in Path(run_dir).iterdir() if f.is_file())


def _report_after_training(run_dir, new=True):
    """The run's report, drawn unless it is up to date; new False (a resume that had nothing to do):
    none is drawn for a run that has none (it was trained with --no-report)."""
    html = Path(run_dir) / "report" / "report.html"
    if html.is_file() and all(f.stat().st_mtime_ns <= html.stat().st_mtime_ns
                              for f in Path(run_dir).iterdir() if f.is_file()):
        click.echo(f"Report: {html} (up to date)", err=True)    # nothing trained since it was drawn
        return
    if not new:
        return
    from cnncli.callbacks import StopAfterTraining

    try:
        from cnncli.report import write_report

        with StopAfterTraining(run_dir, f"while drawing its report (cnn report {run_dir} draws it)"):
            path = write_report(run_dir)
        click.echo(f"Report: {path}", err=True)
    except Stopped:
        raise
    except CnnError as err:  # matplotlib missing, etc.: training itself succeeded
        click.echo(f"note: no report ({err})", err=True)


def _threshold(ctx, param, value):
    """--fail-under's value, in [0, 1]; a percentage (90) is refused naming the fraction (0.9)."""
    if value is not None and value != value:        # nan (a variable expanded badly): no gate
        raise click.BadParameter("nan is no threshold; give a number in [0, 1]")
    if value is not None and not 0 <= value <= 1:
        as_fraction = f"; {value:g}% is {value / 100:g}" if 1 < value <= 100 else ""
        raise click.BadParameter(f"{value:g} is not in the range 0<=x<=1{as_fraction}")
    return value


@cli.command("eval", short_help="Loss, accuracy, per-class P/R/F1 and confusion of a checkpoint.")
@click.option("--checkpoint", multiple=True, type=click.Path(),
              help=CHECKPOINT_HELP + " Repeated, or a cnn cv folder (its folds): the ensemble, the mean of their "
                   "probabilities (needs --data). A .onnx file cnn export wrote runs in onnxruntime (needs --data).")
@click.option("--data", "data_dir", default=None, type=click.Path(),
              help="Image folder with one subfolder per class, or a labels CSV (some of the model's classes will "
                   "do). Default: "
                   "the run's validation images, held out again from its config.yaml as training did.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1), help="Images per forward pass.")
@click.option("--top-k", default=None, type=click.IntRange(min=1),
              help="k of the top-k accuracy [default: the checkpoint config's train.top_k].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--fail-under", type=float, default=None, callback=_threshold,
              help="Exit 1 (after printing the metrics) when --metric is below this value, in [0, 1]: a CI gate.")
@click.option("--metric", default=None, type=click.Choice(["accuracy", "macro_f1", "top_k_accuracy"]),
              help="The metric --fail-under checks [default: accuracy]; only with --fail-under.")
@click.option("--no-cache", is_flag=True, help="Decode every image again; do not read or write the dataset cache.")
@click.option("--strict", is_flag=True, help="Exit 1 naming the unreadable images instead of skipping them "
                                              "(as cnn train --strict): a CI gate on every file.")
@click.argument("checkpoints", metavar="[CHECKPOINT]...", nargs=-1, type=click.Path())
@user_errors
def eval_cmd(checkpoint, data_dir, batch_size, top_k, as_json, fail_under, metric, no_cache, strict, checkpoints):
    """Measure a checkpoint on a labelled image folder (default: its run's validation images): loss,
    accuracy, top-k, per-class P/R/F1, confusion. CHECKPOINT... as --checkpoint (`cnn eval runs/demo
    --data data/demo/test`)."""
    from cnncli.evaluate import evaluate, notice_lines
    from cnncli.metrics_text import below_threshold, format_metrics
    from cnncli.textwidth import terminal_columns

    if metric is not None and fail_under is None:          # (a gate without its threshold checks nothing)
        raise click.BadParameter("chooses what --fail-under checks; add --fail-under X", param_hint="--metric")
    if fail_under is None:                                 # (a gate's exit status needs no output)
        require_stdout("the metrics")
    metric = metric or "accuracy"
    checkpoint = checkpoints_or_newest(checkpoint + checkpoints, ensemble=True)
    metrics, _, _ = evaluate(list(checkpoint), data_dir, batch_size=batch_size, top_k=top_k, cache=not no_cache,
                             strict=strict)
    for line in notice_lines(metrics):
        click.echo(printable(line), err=True)
    if top_k is not None and metrics["top_k"] < top_k:
        click.echo(f"note: --top-k {top_k} is more than the model's {metrics['top_k']} classes: top-{metrics['top_k']} "
                   "accuracy is shown", err=True)
    click.echo(json_text(metrics) if as_json else printable(format_metrics(metrics, terminal_columns())))
    if fail_under is not None and (problem := below_threshold(metrics, metric, fail_under)):
        raise CnnError(problem)


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError):               # (closed)
        return False


@cli.command(short_help="Classify image files or folders.")
@click.option("--checkpoint", multiple=True, type=click.Path(),
              help=CHECKPOINT_HELP + " Repeated, or a cnn cv folder (its folds): the ensemble, the mean of their "
                   "probabilities. A .onnx file cnn export wrote runs in onnxruntime. Without it, a first PATH "
                   "ending in .npz or .onnx, or a run or cnn cv folder, is the checkpoint.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", default=1, show_default=True, type=click.IntRange(min=1), help="Show the K most likely classes.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {path, class, probability, top_k}.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Write the predictions to this CSV instead (path, class, probability, then one column per "
                   "class with its probability), e.g. for a submission file; - writes it to standard output.")
@user_errors
def predict(checkpoint, paths, top_k, as_json, csv_path):
    """Classify images: each PATH is an image file, a folder of images, a CSV whose path column
    lists them, or a .txt/.csv/.tsv list of paths, one a line, without a header (# lines are
    comments); - reads such a list from standard input. Exit status 1 if
    any file failed. A probability is the model's sigmoid output for that class (one per class, as
    the seed's loss trains them): they need not add up to 1."""
    from cnncli.ensemble import load
    from cnncli.data.scan import ignored_note
    from cnncli.predictions import gather_paths, predict_stream, prediction_line, write_predictions_csv

    checkpoint, paths = predict_arguments(checkpoint, paths, top_k, as_json, csv_path)
    predictor, _ = load(checkpoints_or_newest(checkpoint, ensemble=True))
    if "-" in paths and _stdin_is_terminal():   # (no pipe: the user types the paths)
        click.echo("reading the paths to classify from standard input, one a line; Ctrl-D ends the list", err=True)
    ignored = collections.Counter()
    files, failures = gather_paths(paths, ignored)
    if ignored:                                  # (as train and eval note them)
        click.echo(printable(ignored_note(ignored)), err=True)
    tried = len(files) + len(failures)           # the image files found, and the paths that gave none
    notes = []
    # streamed: each chunk's predictions are written as soon as it is classified; `bad` (the files
    # that fail to decode) and `notes` are complete once `results` is
    results, bad = predict_stream(predictor, files, len(predictor.classes) if csv_path else top_k, notes)
    with contextlib.closing(results):           # (a stop or a reader that left: the decode workers end now)
        if csv_path:
            n = write_predictions_csv(csv_path, results, predictor.classes)
        elif as_json:     # the files that failed too, after the predictions: a script sees every input
            echo_json_list(itertools.chain(results, ({"path": path, "error": reason}
                                                     for path, reason in itertools.chain(failures, bad))))
        else:
            for r in results:
                click.echo(printable(prediction_line(r, top_k)))
    failures.extend(bad)
    for line in notes:                           # (over all the images: after their predictions)
        click.echo(printable(line), err=True)
    if csv_path:
        click.echo(printable(f"{n} prediction(s) in {'standard output' if csv_path == '-' else csv_path}"), err=True)
    from cnncli.data import printable as one_line    # (a tab or newline in a path kept on its line)

    for path, reason in failures:
        click.echo(printable(f"error: {one_line(path)}: {reason}"), err=True)
    if len(failures) > 1:      # (after a list of errors, the count is what a reader looks for)
        click.echo(f"{len(failures)} of {tried} could not be classified"
                   + (" (each also in the JSON, with its error)" if as_json else ""), err=True)
    _FAST_EXIT.append(True)
    if failures:
        sys.exit(1)


@cli.command(short_help="Pictures of a run: curves, confusion, mistakes, filters.")
@click.argument("run_dir", type=click.Path(exists=True))
@click.option("--data", "data_dir", type=click.Path(), default=None,
              help="Labelled image folder (or labels CSV) for the confusion matrix and mistakes (default: the run's "
                   "validation data; a run without any gets its curves and filters only).")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default RUN_DIR/report).")
@user_errors
def report(run_dir, data_dir, out_dir):
    """Render learning curves, confusion matrix, per-class bars, mistakes and filters to PNG + report.html.
    RUN_DIR is a run folder (a checkpoint file in one stands for its folder)."""
    from cnncli.report import write_report

    run_dir = report_run_dir(run_dir)
    click.echo(str(write_report(run_dir, data_dir=data_dir, out_dir=out_dir,
                                echo=lambda line: click.echo(printable(line), err=True))))


@cli.command(short_help="Write a checkpoint as an ONNX model (for onnxruntime etc.).")
@click.option("--checkpoint", multiple=True, type=click.Path(), help=CHECKPOINT_HELP + " One: an ONNX file holds "
              "one network (of a cnn cv folder, give one of its fold-k runs).")
@click.option("--format", "fmt", default="onnx", show_default=True, type=click.Choice(["onnx"]),
              help="Output format.")
@click.option("--out", "-o", required=True, type=click.Path(), help="The model file to write, e.g. model.onnx.")
@click.option("--input", "input_kind", default="uint8", show_default=True, type=click.Choice(["uint8", "float"]),
              help="Graph input: uint8 (N,32,32) pixels, normalized in the graph, or float32 (N,1,32,32) "
                   "already normalized. See docs/interop.md in the repository.")
@click.argument("checkpoint_arg", metavar="[CHECKPOINT]", required=False, type=click.Path())
@user_errors
def export(checkpoint, fmt, out, input_kind, checkpoint_arg):
    """Export the inference network of a checkpoint; class names and preprocessing go in its metadata.
    CHECKPOINT as --checkpoint (`cnn export runs/demo -o model.onnx`)."""
    from cnncli.checkpoint import is_onnx
    from cnncli.export import export_onnx

    given = list(checkpoint) + ([checkpoint_arg] if checkpoint_arg else [])
    if len(given) > 1:
        raise click.UsageError(printable(f"{len(given)} checkpoints ({', '.join(map(str, given))}): export writes "
                                         "one model; give one"))
    if not str(out).strip():                         # (it said '.: is a folder')
        raise click.UsageError("--out: the path is empty; give the .onnx file to write, e.g. -o model.onnx")
    if out == "-":                                   # (predict's stdin; here it made a file named '-')
        raise click.UsageError("--out -: export writes the model to a file; give its path, e.g. -o model.onnx")
    given = given[0] if given else None
    path = resolve_checkpoint(checkpoints_or_newest([given] if given else [])[0])
    click.echo(str(export_onnx(path, out, kind=input_kind)))
    if not is_onnx(out):                             # (-o model.txt: a model nobody would look for there)
        click.echo(f"note: {printable(str(out))} does not end in .onnx; it holds the ONNX model all the same", err=True)


for _command in cli_tools.COMMANDS:          # bench, gradcheck, info, lr-find, ...
    cli.add_command(_command)

_FAST_EXIT = []  # set by commands whose process has nothing left to clean up after printing


def main():
    """Console entry point. `cnn predict` skips interpreter teardown (the numba/OpenMP runtime's
    shutdown is a sizeable part of a warm one-image run): all its output is flushed first."""
    from cnncli import lifeline

    lifeline.ENDING[0] = True       # (cnn's own process: a stop's line under way, a second stop signal is ignored)
    lifeline.note_inherited_ignored()
    open_standard_streams()
    escape_unencodable()
    try:
        if other_rank():
            other_rank_main(cli)
        else:
            cli(prog_name="cnn")
    except SystemExit as done:
        if done.code in (0, None):
            # the command's work is done and said: a stop during the teardown changes nothing, and
            # would end the process by the signal (a finished run seen as killed by its caller)
            from cnncli.lifeline import ignore_stops

            ignore_stops(sigint=True)
        elif done.code == 130:
            # a stop (its line said what was saved): another Ctrl-C during the teardown is ignored;
            # Python's finalization resets its own SIGINT handler to the default, which would end
            # the process by the signal (a shell's status 130 would become a death by SIGINT)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not _FAST_EXIT:
            raise
        sys.stdout.flush()
        sys.stderr.flush()
        code = done.code
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))
