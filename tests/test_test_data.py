"""data.test: the run evaluates best.npz on it once training ends (the line, test_metrics.json),
equal to what `cnn eval --data` says of the run; a wrong folder or an unknown class stops the run
before its first step, in one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from e2e_util import invoke, make_folder, private_cache  # noqa: F401


def test_the_run_ends_with_its_test_metrics(tmp_path):
    data = make_folder(tmp_path / "data", per_class=8, odd_files=False)
    test = make_folder(tmp_path / "test", per_class=4, seed=5, odd_files=False)
    shutil.rmtree(test / "bar")                                   # a test set may lack a class
    res = invoke(["train", "--set", f"data.train={data}", "--set", f"data.test={test}", "--set", "train.epochs=2",
                  "--set", "train.batch_size=8", "--out", tmp_path / "run", "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    ev = json.loads(invoke(["eval", "--checkpoint", tmp_path / "run", "--data", test, "--json"]).output)
    assert saved == ev and saved["num_images"] == 8 and saved["absent"] == ["bar"]
    assert (f"Test (8 images of {test}, best.npz): loss {ev['loss']:.4f}, accuracy {ev['accuracy']:.2%}, "
            f"macro F1 {ev['macro_f1']:.4f}") in res.output
    # cnn info says it too (the report did, cnn info did not; the final README walkthrough)
    assert f"test        8 image(s) of {test}: accuracy {ev['accuracy']:.4f}, macro F1 {ev['macro_f1']:.4f}" in \
        invoke(["info", tmp_path / "run"]).output
    assert json.loads(invoke(["info", tmp_path / "run", "--json"]).output)["test"]["accuracy"] == ev["accuracy"]
    assert json.loads(invoke(["info", tmp_path / "run" / "last.npz", "--json"]).output)["test"] is None


def test_a_wrong_test_folder_stops_before_training(tmp_path):
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    other = make_folder(tmp_path / "other", per_class=2, odd_files=False)
    (other / "disc").rename(other / "ring")
    for test, needle in ((tmp_path / "nope", f"Error: data.test: data folder {tmp_path / 'nope'}: does not exist"),
                         (other, "Error: data.test: data folder " + str(other) + ": class folder(s) ring not among "
                                 "the expected classes (bar, column, disc)")):
        res = invoke(["train", "--set", f"data.train={data}", "--set", f"data.test={test}",
                      "--out", tmp_path / "run", "-q", "--no-report"])
        assert res.exit_code == 1 and res.output.strip() == needle, res.output
        assert not (tmp_path / "run").exists()


def test_held_out_data_that_is_the_training_data_is_a_warning(tmp_path):
    data = make_folder(tmp_path / "data", per_class=4)              # (a broken file, an empty one, a .DS_Store)
    other = make_folder(tmp_path / "other", per_class=2, seed=3, odd_files=False)
    common = ["train", "--set", f"data.train={data}", "--set", "train.epochs=1", "-q", "--no-report"]
    res = invoke([*common, "--set", f"data.val={data}/", "--set", f"data.test={data}", "--out", tmp_path / "a"])
    assert res.exit_code == 0, res.output
    assert "skipped 2 unusable file(s)" in res.stderr           # each once, not once per role of the folder
    assert len((tmp_path / "a" / "skipped.txt").read_text().splitlines()) == 2
    assert f"warning: data.val is data.train ({data}): the run validates on its training images, so val acc " \
           "flatters and best.npz is picked on them" in res.stderr
    assert f"warning: data.test is data.train ({data}): the test measures training images" in res.stderr
    res = invoke([*common, "--set", f"data.val={other}", "--set", f"data.test={other}", "--out", tmp_path / "b"])
    assert res.exit_code == 0 and f"warning: data.test is data.val ({other}): best.npz was picked on these " \
        "images, so the test flatters it" in res.stderr, res.output
    res = invoke([*common, "--set", f"data.test={other}", "--out", tmp_path / "c"])
    assert res.exit_code == 0 and "warning: data." not in res.stderr, res.output


def test_a_batch_larger_than_the_training_set_and_a_resume_say_so(tmp_path):
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    res = invoke(["train", "--set", f"data.train={data}", "--set", "data.val_split=0", "--set", "train.epochs=1",
                  "--set", "train.batch_size=50", "--out", tmp_path / "run", "--no-report"])
    assert res.exit_code == 0 and "note: train.batch_size 50 is more than the 12 training images: each epoch is " \
        "one step of all of them" in res.stderr, res.output
    assert "Resuming" not in res.stderr
    res = invoke(["train", "--resume", tmp_path / "run", "--set", "train.epochs=2", "--no-report"])
    assert res.exit_code == 0 and f"Resuming from {tmp_path / 'run'}: 1 epoch(s) done\n" in res.stderr, res.output
    assert "note: train.threads" not in res.stderr
    import numba

    most = numba.config.NUMBA_NUM_THREADS                # more threads than numba may run: a note, not silence
    res = invoke(["train", "--resume", tmp_path / "run", "--set", "train.epochs=3", "--no-report", "--set",
                  f"train.threads={most + 6}"])
    assert res.exit_code == 0 and f"note: train.threads is {most + 6}, but numba runs at most {most} thread(s) in " \
        f"this process (NUMBA_NUM_THREADS; by default the cores this process may use): using {most}" \
        in res.stderr, res.output


def test_many_more_threads_than_shards_in_a_step_is_a_note(tmp_path, monkeypatch):
    import cnncli.kernels
    from cnncli.runsetup import _idle_threads

    assert _idle_threads(64, 1000, 16, 2) == ("a step of 64 images is 4 shard(s) of 8 per process: 12 of the 16 "
                                              "threads wait while its layers run; train.batch_size 256 would keep "
                                              "every thread busy")
    assert _idle_threads(64, 12, 6, 1).startswith("a step of 12 images is 2 shard(s) of 8: 4 of the 6 threads")
    assert _idle_threads(64, 1000, 11, 1) is None and _idle_threads(8, 1000, 2, 1) is None
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    common = ["train", "--set", f"data.train={data}", "--set", "train.epochs=1", "--set", "train.batch_size=8",
              "--no-report", "-q"]
    res = invoke([*common, "--out", tmp_path / "a"])
    assert res.exit_code == 0 and "threads wait" not in res.stderr, res.output
    monkeypatch.setattr(cnncli.kernels, "set_threads", lambda n: 6)       # (the run's count as on a 6-core machine)
    res = invoke([*common, "--out", tmp_path / "b"])
    assert res.exit_code == 0 and "note: a step of 8 images is 1 shard(s) of 8: 5 of the 6 threads wait while " \
        "its layers run; train.batch_size 48 would keep every thread busy" in res.stderr, res.output


def test_unusable_test_files_are_named_listed_and_refused_under_strict(tmp_path):
    # (data.test's unusable files were counted only in test_metrics.json, and --strict did not look at them)
    data = make_folder(tmp_path / "data", per_class=8, odd_files=False)
    test = make_folder(tmp_path / "test", per_class=4, seed=5)         # (a broken file, an empty one, a .DS_Store)
    common = ["train", "--set", f"data.train={data}", "--set", f"data.test={test}", "--set", "train.epochs=1",
              "--set", "train.batch_size=8", "-q", "--no-report"]
    res = invoke([*common, "--strict", "--out", tmp_path / "strict"])
    assert res.exit_code == 1 and res.output.startswith(f"Error: data.test: data folder {test}: 2 unusable file(s)"), \
        res.output
    assert not (tmp_path / "strict").exists()
    run = tmp_path / "run"
    res = invoke([*common, "--out", run])
    assert res.exit_code == 0, res.output
    listed = (run / "skipped.txt").read_text().splitlines()
    assert f"warning: skipped 2 unusable file(s) of data.test, listed in {run / 'skipped.txt'}:" in res.stderr
    assert len(listed) == 2 and all(line.startswith(str(test)) for line in listed), listed
    assert [p for p, _ in json.loads((run / "test_metrics.json").read_text())["skipped_files"]] == \
        [line.split("\t")[0] for line in listed]
    (run / "test_metrics.json").unlink()                               # a resume tests again: no row twice
    res = invoke(["train", "--resume", run, "-q", "--no-report"])
    assert res.exit_code == 0 and "of data.test" in res.stderr, res.output
    assert (run / "skipped.txt").read_text().splitlines() == listed
    assert all("\tdata.test: " in line for line in listed)
    for line in listed:                                                # the files mended: a new test lists none
        bad = Path(line.split("\t")[0])
        bad.unlink()
    (run / "test_metrics.json").unlink()
    res = invoke(["train", "--resume", run, "-q", "--no-report"])
    assert res.exit_code == 0 and "of data.test" not in res.stderr and not (run / "skipped.txt").exists(), res.output
