"""Setting up a training run, on every rank: the config against a resumed checkpoint, the data (rank 0
first, so the dataset cache is written once; rundata.py reads it), the numba kernels, the network and
the optimizer.

It trains nothing (trainer.py's Trainer does) and writes no files except the run folder it claims.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from cnncli import checkpoint, cores, resume as resume_mod, runfolder, runlock, warmstart
from cnncli import config as config_mod
from cnncli.errors import CnnError, ConfigError, DataError
from cnncli.datanotes import test_files_notes
from cnncli.rankcheck import agree_on_checkpoint, agree_on_config, agree_on_source
from cnncli.runfolder import RunState, new_run_dir
from cnncli.rundata import check_test_data, data_fingerprint, load_datasets, same_data_as_rank0


def _normalization(cfg: dict, train_ds) -> dict:
    """The input preprocessing a new run's network keeps: image size, resize mode, and the training
    pixels' mean and std with data.normalize (else 0 and 1)."""
    mean, std = 0.0, 1.0
    if cfg["data"]["normalize"]:
        from cnncli.data import pixel_mean_std

        mean, std = pixel_mean_std(train_ds.images)   # streamed: no float64 copy of the dataset
    return {"image_size": cfg["data"]["image_size"], "resize": cfg["data"]["resize"], "mean": mean, "std": std}


def _open_resume(resume, cfg: dict, out, write: bool = True):
    """Load the checkpoint to continue and check the config against it (before any data is read)
    -> ((arrays, meta, path), state, run_dir, cfg, notes, done); train.epochs=auto keeps the run's
    resolved value. write=False (MPI: setup claims it on rank 0 after): the folder is not touched; nor is
    any when the run has nothing left to do (done: its line, and run_dir the checkpoint's own, for setup's
    NothingToDo)."""
    from cnncli.predictor import check_architecture, run_checkpoint

    ckpt_path = run_checkpoint(resume)
    with resume_mod.best_instead(ckpt_path):
        arrays, meta = checkpoint.load(ckpt_path)
    check_architecture(arrays, meta, ckpt_path)           # shapes, dtypes, finite values
    resume_mod.check_resumable(ckpt_path, meta, resume)   # (a model saved from Python: --init-from)
    checkpoint.check_run_meta(ckpt_path, meta)            # the run state's kinds of values
    resume_mod.check_unchanged(meta.get("config", ""), cfg, ckpt_path, meta.get("num_classes"))
    state = runfolder.state_from_meta(meta, ckpt_path)
    saved = config_mod.load_config_text(meta.get("config", ""), source=f"{ckpt_path} (config)")
    cfg = resume_mod.resolved_epochs(cfg, saved)
    # the weights come from the checkpoint; its config keeps where the run's first weights came from
    first = saved["train"]["init_from"]
    if cfg["train"]["init_from"] not in (None, first):
        origin = first or "train.seed's initial weights"
        raise ConfigError(f"train.init_from applies to a new run; --resume continues from {ckpt_path}'s weights "
                          f"(its run started from {origin}): drop train.init_from or start a new run")
    cfg = {**cfg, "train": {**cfg["train"], "init_from": first}}
    if resume_mod.should_continue(state, saved, cfg):
        state.stopped_early = False
    anew = []
    if (saved["data"]["val"] is None) != (cfg["data"]["val"] is None):    # (allowed only when nothing was held out)
        state.best_val_loss, state.best_acc, state.bad_epochs = math.inf, -math.inf, 0
        anew = ["data.val " + ("now names validation images, where the run had none" if cfg["data"]["val"] else
                               "is dropped: the run has no validation images from here on")
                + ": best.npz and early stopping start anew (they compared other values until now)"]
    source = Path(os.path.realpath(ckpt_path)).parent       # (a symlinked checkpoint: the run it lies in)
    given = Path(resume) if os.path.isdir(resume) else Path(resume).parent
    if os.path.realpath(given) == str(source):
        source = given                                      # (as the user wrote it: runs/x, not /home/.../runs/x)
    lone = not resume_mod.in_its_run_folder(ckpt_path, saved)
    epochs = cfg["train"]["epochs"]
    done = resume_mod.nothing_to_do(state, epochs) if isinstance(epochs, int) else None
    if not out and lone:
        more = (f", and raise train.epochs{' or train.early_stopping.patience' if state.stopped_early else ''}: the "
                f"run already completed {state.epoch} epoch(s)") if done else ""     # (--out alone: 'Nothing to do')
        raise ConfigError(runfolder.printable(           # (a user's folder: its files would be overwritten)
            f"--resume {resume}: {ckpt_path.name} lies in a folder that is not its run's (no last.npz or best.npz "
            "of the same run beside it), whose files a resume there would overwrite; give --out NEWDIR to continue "
            f"its run in a new folder{more}"))
    if done:               # no folder is touched (an --out would get a lone best.npz); setup says so
        return (arrays, meta, ckpt_path), state, None if lone else source, cfg, [], done   # (None: no run folder)
    run_dir = Path(out) if out else source
    ignored_out = []                                    # (out set by --set or a config file: not a move)
    if not out and os.path.abspath(cfg["out"]) != os.path.abspath(saved["out"]):
        ignored_out = [f"out={cfg['out']} does not move a resumed run: it continues in {source} (--out DIR "
                       "continues it in another folder)"]
    theirs = runfolder.foreign_entries(run_dir) if out and os.path.realpath(out) != os.path.realpath(source) else []
    if theirs:                                           # (a user's folder: its files would be overwritten)
        raise ConfigError(runfolder.printable(f"--out {out}: holds files that are no run's ({', '.join(theirs)}); "
                                              "--resume --out continues this run in a new or empty folder"))
    cfg = {**cfg, "out": os.path.abspath(run_dir)}        # (config.yaml says where the run lives)
    if os.path.realpath(run_dir) != os.path.realpath(source):   # (cnn info names the run it continues)
        here = os.path.abspath(source / Path(os.path.realpath(ckpt_path)).name)
        state.came_from = state.came_from + [{"checkpoint": here, "epoch": state.epoch, "step": state.step}]
    notes = ignored_out + anew + _rewind_note(ckpt_path, state, run_dir) + resume_mod.changed_settings(saved, cfg)
    if write:
        _claim_resumed(ckpt_path, run_dir, out)
    return (arrays, meta, ckpt_path), state, run_dir, cfg, notes, None


def _claim_resumed(ckpt_path: Path, run_dir: Path, out) -> None:
    """The run folder's part of a resume, by the process that writes it (under MPI rank 0 alone, after
    every rank's checks, so its errors print once): an --out that holds another run is refused, then
    the folder is checked writable, held, cleared of a killed save's debris, and given best.npz."""
    if out and os.path.realpath(out) != os.path.dirname(os.path.realpath(ckpt_path)) and \
            runfolder.taken_because(run_dir) == "holds another run":   # (rank 0 only: it may have carried best.npz)
        shown = runfolder.printable(out)
        raise ConfigError(f"--out {shown}: holds another run; --resume --out continues this run in a new or empty "
                          f"folder (or give --resume {shown} to go on with that one)")
    runfolder.check_writable(run_dir, "; --out NEWDIR continues the run in a new folder" if not out else "")
    runlock.hold(run_dir)                           # (refused while another process trains it)
    runfolder.clean_debris(run_dir)                   # half-written saves of a killed process
    resume_mod.carry_best(ckpt_path.parent, run_dir)


def _rewind_note(ckpt_path: Path, state: RunState, run_dir: Path) -> list:
    """A note when the resumed checkpoint (best.npz, say) is behind the run folder's last.npz that
    this run will overwrite: the later epochs are trained again."""
    last = run_dir / "last.npz"
    if ckpt_path.name == "last.npz" and ckpt_path.parent == run_dir or not last.is_file():
        return []
    try:
        later = checkpoint.load_meta(last)
        step, epoch = int(later["step"]), int(later["epoch"])
    except (CnnError, KeyError, TypeError, ValueError):
        return []
    if step <= state.step:
        return []
    return [f"{ckpt_path} is at epoch {state.epoch} (step {state.step}), behind {last} (epoch {epoch}, step "
            f"{step}): training goes on from {ckpt_path.name} and overwrites last.npz and the later epochs' "
            "metrics rows"]


def build(cfg: dict, train_ds, resumed, comm=None, source=None, echo=None):
    """-> (net, opt, preprocess): fresh ones for a new run (from the weights of `source`, a
    warmstart.Source, when given; echo says what was copied), the checkpoint's for a resume. The
    network computes the shards of every batch that `comm` gives this rank (all of them in one process)."""
    from cnncli import model, optim
    from cnncli.predictor import check_architecture, load_into

    m, o = cfg["model"], cfg["optim"]
    if resumed is None:
        preprocess = _normalization(cfg, train_ds) if source is None else warmstart.preprocess(cfg, source)
        net = model.Network(num_classes=len(train_ds.classes), batchnorm=m["batchnorm"], eps=m["bn_eps"], comm=comm,
                            momentum=m["bn_momentum"], dtype=np.float32, seed=cfg["train"]["seed"])
        if source is not None:
            note = warmstart.apply(net, source, train_ds.classes)
            if echo:
                echo(note)
    else:
        arrays, meta, path = resumed
        preprocess = meta["preprocess"]
        num_classes, batchnorm, eps, dtype = check_architecture(arrays, meta, path)
        net = model.Network(num_classes=num_classes, batchnorm=batchnorm, eps=eps, momentum=m["bn_momentum"],
                            dtype=dtype, comm=comm)
        load_into(net, arrays)
    opt = optim.Optimizer(o["name"], net.params.flat.size, o["lr"], momentum=o["momentum"],
                          weight_decay=o["weight_decay"], betas=tuple(o["betas"]), dtype=np.float32)
    if resumed is not None:
        opt.load_state_dict({"optim." + k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")})
    return net, opt, preprocess


def _compile_kernels(cfg: dict, quiet, comm) -> None:
    """A cold numba cache: compile the run's kernels in parallel processes, saying so once. One
    process overlaps this with its first steps; under MPI rank 0 fills the cache first and the other
    ranks then load it (instead of K ranks compiling the same kernels at once)."""
    from cnncli import precompile
    from cnncli.distributed import main_first

    bn, opt, aug = cfg["model"]["batchnorm"], cfg["optim"]["name"], cfg["augment"]["enabled"]
    say = None if quiet or not comm.is_main else precompile.stderr_line
    if comm.size == 1:
        precompile.start(bn, opt, say=say, augment=aug)
        return
    main_first(comm, lambda: precompile.start(bn, opt, workers=max(1, precompile.env_workers()), say=say,
                                              augment=aug, background=False).wait(), others=False)


IDLE_NOTE = 4      # threads without a shard in a step that make a note


def _idle_threads(batch_size: int, images: int, threads: int, ranks: int) -> str | None:
    """A note when a step has 4 or more threads per rank beyond its 8-image shards: those have no
    layers to run (only the sums between them, validation and the test use them). A thread or
    two idle (batch 8 on 2 cores) is not worth a line; 8 of 16 is."""
    from cnncli.distributed import SHARD, shard_count

    shards = max(1, shard_count(min(batch_size, images)) // ranks)
    if threads - shards < IDLE_NOTE:
        return None
    per = " per process" if ranks > 1 else ""
    return (f"a step of {min(batch_size, images)} images is {shards} shard(s) of {SHARD}{per}: {threads - shards} of "
            f"the {threads} threads wait while its layers run; train.batch_size {SHARD * threads * ranks} would keep "
            "every thread busy")


def setup(cfg: dict, resume, out, quiet, echo, comm, run_folder: bool = True, setting_notes: bool = True):
    """Every rank: check, resume, threads, data, network -> (cfg with train.epochs resolved, ...).
    Errors every rank hits are printed once. run_folder False (cnn lr-find): no run folder is made
    (run_dir None)."""
    from cnncli.distributed import check_ranks, everyone, main_first, rank_threads
    from cnncli.kernels import set_threads

    resumed, state, run_dir, source, notes = None, RunState(), None, None, []
    agree_on_config(comm, cfg)                             # (another host's copy out of step: other batches)
    everyone(comm, check_ranks, cfg["train"]["batch_size"], comm.size, resume is not None)
    if resume is not None:
        resumed, state, run_dir, cfg, notes, done = everyone(comm, _open_resume, resume, cfg, out,
                                                             write=comm.size == 1)
        agree_on_checkpoint(comm, resumed[0], state)          # (another host's copy of the run: other weights)
        if done:
            raise resume_mod.NothingToDo(done, run_dir)       # before any data is read or kernel compiled
        if comm.size > 1:                                     # (its errors, a run trained now, print once)
            main_first(comm, _claim_resumed, resumed[2], run_dir, out, others=False)
    else:
        source = everyone(comm, warmstart.open_source, cfg)    # train.init_from, before any data is read
        agree_on_source(comm, source)                          # (another host's copy of that file: other weights)
    asked = rank_threads(comm, cfg["train"]["threads"])
    threads = set_threads(asked)
    if threads < asked and cfg["train"]["threads"]:      # (the same bits at any count: the run goes on)
        notes.append(f"train.threads is {asked}, but numba runs at most {threads} thread(s) in this process "
                     f"(NUMBA_NUM_THREADS; by default the cores this process may use): using {threads}")
    if comm.size > 1 and cfg["train"]["threads"]:         # (0 shares the cores out: no crowd to note)
        notes += [n for n in [cores.crowded(comm.allgather((cores.host_key(), threads)), cores.usable_cores())] if n]

    def load():
        loaded = load_datasets(cfg, echo=echo if comm.is_main else None, progress=not quiet and comm.is_main,
                               classes=resumed and resumed[1].get("classes"))
        if cfg["data"]["test"]:             # (its files that are training files: a warning with the data's)
            test_files = check_test_data(cfg["data"], loaded[0].classes, progress=not quiet and comm.is_main)
            loaded[0].notes.extend(test_files_notes(cfg["data"], loaded[0], test_files))
        if cfg["model"]["batchnorm"] != "none" and len(loaded[0].labels) < 2:
            raise DataError(f"{cfg['data']['train']}: model.batchnorm={cfg['model']['batchnorm']} "
                            "needs at least 2 training images")
        return loaded

    # rank 0 decodes and writes the cache first; the others then read it (or all decode: no cache)
    train_ds, val_ds, skipped = (main_first if cfg["data"]["cache"] else everyone)(comm, load)
    if comm.size > 1:                # (another host's copy out of step: a shape error mid-step, or silent)
        mine = data_fingerprint(train_ds, val_ds)
        everyone(comm, same_data_as_rank0, mine, comm.bcast(mine))
    if resumed is not None:
        notes += [n for n in [runfolder.validation_changed(resumed[1], val_ds, cfg["data"]["val"] is None)] if n]
    notes += [n for n in [_idle_threads(cfg["train"]["batch_size"], len(train_ds.labels), threads, comm.size)] if n]
    if echo and comm.is_main:
        for note in notes:
            echo(f"note: {note}")
    _compile_kernels(cfg, quiet, comm)
    auto = cfg["train"]["epochs"] == "auto"
    cfg = config_mod.resolve_epochs(cfg, len(train_ds.labels))
    if echo and comm.is_main and run_folder and setting_notes:   # (lr-find runs its own schedule)
        for note in config_mod.setting_notes(cfg):
            echo(f"note: {note}")
    net, opt, preprocess = build(cfg, train_ds, resumed, comm, source, echo=echo if comm.is_main else None)
    if resume is None and run_folder:
        run_dir = main_first(comm, new_run_dir, out or cfg["out"], "--out" if out else "`out`", others=False)
        if comm.is_main:
            runlock.hold(run_dir)                          # until train() ends (a resume meanwhile is refused)
        cfg = {**cfg, "out": os.path.abspath(run_dir)}   # config.yaml names the folder the run got (runs/x-2)
    return (cfg, auto), state, run_dir, threads, (train_ds, val_ds, skipped), (net, opt, preprocess)
