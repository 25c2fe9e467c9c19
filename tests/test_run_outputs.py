"""What a report and cnn info say of a run (a helper's pass found it said none of it): which epoch's weights
best.npz holds and that early stopping ended the run, a divergence, the test's result; a run without
validation images says so instead of an empty table; a second report's pictures are its own (an
earlier report's PNGs of other data are removed); --out into another run's folder is refused.
Each test failed against the old code."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cnncli.cli import cli
from cnncli.errors import CnnError
from e2e_util import make_folder, write_config

pytest.importorskip("matplotlib", reason="the report is an optional extra (cnncli[plots])")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("reportrun")
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNCLI_CACHE_DIR", str(base / "cache"))
    data = make_folder(base / "data", per_class=10, odd_files=False)
    early = base / "early"
    res = invoke("train", "--config", write_config(base / "c.yaml", data, early, epochs=6), "-q", "--no-report",
                 "--set", "train.early_stopping.patience=1", "--set", "train.early_stopping.min_delta=10",
                 "--set", f"data.test={data}")          # (no epoch after the first improves by 10: it stops at 2)
    assert res.exit_code == 0, res.output
    noval = base / "noval"
    res = invoke("train", "--config", write_config(base / "c2.yaml", data, noval, epochs=1), "-q", "--no-report",
                 "--set", "data.val_split=0")
    assert res.exit_code == 0, res.output
    yield base, data, early, noval
    mp.undo()


def test_the_report_says_which_epoch_best_holds_how_the_run_ended_and_the_test(runs):
    from cnncli.report import write_report

    _, _, early, _ = runs
    (early / "diverged.txt").write_text("the loss became non-finite at epoch 3\n")   # (as runfolder writes it)
    text = write_report(early).read_text(encoding="utf-8")
    run = text.split("<h2>Run</h2>")[1].split("</pre>")[0]
    assert "trained     2 of 6 epochs" in run, run
    assert "(the best, best.npz)" in run or "restored by early stopping" in run, run
    assert "stopped early" in run, run
    assert "diverged    the loss became non-finite at epoch 3" in run
    assert "test        " in run and "accuracy" in run


def test_a_run_without_validation_says_so_and_a_second_report_keeps_only_its_pictures(runs):
    from cnncli.report import write_report

    _, data, _, noval = runs
    write_report(noval, data_dir=data)
    assert (noval / "report" / "confusion.png").is_file()
    text = write_report(noval).read_text(encoding="utf-8")
    assert "<p>none: the run has no validation images" in text
    assert sorted(p.name for p in (noval / "report").glob("*.png")) == ["curves.png", "filters.png"]


def test_out_into_another_runs_folder_is_refused(runs):
    from cnncli.report import write_report

    _, _, early, noval = runs
    with pytest.raises(CnnError, match="holds another run"):
        write_report(early, out_dir=noval)
    assert not (noval / "report.html").exists()


def test_info_of_a_run_folder_names_its_divergence(runs):
    import json

    _, _, early, _ = runs
    (early / "diverged.txt").write_text("the loss became non-finite at epoch 3\n")
    text = invoke("info", early).output
    assert "\ndiverged    the loss became non-finite at epoch 3\n\nlayer" in text, text
    assert json.loads(invoke("info", early, "--json").output)["diverged"] == "the loss became non-finite at epoch 3"


def test_the_start_line_shows_the_class_weights_a_mapping_sets():
    from cnncli.train import _weights_text

    classes = [f"c{i}" for i in range(8)] + ["star", "plus"]
    weights = [1.0] * 8 + [4.0, 0.25]
    assert _weights_text({"star": 4, "plus": 0.25}, weights, classes) == \
        "; class weights as set (star 4, plus 0.25; the others 1)"


def test_the_start_line_says_when_the_images_came_from_the_dataset_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    said = []
    for k in range(2):
        res = invoke("train", "--config", write_config(tmp_path / "c.yaml", data, tmp_path / f"run{k}", epochs=1),
                     "-q", "--no-report")
        assert res.exit_code == 0, res.output
        said.append([ln for ln in res.output.splitlines() if ln.startswith("Training on")][0])
    assert not said[0].endswith("(the images from the dataset cache)")   # decoded, then cached
    assert said[1].endswith("(the images from the dataset cache)")


def test_eval_of_the_validation_split_does_not_count_data_trains_unreadable_files(tmp_path, monkeypatch):
    # 'images 36, skipped 25': the 25 were data.train's unreadable files, none of them a validation image
    import json

    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    data = make_folder(tmp_path / "data", per_class=8)          # (with unreadable files)
    run = tmp_path / "run"
    res = invoke("train", "--config", write_config(tmp_path / "c.yaml", data, run, epochs=1), "-q", "--no-report")
    assert res.exit_code == 0 and "skipped 2 unusable file(s)" in res.output, res.output
    got = json.loads(invoke("eval", run, "--json").stdout)
    assert got["skipped"] == 0 and got["skipped_files"] == [] and got["num_images"] > 0


def test_report_out_keeps_pictures_it_did_not_draw_in_a_folder_without_a_report(runs, tmp_path):
    # --out into the user's own folder: a confusion.png there is theirs, not an earlier report's
    from cnncli.report import write_report

    _, _, _, noval = runs
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "confusion.png").write_bytes(b"mine")
    write_report(noval, out_dir=mine)
    assert (mine / "confusion.png").read_bytes() == b"mine"


def test_report_out_into_another_runs_report_folder_is_refused(runs):
    from cnncli.report import write_report

    _, _, early, noval = runs
    with pytest.raises(CnnError, match="lies in another run"):
        write_report(early, out_dir=noval / "report")


def test_the_early_stopping_line_names_min_delta(tmp_path, monkeypatch):
    # with min_delta, epochs whose loss was lower 'did not improve' and best.npz stayed older: say why
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    res = invoke("train", "--config", write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=4), "-q",
                 "--no-report", "--set", "train.early_stopping={patience: 1, min_delta: 10}")
    assert res.exit_code == 0, res.output
    assert "did not improve by more than train.early_stopping.min_delta=10 for 1 epoch(s)" in res.output, res.output


def test_train_epochs_auto_says_when_it_met_its_bound(tmp_path, monkeypatch):
    # a few hundred images per class always got 400 epochs with no word that 400 is the cap
    from cnncli import options
    from cnncli.train import _auto_text

    class T:
        def __init__(self, n, batch, epochs):
            self.train_ds, self.batch_size, self.epochs = type("D", (), {"labels": [0] * n})(), batch, epochs
    assert _auto_text(T(720, 64, 400)) == (" (train.epochs=auto for this training set: at most 400 epochs, 12 "
                                           "step(s) each; 10,000 steps would take 833)")
    assert _auto_text(T(64_000, 64, 10)) == (" (train.epochs=auto for this training set: about 10,000 steps of 1000 "
                                             "per epoch)")
    assert options.AUTO_STEPS == 10_000 and options.AUTO_EPOCHS == (10, 400)
