"""A training run from a config: set up (runsetup.py), handed to a Trainer (trainer.py, the loop),
then the test set's metrics and the compile workers' end. It is not a general trainer: one network
family, one loss; the maths lives in model/optim, the images in data, the files in runfolder.
"""

# `train()` sets up a run (runsetup.py), prints its start lines and hands it to a `Trainer`
# (trainer.py), whose loop owns the order of events: steps, epochs, checkpoints, stops.

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

from cnncli import resume as resume_mod, runfolder, runlock
from cnncli.callbacks import (Aborted, StopAfterTraining, StopDuringSetup, StopOnAnotherRank, loss_text,
                              warmup_text)
from cnncli.cores import quota_text
from cnncli.errors import CnnError, ConfigError, Stopped, TrainingDiverged, main_only
from cnncli.runfolder import RunState, save_checkpoint  # noqa: F401 (RunState: API)
from cnncli.datanotes import data_notes
from cnncli.rundata import load_datasets  # noqa: F401 (API)
from cnncli.runsetup import setup
from cnncli.trainer import Interrupted, Trainer, epoch_batches  # noqa: F401 (Interrupted, epoch_batches: API)


def evaluate_test_data(run_dir: Path, cfg: dict, echo) -> dict:
    """data.test: best.npz (else last.npz) evaluated on it, one line, RUN/test_metrics.json."""
    import json

    from cnncli.atomic import kept, why_unwritten, write_atomic
    from cnncli.evaluate import evaluate
    from cnncli.predictor import BEST_FIRST, run_checkpoint

    ckpt = run_checkpoint(run_dir, BEST_FIRST)
    metrics, _, _ = evaluate(ckpt, cfg["data"]["test"], cache=cfg["data"]["cache"])
    text, path = json.dumps(metrics, indent=2) + "\n", run_dir / "test_metrics.json"
    previous = kept(path)
    try:
        write_atomic(path, lambda f: f.write(text), text=True)
    except OSError as err:           # (a full disk: the run is saved; no "write elsewhere", the file's place is set)
        raise CnnError(runfolder.printable(f"{path}: cannot be written ({why_unwritten(err, path, todo=False)})"
                                           f"{previous}; the run's checkpoints are saved: once it can be, cnn train "
                                           f"--resume {run_dir} runs the test")) from None
    for line in [f"warning: data.test: {w}" for w in metrics["warnings"]] + [f"note: data.test: {n}"
                                                                             for n in metrics["notes"]]:
        echo(line)
    runfolder.write_skipped(run_dir, metrics["skipped_files"], echo, " of data.test", tag="data.test: ")
    echo(f"Test ({metrics['num_images']} images of {runfolder.printable(cfg['data']['test'])}, {ckpt.name}): "
         f"loss {loss_text(metrics['loss'])}, accuracy {metrics['accuracy']:.2%}, macro F1 {metrics['macro_f1']:.4f}, "
         f"top-{metrics['top_k']} {metrics['top_k_accuracy']:.2%}; {run_dir / 'test_metrics.json'}")
    return metrics


def _test_best(run_dir: Path, cfg: dict, echo) -> None:
    """evaluate_test_data after the steps, a stop meanwhile the one line that says so; its errors are
    the run's (under mpirun rank 0 tests alone: main_only)."""
    with main_only(), StopAfterTraining(run_dir, "while testing best.npz on data.test"):
        evaluate_test_data(run_dir, cfg, echo)


def _lone_test_note(resume, test) -> str:
    """The line for a finished run's checkpoint resumed outside its run folder with data.test set:
    nothing is trained, so no run folder is made to hold test_metrics.json, and the test is not run."""
    ck, test = runfolder.printable(str(resume)), runfolder.printable(str(test))
    return (f"note: data.test is not tested: {ck} lies outside its run folder and nothing is trained, so no run "
            f"folder holds the result; cnn eval --checkpoint {ck} --data {test} tests it")


@contextlib.contextmanager
def _before_first_step(run_dir, new: bool, resume=None):
    """From the network's set-up to its start lines' end: a stop gives the set-up's line, and a new run's
    folder, nothing trained in it yet (new: this process made it), is given back after a stop or an
    error (config.yaml a full disk refuses). A stop as it ends is held for the stop line entered next
    (_around_the_steps')."""
    line = StopDuringSetup(resume)
    line.hand_off = True
    try:
        with line:
            yield
    except BaseException:
        if new:
            runlock.discard_unstarted(run_dir)
        raise


def _around_the_steps(run_dir, resume, comm, testing: bool, hand_off: bool):
    """The stop line from the run's start lines to train()'s return, on every rank: until the steps' own
    handler (trainer.StopFlag) is in place a stop says no step ran; from "Done" on, rank 0's says the
    checkpoints are saved and what was left undone, and another rank, its part done, ignores it."""
    if not comm.is_main:
        return StopOnAnotherRank(run_dir, "nothing left undone", before=StopDuringSetup(resume))
    after = StopAfterTraining(run_dir, "before testing best.npz on data.test" if testing else "nothing left undone",
                              before=StopDuringSetup(resume))
    after.hand_off = hand_off
    return after


def _resumable_text(folder) -> str:
    # "; cnn train --resume FOLDER continues it" when the run a new run stepped aside from is unfinished
    from cnncli.summary import run_state

    return f"; cnn train --resume {runfolder.printable(str(folder))} continues it" \
        if run_state(folder) == "unfinished" else ""


def _auto_text(trainer) -> str:
    """What train.epochs=auto chose: about AUTO_STEPS optimizer steps, or the bound it met."""
    from cnncli.config import auto_epoch_count
    from cnncli.options import AUTO_EPOCHS, AUTO_STEPS

    steps, unclamped = auto_epoch_count(len(trainer.train_ds.labels), trainer.batch_size)
    bound = {AUTO_EPOCHS[0]: "at least", AUTO_EPOCHS[1]: "at most"}.get(trainer.epochs)
    if bound and unclamped != trainer.epochs:
        return (f" (train.epochs=auto for this training set: {bound} {trainer.epochs} epochs, {steps} step(s) each; "
                f"{AUTO_STEPS:,} steps would take {unclamped:,})")
    return f" (train.epochs=auto for this training set: about {AUTO_STEPS:,} steps of {steps} per epoch)"


def _mapped(images) -> bool:
    """Whether `images` lie in a memory-mapped file (a dataset cache hit: data.cache's copy-on-write map)."""
    import mmap

    while images is not None:
        if isinstance(images, (np.memmap, mmap.mmap)):
            return True
        images = getattr(images, "base", None)
    return False


def _weights_text(setting, weights, classes, shown: int = 6) -> str:
    """'' for an unweighted loss, else '; class weights balanced (b 1.87, a 0.62)' for the start-of-run
    line: train.class_weight and the classes' weights, the `shown` highest first; a mapping shows the
    classes it sets ('as set: star 4, plus 0.25; the others 1')."""
    if weights is None:
        return ""
    if not isinstance(setting, str):
        pairs = ", ".join(f"{runfolder.printable(c)} {w:.3g}" for c, w in zip(classes, weights) if w != 1.0)
        rest = "; the others 1" if any(w == 1.0 for w in weights) else ""
        return f"; class weights as set ({pairs or 'all 1'}{rest})"
    order = sorted(range(len(classes)), key=lambda i: -weights[i])[:shown]   # (the rare classes' first)
    pairs = ", ".join(f"{runfolder.printable(classes[i])} {weights[i]:.3g}" for i in order)
    more = ", ..." if len(classes) > shown else ""
    return f"; class weights {setting} ({'highest first: ' if more else ''}{pairs}{more})"


def train(cfg: dict, resume=None, quiet: bool = False, echo=print, out=None, comm=None,
          setting_notes: bool = True, hand_off: bool = False) -> Path | None:
    """Train as `cfg` says (or continue the checkpoint `resume`); returns the run folder (None: a resume
    with nothing to do of a checkpoint outside its run folder, with --out: no folder is made). cfg: a
    config as config.load_config gives it, or a partial one, nested ({"data": {"train": "my_data"}}):
    the defaults fill it (with `resume`, the run's own config does), and a bad key or value is a
    ConfigError. `comm` (distributed.get_comm()
    under mpirun) makes this one rank of a data-parallel run. hand_off: the caller enters a stop line of
    its own (callbacks.StopAfterTraining...) on rank 0 at once on return, which takes a stop that comes
    in between."""
    from cnncli import config as config_mod
    from cnncli.distributed import Comm, everyone

    t_setup = time.perf_counter()
    comm = Comm() if comm is None else comm
    if not isinstance(cfg, dict) and cfg is not None:
        raise ConfigError(f"config: expected a mapping of sections, got {type(cfg).__name__}")
    if resume is not None:                   # (a partial dict from Python: over the run's own config, as --set)
        cfg = config_mod.layered(resume_mod.resumed_config(resume), cfg or {})
    cfg = config_mod.validate(cfg)                                 # (a partial dict from Python: a KeyError)
    config_mod.require_train(cfg)
    cfg = resume_mod.absolute_paths(cfg)
    taken = Path(out or cfg["out"])          # the folder asked for (setup's cfg names the one the run got)
    runfolder.check_utf8_name(taken, "--out" if out else "out")
    if out or resume is None:                # (a file there, or a folder in the data: said before it is decoded)
        runfolder.refuse_unfit(taken, cfg["data"], "--out" if out else "`out`")
    with StopDuringSetup(resume):
        try:
            (cfg, auto), state, run_dir, threads, (train_ds, val_ds, skipped), (net, opt, preprocess) = \
                setup(cfg, resume, out, quiet, echo, comm, setting_notes=setting_notes)
        except resume_mod.NothingToDo as done:
            if comm.is_main:
                echo(str(done))
                if done.run_dir is not None and cfg["data"]["test"] and \
                        not (Path(done.run_dir) / "test_metrics.json").exists():
                    # (a stop during the test, or data.test set now): the test the run still lacks, in
                    # the folder held (refused while another process trains it)
                    runlock.hold(done.run_dir)
                    try:
                        _test_best(done.run_dir, cfg, echo)
                    finally:
                        runlock.let_go(done.run_dir)
                elif done.run_dir is None and cfg["data"]["test"]:
                    echo(_lone_test_note(resume, cfg["data"]["test"]))
            return done.run_dir
        except BaseException:
            runlock.release_all()             # (a resume's folder, held before its data was read, stays;
            raise                               # a new run's, still empty, goes)
        try:
            trainer = everyone(comm, lambda: Trainer(cfg, run_dir, net, opt, state, train_ds, val_ds, train_ds.classes,
                                                     preprocess, echo, quiet, comm=comm))   # (its errors: once)
        except BaseException:     # (train.class_weight naming no class...): give the new folder's name back
            if resume is None and comm.is_main:
                runlock.release(run_dir)
            runlock.let_go(run_dir)
            raise
    testing = comm.is_main and cfg["data"]["test"]
    after = _around_the_steps(run_dir, resume, comm, testing, hand_off)
    try:
        with _before_first_step(run_dir, resume is None and comm.is_main, resume):
            if trainer.is_main_process:
                with main_only():                     # (the run's files: under mpirun not rank 0's fault)
                    trainer.write_config()
                    if skipped:
                        runfolder.write_skipped(run_dir, skipped, echo)
                for note in train_ds.notes + val_ds.notes:
                    echo(note)
            m, o = cfg["model"], cfg["optim"]
            ranks = f"{net.comm.size} MPI ranks x " if net.comm.size > 1 else ""      # the ranks that share each step
            trainer.echo(f"Run folder: {runfolder.printable(str(run_dir))}" + (
                f" ({runfolder.printable(str(taken))} {runfolder.taken_because(taken)}{_resumable_text(taken)})"
                if resume is None and run_dir != taken else ""))
            trainer.echo(f"Training on {len(train_ds.labels)} images ({len(train_ds.classes)} classes), validating on "
                         f"{len(val_ds.labels)}; batchnorm={m['batchnorm']} ({net.params.flat.size:,} parameters), "
                         f"{o['name']} lr={o['lr']} {o['schedule']}{warmup_text(o['warmup_epochs'])}, "
                         f"batch {cfg['train']['batch_size']}, "
                         f"{ranks}{threads} thread(s){'' if cfg['train']['threads'] else quota_text()}; "
                         f"setup {time.perf_counter() - t_setup:.1f}s"
                         + (" (the images from the dataset cache)" if _mapped(train_ds.images) else ""))
            trainer.echo(f"Epochs: {trainer.epochs}{_auto_text(trainer) if auto else ''}; "
                         f"augmentation {'on' if trainer.augmenter is not None else 'off'}; early stopping "
                         f"{'patience ' + str(trainer.early.patience) if trainer.early.patience else 'off'}"
                         + _weights_text(cfg["train"]["class_weight"], trainer.class_weight, train_ds.classes))
            if resume is not None:
                into = f", {state.epoch_step} step(s) into epoch {state.epoch + 1}" if state.epoch_step else ""
                trainer.echo(f"Resuming from {runfolder.printable(str(resume))}: {state.epoch} epoch(s) done{into}")
            for line in data_notes(cfg, train_ds, val_ds):
                trainer.echo(line)
            if comm.is_main:
                runfolder.clear_diverged(run_dir)        # a resumed run goes on from its last good checkpoint
        with after:
            try:
                trainer.fit(began=after.began)
            except TrainingDiverged as err:
                if comm.is_main:
                    runfolder.write_diverged(run_dir, str(err))
                err.run_dir = run_dir
                raise
            except Aborted:                  # (a second Ctrl-C during the steps: an abort, not a stop after them)
                after.keyboard = False
                raise
            except CnnError as err:
                if resume is None and comm.is_main and not isinstance(err, Stopped):   # (a first checkpoint a
                    runlock.discard_unstarted(run_dir)  # full disk refused: nothing to resume; the name goes back)
                raise
            after.began()                    # (fit had nothing to do: what follows is after training too)
            if testing:
                _test_best(run_dir, cfg, echo)
                after.doing = "nothing left undone"
            if comm.size == 1:
                from cnncli import precompile

                with StopAfterTraining(run_dir, "while finishing numba's cache (the next run compiles the rest)"):
                    precompile.finish_background(precompile.stderr_line)   # (even with -q: minutes of silence)
            if comm.is_main:
                runlock.let_go(run_dir)    # (here too: cnn train's own handler takes over on return)
        return run_dir
    finally:
        if comm.is_main:
            runlock.let_go(run_dir)        # (setup held the folder for this process)
