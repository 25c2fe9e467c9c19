"""The training loop of a set-up run: seeded mini-batches, one optimizer step, validation, early
stopping, checkpoints, the stop signals. It does not set a run up (runsetup.py, train.train) nor
hold the maths (model, optim), the images (data) or the file formats (runfolder).
"""

# A `Trainer`'s loop is a few named steps (one optimizer step, end of epoch, interruption) calling
# small pieces (ProgressBar, earlystop's EarlyStopping, runfolder's writers). It owns the order of events. Under
# `mpirun -n K` every rank runs the same loop on the same batches (the Network computes the rank's
# shards); rank 0 alone writes and prints, and the ranks agree on every stop.

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time

import numpy as np

from cnncli import config as config_mod
from cnncli import checkpoint, resume as resume_mod, runfolder
from cnncli.atomic import why_unwritten
from cnncli.balance import class_weights
from cnncli.callbacks import ProgressBar, StopFlag, loss_text
from cnncli.earlystop import EarlyStopping, best_note, plateau_drops
from cnncli.errors import CnnError, Stopped, TrainingDiverged
from cnncli.runfolder import save_checkpoint
from cnncli.tblog import EventLog


class Interrupted(Stopped):
    """SIGINT/SIGTERM/SIGUSR1/SIGHUP: the current step finished, last.npz was saved."""


def _everywhere(err: CnnError) -> CnnError:
    """Mark an error every rank raises at the same step (all hold the same state): printed once."""
    err.everywhere = True
    return err


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, min_last: int) -> list:
    """Index arrays of one epoch: a permutation that is a pure function of (seed, epoch), so a resume
    mid-epoch replays the same order. A trailing batch smaller than min_last is dropped (BN needs 2)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)  # (n,)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if batches and len(batches[-1]) < min_last and len(batches) > 1:
        batches.pop()
    return batches


# ----------------------------------------------------------------------------------------------
# the loop

class Trainer:
    """A set-up run: network, optimizer, data, run folder, state. `fit()` runs the remaining epochs.

    Extension points: `step_input` (how each shard of a step makes its float input: the lookup and
    the augmentation; `batch_input` makes that input for a whole batch, to look at, and is not
    called by the step), `sample_weights` (per-image loss weights, e.g. class weights),
    `is_main_process` (only the main process -- rank 0 under mpirun -- writes files and prints)."""

    is_main_process = True

    def __init__(self, cfg, run_dir, net, opt, state, train_ds, val_ds, classes, preprocess, echo, quiet,
                 comm=None):
        from cnncli.distributed import Comm
        from cnncli.predictor import input_table

        self.comm = Comm() if comm is None else comm
        self.is_main_process = self.comm.is_main
        self.cfg, self.run_dir, self.net, self.opt, self.state = cfg, run_dir, net, opt, state
        self._t_epoch = None              # when this process's part of the current epoch started (or its last save)
        self.train_ds, self.val_ds, self.classes, self.preprocess = train_ds, val_ds, classes, preprocess
        self._echo, self.quiet = echo, quiet
        self.cfg_text = config_mod.dump(cfg)
        self.data_info = runfolder.validation_info(val_ds)   # which images validate: eval checks it later
        self.table = input_table(preprocess["mean"], preprocess["std"], net.params.flat.dtype)  # (256,)
        t = cfg["train"]
        self.epochs, self.batch_size, self.seed, self.every = t["epochs"], t["batch_size"], t["seed"], t["checkpoint_every"]
        self.min_last = 2 if cfg["model"]["batchnorm"] != "none" else 1
        self.steps_per_epoch = len(epoch_batches(len(train_ds.labels), self.batch_size, self.seed, 0, self.min_last))
        self._rates = (0, [])                  # lr_at's epoch of rates: (its first step, [rate per step])
        self.early = EarlyStopping(t["early_stopping"], have_val=len(val_ds.labels) > 0, monitor=t["monitor"])
        self.drops = self.plateau_drops()      # schedule=plateau: the rate's drops so far (from the history)
        self.last_path, self.best_path = run_dir / "last.npz", run_dir / "best.npz"
        self.events = (EventLog(run_dir, resumed_at=state.step or None)     # (a resume: its checkpoint's step)
                       if t["tensorboard"] and self.is_main_process else None)
        self.restored = False
        self.weights_epoch = None       # the epoch whose weights restore_best put back (last.npz's meta says so)
        self.class_weight = class_weights(t["class_weight"], train_ds.labels, classes)  # (C,) or None
        if self.class_weight is not None:
            self.class_weight = self.class_weight.astype(net.params.flat.dtype)
        self.augmenter = None
        if cfg["augment"]["enabled"]:
            from cnncli.augment import Augmenter, AugmentSettings

            self.augmenter = Augmenter(AugmentSettings.from_config(cfg["augment"]), seed=self.seed,
                                       pixel_std=preprocess["std"], dtype=net.params.flat.dtype,
                                       max_batch=min(self.batch_size, len(train_ds.labels)))
            self.fills = np.full(len(train_ds.labels), np.nan)   # (M,) each image's fill, kept once computed

    # -- hooks ---------------------------------------------------------------------------------
    def batch_input(self, idx: np.ndarray) -> np.ndarray:
        """(B,) training indices -> (B,1,S,S) float network input, augmented (when augment.enabled) by
        draws from (train.seed, epoch, step in the epoch), so a resumed run sees the same pixels:
        what step_input's transform makes, for the whole batch at once. Not a hook: train_step goes
        through step_input; this only shows its result."""
        x, transform = self.step_input(idx)
        if transform is None:
            return x
        out = np.empty((len(idx), 1) + self.train_ds.images.shape[1:], self.table.dtype)   # (B,1,S,S)
        transform(slice(0, len(idx)), x, out)
        return out

    def step_input(self, idx: np.ndarray):
        """(x, transform) for Network.train_step on the training images idx: x is None and the
        transform (an augment.StepInput) makes the input of the images idx[s] -- their lookup
        through the normalization table, then (when augment.enabled) the augmentation drawn for
        this epoch and step, in one kernel call: the one-call steps make each shard's input inside
        their own kernel, the other paths call it in each shard's task, so each shard's images are
        looked up and augmented on the worker threads while they are in cache, and each rank makes
        only its own shards'."""
        from cnncli.augment import lookup_input

        images, table = self.train_ds.images, self.table
        if self.augmenter is not None:               # one kernel call per shard: lookup, then augmentation
            return None, self.augmenter.bind(self.state.epoch, self.state.epoch_step,
                                             lookup=(images, idx, table, self.fills))
        return None, lookup_input(images, idx, table)

    def sample_weights(self, idx: np.ndarray, labels: np.ndarray):
        """(B,) per-image loss weights for model.Network.train_step (the loss is mean_i w_i * loss_i):
        train.class_weight of each image's class, or None for the plain mean loss."""
        return None if self.class_weight is None else self.class_weight[labels]

    def echo(self, message: str) -> None:
        if self.is_main_process:
            self._echo(message)

    def plateau_drops(self) -> int:
        """schedule=plateau: the rate's drops over the finished epochs (0 for the other schedules)."""
        o = self.cfg["optim"]
        if o["schedule"] != "plateau":
            return 0
        return plateau_drops(self.early, self.state.history, o["plateau_patience"])

    # -- steps ---------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """optim.lr_at for this run; the values of a whole epoch's steps are made at once and kept
        (the same floats: a step then looks its rate up instead of running the schedule's Python)."""
        from cnncli import optim

        first, rates = self._rates
        if not first <= step < first + len(rates):
            o, spe = self.cfg["optim"], self.steps_per_epoch
            first = step - step % spe
            rates = [optim.lr_at(s, spe, self.epochs, o["lr"], schedule=o["schedule"],
                                 warmup_epochs=o["warmup_epochs"], step_size=o["step_size"], gamma=o["gamma"],
                                 min_lr=o["min_lr"], drops=self.drops) for s in range(first, first + spe)]
            self._rates = (first, rates)
        return rates[step - first]

    def train_step(self, idx: np.ndarray) -> None:
        """One optimizer step on the training images `idx`; updates the epoch's running loss/accuracy."""
        from cnncli.kernels.tally import tally

        state, net = self.state, self.net
        x, transform = self.step_input(idx)   # (None, the lookup + augmentation each shard runs)
        y = self.train_ds.labels[idx]      # (B,)
        weights = self.sample_weights(idx, y)
        lr = self.lr_at(state.step)
        with np.errstate(over="ignore", invalid="ignore"):   # a diverging run is reported below,
            loss, probs = net.train_step(x, y, weights, transform)   # in one line, not as numpy warnings
        right = tally(net.grads.flat, probs, y)             # -1: a gradient is not finite
        if not math.isfinite(loss) or right < 0:
            raise _everywhere(TrainingDiverged(
                f"loss or gradients became non-finite at epoch {state.epoch + 1}, step {state.epoch_step + 1} "
                f"(lr {lr:.3g}); {self.diverged_advice(lr)}"))
        self.opt.step(net.params.flat, net.grads.flat, lr)
        state.step += 1
        state.epoch_step += 1
        state.loss_sum += loss * len(idx)
        state.correct += right
        state.seen += len(idx)

    def run_epoch(self, stop: StopFlag, bar: ProgressBar) -> bool:
        """The rest of the current epoch, then its end; returns True when early stopping ends the run."""
        state = self.state
        batches = epoch_batches(len(self.train_ds.labels), self.batch_size, self.seed, state.epoch, self.min_last)
        t_epoch = self._t_epoch = time.perf_counter()
        before = state.epoch_time            # (a resumed epoch: the seconds its steps took before)
        bar.start_epoch(state, len(batches))
        images = 0
        while state.epoch_step < len(batches):
            idx = batches[state.epoch_step]
            self.train_step(idx)
            images += len(idx)
            bar.update(state, images, t_epoch)
            signum = stop.agreed(self.comm, self.save_last)
            if signum is not None:
                bar.close()
                self.interrupt(signum, saved=stop.signum is not None)
            if self.every and state.step % self.every == 0 and state.epoch_step < len(batches):
                self.save_last()
        bar.close()
        return self.end_epoch(t_epoch, images, before)

    def _check_finite_weights(self, val_loss: float) -> None:
        # the epoch's last update may leave weights that overflow (finite gradients, a huge rate): a
        # non-finite validation loss, or a non-finite weight, stops the run as a non-finite loss does,
        # before this epoch's checkpoints are written (the last good one stays)
        lr = self.lr_at(max(self.state.step - 1, 0))
        if self.val_ds.labels.size and not math.isfinite(val_loss):
            what = f"the validation loss became non-finite ({loss_text(val_loss)}): the weights overflow"
        elif not np.isfinite(self.net.params.flat).all():
            what = "the weights became non-finite"
        else:
            return
        raise _everywhere(TrainingDiverged(f"{what} after epoch {self.state.epoch + 1} (lr {lr:.3g}); "
                                           f"{self.diverged_advice(lr)}"))

    def diverged_advice(self, lr: float) -> str:
        # what a diverged run can do next: resume its last good checkpoint at a lower rate, or start anew;
        # a tenth of the rate it diverged at (lr: a warmup or schedule may have had it below optim.lr), as
        # lr-find's rule of thumb takes a tenth of where the loss blows up (a third diverged again, warmed up)
        base = self.cfg["optim"]["lr"]
        lower = f"{(min(base, lr) if lr > 0 else base) / 10:.2g}"
        if self.last_path.exists():
            return (f"the last good checkpoint is {self.last_path}; resume it at a lower rate: cnn train --resume "
                    f"{self.run_dir} --set optim.lr={lower}")
        config = self.run_dir / "config.yaml"
        return (f"no checkpoint was saved; try a lower optim.lr (e.g. {lower}), or let `cnn lr-find --config "
                f"{config if config.is_file() else '...'}` suggest one")

    @staticmethod
    def compiling_note() -> str:
        # "incl. compiling" in place of the img/s of the first epoch line after this process compiled
        # kernels (a first run): a rate of compiling and training together would mislead
        from cnncli import precompile

        return "incl. compiling" if precompile.compiled_here() else ""

    def end_epoch(self, t_epoch: float, images: int, before: float = 0.0) -> bool:
        """Validate, log the epoch, update best/early stopping, save checkpoints and metrics.csv.
        before: seconds the epoch's steps took in an earlier process (a resumed epoch): its time_s
        counts them; its img/s is this process's images over this process's time."""
        state = self.state
        train_time = time.perf_counter() - t_epoch
        from cnncli.evaluate import evaluate_loss_acc

        with np.errstate(over="ignore", invalid="ignore"):
            val_loss, val_acc = evaluate_loss_acc(self.net, self.table, self.val_ds, comm=self.comm)
        self._check_finite_weights(val_loss)
        row = {"epoch": state.epoch + 1, "step": state.step,
               "train_loss": state.loss_sum / max(state.seen, 1), "train_acc": state.correct / max(state.seen, 1),
               "val_loss": val_loss, "val_acc": val_acc, "lr": self.lr_at(max(state.step - 1, 0)),
               "time_s": round(before + time.perf_counter() - t_epoch, 3)}
        state.history.append(row)
        state.epoch += 1
        state.epoch_step, state.loss_sum, state.correct, state.seen, state.epoch_time = 0, 0.0, 0, 0, 0.0
        self._t_epoch = None
        improved, stopping = self.early.update(state, row)
        drops, self.drops = self.drops, self.plateau_drops()
        if improved:
            self.save_best()
        if stopping and self.early.restore_best:
            self.restore_best()
        # metrics.csv before last.npz: a process killed between the two leaves metrics.csv a row ahead,
        # which the resumed run writes again, not a row short behind a finished run's checkpoint (whose
        # resume has nothing to do and writes nothing)
        if self.is_main_process:
            with self._resumable():
                runfolder.write_metrics(self.run_dir, state.history)
        self.save_last()
        if self.events is not None:
            try:
                self.events.epoch(row)
            except OSError as err:            # a side log: say so once, train on
                why = why_unwritten(err, self.events.path, todo=False)
                self.echo(f"warning: no more TensorBoard events ({self.events.path}: {why})")
                self.events = None
        val = f"val loss {loss_text(val_loss)} acc {val_acc:.2%}" if self.val_ds.labels.size else "no val"
        note = self.compiling_note() or ("" if images else "resumed after its last step")   # (no rate of 0 images)
        self.echo(f"epoch {row['epoch']}/{self.epochs}  train loss {loss_text(row['train_loss'])} "
                  f"acc {row['train_acc']:.2%}  "
                  f"{val}  lr {row['lr']:.3g}  {row['time_s']:.1f}s "
                  f"({note or f'{images / max(train_time, 1e-9):.0f} img/s'}){'  *best' if improved else ''}")
        o = self.cfg["optim"]
        before, after = (max(o["lr"] * o["gamma"] ** d, o["min_lr"]) for d in (drops, self.drops))
        if after != before and not stopping and row["epoch"] < self.epochs:   # no next step after the last
            self.echo(f"Plateau: {self.early.monitor.replace('_', ' ')} did not improve for {o['plateau_patience']} "
                      f"epoch(s); lr {after:.3g} from the next step")
        if stopping:
            delta = self.early.min_delta
            by = f" by more than train.early_stopping.min_delta={delta:g}" if delta else ""
            self.echo(f"Early stopping: {self.early.monitor.replace('_', ' ')} did not improve{by} for "
                      f"{self.early.patience} epoch(s); "
                      f"{best_note(self.early, self.state, self.best_path, self.restored)}")
        return stopping

    def restore_best(self) -> None:
        """Early stopping with restore_best: best.npz's weights, BN statistics and optimizer state."""
        from cnncli.predictor import load_into

        arrays, meta = (checkpoint.load(self.best_path) if self.is_main_process and self.best_path.exists()
                        else (None, None))
        arrays = self.comm.bcast(arrays)                                    # rank 0's file, every rank
        if arrays is not None:
            self.weights_epoch = meta["epoch"] if meta is not None else None   # (rank 0, the one that saves)
            load_into(self.net, arrays)
            self.opt.load_state_dict({"optim." + k[len("optim/"):]: v for k, v in arrays.items()
                                      if k.startswith("optim/")})
            self.restored = True

    def interrupt(self, signum: int, saved: bool = False):
        """A stop signal after a finished step: save last.npz (unless saved), say how to resume,
        raise Interrupted (on every rank; printed once)."""
        if not saved:
            self.save_last()
        stop = Interrupted(
            f"{signal.Signals(signum).name}: stopped at epoch {self.state.epoch + 1}, step "
            f"{self.state.epoch_step}; saved {self.last_path}; resume with: cnn train --resume {self.run_dir}")
        stop.run_dir = self.run_dir                 # (cnn train prints it on stdout, as after a whole run)
        raise _everywhere(stop)

    def save_last(self) -> None:
        if self._t_epoch is not None and self.state.epoch_step:    # (mid-epoch: its seconds so far go with it)
            now = time.perf_counter()
            self.state.epoch_time += now - self._t_epoch
            self._t_epoch = now
        if self.is_main_process:
            self._config_still_there()
            with self._resumable():
                save_checkpoint(self.last_path, self.net, self.opt, self.state, self.cfg, self.classes,
                                self.preprocess, self.cfg_text, self.data_info, weights_epoch=self.weights_epoch)

    @contextlib.contextmanager
    def _resumable(self):
        """A checkpoint or metrics.csv that cannot be saved (a full disk): the run stops with its line,
        which says how to go on from last.npz (whole: saves are atomic) when there is one (runfolder.unsaved)."""
        try:
            yield
        except CnnError as err:
            if isinstance(err, Stopped):
                raise
            raise runfolder.unsaved(err, self.last_path, self.run_dir) from None

    def write_config(self) -> None:
        """The run folder's config.yaml: this run's resolved config (eval, report and resume read it);
        written whole or not at all (runfolder.atomic_text: a full disk is one line naming it)."""
        runfolder.atomic_text(self.run_dir / "config.yaml", self.cfg_text)

    def _config_still_there(self) -> None:
        """config.yaml (written at the start) written again, with a warning, when it has gone: the
        folder was deleted or emptied while the run trained."""
        config = self.run_dir / "config.yaml"
        if not config.exists():
            self.echo(f"warning: {runfolder.printable(str(config))} is gone (was the run folder deleted or emptied "
                      "while the run trained?); writing it again with this run's checkpoints")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.write_config()

    def save_best(self) -> None:
        if self.is_main_process:
            with self._resumable():
                save_checkpoint(self.best_path, self.net, self.opt, self.state, self.cfg, self.classes,
                                self.preprocess, self.cfg_text, self.data_info)

    def fit(self, began=lambda: None) -> None:
        """The remaining epochs, or one line when there is nothing to do. began(): called once the steps'
        stop handler (StopFlag) is in place."""
        state = self.state
        done = resume_mod.nothing_to_do(state, self.epochs)
        if done:
            self.echo(done)
            return
        bar = ProgressBar(not self.quiet and sys.stderr.isatty() and self.is_main_process, self.epochs,
                          self.steps_per_epoch * self.epochs, state.step)
        with StopFlag() as stop:
            began()
            while state.epoch < self.epochs:
                if self.run_epoch(stop, bar):
                    break
        note = best_note(self.early, self.state, self.best_path, self.restored)
        self.echo(f"Done in {time.perf_counter() - bar.t_run:.1f}s. {note[0].upper()}{note[1:]}")   # (not
        # str.capitalize: it lowercases the rest, the run folder's path included)
