"""The first-run pre-compile (cnncli/precompile.py) and numba's cache in a read-only install.

Each test runs in a fresh process where it needs its own NUMBA_CACHE_DIR or a clean dispatcher state;
the only kernel compiled from scratch is the tiny input lookup (kernels.lookup).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest

from e2e_util import make_folder, write_config

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), **kw)


LOOKUP_PLAN = """
import json, time, numpy as np
from cnncli import kernelplan, precompile
from cnncli.kernels import activation, lookup
def run():
    lookup.lookup_batch(np.zeros((3, 4, 4), np.uint8), np.arange(2), np.zeros(256, np.float32))
def run_later():
    activation.sigmoid(np.zeros((2, 3), np.float32))
kernels = [lookup.lookup_batch_into, activation.sigmoid_into]
calls = kernelplan.record_calls(run, kernels)
later = kernelplan.record_calls(run_later, kernels)
before = kernelplan.missing({**calls, **later})
job = precompile.Precompile(kernelplan.missing(calls), 1, kernelplan.missing(later))
t = time.perf_counter()
while job.pending() and time.perf_counter() - t < 120:     # the worker takes both, this process none
    time.sleep(0.05)
run()                      # the worker's kernels load from the cache
run_later()
stats = [(sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values())) for d in kernels]
job.wait()
after = kernelplan.missing({**calls, **later})
print(json.dumps({"recorded": sum(map(len, calls.values())) + sum(map(len, later.values())),
                  "before": sum(map(len, before.values())), "after": sum(map(len, after.values())),
                  "stats": stats, "waiting": any("_compile_for_args" in vars(d) for d in kernels)}))
"""


def test_worker_fills_the_cache_the_check_reads(tmp_path):
    """An empty cache lacks the recorded kernels; a spawned worker compiles them into the cache; the calls
    then load them from it (hits, no compile here) and the check finds them there."""
    res = _python(LOOKUP_PLAN, env={"NUMBA_CACHE_DIR": str(tmp_path / "nc"), "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out == {"recorded": 2, "before": 2, "after": 0, "stats": [[1, 0], [1, 0]], "waiting": False}


CLAIM = """
import json, numpy as np
from cnncli import kernelplan, precompile
from cnncli.kernels import activation, lookup
def run():
    lookup.lookup_batch(np.zeros((3, 4, 4), np.uint8), np.arange(2), np.zeros(256, np.float32))
kernels = [lookup.lookup_batch_into, activation.sigmoid_into]
calls = kernelplan.record_calls(run, kernels)
later = kernelplan.record_calls(lambda: activation.sigmoid(np.zeros((2, 3), np.float32)), kernels)
job = precompile.Precompile(kernelplan.missing(calls), 0, kernelplan.missing(later))     # no worker
run()                      # nobody took it: compiles here
job.wait()                 # compiles sigmoid here
print(json.dumps({"stats": [(sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values()))
                            for d in kernels], "after": len(kernelplan.missing({**calls, **later}))}))
"""


def test_a_kernel_no_worker_took_compiles_in_the_run(tmp_path):
    res = _python(CLAIM, env={"NUMBA_CACHE_DIR": str(tmp_path / "nc"), "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"stats": [[0, 1], [0, 1]], "after": 0}
    assert list((tmp_path / "nc").rglob("lookup*.nbi")), "the worker wrote no index file"


COVERAGE = """
import json, sys
from cnncli import config, kernelplan, precompile
from cnncli.train import train
if sys.argv[3:] == ["warm"]:
    train(config.load_config(sys.argv[1], overrides=[f"model.batchnorm={sys.argv[2]}"]), quiet=True, echo=lambda m: None)
    sys.exit(0)
plan = kernelplan.record_calls(kernelplan.training_run(sys.argv[2]))
planned = {(d.py_func.__name__, str(s)) for d, sigs in plan.items() for s in sigs}
cfg = config.load_config(sys.argv[1], overrides=[f"model.batchnorm={sys.argv[2]}"])
train(cfg, quiet=True, echo=lambda m: None)
used = set()
for d in kernelplan.kernel_dispatchers():
    for s in list(d.stats.cache_hits) + list(d.stats.cache_misses):
        used.add((d.py_func.__name__, str(s)))
print(json.dumps({"planned": sorted(planned), "used": sorted(used)}))
"""


@pytest.mark.parametrize("batchnorm", ["none", "channel", "unit"])
def test_dry_run_plans_every_kernel_a_training_run_uses(tmp_path, batchnorm):
    """Every (kernel, argument types) a real `cnn train` loads or compiles is in the dry run's plan, so the
    workers leave nothing for the run to compile (batch 32: the two-halves step; eval of 18 images)."""
    folder = make_folder(tmp_path / "data", per_class=24, odd_files=False)
    cfg = write_config(tmp_path / "c.yaml", folder, tmp_path / "run", epochs=1, batch_size=32)
    env = dict(os.environ, CNNCLI_COMPILE_WORKERS="0", PYTHONPATH=str(ROOT))
    # a first run fills the cache: with it empty, compiling a kernel also compiles the kernels it
    # calls as dispatchers of their own, which the check below would count as used by the run
    warm = subprocess.run([sys.executable, "-c", COVERAGE, str(cfg), batchnorm, "warm"], capture_output=True,
                          text=True, cwd=tmp_path, env=env)
    assert warm.returncode == 0, warm.stderr
    res = subprocess.run([sys.executable, "-c", COVERAGE, str(cfg), batchnorm], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.splitlines()[-1])
    used, planned = set(map(tuple, out["used"])), set(map(tuple, out["planned"]))
    assert used, "the run used no cached kernel: the check saw nothing"
    assert used <= planned, f"not planned: {sorted(used - planned)}"


@pytest.mark.parametrize("env, cores, load, running, expected", [
    ("", 16, 0.2, 1, 15), ("", 16, 6.0, 7, 10), ("", 2, 0.1, 1, 1), ("", 2, 3.9, 5, 0), ("3", 2, 3.9, 5, 3),
    ("0", 16, 0.0, 1, 0),
    ("", 2, 1.6, 1, 1),       # the average still high from a job that has ended (pip install): nothing runs now
    ("", 16, 6.0, 2, 15),     # the same on 16 cores, one other task running
    ("", 2, 0.3, 4, 1)])      # three tasks runnable in this instant, the minute's average low: the average counts
def test_workers_use_idle_cores(monkeypatch, tmp_path, env, cores, load, running, expected):
    from cnncli import precompile

    loadavg = tmp_path / "loadavg"
    loadavg.write_text(f"{load:.2f} {load:.2f} {load:.2f} {running}/345 12345\n")
    monkeypatch.setenv("CNNCLI_COMPILE_WORKERS", env)
    monkeypatch.setattr(precompile, "cpu_count", lambda: cores)
    monkeypatch.setattr(precompile.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(precompile, "LOADAVG", str(loadavg))
    assert precompile.env_workers() == expected


def test_busy_cores_is_the_load_average_where_the_running_count_cannot_be_read(monkeypatch, tmp_path):
    from cnncli import precompile

    monkeypatch.setattr(precompile.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    monkeypatch.setattr(precompile, "LOADAVG", str(tmp_path / "none"))
    assert precompile.busy_cores() == 1.5
    (tmp_path / "garbage").write_text("1.5 1.0\n")
    monkeypatch.setattr(precompile, "LOADAVG", str(tmp_path / "garbage"))
    assert precompile.busy_cores() == 1.5


def test_line_only_when_something_is_missing(monkeypatch):
    from cnncli import kernelplan, precompile

    lines = []
    monkeypatch.setattr(kernelplan, "record_calls", lambda run: {"k": {"sig"}})
    monkeypatch.setattr(kernelplan, "missing", lambda calls: {})
    assert precompile.start("none", workers=0, say=lines.append).wait() == 0.0
    assert lines == []
    monkeypatch.setattr(kernelplan, "missing", lambda calls: dict(calls))    # one kernel, in both parts
    precompile.start("none", workers=0, say=lines.append).wait()
    assert len(lines) == 1 and "Compiling 1 numba kernel for" in lines[0] and "first run only" in lines[0]
    monkeypatch.setattr(kernelplan, "missing", lambda calls: None)     # numba's internals changed
    precompile.start("none", workers=0, say=lines.append)
    assert len(lines) == 1


@pytest.mark.parametrize("compiles", [True, False])
def test_the_first_epoch_line_after_compiling_says_so(tmp_path, monkeypatch, compiles):
    from click.testing import CliRunner

    from cnncli import kernelplan, precompile
    from cnncli.cli import cli

    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(kernelplan, "record_calls", lambda run: {"k": {"sig"}})
    monkeypatch.setattr(kernelplan, "missing", (lambda calls: dict(calls)) if compiles else (lambda calls: {}))
    monkeypatch.setattr(precompile, "env_workers", lambda: 0)     # the kernels compile as the run calls them
    cfg = write_config(tmp_path / "cfg.yaml", make_folder(tmp_path / "data", per_class=4, odd_files=False),
                       tmp_path / "run", epochs=2)
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--no-report"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    epochs = [ln for ln in res.output.splitlines() if ln.startswith("epoch ")]
    assert len(epochs) == 2 and "img/s)" in epochs[1]
    assert epochs[0].endswith("s (incl. compiling)  *best") if compiles else "img/s)" in epochs[0]
    assert not precompile.compiled_here()                         # said once


def test_the_end_of_run_wait_is_said_even_with_quiet(tmp_path, monkeypatch):
    """-q hides the progress bar and the compile line, not a wait of minutes after 'Done'."""
    from click.testing import CliRunner

    from cnncli import precompile
    from cnncli.cli import cli

    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    says = []
    monkeypatch.setattr(precompile, "finish_background", lambda say=None: says.append(say))
    cfg = write_config(tmp_path / "cfg.yaml", make_folder(tmp_path / "data", per_class=4, odd_files=False),
                       tmp_path / "run", epochs=1)
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--no-report", "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert says == [precompile.stderr_line]


def test_cnn_warmup_passes_its_options(monkeypatch):
    from click.testing import CliRunner

    from cnncli import precompile
    from cnncli.cli import cli

    seen = []
    monkeypatch.setattr(precompile, "warmup", lambda variants, workers: seen.append((variants, workers)) or (3, 1.5))
    res = CliRunner().invoke(cli, ["warmup", "--batchnorm", "unit", "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert seen == [(("unit",), 0)] and "compiled 3 kernel(s) in 1.5 s" in res.output
    monkeypatch.setattr(precompile, "warmup", lambda variants, workers: seen.append((variants, workers)) or (0, 0.2))
    res = CliRunner().invoke(cli, ["warmup"])
    assert seen[-1] == (("none", "unit", "channel"), None) and "already in numba's cache" in res.output


READONLY_RUN = """
import json, os, numpy as np
from cnncli.kernels import lookup
images, table = np.arange(48, dtype=np.uint8).reshape(3, 4, 4), np.arange(256, dtype=np.float32)
x = lookup.lookup_batch(images, np.array([2, 0]), table)
d = lookup.lookup_batch_into
print(json.dumps({"file": lookup.__file__, "hits": sum(d.stats.cache_hits.values()),
                  "misses": sum(d.stats.cache_misses.values()), "x": x.ravel().tolist(),
                  "cache": d._cache.cache_path}))
"""


def _unprivileged(home: Path):
    """argv prefix + env that run a child without write access to root's files: as `nobody` when we are
    root (root ignores permission bits), else as ourselves (the copy is then made read-only)."""
    if os.geteuid() != 0:
        return [], {}
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a folder read-only for the child")
    os.chown(home, 65534, 65534)
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"], {}


def test_read_only_install_caches_per_user():
    """cnncli copied into a site folder the user cannot write: numba falls back to the per-user cache
    (HOME/.cache/numba), the second process loads the kernel from it (a cache hit, no compile) and
    nothing is written into the package folder."""
    top = Path(tempfile.mkdtemp(prefix="cnncli-ro-"))
    try:
        os.chmod(top, 0o755)
        site, home = top / "site", top / "home"
        shutil.copytree(ROOT / "cnncli", site / "cnncli", ignore=shutil.ignore_patterns("__pycache__"))
        home.mkdir()
        prefix, _ = _unprivileged(home)
        if not prefix:
            for p in [site, *site.rglob("*")]:
                os.chmod(p, 0o555 if p.is_dir() else 0o444)
        before = sorted(str(p) for p in site.rglob("*"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CACHE_DIR", "PYTHONPATH"))}
        env.update(HOME=str(home), PYTHONPATH=str(site), XDG_CACHE_HOME=str(home / ".cache"))
        if os.access(sys.executable, os.X_OK) and prefix:
            probe = subprocess.run(prefix + [sys.executable, "-c", "import numba"], env=env, capture_output=True)
            if probe.returncode != 0:
                pytest.skip(f"the unprivileged user cannot run this Python: {probe.stderr.decode()[-200:]}")
        runs = []
        for _ in range(2):
            res = subprocess.run(prefix + [sys.executable, "-c", READONLY_RUN], env=env, capture_output=True,
                                 text=True, cwd=home)
            assert res.returncode == 0, res.stderr
            runs.append(json.loads(res.stdout))
        assert runs[0]["file"].startswith(str(site))
        assert runs[0]["cache"].startswith(str(home)), runs[0]["cache"]
        assert (runs[0]["hits"], runs[0]["misses"]) == (0, 1)
        assert (runs[1]["hits"], runs[1]["misses"]) == (1, 0)
        images = np.arange(48, dtype=np.uint8).reshape(3, 4, 4)                 # as READONLY_RUN makes them
        assert runs[1]["x"] == runs[0]["x"] == images[[2, 0]].astype(np.float32).ravel().tolist()
        assert sorted(str(p) for p in site.rglob("*")) == before, "something was written into the package"
        assert list(home.rglob("*lookup*.nbi")), "no per-user index file"
    finally:
        for p in [top, *top.rglob("*")]:
            try:
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
            except OSError:
                pass
        shutil.rmtree(top, ignore_errors=True)


def test_a_run_waits_at_its_end_for_the_background_kernel_a_worker_compiles():
    """finish_background: one line, then it returns once the worker's task is done, and forgets the job;
    with the task done (or no worker alive) it says nothing."""
    import threading as th

    from cnncli import precompile
    from cnncli.kernels import bnstep

    class Proc:
        def is_alive(self):
            return True

    for state, expect_lines in ((precompile.TAKEN, 1), (precompile.DONE, 0)):
        job = object.__new__(precompile.Precompile)
        job._disps, job._state, job._procs = [bnstep.bn_step_into], [state], [Proc()]
        job._go = types.SimpleNamespace(value=0)
        precompile._JOBS.append(job)
        said = []
        timer = th.Timer(0.2, lambda: job._state.__setitem__(0, precompile.DONE))
        timer.start()
        precompile.finish_background(said.append)
        timer.join()
        assert len(said) == expect_lines and job._state[0] == precompile.DONE
        assert job not in precompile._JOBS and job._go.value == 1      # the workers were let go


def test_ctrl_c_skips_the_wait_for_the_background_kernel_and_ends_the_workers():
    """The run is saved when finish_background waits: Ctrl-C there ends the workers, says so in one line
    and returns (no KeyboardInterrupt, so no 'Aborted!' and exit status 1)."""
    import _thread
    import threading as th

    from cnncli import precompile
    from cnncli.kernels import bnstep

    class Proc:
        killed = False

        def is_alive(self):
            return not self.killed

        def kill(self):
            self.killed = True

    job = object.__new__(precompile.Precompile)
    job._disps, job._state, job._procs = [bnstep.bn_step_into], [precompile.TAKEN], [Proc()]
    job._go = types.SimpleNamespace(value=0)
    precompile._JOBS.append(job)
    said = []
    timer = th.Timer(0.3, _thread.interrupt_main)
    timer.start()
    precompile.finish_background(said.append)
    timer.join()
    assert job._procs[0].killed and job not in precompile._JOBS
    assert len(said) == 2 and "Ctrl-C skips it" in said[0] and said[1].startswith("Skipped:")


def test_a_worker_starts_the_background_kernels_only_when_let_go(monkeypatch):
    """_worker compiles the other kernels at once, then waits for `go` before a BACKGROUND one
    (the run's first steps need its cores) and lowers its priority for it; not for `cnn warmup`."""
    import threading as th

    from cnncli import kernelplan, precompile

    monkeypatch.setattr(kernelplan, "BACKGROUND", (("m", "late"),))
    done, niced = [], []
    go = types.SimpleNamespace(value=0)
    monkeypatch.setattr(precompile, "_compile", lambda module, name, sigs: done.append((name, go.value)))
    monkeypatch.setattr(precompile.os, "nice", lambda k: niced.append(k) or 0, raising=False)

    class State(list):
        def get_lock(self):
            return th.Lock()

    state = State([precompile.FREE] * 3)
    timer = th.Timer(0.3, lambda: setattr(go, "value", 1))
    timer.start()
    precompile._worker([("m", "a", []), ("m", "late", []), ("m", "b", [])], [0, 2, 1], state, go)
    timer.join()
    assert done == [("a", 0), ("b", 0), ("late", 1)] and niced and state == [precompile.DONE] * 3

    # for `cnn warmup` (nothing trains meanwhile): in order, at once, at the normal priority
    done.clear(), niced.clear()
    go.value = 0
    state = State([precompile.FREE] * 3)
    precompile._worker([("m", "a", []), ("m", "late", []), ("m", "b", [])], [1, 0, 2], state, go, False)
    assert done == [("late", 0), ("a", 0), ("b", 0)] and not niced and state == [precompile.DONE] * 3


@pytest.mark.parametrize("background_last", [True, False])
def test_wait_alone_takes_the_longest_background_kernel_first(monkeypatch, background_last):
    """Precompile.wait() with no worker compiles every task here: for a run (background_last) in the
    order the run calls them; for `cnn warmup` and the test warm-up, which only wait, the BACKGROUND
    kernel (the longest task) first, then the workers' order (validation's, then the step's backwards)."""
    from cnncli import kernelplan, precompile

    monkeypatch.setattr(kernelplan, "BACKGROUND", (("m", "step"),))
    done = []
    monkeypatch.setattr(precompile, "_compile", lambda module, name, sigs: done.append(name))

    class Disp:                  # what Precompile reads of a numba dispatcher
        def __init__(self, name):
            self.py_func = types.SimpleNamespace(__module__="m", __name__=name)

    todo = {Disp(name): {"sig"} for name in ("first", "step", "second")}
    precompile.Precompile(todo, 0, {Disp("validation"): {"sig"}}, background_last=background_last).wait()
    assert done == (["first", "step", "second", "validation"] if background_last
                    else ["step", "validation", "second", "first"])


_ORPHAN = """
import multiprocessing, os, sys, time
from cnncli import kernelplan, precompile
if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    state, go = ctx.Array("b", 1), ctx.Value("b", 0)      # a BACKGROUND task whose go never comes
    p = ctx.Process(target=precompile._worker, args=([("cnncli.kernels.bnstep", "bn_step_into", [])], [0], state, go,
                                                     True, os.getpid()))
    p.start()
    print(p.pid, flush=True)
    time.sleep(60)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="Linux /proc needed")
def test_a_compile_worker_ends_with_its_killed_run(tmp_path):
    # a run killed (SIGKILL) before its first steps were through left a worker waiting for go for ever
    import signal
    import subprocess
    import sys
    import time

    from e2e_util import alive

    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    run = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(run.stdout.readline())
    time.sleep(1.0)
    assert alive(worker), "the worker should wait for go while its run lives"
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    deadline = time.monotonic() + 15
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the compile worker outlived its run")


def test_every_kernel_module_with_cached_kernels_is_planned():
    """KERNEL_MODULES names every kernels/ module holding a cached numba kernel (the dry run and its
    coverage check above see only those), but for the two whose kernels no training run calls:
    peak (cnn bench's FMA probe) and sync (kernel_profile's clock, the test jobs)."""
    from cnncli import kernelplan
    from cnncli.kernels import cachestamp

    cached = set()
    for path, text in cachestamp._numba_files(str(ROOT / "cnncli" / "kernels")):
        if b"cache=True" in text:
            cached.add("cnncli.kernels." + Path(path).stem)
    assert cached, "found no cached kernel: the scan saw nothing"
    assert cached - set(kernelplan.KERNEL_MODULES) == {"cnncli.kernels.peak", "cnncli.kernels.sync"}


FALLBACK = """
import json
from cnncli import kernelplan
names = {}
for parts in (("step",), ("step", "fallback")):
    calls = kernelplan.record_calls(kernelplan.training_run("none", parts=parts))
    names[" ".join(parts)] = sorted(d.py_func.__name__ for d in calls)
print(json.dumps(names))
"""


def test_the_fallback_steps_kernels_are_planned_only_where_a_run_calls_them(tmp_path, monkeypatch):
    # a run without compile workers compiles the one-call step itself and never takes the step's
    # fallback path (shard by shard): planning its kernels made every later run say "Compiling 2
    # numba kernels" and compile nothing (a small dataset, a busy machine)
    res = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr
    names = json.loads(res.stdout.splitlines()[-1])
    assert "plain_step_into" in names["step"] and "pool_elu_forward_into" not in names["step"]
    assert "pool_elu_forward_into" in names["step fallback"]
    from cnncli import kernelplan, precompile

    asked = []
    monkeypatch.setattr(kernelplan, "plan", lambda *a, fallback=True, ranks=False, **k:
                        asked.append((fallback, ranks)) or ({}, {}))
    for workers, background in ((0, True), (1, True), (0, False)):
        precompile.start("none", workers=workers, background=background)
    assert asked == [(False, False), (True, False), (False, True)]   # MPI ranks (background=False) always take it


def test_a_run_with_workers_plans_the_fallback_path_only_while_the_one_call_step_is_missing(monkeypatch):
    # it takes that path only while a worker compiles the one-call step: a fallback kernel planned
    # beside a cached step was compiled by a worker the end of a short run killed, and every later
    # run said "Compiling 1 numba kernel" again
    from cnncli import kernelplan
    from cnncli.kernels import plainstep, pool

    step, fallback = plainstep.plain_step_into, pool.pool_elu_forward_into
    monkeypatch.setattr(kernelplan, "training_run", lambda bn, opt, dtype, parts: parts)
    monkeypatch.setattr(kernelplan, "record_calls", lambda parts: {d: {"sig"} for d, part in (
        (step, "step"), (fallback, "fallback")) if part in parts})
    lacking = {fallback}                                   # the one-call step cached, a fallback kernel not
    monkeypatch.setattr(kernelplan, "missing", lambda calls: {d: s for d, s in calls.items() if d in lacking})
    assert kernelplan.plan("none", fallback=True) == ({}, {})
    assert kernelplan.plan("none", fallback=True, ranks=True) == ({fallback: {"sig"}}, {})
    lacking.add(step)
    assert kernelplan.plan("none", fallback=True) == ({step: {"sig"}, fallback: {"sig"}}, {})
    assert kernelplan.plan("none", fallback=False) == ({step: {"sig"}}, {})
