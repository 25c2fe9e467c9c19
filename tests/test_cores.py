"""cores.py: the cores a process may use, its CPU affinity capped by a cgroup CPU quota, read from a
made-up /proc/self and cgroup tree in tmp_path (v2, v1, nested groups, container mounts, garbage);
then that train.threads 0, the decode workers and numba's thread count follow it."""

import os
import subprocess
import sys

import pytest

from cnncli import cores


def _proc(tmp_path, cgroup_lines, mount_lines):
    """A fake /proc/self: its cgroup and mountinfo files."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text("".join(line + "\n" for line in cgroup_lines))
    (proc / "mountinfo").write_text("".join(line + "\n" for line in mount_lines))
    return str(proc)


def _write(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)


def _v2_mount(point, root="/"):
    return f"41 31 0:38 {root} {point} rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw"


def _v1_mount(point, root="/", options="rw,cpu,cpuacct"):
    return f"32 31 0:29 {root} {point} rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup {options}"


def test_a_v2_quota_in_a_container_counts_its_cpus_rounded_up(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, cpu__max="150000 100000\n")
    proc = _proc(tmp_path, ["0::/"], [_v2_mount(cg)])
    assert cores.cpu_limit(proc) == 1.5
    assert cores.usable_cores(proc) == min(cores.affinity_cores(), 2)


def test_no_quota_leaves_the_affinity(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, cpu__max="max 100000\n")
    proc = _proc(tmp_path, ["0::/"], [_v2_mount(cg)])
    assert cores.cpu_limit(proc) is None
    assert cores.usable_cores(proc) == cores.affinity_cores()


def test_the_lowest_limit_of_the_group_and_its_parents_counts(tmp_path):
    cg = tmp_path / "cg"
    _write(cg / "a", cpu__max="100000 100000\n")          # the parent: 1 CPU
    _write(cg / "a" / "b", cpu__max="400000 100000\n")    # the process's own group: 4
    proc = _proc(tmp_path, ["0::/a/b"], [_v2_mount(cg)])
    assert cores.cpu_limit(proc) == 1.0
    assert cores.usable_cores(proc) == 1


def test_v1_cpu_controller_quota_and_period(tmp_path):
    cpu = tmp_path / "cpu,cpuacct"
    _write(cpu / "user.slice", cpu__cfs_quota_us="250000\n", cpu__cfs_period_us="100000\n")
    _write(cpu, cpu__cfs_quota_us="-1\n", cpu__cfs_period_us="100000\n")
    proc = _proc(tmp_path, ["4:cpu,cpuacct:/user.slice", "3:memory:/user.slice", "0::/"],
                 [_v1_mount(cpu), _v1_mount(tmp_path / "memory", options="rw,memory")])
    assert cores.cpu_limit(proc) == 2.5
    assert cores.usable_cores(proc) == min(cores.affinity_cores(), 3)


def test_v1_unlimited_is_no_limit(tmp_path):
    cpu = tmp_path / "cpu"
    _write(cpu, cpu__cfs_quota_us="-1\n", cpu__cfs_period_us="100000\n")
    assert cores.cpu_limit(_proc(tmp_path, ["1:cpu:/"], [_v1_mount(cpu, options="rw,cpu")])) is None


def test_a_container_mount_of_its_own_group_reads_the_mount_point(tmp_path):
    # Docker without a cgroup namespace: /proc/self/cgroup names the host's path of the container's
    # group, and the mount's root is that same path
    cpu = tmp_path / "cpu"
    _write(cpu, cpu__cfs_quota_us="50000\n", cpu__cfs_period_us="100000\n")
    proc = _proc(tmp_path, ["5:cpu,cpuacct:/docker/0123abcd"], [_v1_mount(cpu, root="/docker/0123abcd")])
    assert cores.cpu_limit(proc) == 0.5
    assert cores.usable_cores(proc) == 1


def test_a_mount_point_with_a_space_is_unescaped(tmp_path):
    cg = tmp_path / "c g"
    _write(cg, cpu__max="100000 100000\n")
    proc = _proc(tmp_path, ["0::/"], [_v2_mount(str(cg).replace(" ", "\\040"))])
    assert cores.cpu_limit(proc) == 1.0


@pytest.mark.parametrize("cpu_max, cgroup, mount", [
    ("abc def\n", ["0::/"], None),                     # unreadable numbers
    ("0 100000\n", ["0::/"], None),                    # a zero quota
    ("100000 100000\n", ["garbage"], None),           # a cgroup line without its fields
    ("100000 100000\n", ["0::/"], "1 2 3 - cgroup2"),  # a mountinfo line cut short
])
def test_garbage_reads_as_no_limit(tmp_path, cpu_max, cgroup, mount):
    cg = tmp_path / "cg"
    _write(cg, cpu__max=cpu_max)
    proc = _proc(tmp_path, cgroup, [mount or _v2_mount(cg)])
    assert cores.cpu_limit(proc) is None


def test_no_proc_files_no_limit(tmp_path):
    assert cores.cpu_limit(str(tmp_path / "nowhere")) is None
    assert cores.usable_cores(str(tmp_path / "nowhere")) == cores.affinity_cores()


def test_train_threads_0_and_the_decode_workers_follow_the_quota(monkeypatch):
    from cnncli import distributed
    from cnncli.data import decodemany

    monkeypatch.setattr(cores, "cpu_limit", lambda proc="/proc/self": 1.0)
    assert distributed.rank_threads(distributed.Comm(), 0) == 1
    assert distributed.rank_threads(distributed.Comm(), 3) == 3          # a count given is used as given
    assert decodemany.default_workers() == 1


@pytest.mark.skipif(cores.affinity_cores() < 2, reason="needs 2 or more CPUs to cap")
@pytest.mark.parametrize("user_value", [None, "2"])
def test_numba_starts_no_more_threads_than_the_quota_allows(user_value):
    # in a fresh process: cnncli.kernels sets NUMBA_NUM_THREADS before numba is imported, unless the
    # user set it
    code = ("import cnncli.cores as c; c.cpu_limit = lambda proc='/proc/self': 1.0\n"
            "import cnncli.kernels, numba; print(numba.config.NUMBA_NUM_THREADS)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    if user_value is not None:
        env["NUMBA_NUM_THREADS"] = user_value
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == (1 if user_value is None else int(user_value))


@pytest.fixture
def numba_threads():
    """The numba thread count put back after the test (a run sets it)."""
    import numba

    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


def test_the_run_header_names_the_quota_behind_its_thread_count(tmp_path, monkeypatch, numba_threads):
    from e2e_util import invoke, make_folder

    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cores, "cpu_limit", lambda proc="/proc/self": 1.0)
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    common = ["--set", f"data.train={data}", "--set", "train.epochs=1", "--no-report", "-q"]
    res = invoke(["train", *common, "--out", tmp_path / "run"])
    capped = cores.affinity_cores() > 1
    assert res.exit_code == 0, res.output
    assert ("1 thread(s) (a cgroup CPU quota of 1 CPU); setup" in res.stderr) == capped, res.stderr
    res = invoke(["train", *common, "--set", "train.threads=1", "--out", tmp_path / "given"])
    assert res.exit_code == 0 and "1 thread(s); setup" in res.stderr, res.stderr   # a count given: no quota named
