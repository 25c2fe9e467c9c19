"""A stop signal after the last step of `cnn train` (between "Done" and the process's end): one line
saying the checkpoints are saved and exit 130, or, once the run folder is printed, nothing (exit 0);
never a death by the signal with no word. Both tests failed against the old code (the process ended
by SIGTERM, status -15, after "Done in ...")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cnncli.cli import cli
from e2e_util import cli_env, make_folder, write_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("stop") / "data", per_class=8, odd_files=False)


def _training(data, tmp_path, epochs):
    """(run folder, a `cnn train` process of `epochs` epochs on data, its stdout and stderr piped)."""
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", data, run, epochs=epochs)
    return run, subprocess.Popen([sys.executable, "-m", "cnncli", "train", "--config", str(cfg), "-q", "--no-report"],
                                 env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_right_after_done_is_a_line_or_nothing_never_a_silent_death(data, tmp_path, sig):
    run, proc = _training(data, tmp_path, epochs=1)
    lines = []
    for line in proc.stderr:                      # the signal as soon as the run says it is done
        lines.append(line)
        if line.startswith("Done in"):
            os.kill(proc.pid, getattr(signal, sig))
            break
    rest, out = proc.stderr.read(), proc.stdout.read()
    code = proc.wait(timeout=120)
    assert any(x.startswith("Done in") for x in lines), "".join(lines) + rest
    assert code in (0, 130), (code, rest)        # (a negative code: ended by the signal)
    assert out == f"{run}\n", (out, rest)
    if code == 130:
        assert rest.strip().splitlines()[-1].startswith(f"{sig}: stopped after training, "), rest
        assert rest.strip().endswith(f"the run's checkpoints are saved in {run}"), rest
    assert (run / "last.npz").is_file() and (run / "best.npz").is_file()


# `cnn` whose runlock.let_go sends the process the signal named argv[1] on its second call for the folder named
# argv[2]: train()'s last line, between its own stop line's end and the caller's next one (the report's, a fold's end)
_STOP_IN_THE_GAP = """
import os, signal, sys
from pathlib import Path
from cnncli import cli, runlock
real, calls, sig, name = runlock.let_go, [], getattr(signal, sys.argv.pop(1)), sys.argv.pop(1)
def let_go(*args):
    real(*args)
    calls.extend(a for a in args if Path(a).name == name)
    if len(calls) == 2:
        os.kill(os.getpid(), sig)
runlock.let_go = let_go
cli.main()
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_as_train_hands_over_to_the_report_is_the_stop_line(data, tmp_path, sig):
    # CI saw SIGTERM after "Done in" end the process by the signal (-15, no line): it came in that gap,
    # where neither line's handler was installed (and a SIGINT there was 'Error: interrupted', exit 1)
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", data, run, epochs=1)
    res = subprocess.run([sys.executable, "-c", _STOP_IN_THE_GAP, sig, "run", "train", "--config", str(cfg), "-q"],
                         env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 130, (res.returncode, res.stderr)
    assert res.stderr.strip().splitlines()[-1] == (f"{sig}: stopped after training, before drawing its report (cnn "
                                                   f"report {run} draws it); the run's checkpoints are saved in {run}")
    assert res.stdout == f"{run}\n" and (run / "last.npz").is_file()


def test_a_stop_as_a_folds_run_hands_over_to_cv_is_the_stop_line(data, tmp_path):
    cv = tmp_path / "run-cv"                     # (cnn cv's folder for out: run)
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1)
    res = subprocess.run([sys.executable, "-c", _STOP_IN_THE_GAP, "SIGTERM", "fold-1", "cv", "--config", str(cfg),
                          "--folds", "2", "-q"], env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 130, (res.returncode, res.stderr)
    assert res.stderr.strip().splitlines()[-1] == (f"SIGTERM: stopped after fold 1; the finished folds are saved in "
                                                   f"{cv}; continue the cross-validation with: cnn cv --resume {cv}")
    assert (cv / "fold-1" / "best.npz").is_file() and not (cv / "fold-2").exists()


# `cnn cv` sending itself SIGTERM at argv[1]: "fold-2", once it says '-- fold 2 of 2' (between fold 1's end and
# fold 2's set-up), or "summary", once cv.json is written (after the last fold's end, before the table is printed)
_STOP_IN_CV = """
import os, signal, sys
from cnncli import cli, cli_tools, runfolder
where, real_text, real_line = sys.argv.pop(1), runfolder.atomic_text, cli_tools.run_line
def atomic_text(path, *args, **kwargs):
    real_text(path, *args, **kwargs)
    if where == "summary" and str(path).endswith("cv.json"):
        os.kill(os.getpid(), signal.SIGTERM)
def run_line(line):
    real_line(line)
    if where == "fold-2" and str(line).startswith("-- fold 2"):
        os.kill(os.getpid(), signal.SIGTERM)
runfolder.atomic_text, cli_tools.run_line = atomic_text, run_line
cli.main()
"""


@pytest.mark.parametrize("where, doing", [("fold-2", "before fold 2"),
                                          ("summary", "after the last fold, while writing its summary")])
def test_a_stop_between_cvs_folds_or_after_the_last_is_the_stop_line(data, tmp_path, where, doing):
    # (a SIGTERM there ended cnn cv by the signal, -15 and no line, as one after cnn train's 'Done in' did)
    cv = tmp_path / "run-cv"
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1)
    res = subprocess.run([sys.executable, "-c", _STOP_IN_CV, where, "cv", "--config", str(cfg), "--folds", "2", "-q"],
                         env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 130, (res.returncode, res.stderr)
    assert res.stderr.strip().splitlines()[-1] == (f"SIGTERM: stopped {doing}; the finished folds are saved in "
                                                   f"{cv}; continue the cross-validation with: cnn cv --resume {cv}")


@pytest.mark.parametrize("at", range(8))
def test_a_stop_as_the_hand_off_switches_handlers_leaves_them_as_they_were(monkeypatch, at):
    # signal.signal runs the handlers of the signals that came meanwhile: a SIGTERM as the hand-off set its
    # holding handlers (or as the next line took over) raised with SIGINT's left holding: in a Python caller
    # (cross_validate) every later Ctrl-C was swallowed. at: the handler switch (0-3 leaving, 4-7 entering)
    from cnncli import callbacks
    from cnncli.callbacks import StopAfterTraining
    from cnncli.errors import Stopped

    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP]
    before = {sig: signal.getsignal(sig) for sig in sigs}
    real, calls = signal.signal, []

    def switching(sig, handler):
        old = real(sig, handler)
        calls.append(sig)
        if len(calls) == at + 1:
            os.kill(os.getpid(), signal.SIGTERM)    # (its handler runs here, as when it comes during signal.signal)
        return old
    first = StopAfterTraining("run", "nothing left undone")
    first.hand_off = True
    with pytest.raises(Stopped, match="^SIGTERM: stopped after training"):
        with first:
            monkeypatch.setattr(signal, "signal", switching)
        with StopAfterTraining("run", "before drawing its report"):
            pass
    monkeypatch.undo()
    left, handed = {sig: signal.getsignal(sig) for sig in sigs}, list(callbacks._HANDED)
    callbacks._HANDED.clear()                       # (for the tests after it, whatever this one finds)
    assert left == before and handed == []


def _sigterm_in(monkeypatch, module, name):
    """module.name replaced by a call that sends this process SIGTERM (the signal arrives while it runs)."""
    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not stop it")
    monkeypatch.setattr(module, name, signalled)


def _train_here(tmp_path, monkeypatch, data, *extra):
    """(run folder, the in-process `cnn train` of one epoch on data with `extra` arguments)."""
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    return run, CliRunner().invoke(cli, ["train", "--config", str(write_config(tmp_path / "c.yaml", data, run,
                                                                                  epochs=1)), "-q", *extra])


def test_a_stop_before_the_report_is_drawn_says_so(data, tmp_path, monkeypatch):
    from cnncli import cli as cli_mod

    _sigterm_in(monkeypatch, cli_mod, "_untouched_since")     # (the window before the report)
    run, res = _train_here(tmp_path, monkeypatch, data)
    assert res.exit_code == 130, res.output
    assert res.stderr.strip().splitlines()[-1] == (f"SIGTERM: stopped after training, before drawing its report "
                                                   f"(cnn report {run} draws it); the run's checkpoints are saved "
                                                   f"in {run}")
    assert res.stdout == f"{run}\n"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_stop_just_before_the_steps_keeps_the_folder_its_line_names(data, tmp_path, monkeypatch):
    # (a new run's folder was deleted as one whose first save failed, while its stop line and stdout named it)
    from cnncli import resume as resume_mod

    _sigterm_in(monkeypatch, resume_mod, "nothing_to_do")        # (fit's first call, before its StopFlag)
    run, res = _train_here(tmp_path, monkeypatch, data, "--no-report")
    assert res.exit_code == 130 and res.stdout == f"{run}\n", res.output
    assert run.is_dir()


def test_a_sigint_delivered_twice_at_once_is_one_stop_not_an_abort(data, tmp_path, monkeypatch):
    # `timeout -s INT` signals the process and then its process group: two SIGINTs back to back, which
    # aborted the run ('Error: interrupted', nothing saved) when the second was handled on its own
    from cnncli import trainer as trainer_mod
    from cnncli.callbacks import StopFlag

    monkeypatch.setattr(StopFlag, "SAME_SIGINT", 60.0)     # (a step on a cold cache or a loaded host: not 0.5 s)
    real = trainer_mod.Trainer.train_step

    def twice(self, idx):
        os.kill(os.getpid(), signal.SIGINT)
        real(self, idx)                            # (the first handled between the calls, as its own)
        os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", twice)
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--config", str(write_config(tmp_path / "c.yaml", data, run, epochs=2)),
                                   "-q", "--no-report"])
    assert res.exit_code == 130, res.output
    assert res.stderr.strip().splitlines()[-1].startswith("SIGINT: stopped at epoch 1, step 1; saved "), res.output
    assert (run / "last.npz").is_file()


def test_a_resumed_epochs_time_counts_the_seconds_before_the_stop(data, tmp_path, monkeypatch):
    # a run stopped mid-epoch and resumed wrote only the resumed part's seconds as the epoch's time_s
    import csv
    import time

    from cnncli import checkpoint, trainer as trainer_mod

    real = trainer_mod.Trainer.train_step
    calls = []

    def slow_then_stop(self, idx):                 # 0.2 s a step; a stop after the second
        time.sleep(0.2)
        real(self, idx)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", slow_then_stop)
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", data, run, epochs=1)
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "-q", "--no-report"])
    assert res.exit_code == 130, res.output
    _, meta = checkpoint.load(run / "last.npz")
    assert meta["epoch_step"] == 2 and meta["epoch_time"] >= 0.4
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", real)
    res = CliRunner().invoke(cli, ["train", "--resume", str(run), "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    with open(run / "metrics.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["time_s"]) >= meta["epoch_time"]


def test_a_stop_as_set_up_ends_leaves_no_empty_run_folder(data, tmp_path, monkeypatch):
    # a stop once the new run's folder was claimed, before the first step: the folder stayed with only
    # its marker, and the same command then trained in run-2 (seen under mpirun by a helper)
    from cnncli import runlock

    real = runlock.hold

    def hold_then_stop(folder):
        real(folder)
        os.kill(os.getpid(), signal.SIGUSR1)
    monkeypatch.setattr(runlock, "hold", hold_then_stop)
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--config", str(write_config(tmp_path / "c.yaml", data, run, epochs=1)),
                                   "-q", "--no-report"])
    assert res.exit_code == 130, res.output
    assert "stopped during set-up, before the first step" in res.stderr
    assert not run.exists()


def test_a_resume_with_nothing_to_train_runs_the_test_the_run_lacks(data, tmp_path, monkeypatch):
    # a stop during the test left no test_metrics.json, and the resume said 'Nothing to do' for good
    from cnncli import train as train_mod

    real = train_mod.evaluate_test_data
    _sigterm_in(monkeypatch, train_mod, "evaluate_test_data")
    run, res = _train_here(tmp_path, monkeypatch, data, "--no-report", "--set", f"data.test={data}")
    assert res.exit_code == 130 and not (run / "test_metrics.json").exists(), res.output
    monkeypatch.setattr(train_mod, "evaluate_test_data", real)
    res = CliRunner().invoke(cli, ["train", "--resume", str(run), "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    assert "Nothing to do" in res.stderr and "Test (" in res.stderr and (run / "test_metrics.json").is_file()


def test_a_stop_between_set_up_and_the_first_step_is_the_set_up_line_and_gives_the_folder_back(
        data, tmp_path, monkeypatch):
    # SIGTERM just after 'Run folder:' ended the process by the signal (status -15, no line) and left
    # the folder with .claimed and config.yaml, which --resume then refused ('no last.npz')
    from cnncli import train as train_mod

    _sigterm_in(monkeypatch, train_mod, "data_notes")
    run, res = _train_here(tmp_path, monkeypatch, data, "--no-report")
    assert res.exit_code == 130, res.output
    assert res.stderr.strip().splitlines()[-1] == ("SIGTERM: stopped during set-up, before the first step: nothing "
                                                   "was trained; start the run again")
    assert not run.exists()


# `cnn` sending itself the signal argv[1] between its start lines and the first step: "handing" as the start lines'
# stop line (StopDuringSetup, its second exit) hands over, "fit" as fit begins (before its StopFlag)
_STOP_BEFORE_THE_STEPS = """
import os, signal, sys
from cnncli import callbacks, cli, resume
sig, where, calls = getattr(signal, sys.argv.pop(1)), sys.argv.pop(1), []
real_exit, real_nothing = callbacks.StopDuringSetup.__exit__, resume.nothing_to_do
def exit_then_stop(self, *exc):
    left = real_exit(self, *exc)
    calls.append(1)
    if where == "handing" and len(calls) == 2:
        os.kill(os.getpid(), sig)
    return left
def stop_in_fit(*args):
    if where == "fit":
        os.kill(os.getpid(), sig)
    return real_nothing(*args)
callbacks.StopDuringSetup.__exit__, resume.nothing_to_do = exit_then_stop, stop_in_fit
cli.main()
"""


@pytest.mark.parametrize("where", ["handing", "fit"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_after_the_start_lines_before_the_first_step_says_no_step_ran(data, tmp_path, sig, where):
    # it said 'stopped after training, nothing left undone; the run's checkpoints are saved' of a run with no
    # checkpoint (as fit began), or the process ended by the signal, -15 and no line (as the start lines ended)
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", data, run, epochs=1)
    res = subprocess.run([sys.executable, "-c", _STOP_BEFORE_THE_STEPS, sig, where, "train", "--config", str(cfg),
                          "-q", "--no-report"], env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 130, (res.returncode, res.stderr)
    assert res.stderr.strip().splitlines()[-1] == (f"{sig}: stopped before the first step: nothing was trained; "
                                                   f"start the run again: cnn train --config {run / 'config.yaml'}")
    assert res.stdout == f"{run}\n" and (run / "config.yaml").is_file() and not (run / "last.npz").exists()


@pytest.mark.parametrize("trigger", ["Done in", "epoch 1/"])
def test_a_second_sigterm_while_a_stop_unwinds_does_not_end_the_process_by_the_signal(data, tmp_path, trigger):
    import time

    _, proc = _training(data, tmp_path, epochs=3)
    for line in proc.stderr:
        if line.startswith(trigger):
            os.kill(proc.pid, signal.SIGTERM)
            time.sleep(0.05)
            os.kill(proc.pid, signal.SIGTERM)
            break
    rest = proc.stderr.read()
    proc.stdout.read()
    assert proc.wait(timeout=120) in (0, 130), rest          # (negative: ended by the signal)


def test_a_stop_while_a_checkpoint_is_read_is_the_stop_not_a_damaged_file(tmp_path, monkeypatch):
    import numpy as np

    from cnncli import checkpoint
    from cnncli.errors import Stopped

    path = tmp_path / "c.npz"
    checkpoint.save(path, {"params/a": np.zeros(3, np.float32)}, {"num_classes": 2})

    def stopped(f, **kwargs):
        raise Stopped("SIGTERM: stopped after training")
    monkeypatch.setattr(np.lib.format, "read_array", stopped)
    with pytest.raises(Stopped):
        checkpoint.load(path)


def test_a_stop_while_a_resume_sets_up_says_how_to_resume_it_again(data, tmp_path, monkeypatch):
    # it said 'start the run again' of a run whose checkpoints were there to resume
    from cnncli import train as train_mod

    run, res = _train_here(tmp_path, monkeypatch, data, "--no-report")
    assert res.exit_code == 0, res.output
    _sigterm_in(monkeypatch, train_mod, "data_notes")
    res = CliRunner().invoke(cli, ["train", "--resume", str(run), "--set", "train.epochs=2", "-q", "--no-report"])
    assert res.exit_code == 130, res.output
    assert res.stderr.strip().splitlines()[-1].endswith(f"nothing was trained; resume it again: cnn train --resume "
                                                        f"{run}"), res.output
    assert (run / "last.npz").is_file() and (run / "config.yaml").is_file()


def test_stop_signals_the_process_started_with_ignored_stay_ignored(data, tmp_path):
    # nohup cnn train ... & (SIGHUP ignored), or a script's background job (SIGINT ignored): a closed
    # terminal or a stray Ctrl-C stopped the run at its next step (exit 130); POSIX tools keep them ignored
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", data, run, epochs=40)

    def nohup():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", "train", "--config", str(cfg), "--no-report"],
                            env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=nohup)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("epoch 2/"):
            for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGHUP):
                os.kill(proc.pid, sig)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, "".join(lines) + rest
    assert "epoch 40/40" in rest and "stopped" not in rest, rest


def test_a_stop_while_a_kernel_compiles_says_it_waits_and_a_second_ctrl_c_does_not_raise(capfd, monkeypatch):
    # a first run's compile took minutes after a Ctrl-C with nothing said; a second Ctrl-C raised
    # inside numba's compiler, which can leave its lock taken: the run hung at its next compile
    from numba.core.compiler_lock import global_compiler_lock

    from cnncli.callbacks import Aborted, StopFlag

    monkeypatch.setattr(StopFlag, "SAME_SIGINT", 0.0)
    flag = StopFlag()
    with global_compiler_lock:                                     # (as while this thread compiles)
        flag._handle(signal.SIGINT, None)
        flag._handle(signal.SIGINT, None)                          # no Aborted in the compiler
    assert flag.signum == signal.SIGINT
    assert capfd.readouterr().err.splitlines() == [
        "SIGINT: stopping once numba's kernels in hand are compiled or loaded (a first run compiles them), then saving",
        "SIGINT: the stop comes once this kernel has compiled (a first run compiles them)"]
    with pytest.raises(Aborted):                                   # (no compile under way: it aborts)
        flag._handle(signal.SIGINT, None)


def test_a_stop_during_set_up_waits_for_the_kernel_in_hand_and_only_rank_0_says_it_waits(capfd, monkeypatch):
    # mpirun's rank 0 compiles in its main thread: SIGUSR1 there raised inside numba's compiler (a traceback,
    # 'no compiled object yet'); and the 'stopping once ... compiled' line came once per rank
    import time

    from numba.core.compiler_lock import global_compiler_lock

    from cnncli.callbacks import SetupStopped, StopDuringSetup, StopFlag

    reached = []
    with pytest.raises(SetupStopped, match="SIGTERM: stopped during set-up"):
        with StopDuringSetup():
            with global_compiler_lock:                             # (as while this thread compiles a kernel)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.3)                                    # the handler runs here, and does not raise
                reached.append("compiled")
            time.sleep(5)                                          # the signal again, once the lock is free
    assert reached == ["compiled"]
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    flag = StopFlag()
    with global_compiler_lock:
        flag._handle(signal.SIGUSR1, None)
    assert flag.signum == signal.SIGUSR1 and capfd.readouterr().err == ""


def test_a_reader_that_leaves_stops_the_run_saved_and_resumable(data, tmp_path):
    # `cnn train ... 2>&1 | head -2`: the next line's BrokenPipeError ended the run at once, unsaved (exit 141,
    # nothing said; before its first save it could not be resumed); now it stops as a closed terminal does
    run = tmp_path / "run"
    # (2,000 epoch lines outgrow a pipe's 64 KB buffer: the run cannot finish before the reader leaves)
    cfg = write_config(tmp_path / "c.yaml", data, run, epochs=2000)
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", "train", "--config", str(cfg), "--no-report"],
                            env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = [proc.stdout.readline()]
    while seen[-1] and not seen[-1].startswith(b"epoch "):         # (past the set-up: a stop there saves nothing)
        seen.append(proc.stdout.readline())
    proc.stdout.close()                                             # as head does after its lines
    code = proc.wait(timeout=300)
    assert code == 130, (code, seen)                                # (a stop: 130, as README says)
    from cnncli.checkpoint import load_meta

    epochs = load_meta(run / "last.npz")["epoch"]
    assert 0 < epochs < 2000
    res = subprocess.run([sys.executable, "-m", "cnncli", "train", "--resume", str(run), "-q", "--no-report",
                          "--set", "train.epochs=" + str(epochs + 1)], env=cli_env(tmp_path), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def test_a_stop_while_the_report_rebuilds_the_validation_images_is_the_stop(data, tmp_path, monkeypatch):
    # (under mpirun a SIGUSR1 there became 'note: no report (cannot rebuild the validation data from ...; pass
    # --data FOLDER)' and exit 0: evaluate wrapped the stop as a data problem)
    from cnncli import rundata
    from cnncli.callbacks import StopAfterTraining

    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", data, run, epochs=1)
    assert CliRunner().invoke(cli, ["train", "--config", str(cfg), "-q", "--no-report"]).exit_code == 0

    def stopped(*a, **k):
        raise StopAfterTraining(run, "while drawing its report").stopped("SIGUSR1")
    monkeypatch.setattr(rundata, "load_validation", stopped)
    res = CliRunner().invoke(cli, ["eval", str(run)])
    assert res.exit_code == 130 and "SIGUSR1: stopped after training, while drawing its report" in res.output
    assert "cannot rebuild" not in res.output


# `cnn cv` sending itself the signal argv[1] as it leaves its stop line "argv[2]" (callbacks.StopInCrossValidation:
# "before fold 2" ends as _prepare_fold's work does, before the fold's train() enters its set-up's stop line)
_STOP_AS_CV_LEAVES_A_LINE = """
import os, signal, sys
from cnncli import callbacks, cli
sig, doing = getattr(signal, sys.argv.pop(1)), sys.argv.pop(1)
real_exit = callbacks.StopInCrossValidation.__exit__
def exit_then_stop(self, *exc):
    left = real_exit(self, *exc)
    if self.doing == doing:
        os.kill(os.getpid(), sig)
    return left
callbacks.StopInCrossValidation.__exit__ = exit_then_stop
cli.main()
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_between_cvs_line_before_a_fold_and_its_set_up_is_the_set_up_line(data, tmp_path, sig):
    # (SIGTERM there ended cnn cv by the signal, -15 and no line; SIGINT was 'Error: interrupted')
    cv = tmp_path / "run-cv"
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1)
    res = subprocess.run([sys.executable, "-c", _STOP_AS_CV_LEAVES_A_LINE, sig, "before fold 2", "cv", "--config",
                          str(cfg), "--folds", "2", "-q"], env=cli_env(tmp_path), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 130, (res.returncode, res.stderr)
    assert res.stderr.strip().splitlines()[-1] == (f"{sig}: stopped during fold 2's set-up, before its first step; "
                                                   f"continue the cross-validation with: cnn cv --resume {cv}")
    assert (cv / "fold-1" / "best.npz").is_file() and not (cv / "fold-2").exists()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_after_cvs_line_before_a_finished_fold_is_the_after_fold_line(data, tmp_path, sig):
    # (a resumed cv's finished fold: between its 'before' and 'after' lines, SIGTERM ended cnn cv by the signal)
    cv = tmp_path / "run-cv"
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1)
    res = subprocess.run([sys.executable, "-c", _STOP_AS_CV_LEAVES_A_LINE, "SIGTERM", "after fold 1", "cv", "--config",
                          str(cfg), "--folds", "2", "-q"], env=cli_env(tmp_path), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 130 and (cv / "fold-1" / "best.npz").is_file(), (res.returncode, res.stderr)
    res = subprocess.run([sys.executable, "-c", _STOP_AS_CV_LEAVES_A_LINE, sig, "before fold 1", "cv", "--resume",
                          str(cv), "-q"], env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 130, (res.returncode, res.stderr)
    assert res.stderr.strip().splitlines()[-1] == (f"{sig}: stopped after fold 1; the finished folds are saved in "
                                                   f"{cv}; continue the cross-validation with: cnn cv --resume {cv}")


def test_an_error_before_a_folds_set_up_leaves_the_stop_handlers_as_they_were(data, tmp_path, monkeypatch):
    # the 'before fold' line hands its stops to the fold's set-up: an error before that took them kept them
    # held, and every later SIGTERM or Ctrl-C of a Python caller was swallowed
    from cnncli import callbacks, config, crossval, train
    from cnncli.errors import ConfigError
    from cnncli.lifeline import STOPS

    def refused(*args, **kwargs):
        raise ConfigError("out: refused")
    monkeypatch.setattr(train, "train", refused)
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    before = {sig: signal.getsignal(sig) for sig in STOPS}
    cfg = config.load_config(write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1))
    with pytest.raises(ConfigError, match="out: refused"):
        crossval.cross_validate(cfg, 2, echo=lambda line: None)
    assert {sig: signal.getsignal(sig) for sig in STOPS} == before and not callbacks._HANDED


# `cnn cv` sending itself the signal argv[1] as _open_parent ends (the cv's folder made, or after argv[2] == "error":
# none made, its error raised), before the cv's first line
_STOP_AS_CV_OPENS = """
import os, signal, sys
from cnncli import cli, crossval
from cnncli.errors import CnnError
sig, then, real = getattr(signal, sys.argv.pop(1)), sys.argv.pop(1), crossval._open_parent
def opened(*args):
    if then == "error":
        os.kill(os.getpid(), sig)
        raise CnnError("data.train: unreadable")
    parent = real(*args)
    os.kill(os.getpid(), sig)
    return parent
crossval._open_parent = opened
cli.main()
"""


@pytest.mark.parametrize("sig, then", [("SIGTERM", "made"), ("SIGINT", "made"), ("SIGTERM", "error")])
def test_a_stop_as_cv_makes_its_folder_is_the_stop_line(data, tmp_path, sig, then):
    # (SIGTERM there ended cnn cv by the signal, -15 and no line, its folder left with config.yaml and the next
    # cnn cv in run-cv-2; SIGINT was 'Error: interrupted')
    cv = tmp_path / "run-cv"
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1)
    res = subprocess.run([sys.executable, "-c", _STOP_AS_CV_OPENS, sig, then, "cv", "--config", str(cfg), "--folds",
                          "2", "-q"], env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 130, (res.returncode, res.stderr)
    if then == "error":
        assert res.stderr.strip().splitlines()[-1] == f"{sig}: stopped before the first fold: nothing was trained"
        return
    assert res.stderr.strip().splitlines()[-1] == (f"{sig}: stopped before the first fold; the finished folds are "
                                                   f"saved in {cv}; continue the cross-validation with: cnn cv "
                                                   f"--resume {cv}")
    res = subprocess.run([sys.executable, "-m", "cnncli", "cv", "--resume", str(cv), "-q"], env=cli_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and (cv / "cv.json").is_file(), res.stderr
