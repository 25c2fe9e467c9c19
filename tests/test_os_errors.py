"""File-system faults where cnn writes (a full disk, a read-only file system, permission denied, a used-up
quota, a name too long): one line naming the file, in plain words (atomic.why_unwritten), no traceback,
and the earlier file whole. The errors are injected, except a name too long, which is real."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from cnncli import atomic
from cnncli.atomic import why_unwritten, write_atomic
from e2e_util import invoke, make_folder, private_cache, write_config  # noqa: F401

FULL = "no space left on the device: free some space, or write elsewhere"


def _limit(folder) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _too_long(tmp_path, extra: int = 45) -> tuple[str, int]:
    """A name `extra` longer than the file system's limit here, and that limit."""
    limit = _limit(tmp_path)
    if limit > 4000:
        pytest.skip(f"this file system allows names of {limit} bytes")
    return "a" * (limit + extra), limit


@pytest.mark.parametrize("code, words, bare", [
    (errno.ENOSPC, FULL, "no space left on the device"),
    (errno.EROFS, "the file system is read-only: write elsewhere", "the file system is read-only"),
    (errno.EACCES, "permission denied: write where you may, or change the folder's permissions", "permission denied"),
    (getattr(errno, "EDQUOT", None), "the disk quota is used up: free some space, or ask for a larger quota",
     "the disk quota is used up"),
    (errno.EIO, "the disk or network share failed (input/output error): check it, or write elsewhere",
     "the disk or network share failed (input/output error)"),
])
def test_each_fault_is_said_in_plain_words_with_what_to_do(tmp_path, code, words, bare):
    if code is None:
        pytest.skip("no EDQUOT here")
    err = OSError(code, os.strerror(code))
    assert why_unwritten(err, tmp_path / "f") == words
    assert why_unwritten(err, tmp_path / "f", todo=False) == bare


def test_a_name_too_long_says_which_name_its_length_and_the_limit(tmp_path):
    # (it said "[Errno 36] File name too long: '/tmp/.../.aaaa....tmp-123-ab12'", the temporary name)
    name, limit = _too_long(tmp_path)
    target = tmp_path / name
    with pytest.raises(OSError) as info:
        write_atomic(target, lambda f: f.write(b"x"))
    assert info.value.filename == str(target)                      # the target, not the temporary name
    assert why_unwritten(info.value, target) == (f"the name 'aaaaaaaaaaaaaaaaaaaa...' is {limit + 45} characters "
                                                 f"long, more than the {limit} this file system allows: choose a "
                                                 "shorter name")
    assert os.listdir(tmp_path) == []


def test_a_name_within_the_limit_but_not_with_the_temporary_name_says_so(tmp_path):
    limit = _limit(tmp_path)
    if limit > 4000:
        pytest.skip(f"this file system allows names of {limit} bytes")
    target = tmp_path / ("b" * (limit - 5))                        # (a safe save writes .NAME.tmp-PID-HEX first)
    with pytest.raises(OSError) as info:
        write_atomic(target, lambda f: f.write(b"x"))
    assert why_unwritten(info.value, target) == (
        f"the name 'bbbbbbbbbbbbbbbbbbbb...' is {limit - 5} characters long: with the {atomic.TMP_EXTRA} a safe "
        f"save's temporary name adds, more than the {limit} this file system allows: choose a shorter name")


def test_a_link_to_nothing_on_the_way_is_said_so_not_called_a_file(tmp_path):
    # (train --out LINK/run said "LINK is a file, not a folder", report "(File exists)", predict --csv "(No such
    # file or directory)")
    from cnncli.errors import CnnError
    from cnncli.runfolder import new_run_dir

    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    why = f"{link} is a link to {tmp_path / 'gone'}, which does not exist"
    for code, path in ((errno.EEXIST, link / "run"), (errno.EEXIST, link), (errno.ENOENT, link / "p.csv"),
                       (errno.ENOTDIR, link / "run" / ".claimed")):
        assert why_unwritten(OSError(code, os.strerror(code)), path) == why
    with pytest.raises(OSError) as info:
        write_atomic(link / "p.csv", lambda f: f.write(b"x"))
    assert why_unwritten(info.value, link / "p.csv") == why
    with pytest.raises(CnnError) as err:
        new_run_dir(str(link / "run"))
    assert str(err.value) == f"{link / 'run'}: cannot create the run folder ({why})"
    assert why_unwritten(OSError(errno.ENOENT, "No such file or directory"), tmp_path / "none" / "p.csv") == \
        "No such file or directory"                     # (a missing folder: the OS's words, as before)


def test_a_folder_where_a_checkpoint_or_run_file_should_be_is_not_called_an_unchanged_previous_file(tmp_path):
    # (it said "dirc/last.npz: cannot save the checkpoint (Is a directory); the previous file there is unchanged")
    import numpy as np

    from cnncli import checkpoint, runfolder
    from cnncli.errors import CheckpointError, CnnError

    for name in ("last.npz", "metrics.csv"):
        (tmp_path / name).mkdir()
    with pytest.raises(CheckpointError) as err:
        checkpoint.save(tmp_path / "last.npz", {"a": np.zeros(2)}, {})
    assert str(err.value) == (f"{tmp_path / 'last.npz'}: cannot save the checkpoint (a folder of that name is in the "
                              "way: move it away, or write elsewhere); nothing was written")
    with pytest.raises(CnnError) as err:
        runfolder.write_metrics(tmp_path, [])
    assert str(err.value) == (f"{tmp_path / 'metrics.csv'}: cannot be written (a folder of that name is in the way: "
                              "move it away, or write elsewhere); nothing was written")


def test_a_write_error_that_names_no_file_names_the_target(tmp_path):
    # (np.savez's ENOSPC, from f.write, named no file: an uncaught one said "[Errno 28] No space left on device")
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError) as info:
        write_atomic(tmp_path / "m.csv", full)
    assert info.value.filename == str(tmp_path / "m.csv")
    assert atomic.os_error_line(info.value) == f"{tmp_path / 'm.csv'}: {FULL}"


def test_an_uncaught_os_error_is_one_plain_line_on_one_rank_or_many(tmp_path):
    from cnncli.cli_common import UserError, user_errors
    from cnncli.distributed import _line

    @user_errors
    def quota():
        raise OSError(errno.EACCES, "Permission denied", str(tmp_path / "x.json"))
    with pytest.raises(UserError) as err:
        quota()
    assert err.value.format_message() == f"{tmp_path / 'x.json'}: permission denied"   # (a read's, maybe: no advice)
    assert _line(OSError(errno.ENOSPC, "No space left on device", "f.csv")) == (f"f.csv: {FULL}", 1, "Error: ")


def _fail_on(monkeypatch, module, name: str, after: int = 0, code: int = errno.ENOSPC):
    """module.write_atomic raises OSError(code) (ENOSPC) for files called `name` after `after` good writes of it."""
    real, seen = module.write_atomic, []

    def write(path, fn, text=False):
        if Path(path).name == name:
            seen.append(path)
            if len(seen) > after:
                def half(f):
                    f.write(b"half" if not text else "half")
                    raise OSError(code, os.strerror(code))
                return real(path, half, text)
        return real(path, fn, text)
    monkeypatch.setattr(module, "write_atomic", write)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oserr")
    data = make_folder(tmp / "data", per_class=6, odd_files=False)
    res = invoke(["train", "--config", write_config(tmp / "c.yaml", data, tmp / "run", epochs=1), "-q",
                  "--no-report"])
    assert res.exit_code == 0, res.output
    return tmp / "run", data


def test_metrics_csv_that_cannot_be_saved_mid_run_stops_the_run_with_one_line(tmp_path, monkeypatch):
    # (it printed "Error: [Errno 28] No space left on device: '.../.metrics.csv.tmp-...'")
    from cnncli import runfolder
    from cnncli.checkpoint import load_meta

    _fail_on(monkeypatch, runfolder, "metrics.csv", after=1)
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    run = tmp_path / "run"
    res = invoke(["train", "--config", write_config(tmp_path / "c.yaml", data, run, epochs=3), "-q", "--no-report"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr.count("Error:") == 1 and res.stderr.endswith(
        f"Error: {run / 'metrics.csv'}: cannot be written ({FULL}); the previous file there is unchanged; once there "
        f"is room, go on from last.npz: cnn train --resume {run}\n"), res.stderr
    assert len((run / "metrics.csv").read_text().splitlines()) == 2              # header, epoch 1: whole
    assert load_meta(run / "last.npz")["epoch"] == 1 and not list(run.glob(".*.tmp-*"))


def test_a_checkpoint_a_read_only_folder_refuses_says_go_on_elsewhere_not_once_there_is_room(tmp_path, monkeypatch):
    # (it said "...(the file system is read-only: write elsewhere); ...; once there is room, go on from last.npz")
    from cnncli import checkpoint

    _fail_on(monkeypatch, checkpoint, "last.npz", after=1, code=errno.EROFS)
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    run, other, whole = tmp_path / "run", tmp_path / "other", tmp_path / "whole"
    res = invoke(["train", "--config", write_config(tmp_path / "c.yaml", data, run, epochs=3), "-q", "--no-report"])
    assert res.exit_code == 1 and res.stderr.count("Error:") == 1 and "Traceback" not in res.output
    assert res.stderr.endswith(
        f"Error: {run / 'last.npz'}: cannot save the checkpoint (the file system is read-only: write elsewhere); the "
        f"previous file there is unchanged; once the folder can be written, go on from last.npz: cnn train --resume "
        f"{run}; or now in another: cnn train --resume {run} --out DIR\n"), res.stderr
    monkeypatch.undo()
    assert invoke(["train", "--resume", run, "--out", other, "-q", "--no-report"]).exit_code == 0
    assert invoke(["train", "--config", tmp_path / "c.yaml", "--out", whole, "-q", "--no-report"]).exit_code == 0
    (a, _), (b, _) = checkpoint.load(other / "last.npz"), checkpoint.load(whole / "last.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)      # the uninterrupted run's bits


def test_a_new_run_whose_config_yaml_cannot_be_saved_leaves_no_folder(tmp_path, monkeypatch):
    # (the folder stayed, holding its .claimed marker)
    from cnncli import runfolder

    _fail_on(monkeypatch, runfolder, "config.yaml")
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    run = tmp_path / "run"
    res = invoke(["train", "--config", write_config(tmp_path / "c.yaml", data, run, epochs=1), "-q", "--no-report"])
    assert res.exit_code == 1 and res.stderr.endswith(f"Error: {run / 'config.yaml'}: cannot be written ({FULL}); "
                                                      "nothing was written\n"), res.stderr
    assert not run.exists()


@pytest.mark.parametrize("name, best", [("best.npz", True), ("last.npz", True), ("last.npz", False)])
def test_a_new_run_whose_first_checkpoint_cannot_be_saved_gives_its_folder_back(tmp_path, monkeypatch, name, best):
    # (the folder stayed with config.yaml (and metrics.csv), nothing to resume, and the same command
    # trained in run-2 once there was room). best=False: epoch 1 saved no best.npz (a non-finite
    # validation loss does so), and wrote metrics.csv
    from cnncli import checkpoint
    from cnncli.trainer import Trainer

    _fail_on(monkeypatch, checkpoint, name)
    if not best:
        monkeypatch.setattr(Trainer, "save_best", lambda self: None)
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", data, run, epochs=2)     # (TensorBoard events on, the default)
    res = invoke(["train", "--config", cfg, "-q", "--no-report"])
    assert res.exit_code == 1 and res.stderr.count("Error:") == 1, res.stderr
    if name == "best.npz" or not best:
        assert res.stderr.endswith(f"Error: {run / name}: cannot save the checkpoint ({FULL}); nothing was written\n")
        assert not run.exists()
    else:                                                   # (best.npz saved: the folder and its files stay)
        assert sorted(p.name for p in run.iterdir() if not p.name.startswith("events.")) == [
            ".claimed", "best.npz", "config.yaml", "metrics.csv"]
    monkeypatch.undo()
    res = invoke(["train", "--config", cfg, "-q", "--no-report"])
    assert res.exit_code == 0 and res.stdout == f"{tmp_path / 'run-2' if best and name == 'last.npz' else run}\n"


def test_test_metrics_json_a_full_disk_refuses_says_the_run_is_saved_and_how_to_test_it(tmp_path, monkeypatch):
    # (it said "Error: .../test_metrics.json: no space left on the device: free some space, or write elsewhere")
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", data, run, epochs=1)
    config.write_text(config.read_text().replace("data:\n", f"data:\n  test: {data}\n"))
    _fail_on(monkeypatch, atomic, "test_metrics.json")
    res = invoke(["train", "--config", config, "-q", "--no-report"])
    assert res.exit_code == 1 and res.stderr.count("Error:") == 1 and "Traceback" not in res.output
    assert res.stderr.endswith(f"Error: {run / 'test_metrics.json'}: cannot be written (no space left on the device); "
                               f"the run's checkpoints are saved: once it can be, cnn train --resume {run} runs the "
                               "test\n"), res.stderr
    assert not (run / "test_metrics.json").exists() and not list(run.glob(".*.tmp-*"))
    monkeypatch.undo()
    res = invoke(["train", "--resume", run, "-q", "--no-report"])
    assert res.exit_code == 0 and (run / "test_metrics.json").is_file(), res.output


def test_a_cv_whose_config_yaml_or_summary_a_full_disk_refuses_leaves_no_folder_or_says_how_to_go_on(tmp_path,
                                                                                                    monkeypatch):
    # (config.yaml: "Error: .../cv/config.yaml: no space left on the device: ..." and the folder with its .claimed
    # stayed; cv.json: the same bare line, not that the folds are saved and cnn cv --resume writes it)
    from cnncli import runfolder

    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    config, cv = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1), tmp_path / "cv"
    with monkeypatch.context() as m:
        _fail_on(m, runfolder, "config.yaml")
        res = invoke(["cv", "--config", config, "--folds", "2", "--out", cv, "-q"])
    assert res.exit_code == 1 and res.stderr == (f"Error: {cv / 'config.yaml'}: cannot be written ({FULL}); nothing "
                                                 "was written\n"), res.stderr
    assert not cv.exists()
    with monkeypatch.context() as m:
        _fail_on(m, runfolder, "cv.json")
        res = invoke(["cv", "--config", config, "--folds", "2", "--out", cv, "-q"])
    assert res.exit_code == 1 and res.stderr.count("Error:") == 1 and "Traceback" not in res.output
    assert res.stderr.endswith(f"Error: {cv / 'cv.json'}: cannot be written ({FULL}); nothing was written; the folds "
                               f"are saved: once it can be written, cnn cv --resume {cv} writes it\n"), res.stderr
    res = invoke(["cv", "--resume", cv, "-q"])
    assert res.exit_code == 0 and (cv / "cv.json").is_file() and not list(cv.glob(".*.tmp-*")), res.output


def test_a_resume_whose_config_yaml_cannot_be_saved_says_so_and_keeps_it(run, monkeypatch):
    # (config.yaml was written in place: a full disk left it half-written)
    from cnncli import runfolder

    run_dir, _ = run
    before = (run_dir / "config.yaml").read_bytes()
    _fail_on(monkeypatch, runfolder, "config.yaml")
    res = invoke(["train", "--resume", run_dir, "--set", "train.epochs=2", "-q", "--no-report"])
    assert res.exit_code == 1 and res.stderr.count("Error:") == 1 and "Traceback" not in res.output
    assert res.stderr.endswith(f"Error: {run_dir / 'config.yaml'}: cannot be written ({FULL}); the previous file "
                               "there is unchanged\n"), res.stderr
    assert (run_dir / "config.yaml").read_bytes() == before and not list(run_dir.glob(".*.tmp-*"))


def test_predict_csv_export_and_report_under_a_name_too_long_say_which_name(run, tmp_path):
    # (export and report printed "Error: [Errno 36] File name too long: '...'"; predict "(File name too long)")
    run_dir, data = run
    name, limit = _too_long(tmp_path, extra=0)

    def too_long(path):
        return f"the name 'aaaaaaaaaaaaaaaaaaaa...' is {len(path.name)} characters long, more than the {limit} " \
               "this file system allows: choose a shorter name"
    out = tmp_path / f"{name}.csv"
    res = invoke(["predict", "--checkpoint", run_dir, data, "--csv", out])
    assert res.exit_code == 1 and res.stderr == f"Error: {out}: cannot write the predictions ({too_long(out)})\n"
    out = tmp_path / f"{name}.onnx"
    res = invoke(["export", "--checkpoint", run_dir, "--out", out])
    assert res.exit_code == 1 and res.stderr == f"Error: {out}: {too_long(out)}\n", res.stderr
    out = tmp_path / f"{name}-report"
    res = invoke(["report", run_dir, "--out", out])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and res.stderr.startswith(f"Error: {out}")
    assert too_long(out) in res.stderr and "Traceback" not in res.output
    assert os.listdir(tmp_path) == []


def test_predict_csv_and_export_on_a_full_disk_keep_the_earlier_file_and_say_so(run, tmp_path, monkeypatch):
    # (they said "(No space left on device)", not that the earlier file is whole)
    from cnncli import export

    run_dir, data = run
    csv, model = tmp_path / "p.csv", tmp_path / "m.onnx"
    csv.write_text("earlier predictions\n")
    model.write_bytes(b"earlier model")
    _fail_on(monkeypatch, atomic, "p.csv")
    _fail_on(monkeypatch, export, "m.onnx")
    res = invoke(["predict", "--checkpoint", run_dir, data, "--csv", csv])
    assert res.exit_code == 1 and res.stderr == (f"Error: {csv}: cannot write the predictions ({FULL}); the previous "
                                                 "file there is unchanged\n"), res.stderr
    res = invoke(["export", "--checkpoint", run_dir, "--out", model])
    assert res.exit_code == 1 and res.stderr == (f"Error: {model}: cannot write ({FULL}); the previous file there is "
                                                 "unchanged\n"), res.stderr
    assert csv.read_text() == "earlier predictions\n" and model.read_bytes() == b"earlier model"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "p.csv"]


def test_a_run_folder_whose_marker_a_full_disk_left_empty_is_not_left_behind(tmp_path, monkeypatch):
    # (a full disk lets open create .claimed, then fails its write: the folder and the empty marker stayed)
    from cnncli import runfolder
    from cnncli.errors import CnnError

    def full(folder):
        (folder / ".claimed").touch()
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(runfolder, "claim_marker", full)
    with pytest.raises(CnnError) as err:
        runfolder.new_run_dir(str(tmp_path / "run"))
    assert str(err.value) == f"{tmp_path / 'run'}: cannot create the run folder ({FULL})"
    assert os.listdir(tmp_path) == []


def test_a_report_a_full_disk_stops_leaves_no_folder_of_some_pictures(run, tmp_path, monkeypatch):
    # (the new report folder stayed, holding the pictures written before the disk filled)
    from cnncli import report

    run_dir, _ = run
    real, calls = report.write_atomic, []

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    def write(path, fn, text=False):
        calls.append(path)
        real(path, fn if len(calls) == 1 else full, text)
    monkeypatch.setattr(report, "write_atomic", write)
    res = invoke(["report", run_dir, "--out", tmp_path / "rep"])
    assert res.exit_code == 1 and res.stderr == f"Error: {calls[1]}: cannot write the report ({FULL})\n", res.stderr
    assert len(calls) == 2 and not (tmp_path / "rep").exists()


def test_a_dataset_cache_folder_it_cannot_make_is_a_note_in_plain_words(tmp_path, monkeypatch):
    # (the note said "(.../aaaa...: File name too long)")
    from cnncli import data

    name, limit = _too_long(tmp_path)
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / name))
    root = make_folder(tmp_path / "data", per_class=3, odd_files=False)
    ds, _ = data.load_folder(root, progress=False)
    assert [n for n in ds.notes if "dataset cache" in n] == [         # (what to do: the note's own advice)
        f"note: the dataset cache could not be written ({tmp_path / name}: the name 'aaaaaaaaaaaaaaaaaaaa...' is "
        f"{limit + 45} characters long, more than the {limit} this file system allows), so the next run decodes "
        f"{root} again; CNNCLI_CACHE_DIR names another folder for it"], ds.notes


@pytest.fixture
def full_disk(tmp_path):
    """A tiny tmpfs, filled up (a real full disk: root and mount(8) needed, else the test is skipped)."""
    import shutil
    import subprocess

    mnt = tmp_path / "fs"
    mnt.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as err:
            assert err.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_resume_into_a_new_folder_on_a_full_disk_is_one_line_and_leaves_nothing(run, full_disk):
    # (it said "Error: [Errno 28] No space left on device", from the pid written into the folder's lock file)
    run_dir, _ = run
    res = invoke(["train", "--resume", run_dir, "--set", "train.epochs=2", "--out", full_disk / "run2", "-q",
                  "--no-report"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr.endswith(f"Error: {full_disk / 'run2' / 'best.npz'}: cannot copy the run's best.npz there "
                               f"({FULL}); nothing was trained yet\n"), res.stderr
    assert os.listdir(full_disk) == ["filler"]
    res = invoke(["cv", "--config", run_dir / "config.yaml", "--folds", "2", "--out", full_disk / "cv", "-q"])
    assert res.exit_code == 1 and res.stderr.endswith(f"Error: {full_disk / 'cv'}: cannot create the run folder "
                                                      f"({FULL})\n"), res.stderr
    assert os.listdir(full_disk) == ["filler"]                     # (an empty .claimed kept the folder)
