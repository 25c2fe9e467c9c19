"""`mpirun -n K cnn train` through real processes (oversubscribed on small machines): K ranks give the
checkpoints of one process bit for bit (every array, every BN variant), one run folder, one log;
a run resumes across K; config errors are printed once; kill -9 of a rank ends the job with a
checkpoint that resumes; SIGUSR1 to mpirun stops every rank at one step with a save.
Skipped only where MPI cannot start at all (tests/mpi_util.py; a failure under CI=true).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e_util import load_params, make_folder, run_cli, write_config
from mpi_util import communicate_or_kill, mpi_env, mpirun_path, require_mpi, run_mpi

BN = ("none", "unit", "channel")
# a schedule that does not depend on train.epochs, so 2 epochs resumed to 3 equal 3 epochs
CONSTANT_LR = ("--set", "optim.schedule=constant", "--set", "optim.warmup_epochs=0")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mpitrain")
    return tmp, make_folder(tmp / "data", per_class=16)       # 48 images, 3 of them unreadable


def cnn_mpi(k, args, tmp, timeout=300, mpirun_args=()):
    """`mpirun -n K python -m cnncli ARGS` with the test's dataset cache."""
    return run_mpi(k, ["python", "-m", "cnncli", *map(str, args)], timeout=timeout, mpirun_args=mpirun_args,
                   extra_env={"CNNCLI_CACHE_DIR": str(tmp / "cache")})


def assert_same_arrays(a: Path, b: Path):
    pa, pb = load_params(a), load_params(b)
    assert pa.keys() == pb.keys() and len(pa) > 10
    for k in pa:
        assert pa[k].tobytes() == pb[k].tobytes(), f"{k} differs between {a} and {b}"


def resume_to_reference(tmp: Path, out: Path, ref: Path):
    """`cnn train --resume out` in one process finishes with the uninterrupted run's last.npz."""
    res = run_cli(["train", "--resume", out, "-q", "--no-report"], tmp, timeout=300)
    assert res.returncode == 0, res.stderr
    assert_same_arrays(ref / "last.npz", out / "last.npz")


def metrics_rows(run: Path):
    """metrics.csv rows without the wall time column."""
    lines = (run / "metrics.csv").read_text().splitlines()
    return [ln.rsplit(",", 1)[0] for ln in lines]


@pytest.fixture(scope="module")
def pairs(data):
    """For each BN variant: a one-process run and a `mpirun -n 2` run of the same 2-epoch config."""
    require_mpi()
    tmp, folder = data
    out = {}
    for bn in BN:
        cfg = write_config(tmp / f"cfg-{bn}.yaml", folder, tmp / "unused", epochs=2, batch_size=16)
        one = run_cli(["train", "--config", cfg, "--no-report", "--out", tmp / f"one-{bn}",
                       "--set", f"model.batchnorm={bn}", *CONSTANT_LR], tmp, timeout=300)
        assert one.returncode == 0, one.stderr
        two = cnn_mpi(2, ["train", "--config", cfg, "--no-report", "--out", tmp / f"two-{bn}",
                          "--set", f"model.batchnorm={bn}", *CONSTANT_LR], tmp)
        assert two.returncode == 0, two.stderr
        out[bn] = (cfg, tmp / f"one-{bn}", tmp / f"two-{bn}", one, two)
    return out


@pytest.mark.parametrize("bn", BN)
def test_two_ranks_write_the_one_process_run(pairs, data, bn):
    tmp, _ = data
    _, one, two, res_one, res_two = pairs[bn]
    for name in ("last.npz", "best.npz"):
        assert_same_arrays(one / name, two / name)
    assert metrics_rows(one) == metrics_rows(two) and len(metrics_rows(two)) == 3
    def config(run):                                  # every key but out, which names each run's own folder
        lines = (run / "config.yaml").read_text().splitlines()
        assert f"out: {run}" in lines, lines
        return [ln for ln in lines if not ln.startswith("out:")]
    assert config(two) == config(one)
    assert (two / "skipped.txt").read_text() == (one / "skipped.txt").read_text()
    assert not list(tmp.glob(f"two-{bn}-*")), "a second run folder"
    assert res_two.stdout.splitlines() == [str(two)]                # printed once, by rank 0
    err = res_two.stderr.splitlines()
    for start in ("Run folder:", "epoch 1/2", "epoch 2/2", "Done in", "warning: skipped 2"):
        assert sum(ln.startswith(start) for ln in err) == 1, (start, res_two.stderr)
    assert "2 MPI ranks x 1 thread(s)" in res_two.stderr           # the Network's comm; 2 cores: one each
    strip = [ln.split("  lr ")[0] for ln in err if ln.startswith("epoch ")]   # drop times and img/s
    assert strip == [ln.split("  lr ")[0] for ln in res_one.stderr.splitlines() if ln.startswith("epoch ")]


def test_four_ranks_write_the_one_process_run(data):
    """-n 4 on a 2-core machine (oversubscribed): batch 32 is 4 shards, one per rank; with class
    weights (per-image loss weights through the shards)."""
    require_mpi()
    tmp, folder = data
    cfg = write_config(tmp / "cfg-four.yaml", folder, tmp / "unused", epochs=1, batch_size=32)
    args = ["train", "--config", cfg, "--no-report", "-q", "--set", "model.batchnorm=channel",
            "--set", "train.class_weight={bar: 3, column: 1, disc: 0.5}"]
    one = run_cli([*args, "--out", tmp / "four-one"], tmp, timeout=300)
    assert one.returncode == 0, one.stderr
    four = cnn_mpi(4, [*args, "--out", tmp / "four-four"], tmp)
    assert four.returncode == 0, four.stderr
    assert "4 MPI ranks x 1 thread(s)" in four.stderr
    assert_same_arrays(tmp / "four-one" / "last.npz", tmp / "four-four" / "last.npz")
    assert metrics_rows(tmp / "four-one") == metrics_rows(tmp / "four-four")


def test_two_ranks_fine_tune_as_one_process_does(pairs, data):
    """--init-from under mpirun: every rank starts from the checkpoint's weights, so 2 ranks write the
    one-process run (a 2-class folder: one output row kept by name, one new)."""
    tmp, folder = data
    sub = tmp / "two-classes"
    if not sub.exists():
        shutil.copytree(folder / "column", sub / "column")
        shutil.copytree(folder / "disc", sub / "zigzag")
    _, src, _, _, _ = pairs["channel"]
    args = ["train", "--set", f"data.train={sub}", "--set", "train.epochs=1", "--set", "train.batch_size=16",
            "--set", "model.batchnorm=channel", "--init-from", src, "--no-report"]
    one = run_cli([*args, "--out", tmp / "tune-one"], tmp, timeout=300)
    assert one.returncode == 0, one.stderr
    two = cnn_mpi(2, [*args, "--out", tmp / "tune-two"], tmp)
    assert two.returncode == 0, two.stderr
    assert_same_arrays(tmp / "tune-one" / "last.npz", tmp / "tune-two" / "last.npz")
    line = f"Weights from {src / 'best.npz'}: every layer below the output, the output rows of 1 shared class(es)"
    assert sum(ln.startswith(line) for ln in two.stderr.splitlines()) == 1, two.stderr    # said once


def test_two_ranks_cross_validate_as_one_process_does(data):
    """mpirun -n 2 cnn cv: every fold trains on both ranks and writes the one-process fold runs; the
    summary is printed once, by rank 0."""
    require_mpi()
    tmp, folder = data
    args = ["cv", "--set", f"data.train={folder}", "--set", "train.epochs=1", "--set", "train.batch_size=16",
            "--folds", "2", "-q", "--json"]
    one = run_cli([*args, "--out", tmp / "cv-one"], tmp, timeout=300)
    assert one.returncode == 0, one.stderr
    two = cnn_mpi(2, [*args, "--out", tmp / "cv-two"], tmp)
    assert two.returncode == 0, two.stderr
    for k in (1, 2):
        assert_same_arrays(tmp / "cv-one" / f"fold-{k}" / "last.npz", tmp / "cv-two" / f"fold-{k}" / "last.npz")
    ours, theirs = (json.loads(p.stdout) for p in (one, two))
    assert ours["summary"] == theirs["summary"] and len(theirs["folds"]) == 2
    assert sum(ln.startswith("Cross-validation: 2 folds") for ln in two.stderr.splitlines()) == 1
    assert "2 MPI ranks x 1 thread(s)" in two.stderr


def test_ranks_that_cannot_split_the_batch_get_one_config_error(data):
    require_mpi()
    tmp, folder = data
    cfg = write_config(tmp / "cfg-odd.yaml", folder, tmp / "odd", epochs=1, batch_size=24)
    res = cnn_mpi(2, ["train", "--config", cfg, "--no-report"], tmp, timeout=120)
    assert res.returncode == 2, res.stderr
    ours = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert ours == ["Error: train.batch_size: 24 makes 3 shards of up to 8 images (the last may hold fewer), which "
                    "2 MPI ranks cannot split evenly; use 1 or 3 ranks, or a batch_size whose shard count 2 "
                    "divides, e.g. 16 or 32"]
    assert res.stdout == "" and not (tmp / "odd").exists()
    bad = tmp / "cfg-typo.yaml"
    bad.write_text("train:\n  epocs: 3\n")
    res = cnn_mpi(2, ["train", "--config", bad], tmp, timeout=120)
    assert res.returncode == 2, res.stderr
    ours = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert len(ours) == 1 and "train.epocs" in ours[0] and "did you mean" in ours[0], res.stderr


def test_cv_whose_batch_the_ranks_cannot_split_leaves_no_folder(data):
    # the ranks' set-up error ends them by SystemExit (distributed._settle), which the cleanup of a cv
    # that trained nothing missed: runs/x-cv/config.yaml stayed, and the next cv went to runs/x-cv-2
    require_mpi()
    tmp, folder = data
    out = tmp / "cv-odd"
    res = cnn_mpi(2, ["cv", "--set", f"data.train={folder}", "--set", "train.batch_size=24", "--folds", "2", "-q",
                      "--out", out], tmp, timeout=120)
    assert res.returncode == 2, res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")] == [
        "Error: train.batch_size: 24 makes 3 shards of up to 8 images (the last may hold fewer), which 2 MPI ranks "
        "cannot split evenly; use 1 or 3 ranks, or a batch_size whose shard count 2 divides, e.g. 16 or 32"]
    assert not out.exists()


def test_resume_across_rank_counts_equals_one_uninterrupted_process(pairs, data):
    """2 ranks x 2 epochs, resumed by 1 process to 3 epochs; and 1 process x 2 epochs resumed by 2
    ranks: both end bitwise equal to 1 process x 3 epochs."""
    tmp, _ = data
    cfg, one, two, _, _ = pairs["channel"]
    ref = run_cli(["train", "--config", cfg, "--no-report", "--out", tmp / "ref3", "--set", "train.epochs=3",
                   "--set", "model.batchnorm=channel", *CONSTANT_LR], tmp, timeout=300)
    assert ref.returncode == 0, ref.stderr
    for src, name in ((two, "two-to-one"), (one, "one-to-two")):
        shutil.copytree(src, tmp / name)
    res = run_cli(["train", "--resume", tmp / "two-to-one", "--set", "train.epochs=3", "--no-report"], tmp,
                  timeout=300)
    assert res.returncode == 0, res.stderr
    res = cnn_mpi(2, ["train", "--resume", tmp / "one-to-two", "--set", "train.epochs=3", "--no-report"], tmp)
    assert res.returncode == 0, res.stderr
    for name in ("two-to-one", "one-to-two"):
        assert_same_arrays(tmp / "ref3" / "last.npz", tmp / name / "last.npz")
        assert metrics_rows(tmp / "ref3") == metrics_rows(tmp / name)



def test_resuming_under_mpirun_a_run_trained_now_is_refused_once_without_a_rank(pairs, data):
    """The run folder's checks of a resume (held by another process, --out holding another run) are rank
    0's alone: its line is the run's, printed once, not "rank 0 of 2: ..." with an MPI_Abort."""
    tmp, _ = data
    held = tmp / "held"
    shutil.copytree(pairs["none"][2], held)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from cnncli import runlock; "
                               "runlock.hold(sys.argv[1]); print('held', flush=True); time.sleep(300)", str(held)],
                              env=mpi_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        res = cnn_mpi(2, ["train", "--resume", held, "--set", "train.epochs=3", "--no-report"], tmp, timeout=120)
    finally:
        holder.kill()
    assert res.returncode == 1, res.stderr
    ours = [ln for ln in res.stderr.splitlines() if "Error" in ln]
    assert ours == [f"Error: {held}: another cnn process (pid {holder.pid}) is training this run now; let it "
                    f"finish, or stop it (Ctrl-C in its terminal, or kill -TERM {holder.pid}: it saves) and resume "
                    "then"], res.stderr


def test_a_test_rank_0_cannot_save_after_training_is_the_runs_line_printed_once_without_a_rank(data):
    """Rank 0 tests best.npz alone after training: test_metrics.json a folder refuses (chattr +i, a real
    permission denied; skipped where it cannot be set) is the run's line, not "rank 0 of 2: ..."."""
    tmp, folder = data
    cfg = write_config(tmp / "cfg-test.yaml", folder, tmp / "unused", epochs=1, batch_size=16)
    run = tmp / "immutable"
    res = run_cli(["train", "--config", cfg, "--no-report", "--out", run], tmp, timeout=300)
    assert res.returncode == 0, res.stderr
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", run], capture_output=True).returncode:
        pytest.skip("chattr +i cannot make a folder read-only here (it needs root and a file system that has it)")
    try:
        res = cnn_mpi(2, ["train", "--resume", run, "--set", f"data.test={folder}", "--no-report"], tmp, timeout=120)
    finally:
        subprocess.run(["chattr", "-i", run], capture_output=True)
    assert res.returncode == 1, res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("Error")] == [
        f"Error: {run / 'test_metrics.json'}: cannot be written (permission denied); the run's checkpoints are saved: "
        f"once it can be, cnn train --resume {run} runs the test"], res.stderr


def test_a_cv_summary_rank_0_cannot_save_is_the_cvs_line_printed_once_without_a_rank(data):
    """cv.json, rank 0's alone after the folds, a folder refuses (chattr +i; skipped where it cannot be
    set): the cv's line, saying the folds are saved and how to go on, not "rank 0 of 2: ..."."""
    tmp, folder = data
    cfg = write_config(tmp / "cfg-cvsum.yaml", folder, tmp / "unused", epochs=1, batch_size=16)
    cv = tmp / "cv-immutable"
    res = run_cli(["cv", "--config", cfg, "--folds", "2", "--out", cv], tmp, timeout=300)
    assert res.returncode == 0, res.stderr
    (cv / "cv.json").unlink()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", cv], capture_output=True).returncode:
        pytest.skip("chattr +i cannot make a folder read-only here (it needs root and a file system that has it)")
    try:
        res = cnn_mpi(2, ["cv", "--resume", cv], tmp, timeout=120)
    finally:
        subprocess.run(["chattr", "-i", cv], capture_output=True)
    assert res.returncode == 1, res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("Error")] == [
        f"Error: {cv / 'cv.json'}: cannot be written (permission denied: write where you may, or change the folder's "
        f"permissions); nothing was written; the folds are saved: once it can be written, cnn cv --resume {cv} "
        "writes it"], res.stderr


def test_a_new_runs_config_yaml_a_full_disk_refuses_under_mpirun_is_one_line_and_leaves_no_folder(data, tmp_path):
    """A real full disk (a tmpfs with one page left: the folder's marker takes it; root and mount(8) needed,
    else skipped): the run's line, printed once, not "rank 0 of 2: ...", and no run folder left."""
    tmp, folder = data
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        with open(mnt / "filler", "wb") as f:
            f.write(b"\0" * (256 * 1024 - 4096))
        cfg = write_config(tmp / "cfg-full.yaml", folder, mnt / "run", epochs=1, batch_size=16)
        res = cnn_mpi(2, ["train", "--config", cfg, "--no-report"], tmp, timeout=120)
        left = sorted(os.listdir(mnt))
    finally:
        subprocess.run(["umount", "-l", mnt], capture_output=True)
    assert res.returncode == 1, res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("Error")] == [
        f"Error: {mnt / 'run' / 'config.yaml'}: cannot be written (no space left on the device: free some space, or "
        "write elsewhere); nothing was written"], res.stderr
    assert left == ["filler"]


# ----------------------------------------------------------------------------------------------
# faults: a long enough run (a checkpoint every step) to kill or stop in the middle

@pytest.fixture(scope="module")
def long_run(data):
    tmp, folder = data
    cfg = write_config(tmp / "cfg-long.yaml", folder, tmp / "unused", epochs=12, batch_size=16, checkpoint_every=1)
    res = run_cli(["train", "--config", cfg, "-q", "--no-report", "--out", tmp / "long-ref"], tmp, timeout=300)
    assert res.returncode == 0, res.stderr
    return cfg, tmp / "long-ref"


def start_job(tmp, cfg, out, k=2):
    """mpirun -n K cnn train in the background; returns (mpirun process, {rank: pid}) once rank 0
    has written its first checkpoint."""
    require_mpi()
    proc = subprocess.Popen([mpirun_path(), "-n", str(k), sys.executable, "-m", "cnncli", "train", "--config",
                             str(cfg), "-q", "--no-report", "--out", str(out)],
                            env=mpi_env({"CNNCLI_CACHE_DIR": str(tmp / "cache")}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (out / "last.npz").exists():
        if proc.poll() is not None or time.monotonic() - t0 > 240:
            proc.kill()
            raise AssertionError(f"no checkpoint appeared; mpirun ended with {proc.returncode}: "
                                 f"{proc.communicate()[1]}")
        time.sleep(0.005)
    return proc, rank_pids(proc.pid, k)


def rank_pids(root: int, k: int) -> dict:
    """{rank: pid} of the descendants of `root` that MPI started (OMPI_COMM_WORLD_RANK in /proc/PID/environ)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found = {}
    for pid in parent:
        p = pid
        while p in parent and p not in (root, 0, 1):
            p = parent[p]
        if p != root or pid == root:
            continue
        try:
            env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        except OSError:
            continue
        if "OMPI_COMM_WORLD_RANK" in env and "cnncli" in Path(f"/proc/{pid}/cmdline").read_text():
            found[int(env["OMPI_COMM_WORLD_RANK"])] = pid
    assert sorted(found) == list(range(k)), found
    return found


def test_kill_9_of_one_rank_ends_the_job_and_the_checkpoint_resumes(long_run, data):
    tmp, _ = data
    cfg, ref = long_run
    out = tmp / "killed"
    proc, pids = start_job(tmp, cfg, out)
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.monotonic()
    _, err = communicate_or_kill(proc, 30)
    took = time.monotonic() - t0
    if proc.returncode == 0:
        pytest.fail("the run finished before the kill landed")
    assert took < 10, f"the job took {took:.1f}s to end after kill -9 of rank 1"
    assert f"process rank 1 with PID {pids[1]}" in " ".join(err.split()) and "signal 9" in err, err
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    resume_to_reference(tmp, out, ref)
    assert metrics_rows(ref) == metrics_rows(out)


def test_sigusr1_to_mpirun_stops_every_rank_at_one_step_and_saves(long_run, data):
    tmp, _ = data
    cfg, ref = long_run
    out = tmp / "usr1"
    proc, _ = start_job(tmp, cfg, out)
    proc.send_signal(signal.SIGUSR1)
    _, err = communicate_or_kill(proc, 60)
    assert proc.returncode == 130, err
    ours = [ln for ln in err.splitlines() if "SIGUSR1" in ln]          # a requested stop: no "Error: "
    assert len(ours) == 1 and ours[0].startswith("SIGUSR1: stopped at epoch "), err
    assert "Error" not in err, err
    assert f"resume with: cnn train --resume {out}" in ours[0] and "Traceback" not in err
    resume_to_reference(tmp, out, ref)
    assert metrics_rows(ref) == metrics_rows(out)



@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_to_one_rank_alone_stops_every_rank_at_one_step_and_saves(long_run, data, signum):
    """As srun or scancel signal the tasks themselves, not mpirun: rank 1's flag reaches the others
    through any_flag, rank 0 saves, and the job exits 130 with the single-process line."""
    tmp, _ = data
    cfg, ref = long_run
    out = tmp / f"one-rank-{signum.name.lower()}"
    proc, pids = start_job(tmp, cfg, out)
    os.kill(pids[1], signum)
    _, err = communicate_or_kill(proc, 60)
    assert proc.returncode == 130, err
    ours = [ln for ln in err.splitlines() if signum.name in ln]
    assert len(ours) == 1 and ours[0].startswith(f"{signum.name}: stopped at epoch "), err
    assert "Error" not in err and "Traceback" not in err, err
    resume_to_reference(tmp, out, ref)


# `cnn train` under mpirun with one function (module, name) replaced by one that marks its start in
# a file and then takes a minute: the window for a stop signal there (data.test's testing after the
# last step, rank 0 alone; the data's loading in every rank's set-up)
SLOWED = """
import importlib, sys, time
from pathlib import Path

marker, module, name = Path(sys.argv[1]), importlib.import_module(sys.argv[2]), sys.argv[3]

def slow(*args, **kw):
    marker.write_text(name)
    time.sleep(60)

setattr(module, name, slow)
sys.argv = ["cnn"] + sys.argv[4:]
from cnncli.cli import main
main()
"""


def start_slowed(tmp, module, name, args):
    """`mpirun -n 2 cnn ARGS` with module.name slowed (SLOWED), returned once it has started."""
    (tmp / "slowed.py").write_text(SLOWED)
    marker = tmp / f"slowed-{name}.txt"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([mpirun_path(), "-n", "2", sys.executable, str(tmp / "slowed.py"), str(marker), module,
                             name, *map(str, args)],
                            env=mpi_env({"CNNCLI_CACHE_DIR": str(tmp / "cache")}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not marker.exists() and proc.poll() is None and time.monotonic() - t0 < 240:
        time.sleep(0.01)
    return proc


def test_sigusr1_to_mpirun_after_training_is_one_line_and_the_job_exits_130(data):
    require_mpi()
    tmp, folder = data
    cfg = write_config(tmp / "cfg-slowtest.yaml", folder, tmp / "unused", epochs=1, batch_size=16)
    out = tmp / "usr1-after"
    proc = start_slowed(tmp, "cnncli.train", "evaluate_test_data",
                        ["train", "--config", cfg, "-q", "--no-report", "--out", out, "--set", f"data.test={folder}"])
    time.sleep(0.5)                         # (rank 1 is past training, waiting to exit)
    proc.send_signal(signal.SIGUSR1)
    _, err = communicate_or_kill(proc, 60)
    ours = [ln for ln in err.splitlines() if "SIGUSR1" in ln]
    assert proc.returncode == 130 and ours == [
        f"SIGUSR1: stopped after training, while testing best.npz on data.test; the run's checkpoints are saved "
        f"in {out}; cnn train --resume {out} runs the test"], err
    assert "Error" not in err and "signal" not in err.replace("SIGUSR1", ""), err
    assert (out / "best.npz").is_file() and (out / "last.npz").is_file()


def test_sigterm_to_mpirun_leaves_a_checkpoint_that_resumes(long_run, data):
    """Ctrl-C/SIGTERM: mpirun kills the ranks 0.5 s later; rank 0's stop save lands or not, and
    either way last.npz is whole and resumes to the uninterrupted bits."""
    tmp, _ = data
    cfg, ref = long_run
    out = tmp / "term"
    proc, _ = start_job(tmp, cfg, out)
    proc.send_signal(signal.SIGTERM)
    communicate_or_kill(proc, 60)
    assert proc.returncode != 0
    resume_to_reference(tmp, out, ref)
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


def test_sigusr1_stops_a_single_process_too(long_run, data):
    tmp, _ = data
    cfg, _ = long_run
    out = tmp / "usr1-one"
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", "train", "--config", str(cfg), "-q", "--no-report",
                             "--out", str(out)], env={**os.environ, "CNNCLI_CACHE_DIR": str(tmp / "cache")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (out / "last.npz").exists() and proc.poll() is None and time.monotonic() - t0 < 240:
        time.sleep(0.005)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "\nSIGUSR1: stopped at epoch " in "\n" + err and "resume with: cnn train --resume" in err
    assert "Error" not in err, err


# ----------------------------------------------------------------------------------------------
# the error policy of distributed.everyone / main_first / fail, in a small job (tests/mpi_fault_job.py)

FAULT_JOB = Path(__file__).resolve().parent / "mpi_fault_job.py"


@pytest.mark.parametrize("mode, code, line", [
    ("rank-error", 1, "Error: rank 1 of 2: data/x.png: unreadable on rank 1 only"),
    ("main-error", 1, "Error: data/x.png: unreadable on rank 0 only"),
    ("fail", 1, "Error: rank 1 of 2: no space left on the device: free some space, or write elsewhere"),
    # (rank 0's save of the run's checkpoint: the folder's fault, not rank 0's copy's; it said "rank 0 of 2: ...")
    ("main-save", 1, "Error: {tmp}/last.npz: cannot save the checkpoint (no space left on the device); once there is "
                     "room, go on from last.npz: cnn train --resume {tmp}"),
])
def test_an_error_of_one_rank_ends_the_job_with_one_line_naming_it(tmp_path, mode, code, line):
    require_mpi()
    t0 = time.monotonic()
    res = run_mpi(2, ["python", FAULT_JOB, tmp_path, mode], timeout=120)
    assert res.returncode == code, res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("Error")] == [line.format(tmp=tmp_path)], res.stderr
    assert "went on" not in res.stdout and "Traceback" not in res.stderr
    assert time.monotonic() - t0 < 60


def test_error_policy_in_one_process_raises_unchanged():
    from cnncli import distributed as D
    from cnncli.errors import DataError

    comm = D.Comm()
    assert D.everyone(comm, lambda a, b=0: a + b, 1, b=2) == 3
    assert D.main_first(comm, lambda: "x", others=False) == "x"
    err = DataError("data: broken")
    for helper in (D.everyone, D.main_first):
        with pytest.raises(DataError) as got:
            helper(comm, lambda: (_ for _ in ()).throw(err))
        assert got.value is err


def test_rank_threads(monkeypatch):
    from cnncli import distributed as D

    class FakeComm(D.Comm):
        """Rank `rank` of ranks whose (host, cores) are `layout`."""
        def __init__(self, rank, layout):
            self.rank, self.size, self.layout = rank, len(layout), layout

        def allgather(self, obj):
            assert obj == self.layout[self.rank]
            return list(self.layout)

    host = __import__("socket").gethostname()
    assert D.rank_threads(D.Comm(), 3) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert D.rank_threads(D.Comm(), 0) == 5
    everything = (host, (0, 1, 2, 3, 4))
    # unbound: 5 cores shared by 2 ranks on this host (a third rank elsewhere does not count)
    layout = [everything, everything, ("other", (0, 1, 2, 3, 4))]
    assert [D.rank_threads(FakeComm(r, layout), 0) for r in (0, 1)] == [3, 2]
    # bound: each rank its own cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    layout = [(host, (0, 1)), (host, (2, 3))]
    assert D.rank_threads(FakeComm(0, layout), 0) == 2
    assert D.rank_threads(FakeComm(0, layout), 4) == 4            # an explicit train.threads wins


# `cnn` whose rank 1 sends itself the signal argv[1] as its steps end (Trainer.fit returns), rank 0 nothing
_STOP_RANK_1_AFTER_ITS_STEPS = """
import os, signal, sys
from cnncli import cli, trainer
sig, real = getattr(signal, sys.argv.pop(1)), trainer.Trainer.fit
def fit(self, *args, **kw):
    real(self, *args, **kw)
    if os.environ.get("OMPI_COMM_WORLD_RANK") == "1":
        os.kill(os.getpid(), sig)
trainer.Trainer.fit = fit
cli.main()
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_on_another_rank_as_its_steps_end_is_ignored_as_after_them(data, sig):
    # rank 1's handlers were the signals' defaults there, until cnn train's ignore_stops: SIGTERM ended it by the
    # signal (mpirun's block, the job failed) and SIGINT was a traceback and MPI_ABORT, while rank 0 had nothing
    # to stop; a rank other than 0 ignores a stop from its steps' end on, as it did once cnn train returned
    require_mpi()
    tmp, folder = data
    cfg = write_config(tmp / f"cfg-rank1-{sig}.yaml", folder, tmp / "unused", epochs=1, batch_size=16)
    out = tmp / f"rank1-{sig}"
    res = run_mpi(2, ["python", "-c", _STOP_RANK_1_AFTER_ITS_STEPS, sig, "train", "--config", cfg, "-q",
                      "--no-report", "--out", out], timeout=300, extra_env={"CNNCLI_CACHE_DIR": str(tmp / "cache")})
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{out}\n" and "Traceback" not in res.stderr and "signal" not in res.stderr, res.stderr
    assert (out / "last.npz").is_file()


def test_sigusr1_to_mpirun_during_set_up_is_one_line_and_the_job_exits_130(data):
    # each rank printed 'Error: rank r of 2: SIGUSR1: stopped during set-up, ...' and the job ended in
    # MPI_ABORT's block
    require_mpi()
    tmp, folder = data
    cfg = write_config(tmp / "cfg-slowsetup.yaml", folder, tmp / "unused", epochs=1, batch_size=16)
    proc = start_slowed(tmp, "cnncli.runsetup", "load_datasets",
                        ["train", "--config", cfg, "-q", "--no-report", "--out", tmp / "usr1-setup"])
    time.sleep(1.5)                         # (both ranks in their set-up; 0.5 s lost rank 1 once under a full CI run)
    proc.send_signal(signal.SIGUSR1)
    _, err = communicate_or_kill(proc, 60)
    ours = [ln for ln in err.splitlines() if "SIGUSR1" in ln]
    assert proc.returncode == 130 and ours == [
        "SIGUSR1: stopped during set-up, before the first step: nothing was trained; start the run again"], err
    assert "Error" not in err and "MPI_ABORT" not in err, err


def test_click_s_own_output_under_mpirun_is_printed_once():
    # --help, --version and an unknown option or command printed once per rank: Click speaks before
    # cnn knows its rank (the other ranks now keep quiet and exit with the same status)
    require_mpi()
    cnn = ["python", "-m", "cnncli"]
    res = run_mpi(2, [*cnn, "train", "--help"])
    assert res.returncode == 0 and res.stdout.count("Usage: ") == 1, res.stdout
    res = run_mpi(2, [*cnn, "--version"])
    assert res.returncode == 0 and res.stdout.count("version") == 1, res.stdout
    res = run_mpi(2, [*cnn, "train", "--epochs", "1"])
    assert res.returncode == 2 and res.stderr.count("No such option: --epochs;") == 1, res.stderr
    res = run_mpi(2, [*cnn, "trian"])
    assert res.returncode == 2 and res.stderr.count("No such command 'trian'") == 1, res.stderr


@pytest.mark.parametrize("change", ["one image fewer", "one image's pixels"])
def test_ranks_that_read_different_data_stop_with_one_line(data, tmp_path, change):
    # a host whose copy is out of step: a traceback mid-step (one image fewer), or training on
    # different images without a word (the same count)
    require_mpi()
    tmp, folder = data
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    victim = sorted(p for p in other.glob("*/*.png"))[0]
    if change == "one image fewer":
        victim.unlink()
    else:
        from PIL import Image

        Image.new("L", (32, 32), 200).save(victim)
    cfg = write_config(tmp_path / "c.yaml", folder, tmp_path / "run", epochs=1, batch_size=16)
    rank = [sys.executable, "-m", "cnncli", "train", "--config", str(cfg), "-q", "--no-report"]
    cmd = [mpirun_path(), "-n", "1", *rank, ":", "-n", "1", *rank, "--set", f"data.train={other}"]
    res = subprocess.run(cmd, env=mpi_env({"CNNCLI_CACHE_DIR": str(tmp_path / "cache")}), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error")]
    assert errors == [errors[0]] and errors[0].startswith("Error: rank 1 of 2: the data this rank read differs "
                                                          "from rank 0's"), res.stderr
    assert "Traceback" not in res.stderr


def test_data_fingerprints_tell_different_data_apart():
    import numpy as np

    from cnncli.data.dataset import Dataset
    from cnncli.errors import DataError
    from cnncli.rundata import data_fingerprint, same_data_as_rank0

    images = np.zeros((40_000, 32, 32), np.uint8)          # (more than one 16,384-image chunk)
    ds = Dataset(images, np.arange(40_000) % 3, ["a", "b", "c"])
    none = Dataset(images[:0], np.zeros(0, np.int64), ["a", "b", "c"])
    first = data_fingerprint(ds, none)
    same_data_as_rank0(data_fingerprint(Dataset(images.copy(), ds.labels.copy(), ["a", "b", "c"]), none), first)
    images[30_000, 5, 5] = 1                                # a pixel in the third chunk
    with pytest.raises(DataError, match="their pixels or labels differ"):
        same_data_as_rank0(data_fingerprint(ds, none), first)
    with pytest.raises(DataError, match="training images: 39,999 here, 40,000 on rank 0"):
        same_data_as_rank0(data_fingerprint(Dataset(images[1:], ds.labels[1:], ["a", "b", "c"]), none), first)


def test_ranks_that_run_more_threads_than_their_cores_are_noted():
    from cnncli.cores import crowded

    here, there = ("h", (0, 1)), ("other", (0, 1))
    assert crowded([(here, 1), (here, 1)], 2) is None                      # one thread a core
    assert crowded([(here, 2), (there, 2)], 2) is None                     # another host's threads
    assert crowded([(here, 2), (("h", (2, 3)), 2)], 2) is None              # bound ranks: their own cores
    note = crowded([(here, 2), (here, 2)], 2)
    assert note == ("2 rank(s) run 4 threads on 2 core(s) here, so threads take turns on the cores and every step "
                    "waits for them; train.threads 1 (or 0: the cores shared out) runs one a core")
    # more ranks than cores: no thread count helps, and the note does not ask for the one the ranks run
    assert crowded([(here, 1)] * 3, 2) == ("3 rank(s) run 3 threads on 2 core(s) here, so threads take turns on the "
                                           "cores and every step waits for them; at most 2 rank(s) here, with "
                                           "train.threads 1, run one a core")


def test_mpirun_with_more_threads_than_cores_notes_it_once(data, tmp_path):
    require_mpi()
    cores = len(os.sched_getaffinity(0))
    # (--bind-to none: both ranks on every core, whatever mpirun's default binding on this machine)
    res = cnn_mpi(2, ["train", "--set", f"data.train={data[1]}", "--set", "train.epochs=1",
                      "--set", "train.batch_size=16", "--set", f"train.threads={cores}",
                      "--out", tmp_path / "run", "--no-report", "-q"], tmp_path, mpirun_args=("--bind-to", "none"))
    assert res.returncode == 0, res.stderr
    notes = [ln for ln in res.stderr.splitlines() if "threads take turns" in ln]
    assert notes == [f"note: 2 rank(s) run {2 * cores} threads on {cores} core(s) here, so threads take turns on the "
                     f"cores and every step waits for them; train.threads {max(1, cores // 2)} (or 0: the cores "
                     "shared out) runs one a core"], res.stderr


@pytest.mark.parametrize("key, mine, first", [("optim.lr", "0.0001", "0.001"), ("train.batch_size", "32", "16")])
def test_ranks_whose_configs_differ_stop_with_one_line_naming_the_key(data, tmp_path, key, mine, first):
    # a host whose config copy is out of step: another rate trained on without a word, another batch
    # size a traceback mid-step and MPI_Abort; the threads and the folders' paths may differ
    require_mpi()
    tmp, folder = data
    cfg = write_config(tmp_path / "c.yaml", folder, tmp_path / "run", epochs=1, batch_size=16)
    rank = [sys.executable, "-m", "cnncli", "train", "--config", str(cfg), "-q", "--no-report",
            "--set", "optim.lr=0.001"]
    cmd = [mpirun_path(), "-n", "1", *rank, "--set", "train.threads=1", ":",
           "-n", "1", *rank, "--set", f"{key}={mine}", "--set", "train.threads=2", "--out", tmp_path / "own"]
    res = subprocess.run(list(map(str, cmd)), env=mpi_env({"CNNCLI_CACHE_DIR": str(tmp_path / "cache")}),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error")]
    assert errors == [f"Error: rank 1 of 2: the config this rank read differs from rank 0's ({key}: {mine} here, "
                      f"{first} on rank 0): every rank must run the same config (a copy out of step on this host, "
                      "or another command line?)"], res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists() and not (tmp_path / "own").exists()


def test_config_values_leave_out_what_a_rank_may_set_on_its_own():
    from cnncli.config import load_config_text
    from cnncli.errors import ConfigError
    from cnncli.rankcheck import config_values, same_config_as_rank0

    base = load_config_text("data: {train: a}\n")
    own = load_config_text("data: {train: b, cache: false}\ntrain: {threads: 3}\nout: elsewhere\n")
    values = config_values(base)
    assert values["train.early_stopping.patience"] == base["train"]["early_stopping"]["patience"]
    assert "out" not in values and "train.threads" not in values and "data.train" not in values
    same_config_as_rank0(config_values(own), values)
    with pytest.raises(ConfigError, match=r"\(train.seed: 1 here, 0 on rank 0\)"):
        same_config_as_rank0(config_values(load_config_text("data: {train: a}\ntrain: {seed: 1}\n")), values)


def test_ranks_that_resume_different_checkpoints_stop_with_one_line(data, tmp_path):
    # a host whose copy of the run folder is out of step (no shared file system): the ranks' loops then
    # ran different step counts (a hang in a collective) or trained from different weights without a word
    require_mpi()
    tmp, folder = data
    cfg = write_config(tmp_path / "c.yaml", folder, tmp_path / "run", epochs=1, batch_size=16)
    assert run_cli(["train", "--config", cfg, "-q", "--no-report"], tmp_path, timeout=300).returncode == 0
    shutil.copytree(tmp_path / "run", tmp_path / "stale")
    res = run_cli(["train", "--resume", tmp_path / "run", "--set", "train.epochs=2", "-q", "--no-report"], tmp_path,
                  timeout=300)
    assert res.returncode == 0, res.stderr
    before = (tmp_path / "run" / "last.npz").read_bytes()
    steps = [int(metrics_rows(tmp_path / r)[-1].split(",")[1]) for r in ("stale", "run")]   # (the last epoch's)
    rank = [sys.executable, "-m", "cnncli", "train", "--set", "train.epochs=3", "-q", "--no-report", "--resume"]
    cmd = [mpirun_path(), "-n", "1", *rank, tmp_path / "run", ":", "-n", "1", *rank, tmp_path / "stale"]
    proc = subprocess.Popen(list(map(str, cmd)), env=mpi_env({"CNNCLI_CACHE_DIR": str(tmp_path / "cache")}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = communicate_or_kill(proc, 120)
    assert proc.returncode == 1, err
    errors = [ln for ln in err.splitlines() if ln.startswith("Error")]
    assert errors == [f"Error: rank 1 of 2: the checkpoint this rank resumes differs from rank 0's (step {steps[0]} "
                      f"(epoch 1) here, {steps[1]} (epoch 2) on rank 0): every rank must read the same file (on "
                      "several machines, a shared file system; a copy out of step here?)"], err
    assert "Traceback" not in err and (tmp_path / "run" / "last.npz").read_bytes() == before


def test_ranks_whose_init_from_files_differ_stop_with_one_line(data, tmp_path):
    # train.init_from at the same path on every host, a copy out of step on one: the ranks started from
    # different weights and trained on without a word (the path itself may differ: a rank's own folder)
    require_mpi()
    import numpy as np

    tmp, folder = data
    cfg = write_config(tmp_path / "c.yaml", folder, tmp_path / "first", epochs=1, batch_size=16)
    assert run_cli(["train", "--config", cfg, "-q", "--no-report"], tmp_path, timeout=300).returncode == 0
    for host in ("a", "b"):
        (tmp_path / host).mkdir()
        shutil.copy(tmp_path / "first" / "last.npz", tmp_path / host / "w.npz")
    with np.load(tmp_path / "b" / "w.npz") as z:
        arrays = {k: z[k] for k in z.files}
    name = next(k for k in arrays if k.startswith("params/"))
    arrays[name] = arrays[name] * 2
    np.savez(tmp_path / "b" / "w.npz", **arrays)
    rank = [sys.executable, "-m", "cnncli", "train", "--config", cfg, "-q", "--no-report", "--out", tmp_path / "run",
            "--set", "train.init_from=w.npz"]
    cmd = [mpirun_path(), "-n", "1", "--wdir", tmp_path / "a", *rank, ":", "-n", "1", "--wdir", tmp_path / "b", *rank]
    res = subprocess.run(list(map(str, cmd)), env=mpi_env({"CNNCLI_CACHE_DIR": str(tmp_path / "cache")}),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error")]
    assert errors == ["Error: rank 1 of 2: train.init_from: the checkpoint this rank read differs from rank 0's (its "
                      "arrays differ): every rank must read the same file (on several machines, a shared file "
                      "system; a copy out of step here?)"], res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()


def test_a_config_error_the_trainer_finds_on_every_rank_is_printed_once(data, tmp_path):
    # train.class_weight is checked against the classes as the trainer starts: every rank printed it,
    # named "rank r of K", and the job ended in MPI_Abort's block
    require_mpi()
    tmp, folder = data
    res = cnn_mpi(2, ["train", "--set", f"data.train={folder}", "--set", "train.epochs=1", "--set",
                      "train.batch_size=16", "--set", "train.class_weight={zzz: 2}", "--out", tmp_path / "run",
                      "-q", "--no-report"], tmp_path)
    assert res.returncode == 2, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and errors[0].startswith("Error: train.class_weight: 'zzz' is not a training class"), \
        res.stderr
    assert "MPI_ABORT" not in res.stderr and not (tmp_path / "run").exists()
