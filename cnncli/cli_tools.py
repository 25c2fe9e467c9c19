"""The `cnn` commands around the train-evaluate-ship path: checking and measuring the core
(gradcheck, bench, warmup), preparing a run (demo, augment-preview, lr-find, cv, cache) and looking
into a checkpoint or a folder of runs (info, runs). Each parses options and calls one library
function; cli.py registers them on the `cnn` group, beside train, eval, predict, report and export.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

import click

from cnncli.cli_common import (ConfigCommand, UserError, config_option, echo_json_list, json_text, on_every_rank,
                               printable, resolve_checkpoint, run_line, user_errors)
from cnncli.errors import CnnError, ConfigError


@click.command(short_help="Check every gradient against finite differences.")
@click.option("--batchnorm", "variants", multiple=True, type=click.Choice(["none", "unit", "channel"]),
              help="Variant(s) to check; default all three.")
@click.option("--batch-size", default=2, show_default=True, type=click.IntRange(min=1), help="Random batch size.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights and inputs.")
@user_errors
def gradcheck(variants, batch_size, seed):
    """Compare every hand-derived gradient with float64 finite differences; exit 1 above 1e-6."""
    from cnncli.gradcheck import run_gradcheck

    status = run_gradcheck(variants=variants or ("none", "unit", "channel"), batch_size=batch_size, seed=seed,
                           echo=click.echo, say=lambda line: click.echo(line, err=True))
    sys.exit(status)


@click.command(short_help="Images/s of training and inference (optionally vs PyTorch).")
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


@click.command("lr-find", cls=ConfigCommand,
               short_help="Suggest optim.lr: a learning-rate range test, as Lightning's lr_find.")
@config_option("YAML config file (as for cnn train): its data, network, optimizer and batch size are used.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set optim.name=sgd. Repeatable.")
@click.option("--steps", default=100, show_default=True, type=click.IntRange(min=13),
              help="Training steps to run (at least 13: the suggestion leaves the first 10 and the last out).")
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
    from cnncli.atomic import picture_target_problem
    from cnncli.lrfind import format_result, lr_find as run, write_plot

    if not 0 < min_lr < max_lr:           # (a usage error, exit 2, before the config is read)
        raise click.BadParameter(f"{min_lr:g} must be > 0 and below --max-lr {max_lr:g}", param_hint="--min-lr")
    cfg = config_mod.load_config(config_path, overrides)
    config_mod.require_train(cfg)
    if plot_path is not None:             # (said before the range test runs, not after it)
        from cnncli.plotting import matplotlib_parts

        matplotlib_parts()
        folder = os.path.dirname(os.path.abspath(plot_path))
        if not os.path.isdir(folder):
            raise CnnError(printable(f"--plot {plot_path}: no folder {folder} to write the plot in"))
        d = cfg["data"]
        problem = picture_target_problem(plot_path, (d["train"], d["val"], d["test"]))
        if problem:                       # (a checkpoint, a config, a training image: not replaced by a PNG)
            raise CnnError(printable(f"--plot {plot_path}: {problem}"))
        if not plot_path.lower().endswith(".png"):
            click.echo(printable(f"note: --plot {plot_path} does not end in .png; it holds a PNG all the same"),
                       err=True)
    result = run(cfg, steps=steps, min_lr=min_lr, max_lr=max_lr, echo=lambda m: click.echo(m, err=True))
    if plot_path is not None:
        click.echo(f"plot: {write_plot(result, plot_path)}", err=True)
    args = [a for c in config_path for a in ("--config", c)] + [a for s in overrides for a in ("--set", s)
                                                                 if not s.startswith("optim.lr=")]
    click.echo(json.dumps(result, indent=2) if as_json else
               format_result(result, cfg["optim"]["name"], shlex.join(map(str, args)), cfg["optim"]))


@click.command(short_help="What a checkpoint (or exported .onnx) holds: classes, input, layers, progress.")
@click.argument("checkpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def info(checkpoint, as_json):
    """Show what CHECKPOINT (a .npz file, or a run folder: its best.npz, else last.npz) holds: its
    classes, input preprocessing, the network layer by layer with output shapes and parameter counts
    (as Keras' model.summary()), and how far its run trained. Runs nothing; numba is not loaded.
    A .onnx file cnn export wrote: its classes, preprocessing, inputs and outputs (needs the onnx package)."""
    from cnncli.runfolder import read_diverged
    from cnncli.summary import describe, format_info

    from cnncli.checkpoint import is_onnx

    if is_onnx(checkpoint) and not os.path.isdir(checkpoint):
        from cnncli import onnxmodel

        summary = onnxmodel.describe(checkpoint)
        click.echo(json_text(summary) if as_json else onnxmodel.format_info(summary))
        return
    path = resolve_checkpoint(checkpoint)
    last = path.parent / "last.npz"              # a run folder: how far it trained is last.npz's to say
    run_last = last if os.path.isdir(checkpoint) and path.name == "best.npz" and last.is_file() else None
    summary = describe(path, run_last)
    summary["diverged"] = read_diverged(path.parent) if os.path.isdir(checkpoint) else None   # (the run's last word)
    text = format_info(summary)
    if summary["diverged"]:                           # (after what the run trained, before the layers)
        head, layers = text.split("\n\n", 1)
        text = f"{head}\ndiverged    {summary['diverged']}\n\n{layers}"
    click.echo(json_text(summary) if as_json else text)


@click.command("augment-preview", cls=ConfigCommand,
               short_help="A PNG grid of augmented samples of your training images.")
@config_option("YAML config file (as for cnn train); its data.train images and augment section are used.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set augment.affine.rotate=20. Repeatable.")
@click.option("--out", "-o", "out_path", default="augment-preview.png", show_default=True,
              type=click.Path(dir_okay=False),
              help="Image file to write: PNG, or the format its extension names (.jpg, .webp, ...).")
@click.option("--rows", default=None, type=click.IntRange(1, 100),
              help="Images (one row each, classes in turn). Default: one per class, at most 12.")
@click.option("--cols", default=8, show_default=True, type=click.IntRange(2, 50),
              help="Columns: the original, then cols-1 augmented variants.")
@click.option("--seed", default=None, type=click.IntRange(min=0),
              help="Seed of the image choice and the draws (default: train.seed, as epoch 0 of training).")
@user_errors
def augment_preview(config_path, overrides, out_path, rows, cols, seed):
    """Render what the model sees: each row one of your images, then augmented variants of it."""
    from cnncli import config as config_mod
    from cnncli.augment_preview import named_format, write_preview

    cfg = config_mod.load_config(config_path, overrides)
    if not cfg["augment"]["enabled"]:
        click.echo("note: augment.enabled is false: training uses the originals; the variants show the "
                   "augment settings as they would apply", err=True)
    click.echo(str(write_preview(cfg, out_path, rows=rows, cols=cols, seed=seed,
                                 echo=lambda line: click.echo(printable(line), err=True))))
    if named_format(out_path) is None:          # (-o grid.xyz: a PNG nobody would open as one)
        click.echo(f"note: {printable(out_path)} does not end in an image extension Pillow writes (.png, .jpg, "
                   "...); it holds a PNG", err=True)


@click.command(short_help="Generate the built-in 12-class demo dataset.")
@click.argument("root", type=click.Path(file_okay=False), default="data/demo", required=False)
@user_errors
def demo(root):
    """Generate the built-in 12-class demo dataset (ROOT/train, ROOT/test) if it is not there yet.
    ROOT defaults to data/demo, where configs/demo.yaml looks for it."""
    from cnncli.demo import ensure_demo

    click.echo(str(ensure_demo(root, say=lambda line: click.echo(line, err=True))))   # (a folder replaced: said)


@click.command(short_help="Compile the numba kernels now (a first run does it anyway).")
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


@click.command(short_help="Show or clear the decoded-dataset cache.")
@click.option("--clear", is_flag=True, help="Delete every cached dataset (the demo dataset stays).")
@user_errors
def cache(clear):
    """Where the decoded-dataset cache lives ($CNNCLI_CACHE_DIR, else $XDG_CACHE_HOME/cnncli, else
    ~/.cache/cnncli) and its size; --clear deletes it."""
    from cnncli import data

    if clear:
        n, size, failed = data.clear_cache()
        click.echo(f"removed {n} cached dataset(s), {size / 1e6:.1f} MB, from {data.cache_dir()}")
        if failed:
            path, why = failed[0]
            raise UserError(f"{len(failed)} cache file(s) could not be deleted ({printable(path)}: {why})")
    else:
        folder, n, size = data.cache_info()
        click.echo(f"{folder}: {n} cached dataset(s), {size / 1e6:.1f} MB")


@click.command("cv", cls=ConfigCommand,
               short_help="K-fold cross-validation: one run per fold, mean and std of the folds.")
@config_option("YAML config file (as for cnn train); its data.train is split into the folds.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set train.epochs=20. Repeatable.")
@click.option("--folds", default=None, type=click.IntRange(min=2),
              help="Number of folds K [default: the config's data.folds when it is set, else 5; a resumed folder "
                   "keeps its own].")
@click.option("--out", "-o", type=click.Path(), default=None,
              help="Parent folder of the fold runs [default: the config's out + '-cv'].")
@click.option("--resume", type=click.Path(file_okay=False, exists=True), default=None,
              help="Continue a cnn cv folder: finished folds are kept, the others resume or start.")
@click.option("--init-from", type=click.Path(), default=None,
              help="Start every fold from a checkpoint's weights (fine-tuning), as cnn train --init-from.")
@click.option("--strict", is_flag=True, help="Refuse to start if any image is unreadable (same as --set data.strict=true).")
@click.option("--no-cache", is_flag=True, help="Decode every image again; do not read or write the dataset cache "
              "(same as --set data.cache=false).")
@click.option("--json", "as_json", is_flag=True, help="Print cv.json's object instead of the table.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no first-run line saying the kernels "
              "compile (as cnn train -q).")
@user_errors
def cv(config_path, overrides, folds, out, resume, init_from, strict, no_cache, as_json, quiet):
    """Stratified K-fold cross-validation of a config, as Ludwig's experiment --k_fold: fold k of
    data.train is held out for validation in run OUT/fold-k (an ordinary run folder), then each
    fold's best epoch and the mean +- std of their val loss and val acc are printed and written
    to OUT/cv.json. Under `mpirun -n K` each fold trains on the K processes, as cnn train does."""
    overrides = list(overrides) + (["data.strict=true"] if strict else []) + (["data.cache=false"] if no_cache else [])
    on_every_rank(_cv, config_path, overrides, folds, out, resume, init_from, as_json, quiet)


def _cv(comm, config_path, overrides, folds, out, resume, init_from, as_json, quiet):
    from cnncli import config as config_mod
    from cnncli.crossval import cross_validate, format_summary
    from cnncli.distributed import everyone

    def config():
        if resume is not None and (config_path or overrides or out or init_from or folds is not None):
            raise CnnError("--resume continues a cnn cv folder with its own config.yaml and folds; drop --config, "
                           "--set, --folds, --out, --init-from, --strict and --no-cache")
        if resume is not None:
            return None
        if init_from is not None and not init_from.strip():
            raise ConfigError("--init-from: the path is empty")
        cfg = config_mod.load_config(config_path, overrides)
        if init_from is not None:
            cfg = {**cfg, "train": {**cfg["train"], "init_from": init_from}}
        config_mod.require_train(cfg)
        return cfg
    cfg = everyone(comm, config)
    if folds is None:                   # (the config's data.folds, when it names a number of folds)
        folds = cfg["data"]["folds"] if cfg is not None and cfg["data"]["folds"] >= 2 else 5
    parent, summary = cross_validate(cfg, folds, out=out, resume=resume, quiet=quiet,
                                     echo=run_line, comm=comm)
    if comm.is_main:
        click.echo(json_text(summary) if as_json else format_summary(parent, summary))


@click.command("runs", short_help="The run folders under a folder, one row each: compare experiments.")
@click.argument("folders", nargs=-1, type=click.Path())
@click.option("--sort", "sort_by", default="name", show_default=True,
              type=click.Choice(["name", "val_acc", "val_loss", "time"]),
              help="Row order: name, val_acc (best first), val_loss (best first) or time (newest first).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of the rows.")
@user_errors
def runs(folders, sort_by, as_json):
    """List the run folders at or below FOLDERS (default: runs; 6 levels down), cnn cv folds included:
    classes, batchnorm, optimizer and lr, epochs done of the total (* stopped early, ! diverged: its
    diverged.txt says where; ~ training now), the best epoch with its val loss and val acc (best.npz's),
    the test accuracy (test_metrics.json's) and the checkpoint its weights started from. Runs nothing;
    numba is not loaded."""
    from cnncli.runs import describe_run, find_runs, format_runs, sort_rows
    from cnncli.textwidth import terminal_columns

    rows = sort_rows([describe_run(r) for r in find_runs(folders or ("runs",))], sort_by)
    if as_json:
        echo_json_list(rows)
    else:
        click.echo(format_runs(rows, terminal_columns()))


COMMANDS = (gradcheck, bench, lr_find, cv, info, runs, augment_preview, demo, warmup, cache)
