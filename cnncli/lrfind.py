"""`cnn lr-find`: the learning-rate range test of Lightning's lr_find (after Smith, 2015): from the
config's initial weights, train a few steps with the rate rising geometrically from min to max,
smooth the loss, stop once it exceeds 4x its best, and suggest the rate where it falls fastest
on its way to its lowest point.
It writes no run folder and no checkpoint; it does not change the config (it prints what to set).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnncli.errors import CnnError, TrainingDiverged
from cnncli.options import MIN_LR_SCHEDULES

SMOOTHING = 0.98          # the loss's exponential moving average (bias-corrected), as Lightning
DIVERGED = 4.0            # stop once the smoothed loss exceeds this multiple of its best
SKIP_BEGIN, SKIP_END = 10, 1   # points left out of the suggestion at each end (Lightning's defaults)
MIN_STEPS = SKIP_BEGIN + SKIP_END + 2   # the fewest steps a suggestion can come from


def rates(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """(steps,) float64: min_lr * (max_lr/min_lr)^(i/(steps-1)), the rate of step i."""
    return min_lr * (max_lr / min_lr) ** (np.arange(steps) / max(1, steps - 1))


def smooth(losses) -> np.ndarray:
    """(K,) the bias-corrected exponential moving average of the losses (SMOOTHING)."""
    out, avg = np.empty(len(losses)), 0.0
    for i, loss in enumerate(losses):
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        out[i] = avg / (1 - SMOOTHING ** (i + 1))
    return out


def suggest(lrs, smoothed):
    """The rate at the steepest descent of the smoothed loss (the most negative np.gradient) on the
    way down to its lowest point: the first SKIP_BEGIN and last SKIP_END points left out, and every
    point after the minimum (a dip inside a blown-up loss is no advice; fastai's "valley" looks
    left of the minimum too). None with fewer than 2 such points."""
    y = np.asarray(smoothed)
    a, b = SKIP_BEGIN, len(y) - SKIP_END
    if b - a < 2:
        return None
    b = a + int(np.argmin(y[a:b])) + 1                     # up to and including the minimum
    if b - a < 2:
        return None
    return float(lrs[a + int(np.argmin(np.gradient(y[a:b])))])


def lr_find(cfg: dict, steps: int = 100, min_lr: float = 1e-6, max_lr: float = 1.0, echo=print) -> dict:
    """Run the range test as `cfg` sets up training (data, network, optimizer, augmentation, batch
    size, threads) -> {"lr": [...], "loss": [...], "smoothed": [...], "suggested": lr or None,
    "stopped": why it ended early or None}."""
    from cnncli import precompile
    from cnncli.distributed import Comm
    from cnncli.runsetup import setup
    from cnncli.train import Trainer, epoch_batches

    if not 0 < min_lr < max_lr:                                 # (the Python API's caller; the CLI checks first)
        raise CnnError(f"--min-lr {min_lr:g} must be > 0 and below --max-lr {max_lr:g}")
    comm = Comm()
    (cfg, _), state, _, _, (train_ds, val_ds, _), (net, opt, preprocess) = \
        setup(cfg, None, None, False, echo, comm, run_folder=False)       # as cnn train, without a run folder
    trainer = Trainer(cfg, Path("<lr-find: no run folder>"), net, opt, state, train_ds, val_ds,
                      train_ds.classes, preprocess, lambda _: None, True, comm=comm)
    lrs = rates(min_lr, max_lr, steps)
    trainer.lr_at = lambda step: float(lrs[step])
    losses, stopped = [], None
    batches = epoch_batches(len(train_ds.labels), trainer.batch_size, trainer.seed, 0, trainer.min_last)
    for i in range(steps):
        if state.epoch_step == len(batches):               # next epoch: its own order and draws
            state.epoch, state.epoch_step = state.epoch + 1, 0
            batches = epoch_batches(len(train_ds.labels), trainer.batch_size, trainer.seed, state.epoch,
                                    trainer.min_last)
        before = state.loss_sum
        idx = batches[state.epoch_step]
        try:
            trainer.train_step(idx)
        except TrainingDiverged:
            stopped = f"the loss or a gradient became non-finite at lr {lrs[i]:.3g}"
            break
        losses.append((state.loss_sum - before) / len(idx))
        s = smooth(losses)
        if i > 0 and s[-1] > DIVERGED * s.min():
            stopped = f"the smoothed loss passed {DIVERGED:g}x its best at lr {lrs[i]:.3g}"
            break
    precompile.finish_background(precompile.stderr_line)   # first run: keep the workers' compiled kernels
    if not losses:
        raise CnnError(f"lr-find: the first step already diverged (lr {min_lr:g}); lower --min-lr")
    smoothed = smooth(losses)
    return {"lr": lrs[:len(losses)].tolist(), "loss": losses, "smoothed": smoothed.tolist(),
            "suggested": suggest(lrs, smoothed), "stopped": stopped}


def write_plot(result: dict, path) -> Path:
    """A PNG at `path` (written whole or not at all): the loss, raw and smoothed, against the rate on a
    log axis, the suggested rate marked, as Lightning's lr_finder.plot(suggest=True). Needs matplotlib."""
    from cnncli.atomic import kept, why_unwritten, write_atomic
    from cnncli.plotting import DPI, STYLE, matplotlib_parts, new_figure

    matplotlib, Figure, Canvas = matplotlib_parts()
    with matplotlib.rc_context(STYLE):
        fig = new_figure(Figure, Canvas, 6, 4)
        ax = fig.subplots()
        ax.plot(result["lr"], result["loss"], color="0.75", lw=1, label="loss")
        ax.plot(result["lr"], result["smoothed"], color="tab:blue", lw=2, label="smoothed loss")
        best = result["suggested"]
        if best is not None:
            ax.axvline(best, color="tab:red", ls="--", label=f"suggested lr {best:.3g}")
        raw, smoothed = np.asarray(result["loss"]), np.asarray(result["smoothed"])
        until = int(np.argmin(smoothed)) + 1                     # up to the smoothed minimum: the rise
        low = min(raw.min(), smoothed.min())                     # after it runs off the top
        high = max(raw[:until].max(), smoothed[:until].max())
        ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss (summed BCE)")
        ax.set_title("cnn lr-find")
        ax.legend(loc="best")
        previous = kept(path)
        try:
            write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
        except OSError as err:
            raise CnnError(f"{path}: cannot write the plot ({why_unwritten(err, path)}){previous}") from None
    return Path(path)


def format_result(result: dict, optimizer: str, train_args: str = "", optim: dict | None = None) -> str:
    """A table of every 10th step (rate, smoothed loss), how it ended, and the suggestion: a cnn
    train command line with `train_args` (the test's own --config/--set, shell-quoted) that `cnn
    train` takes: when the config's optim section (`optim`) has a schedule floor optim.min_lr above
    the suggested rate, the line lowers it too, in the same ratio to optim.lr."""
    lrs, smoothed = result["lr"], result["smoothed"]
    lines = [f"{'step':>5} {'lr':>10} {'smoothed loss':>14}"]
    for i in sorted(set(range(0, len(lrs), 10)) | {len(lrs) - 1}):
        lines.append(f"{i + 1:>5} {lrs[i]:>10.3g} {smoothed[i]:>14.4f}")
    lines.append(f"ran {len(lrs)} step(s)" + (f"; stopped: {result['stopped']}" if result["stopped"] else ""))
    best = result["suggested"]
    if best is None and len(lrs) < MIN_STEPS:
        lines.append(f"no suggestion: fewer than {MIN_STEPS} steps ran before it stopped; "
                     "try more --steps or a lower --max-lr")
    elif best is None:
        lines.append(f"no suggestion: the smoothed loss did not fall after step {SKIP_BEGIN}; "
                     "try a lower --min-lr")
    else:
        lr = float(f"{best:.3g}")
        floor = ""
        if optim and optim["schedule"] in MIN_LR_SCHEDULES and optim["min_lr"] > lr:
            same_ratio = float(f"{lr * optim['min_lr'] / optim['lr']:.3g}")
            floor = f" --set optim.min_lr={min(lr, same_ratio):.3g}"
        lines.append(f"suggested optim.lr: {best:.3g} (steepest descent of the smoothed loss before its lowest "
                     f"point, {optimizer}); "
                     f"try: cnn train {train_args + ' ' if train_args else ''}--set optim.lr={lr:.3g}{floor}")
    return "\n".join(lines)

