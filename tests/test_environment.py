"""The environment around `cnn`: variables numba and the terminal read, configs and paths written on Windows,
and a second process at a run's folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from e2e_util import make_folder, private_cache, run_cli, write_config  # noqa: F401


def test_numba_disable_jit_is_one_line_naming_the_variable_not_a_traceback(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "run", epochs=1)
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")
    res = run_cli(["train", "--config", cfg, "-q", "--no-report"], tmp_path, timeout=300)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: NUMBA_DISABLE_JIT=1 is set"), res.stderr
    assert "unset it" in lines[-1]


def test_the_readmes_first_command_outside_the_repository_says_where_the_demo_config_is(tmp_path):
    # an installed package has no configs/ folder: the README's first command, run in another folder
    res = run_cli(["train", "--config", "configs/demo.yaml"], tmp_path, cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip()
    assert line.startswith("Error: configs/demo.yaml: no such config file (configs/demo.yaml is in the repository")
    assert "--set data.demo=true --set data.train=data/demo/train" in line and "\n" not in line


def test_a_run_folder_name_stdout_cannot_encode_is_escaped_not_a_traceback_after_training(tmp_path, monkeypatch):
    # a Windows console or a redirected file there writes cp1252, which has no 'ł'
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "runs" / "łódź", epochs=1)
    monkeypatch.setenv("PYTHONIOENCODING", "cp1252")
    res = run_cli(["train", "--config", cfg, "-q", "--no-report"], tmp_path, timeout=600,
                  encoding="cp1252")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout.splitlines()[-1] == str(tmp_path / "runs" / "\\u0142ód\\u017a")   # (ó is in cp1252)
    assert (tmp_path / "runs" / "łódź" / "best.npz").is_file()


def test_a_windows_path_in_double_quotes_in_a_config_says_how_to_write_it(tmp_path):
    from cnncli.config import load_config
    from cnncli.errors import ConfigError

    path = tmp_path / "win.yaml"
    hint = "(in double quotes a backslash starts an escape such as \\n: write a path with / or in single quotes)"
    path.write_bytes(b'data:\r\n  train: "C:\\Users\\me\\data"\r\n')      # (\U: a 32-bit escape's start)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:2: could not parse YAML: did not find expected hexdecimal number while " \
                             f"parsing a quoted scalar {hint}"
    path.write_bytes(b'data:\r\n  train: "D:\\data\\cats"\r\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).endswith(f"found unknown escape character while parsing a quoted scalar {hint}")


def test_a_relative_windows_path_yaml_read_as_a_newline_says_so(tmp_path):
    # "sub\new" in double quotes is 'sub', a newline and 'ew': the error line shows it as typed
    (tmp_path / "sub" / "new").mkdir(parents=True)
    (tmp_path / "win.yaml").write_bytes(b'data:\r\n  train: "sub\\new"\r\n')
    res = run_cli(["train", "--config", "win.yaml"], tmp_path, cwd=tmp_path, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().endswith("does not exist (it holds a newline, shown as \\n: in double quotes YAML "
                                       "reads a backslash and a letter as one character; write the path with / or "
                                       "in single quotes)"), res.stderr


@pytest.mark.parametrize("variable, value, line", [
    ("NUMBA_NUM_THREADS", "0", "Error: NUMBA_NUM_THREADS=0: not a number of threads (a whole number, 1 or more): give "
                               "one, or unset it to use every core"),
    ("NUMBA_NUM_THREADS", "two", "Error: NUMBA_NUM_THREADS=two: not a number of threads"),
    ("NUMBA_THREADING_LAYER", "bogus", "Error: NUMBA_THREADING_LAYER=bogus: numba could not start its threads: The "
                                       "threading layer requested 'bogus' is unknown to Numba; or unset "
                                       "NUMBA_THREADING_LAYER"),
])
def test_a_numba_thread_setting_it_cannot_use_is_one_line_naming_the_variable(tmp_path, monkeypatch, variable, value,
                                                                               line):
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "run", epochs=1)
    monkeypatch.setenv(variable, value)
    res = run_cli(["train", "--config", cfg, "-q", "--no-report"], tmp_path, timeout=600)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(line), res.stderr


def test_a_windows_out_path_is_refused_not_made_as_one_folder_named_with_a_backslash(tmp_path):
    # out: runs\demo from a config written on Windows made the folder 'runs\demo' beside runs/
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    (tmp_path / "win.yaml").write_bytes(f"data:\r\n  train: {data}\r\nout: runs\\demo\r\n".encode())
    res = run_cli(["train", "--config", "win.yaml", "-q", "--no-report"], tmp_path, cwd=tmp_path, timeout=600)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == ("Error: runs\\demo: a Windows path: folders are separated by / here (no run folder "
                                  "is named with a backslash); write `out` with /")
    assert not (tmp_path / "runs\\demo").exists()


def test_a_checkpoint_given_as_a_windows_path_names_the_path_with_slashes(tmp_path):
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "runs" / "demo", epochs=1)
    assert run_cli(["train", "--config", cfg, "-q", "--no-report"], tmp_path, timeout=600).returncode == 0
    hint = "(a Windows path: folders are separated by / here; runs/demo{} exists)"
    for args, end in ((["eval", "runs\\demo"], ""), (["train", "--resume", "runs\\demo"], ""),
                      (["predict", "runs\\demo\\best.npz", data], "/best.npz")):
        res = run_cli(args, tmp_path, cwd=tmp_path, timeout=120)
        assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.strip().splitlines()[-1].endswith(hint.format(end)), (args, res.stderr)


def test_a_resume_while_the_first_run_still_starts_says_so_not_that_it_stopped(tmp_path):
    # the first run holds its folder from its creation; before its first save (decoding, compiling)
    # a resume said "its run stopped before its first save ... start it again"
    from cnncli import runlock

    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("data:\n  train: data\n")
    (run / ".claimed").write_text("")
    runlock.hold(run)
    try:
        for args in (["train", "--resume", run], ["eval", run]):
            res = run_cli(args, tmp_path, timeout=120)
            assert res.returncode == 1, res.stderr
            assert res.stderr.strip().splitlines()[-1] == (
                f"Error: {run}: run folder has no {'last.npz' if args[0] == 'train' else 'best.npz or last.npz'} "
                f"yet: another cnn process (pid {os.getpid()}) is starting this run now (it saves after its first "
                "steps)"), res.stderr
    finally:
        runlock.let_go(run)


def test_numba_opt_below_its_default_is_said_with_the_compile_line_not_a_silent_slowdown(tmp_path, monkeypatch):
    # NUMBA_OPT=0 made the demo's epochs about 20x slower (767 img/s for 16,000), with no line saying why
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "run", epochs=1)
    monkeypatch.setenv("NUMBA_OPT", "0")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))     # (a cold cache: the kernels compile)
    monkeypatch.setenv("CNNCLI_COMPILE_WORKERS", "0")
    res = run_cli(["train", "--config", cfg, "--no-report"], tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr
    assert ("note: NUMBA_OPT=0 compiles these kernels with less optimization than numba's default 3: training runs "
            "several times slower (about 20x at 0); unset it") in res.stderr.splitlines(), res.stderr


_STAMP = """
import inspect
from cnncli.kernels import activation, cachestamp
fn = activation.elu_forward_into.py_func
print(cachestamp.PackageStampLocator.from_function(fn, inspect.getfile(fn)).get_source_stamp())
"""


def test_kernels_numba_opt_0_compiled_are_not_the_cache_entries_of_a_default_run(tmp_path):
    # a default run after one under NUMBA_OPT=0 loaded its unoptimized kernels from the cache (its epochs
    # ran at 17,000-21,000 img/s for 28,000-31,000)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_OPT"}
    stamps = [subprocess.run([sys.executable, "-c", _STAMP], env={**env, **extra}, capture_output=True, text=True,
                             timeout=120) for extra in ({}, {"NUMBA_OPT": "0"}, {"NUMBA_OPT": "3"})]
    assert all(s.returncode == 0 for s in stamps), [s.stderr for s in stamps]
    default, opt0, opt3 = (s.stdout for s in stamps)
    assert default == opt3 and opt0 != default
