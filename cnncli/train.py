"""The training loop: seeded mini-batches, validation, metrics.csv, atomic checkpoints, exact resume.

It owns the run folder and the order of events; the maths lives in model/optim, the images in data.
It is not a general trainer: one network family, one loss, one process.
"""

from __future__ import annotations

import csv
import io
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnncli import __version__, checkpoint
from cnncli import config as config_mod
from cnncli.errors import CheckpointError, CnnError, ConfigError, DataError, TrainingDiverged

METRICS_COLUMNS = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time_s")


class Interrupted(CnnError):
    """SIGINT/SIGTERM: the current step finished, last.npz was saved."""

    exit_code = 130


@dataclass
class RunState:
    """Where a run stands; all of it goes into every checkpoint so a resume continues bit for bit."""

    epoch: int = 0                # completed epochs
    epoch_step: int = 0           # steps done inside the current epoch
    step: int = 0                 # global optimizer steps
    loss_sum: float = 0.0         # current epoch: sum of per-image loss so far
    correct: int = 0              # current epoch: correct predictions so far
    seen: int = 0                 # current epoch: images so far
    best_val_loss: float = math.inf
    bad_epochs: int = 0           # epochs since the best val loss (early stopping)
    history: list = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# data

def load_datasets(cfg: dict, echo=None):
    """(train_ds, val_ds, skipped) as the config says: data.val, or a stratified data.val_split of train."""
    from cnncli import data

    d = cfg["data"]
    train_dir, val_dir = Path(d["train"]), (Path(d["val"]) if d["val"] else None)
    if d["demo"] and (not train_dir.exists() or (val_dir is not None and not val_dir.exists())):
        from cnncli.demo import ensure_demo

        root = train_dir.parent
        if echo:
            echo(f"Generating the built-in demo dataset in {root} ...")
        ensure_demo(root)
    opts = dict(image_size=d["image_size"], resize=d["resize"], strict=d["strict"], cache=d.get("cache", True))
    train_ds, skipped = data.load_folder(train_dir, **opts)
    n_classes = cfg["model"]["num_classes"]
    if n_classes is not None and n_classes != len(train_ds.classes):
        raise ConfigError(
            f"model.num_classes is {n_classes} but {train_dir} has {len(train_ds.classes)} class folders"
        )
    if val_dir is not None:
        val_ds, val_skipped = data.load_folder(val_dir, classes=train_ds.classes, **opts)
        skipped = list(skipped) + list(val_skipped)
    else:
        tr_idx, va_idx = data.stratified_split(train_ds.labels, d["val_split"], d["seed"])
        train_ds, val_ds = data.split(train_ds, tr_idx, va_idx)   # in place: no second copy
    if len(train_ds.labels) == 0:
        raise DataError(f"{train_dir}: no training images left after the validation split")
    return train_ds, val_ds, skipped


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, min_last: int) -> list:
    """Index arrays of one epoch: a permutation that is a pure function of (seed, epoch), so a resume
    mid-epoch replays the same order. A trailing batch smaller than min_last is dropped (BN needs 2)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)  # (n,)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if batches and len(batches[-1]) < min_last and len(batches) > 1:
        batches.pop()
    return batches


# ----------------------------------------------------------------------------------------------
# run folder and checkpoints

def new_run_dir(out: str) -> Path:
    """`out`, or `out-2`, `out-3`... when `out` already holds a run: a new run never overwrites an old one."""
    base = Path(out)
    candidate, k = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_metrics(run_dir: Path, history: list) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in METRICS_COLUMNS})
    _atomic_text(run_dir / "metrics.csv", buf.getvalue())


def save_checkpoint(path: Path, net, opt, state: RunState, cfg: dict, classes, preprocess: dict,
                    cfg_text: str | None = None) -> None:
    arrays = {f"params/{k}": v for k, v in net.params.items()}
    arrays.update({f"buffers/{k}": v for k, v in net.buffers.items()})
    arrays.update({f"optim/{k.removeprefix('optim.')}": v for k, v in opt.state_dict().items()})
    arrays["rng/seed"] = np.array([cfg["train"]["seed"]], dtype=np.int64)
    meta = {
        "cnncli_version": __version__,
        "num_classes": len(classes),
        "batchnorm": cfg["model"]["batchnorm"],
        "eps": cfg["model"]["bn_eps"],
        "dtype": str(net.params.flat.dtype),
        "classes": list(classes),
        "preprocess": preprocess,
        "config": cfg_text if cfg_text is not None else config_mod.dump(cfg),
        "epoch": state.epoch,
        "epoch_step": state.epoch_step,
        "step": state.step,
        "loss_sum": state.loss_sum,
        "correct": state.correct,
        "seen": state.seen,
        "best_val_loss": state.best_val_loss if math.isfinite(state.best_val_loss) else None,
        "bad_epochs": state.bad_epochs,
        "history": state.history,
    }
    checkpoint.save(path, arrays, meta)


def _state_from_meta(meta: dict, path) -> RunState:
    try:
        best = meta["best_val_loss"]
        return RunState(
            epoch=int(meta["epoch"]), epoch_step=int(meta["epoch_step"]), step=int(meta["step"]),
            loss_sum=float(meta["loss_sum"]), correct=int(meta["correct"]), seen=int(meta["seen"]),
            best_val_loss=math.inf if best is None else float(best), bad_epochs=int(meta["bad_epochs"]),
            history=list(meta["history"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: checkpoint metadata lacks the run state needed to resume ({err})") from None


# ----------------------------------------------------------------------------------------------
# the loop

class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves, and stops. A second SIGINT aborts."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, nothing to restore
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def evaluate_loss_acc(net, table, ds, batch_size=256):
    """Loss (evaluate.bce_loss, as `cnn eval` reports it) and accuracy of `net` on a Dataset, inference mode."""
    from cnncli.evaluate import bce_loss
    from cnncli.kernels import lookup_batch

    n = len(ds.labels)
    if n == 0:
        return float("nan"), float("nan")
    probs = np.empty((n, net.num_classes), dtype=np.float64)  # (N,C)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        probs[start : start + batch_size] = net.predict_proba(lookup_batch(ds.images, idx, table))
    return bce_loss(probs, ds.labels), float((probs.argmax(1) == ds.labels).mean())


def train(cfg: dict, resume=None, quiet: bool = False, echo=print, out=None) -> Path:
    """Train as `cfg` says (or continue the checkpoint `resume`); returns the run folder."""
    from cnncli import model, optim
    from cnncli.predictor import input_table, load_into, network_from_arrays

    t_setup = time.perf_counter()
    if resume is not None:
        from cnncli.predictor import run_checkpoint

        ckpt_path = run_checkpoint(resume)
        arrays, meta = checkpoint.load(ckpt_path)
        state = _state_from_meta(meta, ckpt_path)
        run_dir = Path(out) if out else ckpt_path.parent
        run_dir.mkdir(parents=True, exist_ok=True)
        for debris in run_dir.glob(".*.tmp-*"):  # half-written saves of a killed process
            debris.unlink(missing_ok=True)
    from cnncli.kernels import lookup_batch, set_threads

    threads = set_threads(cfg["train"]["threads"])

    train_ds, val_ds, skipped = load_datasets(cfg, echo=echo)
    classes = train_ds.classes
    tcfg, ocfg, mcfg = cfg["train"], cfg["optim"], cfg["model"]
    if mcfg["batchnorm"] != "none" and len(train_ds.labels) < 2:
        raise DataError(f"{cfg['data']['train']}: model.batchnorm={mcfg['batchnorm']} needs at least 2 training images")
    dtype = np.float32

    if resume is None:
        run_dir = new_run_dir(out or cfg["out"])
        state = RunState()
        mean, std = 0.0, 1.0
        if cfg["data"]["normalize"]:
            from cnncli.data import pixel_mean_std

            mean, std = pixel_mean_std(train_ds.images)   # streamed: no float64 copy of the dataset
        preprocess = {"image_size": cfg["data"]["image_size"], "resize": cfg["data"]["resize"], "mean": mean, "std": std}
        net = model.Network(num_classes=len(classes), batchnorm=mcfg["batchnorm"], eps=mcfg["bn_eps"],
                            momentum=mcfg["bn_momentum"], dtype=dtype, seed=tcfg["seed"])
    else:
        if meta.get("classes") != list(classes):
            raise DataError(f"{cfg['data']['train']}: classes differ from those of checkpoint {ckpt_path}")
        if meta.get("batchnorm") != mcfg["batchnorm"]:
            raise ConfigError(f"model.batchnorm is {mcfg['batchnorm']!r} but {ckpt_path} was trained with {meta.get('batchnorm')!r}")
        preprocess = meta["preprocess"]
        net = network_from_arrays(arrays, meta, ckpt_path, momentum=mcfg["bn_momentum"])

    opt = optim.Optimizer(ocfg["name"], net.params.flat.size, ocfg["lr"], momentum=ocfg["momentum"],
                          weight_decay=ocfg["weight_decay"], betas=tuple(ocfg["betas"]), dtype=dtype)
    if resume is not None:
        opt.load_state_dict({"optim." + k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")})

    cfg_text = config_mod.dump(cfg)
    (run_dir / "config.yaml").write_text(cfg_text, encoding="utf-8")
    if skipped:
        (run_dir / "skipped.txt").write_text("".join(f"{p}\t{r}\n" for p, r in skipped), encoding="utf-8")
        echo(f"warning: skipped {len(skipped)} unreadable file(s), listed in {run_dir / 'skipped.txt'}:")
        for p, r in skipped[:5]:
            echo(f"  {p}: {r}")
        if len(skipped) > 5:
            echo(f"  ... and {len(skipped) - 5} more")

    table = input_table(preprocess["mean"], preprocess["std"], dtype)  # (256,) uint8 -> input
    epochs, bs = tcfg["epochs"], tcfg["batch_size"]
    n = len(train_ds.labels)
    min_last = 2 if mcfg["batchnorm"] != "none" else 1
    steps_per_epoch = len(epoch_batches(n, bs, tcfg["seed"], 0, min_last))
    last_path, best_path = run_dir / "last.npz", run_dir / "best.npz"
    every = tcfg["checkpoint_every"]
    es = tcfg["early_stopping"]

    echo(f"Run folder: {run_dir}")
    echo(f"Training on {n} images ({len(classes)} classes), validating on {len(val_ds.labels)}; "
         f"batchnorm={mcfg['batchnorm']}, {ocfg['name']} lr={ocfg['lr']}, batch {bs}, {threads} thread(s); "
         f"setup {time.perf_counter() - t_setup:.1f}s")
    if state.epoch >= epochs:
        echo(f"Nothing to do: the run already completed {state.epoch} epoch(s) (raise train.epochs to continue).")
        return run_dir

    def lr_at(step):
        return optim.lr_at(step, steps_per_epoch, epochs, ocfg["lr"], schedule=ocfg["schedule"],
                           warmup_epochs=ocfg["warmup_epochs"], step_size=ocfg["step_size"],
                           gamma=ocfg["gamma"], min_lr=ocfg["min_lr"])

    def save_last():
        save_checkpoint(last_path, net, opt, state, cfg, classes, preprocess, cfg_text)

    show_bar = not quiet and sys.stderr.isatty()
    t_run = time.perf_counter()
    steps_total = steps_per_epoch * epochs
    steps_at_start = state.step
    with _StopFlag() as stop:
        while state.epoch < epochs:
            batches = epoch_batches(n, bs, tcfg["seed"], state.epoch, min_last)
            t_epoch = time.perf_counter()
            bar = None
            if show_bar:
                from tqdm import tqdm

                bar = tqdm(total=len(batches), initial=state.epoch_step, desc=f"epoch {state.epoch + 1}/{epochs}",
                           unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr)
            imgs_this_session = 0
            while state.epoch_step < len(batches):
                idx = batches[state.epoch_step]
                x = lookup_batch(train_ds.images, idx, table)  # (B,1,S,S)
                y = train_ds.labels[idx]                   # (B,)
                lr = lr_at(state.step)
                with np.errstate(over="ignore", invalid="ignore"):   # a diverging run is reported below,
                    loss, probs = net.train_step(x, y)              # in one line, not as numpy warnings
                if not (math.isfinite(loss) and math.isfinite(float(np.add.reduce(net.grads.flat)))):
                    raise TrainingDiverged(
                        f"loss or gradients became non-finite at epoch {state.epoch + 1}, step {state.epoch_step + 1} "
                        f"(lr {lr:.3g}); the last good checkpoint is {last_path if last_path.exists() else 'none'}; "
                        "try a lower optim.lr")
                opt.step(net.params.flat, net.grads.flat, lr)
                state.step += 1
                state.epoch_step += 1
                state.loss_sum += loss * len(idx)
                state.correct += int((probs.argmax(1) == y).sum())
                state.seen += len(idx)
                imgs_this_session += len(idx)
                if bar is not None:
                    el = time.perf_counter() - t_epoch
                    done = state.step - steps_at_start
                    eta = (time.perf_counter() - t_run) / max(done, 1) * (steps_total - state.step)
                    bar.set_postfix_str(f"loss {state.loss_sum / state.seen:.4f} acc {state.correct / state.seen:.3f} "
                                        f"{imgs_this_session / max(el, 1e-9):.0f} img/s run ETA {eta:.0f}s",
                                        refresh=False)
                    bar.update(1)
                if stop.signum is not None:
                    save_last()
                    if bar is not None:
                        bar.close()
                    name = signal.Signals(stop.signum).name
                    raise Interrupted(f"{name}: stopped at epoch {state.epoch + 1}, step {state.epoch_step}; saved "
                                      f"{last_path}; resume with: cnn train --resume {run_dir}")
                if every and state.step % every == 0 and state.epoch_step < len(batches):
                    save_last()
            if bar is not None:
                bar.close()
            train_time = time.perf_counter() - t_epoch
            val_loss, val_acc = evaluate_loss_acc(net, table, val_ds)
            row = {"epoch": state.epoch + 1, "step": state.step,
                   "train_loss": state.loss_sum / max(state.seen, 1), "train_acc": state.correct / max(state.seen, 1),
                   "val_loss": val_loss, "val_acc": val_acc, "lr": lr_at(max(state.step - 1, 0)),
                   "time_s": round(time.perf_counter() - t_epoch, 3)}
            state.history.append(row)
            state.epoch += 1
            state.epoch_step, state.loss_sum, state.correct, state.seen = 0, 0.0, 0, 0
            improved = math.isfinite(val_loss) and val_loss < state.best_val_loss - es["min_delta"]
            if improved:
                state.best_val_loss, state.bad_epochs = val_loss, 0
            else:
                state.bad_epochs += 1
            stopping = es["patience"] > 0 and state.bad_epochs >= es["patience"]
            if improved:
                save_checkpoint(best_path, net, opt, state, cfg, classes, preprocess, cfg_text)
            if stopping and es["restore_best"] and best_path.exists():
                load_into(net, checkpoint.load(best_path)[0])
            save_last()
            write_metrics(run_dir, state.history)
            rate = imgs_this_session / max(train_time, 1e-9)
            echo(f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}  "
                 f"val loss {val_loss:.4f} acc {val_acc:.2%}  lr {row['lr']:.3g}  {row['time_s']:.1f}s "
                 f"({rate:.0f} img/s){'  *best' if improved else ''}")
            if stopping:
                echo(f"Early stopping: val loss did not improve for {es['patience']} epoch(s); best val loss "
                     f"{state.best_val_loss:.4f} is in {best_path}"
                     + (" (restored into last.npz)" if es["restore_best"] else ""))
                break
    echo(f"Done in {time.perf_counter() - t_run:.1f}s. Best val loss {state.best_val_loss:.4f}: {best_path}")
    return run_dir
