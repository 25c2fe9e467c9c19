"""The small pieces the training loop calls: the stop flag of SIGINT/SIGTERM/SIGUSR1/SIGHUP, the stop lines
around the rest of a run, the progress bar and how a loss is printed. Each class holds its own bit of state;
none of them trains, saves or reads data (trainer.py does), nor judges epochs (earlystop.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from cnncli.errors import Stopped
from cnncli.lifeline import (INHERITED_IGNORED, STOPS, after_a_stop, ignore_stops, restore as _restore,
                             silence_closed_terminal)
from cnncli.runfolder import RunState


def loss_text(value: float) -> str:
    """A loss for the epoch and end lines: 4 decimals, or 4 significant digits once it is below 1e-3
    (a tiny set trained long reaches 1e-5, which 4 decimals would show as 0.0000)."""
    return f"{value:.3e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"


def warmup_text(epochs) -> str:
    """" (warmup 1 epoch)" after a schedule's name (the start line, cnn info's recipe); "" without warmup."""
    return f" (warmup {epochs:g} epoch{'' if epochs == 1 else 's'})" if epochs else ""


class SetupStopped(Stopped):
    """SIGTERM, SIGUSR1, SIGHUP or Ctrl-C before the first step (decoding, compiling): nothing was trained or
    saved."""

    signal = "SIGINT"       # the name of the signal that stopped it


def _install(sigs, handler) -> dict:
    """handler on each of sigs -> the handlers it replaced; outside the main thread none is installed,
    nor for a signal the `cnn` process started with ignored (lifeline.INHERITED_IGNORED: nohup's SIGHUP).
    signal.signal runs the handlers of the signals that came meanwhile: when one raises (a stop), the
    handlers replaced so far are put back before it goes on."""
    old = {}
    for sig in sigs:
        if sig in INHERITED_IGNORED:
            continue
        try:
            old[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
        except ValueError:  # not the main thread: no handlers, nothing to restore
            old.pop(sig, None)
        except BaseException:
            _restore(old)
            raise
    return old


_HANDED: list = []   # [(the handlers before it, the signals since)] of a _StopLine left with hand_off


class _StopLine:
    """Within: SIGTERM, SIGUSR1 and SIGHUP (whose default is to end the process without a word) raise
    self.stopped(signal name) instead, one line; a Ctrl-C (KeyboardInterrupt) leaving it becomes
    the same line, named SIGINT. Outside the main thread no handler is installed."""

    def __enter__(self):
        before, came = _HANDED.pop() if _HANDED else ({}, [])   # (the one before held the gap for this one)
        try:
            self._old = _install([sig for sig in STOPS if sig != signal.SIGINT or self.sigint], self._handle)
            if before:
                _restore({sig: h for sig, h in before.items() if sig not in self._old})
                self._old = {sig: before.get(sig, h) for sig, h in self._old.items()}
        except BaseException:                        # (a stop as the handlers switch: this one's line)
            after_a_stop(before)
            raise
        if came:                                     # a stop in the gap: this one's line, as if it came now
            after_a_stop(self._old)
            silence_closed_terminal(came[0])
            raise self.stopped(signal.Signals(came[0]).name)
        return self

    def _handle(self, signum, frame):
        silence_closed_terminal(signum)
        if _compiling() == "here":
            # raised inside numba's compiler (a ctypes callback of LLVM's), the stop became a traceback and
            # a broken compiler ('no compiled object yet'; mpirun's rank 0 compiles in its main thread)
            _resend_when_compiled(signum)
            return
        stop = self.stopped(signal.Signals(signum).name)
        if stop is not None:        # (None: a stop with nothing left to stop here, ignored)
            raise stop

    sigint = False      # True: SIGINT too gets the handler (else Python's KeyboardInterrupt, which __exit__ takes)
    keyboard = True     # False: a KeyboardInterrupt leaves it as it is (an abort the steps' StopFlag raised)
    last = False        # True: the command's last work; leaving it done, stops are ignored while the process
    #                     ends (cli.main does so too, after its exit: no moment of the signals' silent default)
    hand_off = False    # True: the caller's own stop line follows at once (cnn train's report after train()); leaving
    #                     it done, the stop signals that come are held for the next one entered, not left to their
    #                     silent default in the gap between the two

    def __exit__(self, exc_type, exc, tb):
        sigint = exc_type is KeyboardInterrupt and self.keyboard       # (a Ctrl-C: this stop's line too)
        if sigint or (exc_type is not None and issubclass(exc_type, Stopped)):
            after_a_stop(self._old)
        elif self.last and exc_type is None:
            ignore_stops(sigint=True)
        elif self.hand_off and exc_type is None:
            came = []
            try:
                replaced = _install(STOPS, lambda signum, frame: came.append(signum))
            except BaseException:                    # (a stop as the handlers switch: this one's line)
                after_a_stop(self._old)
                raise
            _HANDED.append(({**replaced, **self._old}, came))    # (SIGINT's own handler: this one leaves it)
        else:
            _restore(self._old)
        if sigint:
            raise self.stopped("SIGINT") from None
        return False


def drop_hand_off() -> None:
    """A hand-off that no stop line took (its caller failed before entering the next one): the handlers
    before the line that handed off are back, and the stops held meanwhile are dropped with it."""
    if _HANDED:
        _restore(_HANDED.pop()[0])


class StopDuringSetup(_StopLine):
    """Around a run's set-up (decoding, compiling). StopFlag takes over for the steps. resume: the
    run being resumed (its line then says how to resume it again)."""

    def __init__(self, resume=None):
        self.resume = resume

    def stopped(self, name, run_dir=None):
        """run_dir: the run folder, once set up (its start lines said, no step yet): it stays as it is."""
        again = f"resume it again: cnn train --resume {self.resume}" if self.resume else "start the run again"
        if run_dir is not None and not self.resume:
            again += f": cnn train --config {Path(run_dir) / 'config.yaml'}"
        during = "" if run_dir is not None else "during set-up, "
        stop = SetupStopped(f"{name}: stopped {during}before the first step: nothing was trained; {again}")
        stop.run_dir = run_dir      # (cnn train prints it on stdout)
        stop.signal = name
        stop.anywhere = True        # (under mpirun each rank takes it wherever its set-up is: distributed.fail)
        return stop


class StopAfterTraining(_StopLine):
    """After the last step (testing best.npz on data.test, the report, the pre-compile's end): the
    line says the checkpoints are saved and what was left undone. before: the run's StopDuringSetup,
    when it is entered ahead of the steps (train()): until began() (the steps' StopFlag is in place)
    a stop says no step ran, in its words, and leaves the run folder as it is."""

    def __init__(self, run_dir, doing: str, before: StopDuringSetup | None = None):
        self.run_dir, self.doing, self.before = run_dir, doing, before

    def began(self) -> None:
        """The steps' own stop handler (StopFlag) is in place: from now on a stop is one after training."""
        self.before = None

    def stopped(self, name):
        if self.before is not None:
            return self.before.stopped(name, self.run_dir)
        test = f"; cnn train --resume {self.run_dir} runs the test" if "data.test" in self.doing else ""
        stop = Stopped(f"{name}: stopped after training, {self.doing}; the run's checkpoints are saved in "
                       f"{self.run_dir}{test}")
        stop.alone = True           # (under mpirun only rank 0 works then: distributed.fail)
        stop.run_dir = self.run_dir  # (cnn train prints it on stdout, as after a whole run)
        return stop


class StopOnAnotherRank(StopAfterTraining):
    """StopAfterTraining on an MPI rank other than 0, whose part of the run ends with its steps (rank 0
    tests, reports and says what the stop left undone): before the steps it stops as rank 0 does;
    after them every stop signal, SIGINT too, is ignored, from the moment the steps' StopFlag lets go,
    and on leaving it the stops stay ignored in the `cnn` process (lifeline.after_a_stop)."""

    sigint = True

    def stopped(self, name):
        return super().stopped(name) if self.before is not None else None

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            after_a_stop(self._old)
            return False
        return super().__exit__(exc_type, exc, tb)


class StopInCrossValidation(_StopLine):
    """Around `cnn cv`'s own work between and after its folds' runs: the line says the finished folds are
    kept and how to go on. alone: only rank 0 works there (after the last fold), as StopAfterTraining.
    parent None: its folder is not there (an error made none), nor any fold."""

    def __init__(self, parent, doing: str, alone: bool = False):
        self.parent, self.doing, self.alone = parent, doing, alone

    def stopped(self, name):
        if self.parent is None:
            return Stopped(f"{name}: stopped {self.doing}: nothing was trained")
        stop = Stopped(f"{name}: stopped {self.doing}; the finished folds are saved in {self.parent}; continue "
                       f"the cross-validation with: cnn cv --resume {self.parent}")
        stop.alone = self.alone
        return stop


def _compiling():
    """"here" while this thread compiles a numba kernel (it holds numba's compiler lock), "elsewhere"
    while another thread does, else None (numba not loaded, or no compile under way)."""
    lock = getattr(sys.modules.get("numba.core.compiler_lock"), "global_compiler_lock", None)
    if lock is None:
        return None
    if lock.is_locked():
        return "here"
    if lock._lock.acquire(blocking=False):
        lock._lock.release()
        return None
    return "elsewhere"


def _resend_when_compiled(signum) -> None:
    """Send `signum` to this process again once this thread no longer holds numba's compiler lock (the
    kernel in hand compiled or loaded): its handler then meets no compile and stops the run."""
    lock = sys.modules["numba.core.compiler_lock"].global_compiler_lock
    main = threading.main_thread().ident

    def watch():
        while not lock._lock.acquire(timeout=0.01):
            pass
        lock._lock.release()
        signal.pthread_kill(main, signum)
    threading.Thread(target=watch, name="cnn-stop-after-compile", daemon=True).start()


def _say_once(line: str) -> None:
    """_say on MPI rank 0 alone (or without MPI): the ranks' handlers see the same signal."""
    from cnncli.distributed import launcher_rank

    if not launcher_rank():
        _say(line)


def _say(line: str) -> None:
    """One line on stderr from a signal handler: written to the descriptor, not through sys.stderr
    (which the interrupted code may be writing to)."""
    try:
        os.write(2, (line + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


class Aborted(KeyboardInterrupt):
    """A second Ctrl-C during the steps (StopFlag): abort without the stop's save and line."""


class StopFlag:
    """SIGINT/SIGTERM/SIGUSR1/SIGHUP set a flag; the loop finishes its step, saves, and stops. A second
    SIGINT aborts, unless it comes within SAME_SIGINT seconds of the first: `timeout -s INT` sends
    its signal twice (to the process, then to its process group). SIGUSR1 is the graceful stop of an
    MPI job (`kill -USR1 <mpirun pid>`: mpirun forwards it to every rank and kills nothing)."""

    SAME_SIGINT = 0.5

    def __init__(self):
        self.signum = None
        self._old = {}
        self._first = 0.0

    def __enter__(self):
        self._old = _install(STOPS, self._handle)
        return self

    def _handle(self, signum, frame):
        compiling = _compiling()
        if self.signum is not None and signum == signal.SIGINT:
            if time.monotonic() - self._first < self.SAME_SIGINT:
                return                                 # (the same stop, delivered twice)
            if compiling != "here":
                raise Aborted
            # an exception raised inside numba's compiler can leave its lock taken: the run then
            # hung at the next compile (a helper's double Ctrl-C on a first run); the first stop stands
            _say_once("SIGINT: the stop comes once this kernel has compiled (a first run compiles them)")
            return
        silence_closed_terminal(signum)
        self.signum, self._first = signum, time.monotonic()
        if compiling:                                  # (minutes on a first run, with nothing said)
            _say_once(f"{signal.Signals(signum).name}: stopping once numba's kernels in hand are compiled or loaded "
                      "(a first run compiles them), then saving")

    def __exit__(self, *exc):
        if self.signum is not None:     # (stopping: a second signal while it unwinds ends nothing early)
            after_a_stop(self._old)
        else:
            _restore(self._old)

    def agreed(self, comm, save_now):
        """After a step: the stop signal when any rank got one (every rank then stops at this same
        step), else None. A rank that got the signal itself calls save_now() first (rank 0's saves;
        the others' do nothing): on Ctrl-C/SIGTERM mpirun kills the ranks 0.5 s later, and a
        collective with a slower rank might not finish by then."""
        if self.signum is not None:
            save_now()
        if not comm.any_flag(self.signum is not None):
            return None
        return next(s for s in comm.allgather(self.signum) if s is not None)


class ProgressBar:
    """One tqdm bar per epoch on a terminal (loss, accuracy, img/s, run ETA); does nothing when disabled."""

    def __init__(self, enabled: bool, epochs: int, steps_total: int, steps_at_start: int):
        self.enabled, self.epochs = enabled, epochs
        self.steps_total, self.steps_at_start = steps_total, steps_at_start
        self.t_run = time.perf_counter()
        self.bar = None

    def start_epoch(self, state: RunState, n_batches: int) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=n_batches, initial=state.epoch_step, desc=f"epoch {state.epoch + 1}/{self.epochs}",
                            unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr)

    def update(self, state: RunState, images: int, t_epoch: float) -> None:
        if self.bar is None:
            return
        el = time.perf_counter() - t_epoch
        done = state.step - self.steps_at_start
        eta = (time.perf_counter() - self.t_run) / max(done, 1) * (self.steps_total - state.step)
        self.bar.set_postfix_str(f"loss {state.loss_sum / state.seen:.4f} acc {state.correct / state.seen:.3f} "
                                 f"{images / max(el, 1e-9):.0f} img/s run ETA {eta:.0f}s", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
