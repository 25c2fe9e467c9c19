"""`cnn`: the command line. Each command parses options and calls one library function.

No logic lives here beyond turning user errors (cnncli.errors) into one-line messages and exit codes;
heavy modules are imported inside the commands so `cnn --help` is instant.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from cnncli import __version__
from cnncli.errors import CnnError


class _UserError(click.ClickException):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def user_errors(fn):
    """Turn CnnError (and OS errors on user paths, Ctrl-C) into one line on stderr, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CnnError as err:
            raise _UserError(_printable(str(err)), getattr(err, "exit_code", 1)) from None
        except KeyboardInterrupt:
            raise _UserError("interrupted", 130) from None
        except BrokenPipeError:  # `cnn predict ... | head`: the reader left; stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except OSError as err:
            raise _UserError(str(err), 1) from None

    return wrapper


def _printable(text: str) -> str:
    """Text for the terminal: bytes of names that are not valid UTF-8 shown as \\xNN (never UnicodeEncodeError)."""
    from cnncli.runfolder import printable

    return printable(text)


def _echo_json_list(items) -> None:
    """Echo json.dumps(list(items), indent=2), text for text, one item at a time."""
    first = True
    for item in items:
        body = json.dumps(item, indent=2).replace("\n", "\n  ")
        click.echo(("[\n  " if first else ",\n  ") + body, nl=False)
        first = False
    click.echo("[]" if first else "\n]")


def _resolve_checkpoint(path: str) -> Path:
    """A checkpoint file, or a run folder: its best.npz (else last.npz)."""
    from cnncli.predictor import run_checkpoint

    return run_checkpoint(path, ("best.npz", "last.npz"))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cnncli")
def cli():
    """Train, evaluate and run small CNN classifiers for grayscale images.

    \b
    Quick start (built-in demo data, nothing to download):
      cnn train --config configs/demo.yaml
      cnn eval --checkpoint runs/demo --data data/demo/test
      cnn predict --checkpoint runs/demo data/demo/test/circle
    """


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config file. Without it the built-in defaults are used (then data.train is required).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (dotted path, value parsed as YAML), e.g. --set train.epochs=3. Repeatable.")
@click.option("--resume", type=click.Path(), default=None,
              help="Continue a run: a checkpoint file or a run folder (uses its last.npz). Its config is reused; --set still applies.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder (overrides the config's `out`).")
@click.option("--strict", is_flag=True, help="Refuse to start if any image is unreadable (same as --set data.strict=true).")
@click.option("--no-cache", is_flag=True, help="Decode every image again; do not read or write the dataset cache "
              "(same as --set data.cache=false).")
@click.option("--print-config", is_flag=True, help="Print the resolved config (every default filled in) and exit.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar (it is also off when stderr is not a terminal).")
@click.option("--no-report", is_flag=True, help="Do not render the report pictures at the end of the run.")
@user_errors
def train(config_path, overrides, resume, out, strict, no_cache, print_config, quiet, no_report):
    """Train a network on an image folder (one subfolder per class). Under `mpirun -n K` the K
    processes train one run together (docs/distributed.md)."""
    from cnncli import distributed

    comm = distributed.get_comm()
    try:
        _train(comm, config_path, overrides, resume, out, strict, no_cache, print_config, quiet, no_report)
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


def _train(comm, config_path, overrides, resume, out, strict, no_cache, print_config, quiet, no_report):
    from cnncli.distributed import everyone

    cfg = everyone(comm, _train_config, config_path, overrides, resume, strict, no_cache, print_config)
    if print_config:
        if comm.is_main:
            from cnncli import config as config_mod

            click.echo(config_mod.dump(cfg), nl=False)
        return
    from cnncli.train import train as run_training

    run_dir = run_training(cfg, resume=resume, quiet=quiet, echo=lambda m: click.echo(m, err=True), out=out,
                           comm=comm)
    if comm.is_main:
        if not no_report:
            _report_after_training(run_dir)
        click.echo(str(run_dir))


def _train_config(config_path, overrides, resume, strict, no_cache, print_config) -> dict:
    """The config `cnn train` runs: the file (or the resumed checkpoint's) with --set and the flags."""
    from cnncli import config as config_mod

    overrides = list(overrides) + (["data.strict=true"] if strict else []) + (["data.cache=false"] if no_cache else [])
    if resume is not None and config_path is None:
        from cnncli import checkpoint
        from cnncli.predictor import run_checkpoint

        _, meta = checkpoint.load(run_checkpoint(resume))
        cfg = config_mod.load_config_text(meta.get("config", ""), overrides, source=f"{resume} (config)")
    else:
        cfg = config_mod.load_config(config_path, overrides)
    if not cfg["data"]["train"] and not print_config:
        raise CnnError("data.train is not set: give --config FILE or --set data.train=FOLDER "
                       "(try: cnn train --config configs/demo.yaml)")
    return cfg


def _report_after_training(run_dir):
    try:
        from cnncli.report import write_report

        path = write_report(run_dir)
        click.echo(f"Report: {path}", err=True)
    except CnnError as err:  # matplotlib missing, etc.: training itself succeeded
        click.echo(f"note: no report ({err})", err=True)


@cli.command("eval", short_help="Loss, accuracy, per-class P/R/F1 and confusion of a checkpoint.")
@click.option("--checkpoint", required=True, type=click.Path(),
              help="A .npz checkpoint, or a run folder (its best.npz, else last.npz).")
@click.option("--data", "data_dir", default=None, type=click.Path(),
              help="Image folder with one subfolder per class (some of the model's classes will do). Default: "
                   "the run's validation images, held out again from its config.yaml as training did.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1), help="Images per forward pass.")
@click.option("--top-k", default=None, type=click.IntRange(min=1),
              help="k of the top-k accuracy [default: the checkpoint config's train.top_k].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--fail-under", type=click.FloatRange(0, 1), default=None,
              help="Exit 1 (after printing the metrics) when --metric is below this value, in [0, 1]: a CI gate.")
@click.option("--metric", default="accuracy", show_default=True,
              type=click.Choice(["accuracy", "macro_f1", "top_k_accuracy"]), help="The metric --fail-under checks.")
@click.option("--no-cache", is_flag=True, help="Decode every image again; do not read or write the dataset cache.")
@user_errors
def eval_cmd(checkpoint, data_dir, batch_size, top_k, as_json, fail_under, metric, no_cache):
    """Measure a checkpoint on a labelled image folder (default: its run's validation images): loss,
    accuracy, top-k, per-class P/R/F1, confusion."""
    from cnncli.evaluate import below_threshold, evaluate, format_metrics

    metrics, _, _ = evaluate(_resolve_checkpoint(checkpoint), data_dir, batch_size=batch_size, top_k=top_k,
                             cache=not no_cache)
    click.echo(json.dumps(metrics, indent=2) if as_json else _printable(format_metrics(metrics)))
    if fail_under is not None and (problem := below_threshold(metrics, metric, fail_under)):
        raise CnnError(problem)


@cli.command(short_help="Classify image files or folders.")
@click.option("--checkpoint", required=True, type=click.Path(),
              help="A .npz checkpoint, or a run folder (its best.npz, else last.npz).")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", default=1, show_default=True, type=click.IntRange(min=1), help="Show the K most likely classes.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {path, class, probability, top_k}.")
@user_errors
def predict(checkpoint, paths, top_k, as_json):
    """Classify images: each PATH is an image file or a folder of images. Exit status 1 if any file failed."""
    from cnncli.data import PathList, list_images_and_bad
    from cnncli.evaluate import predict_stream
    from cnncli.predictor import Predictor

    predictor = Predictor.from_checkpoint(_resolve_checkpoint(checkpoint))
    files, failures = PathList(), []                 # compact: a million paths take ~30 MB
    for p in paths:
        try:
            found, unscannable = list_images_and_bad(p)
            files.extend(found)
            failures.extend(unscannable)
        except CnnError as err:  # its message names the path already
            failures.append((p, str(err).removeprefix(f"{p}: ")))
    results, bad = predict_stream(predictor, files, top_k)
    failures.extend(bad)
    if as_json:
        _echo_json_list(results)
    else:
        for r in results:
            extra = "  ".join(f"{t['class']}={t['probability']:.3f}" for t in r["top_k"][1:]) if top_k > 1 else ""
            click.echo(_printable(f"{r['path']}\t{r['class']}\t{r['probability']:.4f}" + (f"\t{extra}" if extra else "")))
    for path, reason in failures:
        click.echo(_printable(f"error: {path}: {reason}"), err=True)
    _FAST_EXIT.append(True)
    if failures:
        sys.exit(1)


@cli.command(short_help="Check every gradient against finite differences.")
@click.option("--batchnorm", "variants", multiple=True, type=click.Choice(["none", "unit", "channel"]),
              help="Variant(s) to check; default all three.")
@click.option("--batch-size", default=2, show_default=True, type=click.IntRange(min=1), help="Random batch size.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights and inputs.")
@user_errors
def gradcheck(variants, batch_size, seed):
    """Compare every hand-derived gradient with float64 finite differences; exit 1 above 1e-6."""
    from cnncli.gradcheck import run_gradcheck

    status = run_gradcheck(variants=variants or ("none", "unit", "channel"), batch_size=batch_size, seed=seed,
                           echo=click.echo)
    sys.exit(status)


@cli.command(short_help="Pictures of a run: curves, confusion, mistakes, filters.")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "data_dir", type=click.Path(), default=None,
              help="Labelled image folder for the confusion matrix and mistakes (default: the run's validation data; "
                   "a run without any gets its curves and filters only).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output folder (default RUN_DIR/report).")
@user_errors
def report(run_dir, data_dir, out_dir):
    """Render learning curves, confusion matrix, per-class bars, mistakes and filters to PNG + report.html."""
    from cnncli.report import write_report

    click.echo(str(write_report(run_dir, data_dir=data_dir, out_dir=out_dir)))


@cli.command(short_help="Images/s of training and inference (optionally vs PyTorch).")
@click.option("--batchnorm", default="none", show_default=True, type=click.Choice(["none", "unit", "channel"]),
              help="Network variant to measure.")
@click.option("--batch-sizes", default="32,64,128,256", show_default=True, help="Comma-separated training batch sizes.")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0), help="Threads (0 = all cores).")
@click.option("--seconds", default=2.0, show_default=True, type=click.FloatRange(min=0.1), help="Time per repeat.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1), help="Repeats; median and min-max shown.")
@click.option("--vs-torch", is_flag=True, help="Also run an identical PyTorch eager network, alternating, and print ratios.")
@click.option("--compare-bn", is_flag=True,
              help="Also train the none, unit and channel variants alternating in one run and print each BN "
                   "variant's images/s as a fraction of no-BN's.")
@click.option("--functional", is_flag=True,
              help="Also time model.loss_and_grads against Network.train_step (no optimizer), alternating, "
                   "and print the ratio.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def bench(batchnorm, batch_sizes, threads, seconds, repeats, vs_torch, compare_bn, functional, as_json):
    """Measure the core alone (no data loading): training and inference images/s, GFLOP/s and their
    share of this machine's measured FMA peak, one-image latency, JIT time."""
    from cnncli.bench import run_bench

    try:
        sizes = [int(s) for s in batch_sizes.split(",") if s.strip()]
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{batch_sizes!r} is not a comma-separated list of positive integers",
                                 param_hint="--batch-sizes") from None
    run_bench(batchnorm=batchnorm, batch_sizes=sizes, threads=threads, seconds=seconds, repeats=repeats,
              vs_torch=vs_torch, as_json=as_json, echo=click.echo, compare_bn=compare_bn, functional=functional)


@cli.command("lr-find", short_help="Suggest optim.lr: a learning-rate range test, as Lightning's lr_find.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config file (as for cnn train): its data, network, optimizer and batch size are used.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set optim.name=sgd. Repeatable.")
@click.option("--steps", default=100, show_default=True, type=click.IntRange(min=2), help="Training steps to run.")
@click.option("--min-lr", default=1e-6, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Rate of the first step.")
@click.option("--max-lr", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Rate of the last step (the rate rises geometrically in between).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Also write a PNG of the loss against the rate, the suggestion marked (needs cnncli[plots]).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (every step's rate and losses).")
@user_errors
def lr_find(config_path, overrides, steps, min_lr, max_lr, plot_path, as_json):
    """Train from the initial weights for --steps steps with the learning rate rising from --min-lr to
    --max-lr, stop once the smoothed loss passes 4x its best, and suggest the rate where it falls
    fastest. Writes no run folder; the config is not changed."""
    from cnncli import config as config_mod
    from cnncli.lrfind import format_result, lr_find as run, write_plot

    cfg = config_mod.load_config(config_path, overrides)
    result = run(cfg, steps=steps, min_lr=min_lr, max_lr=max_lr, echo=lambda m: click.echo(m, err=True))
    if plot_path is not None:
        click.echo(f"plot: {write_plot(result, plot_path)}", err=True)
    click.echo(json.dumps(result, indent=2) if as_json else format_result(result, cfg["optim"]["name"]))


@cli.command(short_help="What a checkpoint holds: classes, input, layers, parameters, progress.")
@click.argument("checkpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def info(checkpoint, as_json):
    """Show what CHECKPOINT (a .npz file, or a run folder: its best.npz, else last.npz) holds: its
    classes, input preprocessing, the network layer by layer with output shapes and parameter counts
    (as Keras' model.summary()), and how far its run trained. Runs nothing; numba is not loaded."""
    from cnncli.summary import describe, format_info

    summary = describe(_resolve_checkpoint(checkpoint))
    click.echo(json.dumps(summary, indent=2) if as_json else format_info(summary))


@cli.command(short_help="Write a checkpoint as an ONNX model (for onnxruntime etc.).")
@click.option("--checkpoint", required=True, type=click.Path(),
              help="A .npz checkpoint, or a run folder (its best.npz, else last.npz).")
@click.option("--format", "fmt", default="onnx", show_default=True, type=click.Choice(["onnx"]),
              help="Output format.")
@click.option("--out", required=True, type=click.Path(), help="The model file to write, e.g. model.onnx.")
@click.option("--input", "input_kind", default="uint8", show_default=True, type=click.Choice(["uint8", "float"]),
              help="Graph input: uint8 (N,32,32) pixels, normalized in the graph, or float32 (N,1,32,32) "
                   "already normalized. See docs/interop.md.")
@user_errors
def export(checkpoint, fmt, out, input_kind):
    """Export the inference network of a checkpoint; class names and preprocessing go in its metadata."""
    from cnncli.export import export_onnx

    click.echo(str(export_onnx(_resolve_checkpoint(checkpoint), out, kind=input_kind)))


@cli.command("augment-preview", short_help="A PNG grid of augmented samples of your training images.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config file (as for cnn train); its data.train images and augment section are used.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set augment.affine.rotate=20. Repeatable.")
@click.option("--out", "out_path", default="augment-preview.png", show_default=True,
              type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--rows", default=6, show_default=True, type=click.IntRange(1, 100),
              help="Images (one row each, classes in turn).")
@click.option("--cols", default=8, show_default=True, type=click.IntRange(2, 50),
              help="Columns: the original, then cols-1 augmented variants.")
@click.option("--seed", default=None, type=click.IntRange(min=0),
              help="Seed of the image choice and the draws (default: train.seed, as epoch 0 of training).")
@user_errors
def augment_preview(config_path, overrides, out_path, rows, cols, seed):
    """Render what the model sees: each row one of your images, then augmented variants of it."""
    from cnncli import config as config_mod
    from cnncli.augment_preview import write_preview

    cfg = config_mod.load_config(config_path, overrides)
    if not cfg["augment"]["enabled"]:
        click.echo("note: augment.enabled is false: training uses the originals; the variants show the "
                   "augment settings as they would apply", err=True)
    click.echo(str(write_preview(cfg, out_path, rows=rows, cols=cols, seed=seed)))


@cli.command(short_help="Generate the built-in 12-class demo dataset.")
@click.argument("root", type=click.Path(file_okay=False), default="data/demo")
@user_errors
def demo(root):
    """Generate the built-in 12-class demo dataset (ROOT/train, ROOT/test) if it is not there yet."""
    from cnncli.demo import ensure_demo

    click.echo(str(ensure_demo(root)))


@cli.command(short_help="Compile the numba kernels now (a first run does it anyway).")
@click.option("--batchnorm", "variants", multiple=True, type=click.Choice(["none", "unit", "channel"]),
              help="Network variant(s) to compile for; default all three.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Worker processes besides this one; default one per other idle core ($CNNCLI_COMPILE_WORKERS); "
                   "0 compiles everything in this process.")
@user_errors
def warmup(variants, workers):
    """Compile the kernels that training and inference need into numba's on-disk cache (the package's
    __pycache__, else ~/.cache/numba when it is read-only, or $NUMBA_CACHE_DIR), e.g. in a Docker build."""
    from cnncli.precompile import warmup as run_warmup

    n, seconds = run_warmup(variants or ("none", "unit", "channel"), workers)
    click.echo(f"compiled {n} kernel(s) in {seconds:.1f} s" if n else "every kernel is already in numba's cache")


@cli.command(short_help="Show or clear the decoded-dataset cache.")
@click.option("--clear", is_flag=True, help="Delete every cached dataset (the demo dataset stays).")
@user_errors
def cache(clear):
    """Where the decoded-dataset cache lives ($CNNCLI_CACHE_DIR, else $XDG_CACHE_HOME/cnncli, else
    ~/.cache/cnncli) and its size; --clear deletes it."""
    from cnncli import data

    if clear:
        n, size = data.clear_cache()
        click.echo(f"removed {n} cached dataset(s), {size / 1e6:.1f} MB, from {data.cache_dir()}")
    else:
        folder, n, size = data.cache_info()
        click.echo(f"{folder}: {n} cached dataset(s), {size / 1e6:.1f} MB")


_FAST_EXIT = []  # set by commands whose process has nothing left to clean up after printing


def main():
    """Console entry point. `cnn predict` skips interpreter teardown (numba/OpenMP runtime shutdown
    measured at ~0.4 s of a 1.5 s warm one-image run): all its output is flushed first."""
    try:
        cli(prog_name="cnn")
    except SystemExit as done:
        if not _FAST_EXIT:
            raise
        sys.stdout.flush()
        sys.stderr.flush()
        code = done.code
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))
