"""cnncli.distributed: the fixed reduction tree, the one-process Comm, and real `mpirun` jobs whose
sums must equal the one-process tree bit for bit (skipped only when MPI cannot start at all)."""

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from cnncli import distributed as D
from cnncli.errors import CnnError, ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpi_tree_job import shard_parts  # noqa: E402
from mpi_util import communicate_or_kill, require_mpi, run_mpi  # noqa: E402

JOB = Path(__file__).resolve().parent / "mpi_tree_job.py"


def reference_tree(rows):
    """The tree written recursively: pair neighbours, carry an odd last one, repeat."""
    if len(rows) == 1:
        return rows[0]
    paired = [rows[i] + rows[i + 1] for i in range(0, len(rows) - 1, 2)]
    if len(rows) % 2:
        paired.append(rows[-1])
    return reference_tree(paired)


@pytest.mark.parametrize("s", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tree_sum_is_the_recursive_tree_bitwise(s, dtype):
    parts = shard_parts(s, 257, 0, s).astype(dtype)
    before = parts.copy()
    got = D.tree_sum(parts)
    assert got.dtype == dtype and got.shape == (257,)
    assert got.tobytes() == reference_tree(list(parts)).tobytes()
    assert parts.tobytes() == before.tobytes()          # the input is not touched
    out = np.empty(257, dtype)
    assert D.tree_sum(parts, out=out) is out and out.tobytes() == got.tobytes()


def test_tree_sum_order_differs_from_left_to_right():
    """float32 with wide magnitudes: the tree's bits differ from a running sum's, and from a tree
    over the rows in another order -- so the tests above would notice a changed order."""
    parts = shard_parts(9, 4096, 0, 9)
    tree = D.tree_sum(parts)
    running = parts[0].copy()
    for row in parts[1:]:
        running += row
    assert tree.tobytes() != running.tobytes()
    assert tree.tobytes() != D.tree_sum(parts[::-1].copy()).tobytes()
    np.testing.assert_allclose(tree, parts.astype(np.float64).sum(0), rtol=1e-4, atol=1e-2)


def test_tree_sum_rejects_bad_shapes():
    with pytest.raises(ValueError):
        D.tree_sum(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        D.tree_sum(np.zeros(3))


def test_shards_and_blocks():
    assert [D.shard_count(n) for n in (1, 8, 9, 64, 65)] == [1, 1, 2, 8, 9]
    assert D.shard_slice(2, 20) == slice(16, 20)
    for s in (1, 3, 8, 9, 17):
        for k in (1, 2, 3, 4):
            blocks = [D.block_of(r, k, s) for r in range(k)]
            assert blocks[0][0] == 0 and blocks[-1][1] == s
            assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
            assert max(h - l for l, h in blocks) - min(h - l for l, h in blocks) <= 1
    assert D.block_of(1, 4, 8) == (2, 4)


def test_check_ranks():
    D.check_ranks(64, 1)
    D.check_ranks(64, 8)
    D.check_ranks(60, 2)      # 8 shards, the last short
    with pytest.raises(ConfigError, match=r"train.batch_size: 64 makes 8 shards .* 3 MPI ranks .*use 1, 2, 4 or 8 "
                                          r"ranks, or a batch_size whose shard count 3 divides, e\.g\. 48 or 72$"):
        D.check_ranks(64, 3)
    with pytest.raises(ConfigError, match=r"4 makes 1 shard of up to 8 images .*use 1 rank, or .* e\.g\. 16$"):
        D.check_ranks(4, 2)
    with pytest.raises(ConfigError, match=r"use 1, 2, 4 or 8 ranks \(the resumed run's batch size cannot change\)$"):
        D.check_ranks(64, 3, resume=True)     # (a resume refuses another batch size: none is offered)
    for batch in (48, 72, 16):                # the batch sizes those messages suggest do split
        D.check_ranks(batch, 3 if batch != 16 else 2)


def test_single_process_comm():
    comm = D.get_comm(environ={})
    assert type(comm) is D.Comm and (comm.rank, comm.size, comm.is_main) == (0, 1, True)
    assert comm.shard_block(5) == (0, 5)
    parts = shard_parts(5, 100, 0, 5)
    assert comm.sum_shards(parts, 5).tobytes() == D.tree_sum(parts).tobytes()
    assert comm.sum_shards_columns(parts, 5).tobytes() == D.tree_sum(parts).tobytes()
    with pytest.raises(ValueError, match="expected \\(5, M\\)"):
        comm.sum_shards(parts[:4], 5)
    rows = np.arange(6).reshape(3, 2)
    assert np.array_equal(comm.gather_rows(rows), rows)
    assert comm.any_flag(True) is True and comm.any_flag(False) is False
    assert comm.bcast({"a": 1}) == {"a": 1}
    comm.barrier()


def test_launch_detection_and_missing_mpi4py(monkeypatch):
    assert not D.launched_by_mpi({})
    assert D.launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "2"}) and D.launched_by_mpi({"PMI_SIZE": "4"})
    monkeypatch.setitem(sys.modules, "mpi4py", None)       # import mpi4py -> ImportError
    with pytest.raises(CnnError, match=r"^this process was started by an MPI launcher .*pip install 'cnncli\[mpi\]'$"):
        D.get_comm(environ={"PMIX_RANK": "0"})



class _Alone:
    """An MpiComm that MPI started alone (a singleton: srun without PMI, another MPI's mpiexec)."""
    size, rank = 1, 0


def test_a_process_started_as_one_of_several_that_mpi_leaves_alone_is_refused(monkeypatch):
    started = r"^{0}={1}: {1} processes were started together, but MPI connects this one to no other, "
    monkeypatch.setattr(D, "MpiComm", _Alone)
    with pytest.raises(CnnError, match=started.format("PMI_SIZE", 2)):
        D.get_comm(environ={"PMI_SIZE": "2", "PMI_RANK": "1"})                      # MPICH's mpiexec
    with pytest.raises(CnnError, match=started.format("OMPI_COMM_WORLD_SIZE", 3)):
        D.get_comm(environ={"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "0"})
    # a batch script of an allocation of 4 tasks, mpirun -n 1 on 3 nodes: fine
    for env in ({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"},
                {"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0", "SLURM_STEP_NUM_TASKS": "3"}):
        assert D.get_comm(environ=env).size == 1


def test_srun_tasks_without_mpi_are_runs_of_their_own(tmp_path, monkeypatch):
    """srun -n 4 sh -c 'cnn train --config c$SLURM_PROCID.yaml' (a sweep, one run a task): Slurm's task
    variables make no rank; every task trains, evaluates and prints as a process alone."""
    from e2e_util import run_cli

    env = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "7"}
    assert D.launcher_rank(env) is None and D.get_comm(environ=env).size == 1
    assert D.launcher_rank({"OMPI_COMM_WORLD_RANK": "2", "SLURM_PROCID": "0"}) == 2   # mpirun in sbatch
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    res = run_cli(["--version"], tmp_path, timeout=60)                 # (task 1 prints, as task 0 does)
    assert res.returncode == 0 and "version" in res.stdout, res.stdout


CASES = [1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 32]


def expected_hashes(m):
    return {s: hashlib.sha256(D.tree_sum(shard_parts(s, m, 0, s)).tobytes()).hexdigest() for s in CASES}


@pytest.mark.parametrize("k", [2, 4])
def test_mpirun_sum_shards_equals_one_process_bitwise(k):
    require_mpi()
    m = 1531
    res = run_mpi(k, ["python", JOB, m, *CASES], timeout=180)
    assert res.returncode == 0, res.stderr
    lines = [ln.split() for ln in res.stdout.splitlines()]
    tree = [ln for ln in lines if ln[0] in ("tree", "cols")]
    assert len(tree) == 2 * k * len(CASES)
    want = expected_hashes(m)
    for name, rank, s, lo, hi, sha in tree:
        assert (int(lo), int(hi)) == D.block_of(int(rank), k, int(s))
        assert sha == want[int(s)], f"{name} on rank {rank}, {s} shards"
    # gather_rows: rank r gave r+1 rows of value r; every rank sees all of them in rank order
    rows = [ln[2] for ln in lines if ln[0] == "rows"]
    assert rows == [",".join(str(r) for r in range(k) for _ in range(r + 1))] * k
    # any_flag: the last rank raised it at step 3, so every rank stopped at step 3
    assert sorted(ln[1:] for ln in lines if ln[0] == "flag") == [[str(r), "3"] for r in range(k)]


FAULT_JOB = Path(__file__).resolve().parent / "mpi_fault_job.py"


def start_fault_job(out, k=2, extra_env=None):
    """mpirun -n K mpi_fault_job.py OUT in the background; returns (process, {rank: pid}) once all are up."""
    import subprocess
    import time

    from mpi_util import mpi_env, mpirun_path

    proc = subprocess.Popen([mpirun_path(), "-n", str(k), sys.executable, str(FAULT_JOB), str(out)],
                            env=mpi_env(extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids, deadline = {}, time.monotonic() + 120
    while len(pids) < k and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("ready"):
            _, rank, pid = line.split()
            pids[int(rank)] = int(pid)
        elif not line and proc.poll() is not None:
            break
    assert len(pids) == k, proc.stderr.read()
    while not (out / "last.txt").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    return proc, pids


def test_kill_9_of_one_rank_ends_the_job_and_keeps_rank0_file(tmp_path):
    import os
    import signal
    import time

    require_mpi()
    proc, pids = start_fault_job(tmp_path)
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.monotonic()
    out, err = communicate_or_kill(proc, 20)
    assert time.monotonic() - t0 < 20
    assert proc.returncode != 0
    assert f"process rank 1 with PID {pids[1]}" in " ".join(err.split()) and "signal 9" in err
    text = (tmp_path / "last.txt").read_text()
    assert text.startswith("step ") and int(text.split()[1]) >= 1      # intact, never half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.txt"]


def test_sigusr1_to_mpirun_stops_every_rank_at_one_step_with_a_save(tmp_path):
    import signal

    require_mpi()
    proc, _ = start_fault_job(tmp_path, extra_env={"STOP_DELAY": "2"})     # a save slower than 0.5 s
    proc.send_signal(signal.SIGUSR1)
    out, err = communicate_or_kill(proc, 60)
    assert proc.returncode == 0, err
    step = (tmp_path / "last.txt").read_text().split()
    assert step[0] == "step" and step[2:] == ["stopped", "by", "SIGUSR1"]
    assert f"rank 0 saved step {step[1]} and stops (SIGUSR1)" in out


def test_config_error_on_every_rank_is_printed_once(tmp_path):
    require_mpi()
    res = run_mpi(2, ["python", FAULT_JOB, tmp_path, "config-error"], timeout=120)
    assert res.returncode == 2
    ours = [ln for ln in res.stderr.splitlines() if "train.batch_size" in ln]
    assert ours == ["Error: cfg.yaml: train.batch_size: 64 is 8 shard(s) ... (on every rank)"]
    assert res.stdout == ""
