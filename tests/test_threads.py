"""Bitwise the same training step (loss, probabilities, gradients, BN running statistics) and
predictions at 1, 2, 3 and 8 numba threads, for batch sizes that are and are not multiples of the
8-image micro-shard, in a child process started with NUMBA_NUM_THREADS=8: it compares several
thread counts, more than the cores, even on a one- or two-core runner."""

import json
import os
import subprocess
import sys

THREADS = (1, 2, 3, 8)
SIZES = (5, 13, 64, 67)

CHILD = r"""
import hashlib, json, numba, numpy as np
from cnncli import model as M
assert numba.config.NUMBA_NUM_THREADS == 8, numba.config.NUMBA_NUM_THREADS
rng = np.random.default_rng(5)
out = {}
for n in %(sizes)r:
    x = rng.standard_normal((n, 1, 32, 32)).astype(np.float32); y = rng.integers(0, 12, n)
    w = rng.uniform(0.2, 3.0, n)
    for bn in M.BATCHNORM:
        for t in %(threads)r:
            numba.set_num_threads(t)
            net = M.Network(12, bn, seed=0)
            h = hashlib.sha256()
            for step in range(2):          # the second step reuses the plan's buffers
                loss, probs = net.train_step(x, y, w if step else None)
                for a in (np.float64(loss), probs, net.grads.flat, net.buffers.flat):
                    h.update(np.ascontiguousarray(a).tobytes())
            h.update(net.predict_proba(x).tobytes())
            out[f"{bn}/{n}/{t}"] = h.hexdigest()
print(json.dumps(out))
""" % {"sizes": SIZES, "threads": THREADS}


def test_thread_counts_give_the_same_bits():
    env = dict(os.environ, NUMBA_NUM_THREADS="8")
    res = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    digests = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(digests) == 3 * len(SIZES) * len(THREADS)
    for bn in ("none", "unit", "channel"):
        for n in SIZES:
            got = {t: digests[f"{bn}/{n}/{t}"] for t in THREADS}
            assert len(set(got.values())) == 1, (bn, n, got)


# ---- threads.run_phases: a step's BN phases as one job ----------------------------------------

import threading  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cnncli.kernels.threads import run_phases  # noqa: E402


def _logged_phases(n_phases, log, lock):
    def task(p):
        def run(j):
            time.sleep(0.0005 * (j % 3))            # uneven tasks: the threads finish phases in turn
            with lock:
                log.append(("task", p, j))
        return run

    def after(p):
        def run():
            with lock:
                log.append(("after", p, threading.current_thread().name))
        return run
    return [(task(p), after(p)) for p in range(n_phases)]


@pytest.mark.parametrize("on_caller", [False, True])
def test_run_phases_runs_every_task_then_the_after_before_the_next_phase(two_threads, on_caller):
    log, lock = [], threading.Lock()
    run_phases(_logged_phases(5, log, lock), 7, on_caller=on_caller)
    afters = [i for i, e in enumerate(log) if e[0] == "after"]
    assert [log[i][1] for i in afters] == list(range(5))
    start = 0
    for p, end in enumerate(afters):              # phase p's 7 tasks, each once, then its after
        assert sorted((e[1], e[2]) for e in log[start:end]) == [(p, j) for j in range(7)]
        start = end + 1
    assert start == len(log)
    if on_caller:
        assert {log[i][2] for i in afters} == {threading.current_thread().name}


def test_run_phases_raises_the_first_error_once_no_task_is_running(two_threads):
    lock, running, later = threading.Lock(), [0], []

    def task(j):
        with lock:
            running[0] += 1
        try:
            time.sleep(0.002)
            if j == 3:
                raise ValueError("task 3 failed")
        finally:
            with lock:
                running[0] -= 1

    with pytest.raises(ValueError, match="task 3 failed"):
        run_phases([(task, lambda: later.append("after")), (lambda j: later.append(j), None)], 8)
    assert running[0] == 0 and later == []        # nothing of a later phase ran; no task still inside

    def bad_after():
        raise RuntimeError("after failed")
    with pytest.raises(RuntimeError, match="after failed"):
        run_phases([(lambda j: None, bad_after), (lambda j: later.append(j), None)], 4)
    assert later == []


# ---- threads.Workers: the worker threads' calls -----------------------------------------------

from cnncli.kernels import threads  # noqa: E402
from cnncli.kernels.threads import Workers  # noqa: E402


def _within(seconds, fn):
    """fn() on a helper thread -> True when it returned within `seconds` (a lost wake-up hangs)."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive()


def test_a_worker_runs_each_call_it_is_posted_and_wait_raises_its_error():
    pool = Workers(2)
    try:
        log = []
        k0 = pool.post(0, lambda: log.append(("a", threading.current_thread().name)))
        k1 = pool.post(1, lambda: log.append(("b", threading.current_thread().name)))
        pool.wait(0, k0)
        pool.wait(1, k1)
        assert sorted(tag for tag, _ in log) == ["a", "b"]
        assert {name for _, name in log} == {"cnncli-shard_0", "cnncli-shard_1"}

        def bad():
            raise ValueError("call failed")
        k = pool.post(1, bad)
        with pytest.raises(ValueError, match="call failed"):
            pool.wait(1, k)
        k = pool.post(1, lambda: log.append(("after", None)))       # the worker goes on
        pool.wait(1, k)
        assert log[-1] == ("after", None)
    finally:
        pool.close()
    assert not any(t.is_alive() for t in pool.threads)


def test_a_sleeping_worker_wakes_for_a_call_and_a_sleeping_caller_for_its_end(monkeypatch):
    """With no spins (IDLE_YIELDS = WAIT_YIELDS = 0, below the pause loop's SPINS) the worker
    sleeps between calls and the caller sleeps in wait(): post() and the call's end wake them."""
    monkeypatch.setattr(threads, "IDLE_YIELDS", 0)
    monkeypatch.setattr(threads, "WAIT_YIELDS", 0)
    pool = Workers(1)
    try:
        for _ in range(3):
            deadline = time.monotonic() + 10
            while not pool.sleeping[0] and time.monotonic() < deadline:
                time.sleep(0.001)
            assert pool.sleeping[0]                                 # asleep after its spins
            ran = []
            k = pool.post(0, lambda: (time.sleep(0.05), ran.append(1)))   # longer than the caller's spins
            assert _within(10, lambda: pool.wait(0, k)) and ran == [1]
    finally:
        pool.close()


def test_a_forked_child_makes_its_own_workers(two_threads):
    """A child forked after the parent's workers started (none of their threads exist in it) runs
    a two-thread job on workers of its own instead of waiting for the parent's."""
    import os

    from cnncli.kernels.threads import run_together

    run_together(lambda t: None, lambda: None)                 # the parent's workers exist
    threads_now = numba.get_num_threads()
    pid = os.fork()
    if pid == 0:                                               # the child: exit 0 once every thread ran the job
        seen = []
        try:
            run_together(lambda t: seen.append(threading.current_thread().name), lambda: None)
        finally:
            os._exit(0 if len(seen) == threads_now else 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's job never ended")
    assert os.waitstatus_to_exitcode(status) == 0


def test_jobs_from_two_threads_at_once_each_run_on_every_thread(two_threads):
    """Two Python threads calling run_together at the same time (two networks trained side by
    side): each job's threads meet at its barriers, so a worker must run both jobs' calls, in
    turn, and drop neither."""
    from cnncli.kernels import sync
    from cnncli.kernels.threads import run_together

    t_now, rounds, items, errors = numba.get_num_threads(), 5, 7, []

    def caller():
        try:
            numba.set_num_threads(t_now)            # (numba's thread count is per thread)
            for _ in range(30):
                state = np.zeros(sync.COUNTERS + rounds, np.int64)
                out = np.zeros((rounds, items), np.int64)
                run_together(lambda t: sync.count_together_into(state, t, rounds, items, out),
                             lambda: state.__setitem__(sync.ABORT, 1))
                if not (out == np.arange(1, rounds + 1)[:, None]).all():
                    errors.append(out)
        except BaseException as e:  # noqa: BLE001 -- reported by the assert below
            errors.append(e)

    callers = [threading.Thread(target=caller, daemon=True) for _ in range(2)]
    for c in callers:
        c.start()
    for c in callers:
        c.join(60)
    assert not any(c.is_alive() for c in callers) and errors == []
