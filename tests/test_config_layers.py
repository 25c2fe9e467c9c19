"""Config files laid over one another (--config repeated, --config over a resumed run's config), what
--config refuses (a run folder, a checkpoint, "", -), relative paths meant from the config's folder,
whole numbers and dates as users write them, the notes on settings that do nothing, cnn cv's folds
from data.folds. Each test fails on the behaviour before it (the config replaced, not layered; Click's
usage block; a silent default of 5 folds...)."""

from __future__ import annotations

import csv
import os

import pytest
from click.testing import CliRunner

from cnncli import config
from cnncli.cli import cli
from cnncli.errors import ConfigError
from e2e_util import make_folder, write_config


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _error(fn, *args, **kwargs):
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("layers") / "data", per_class=12, odd_files=False)


# -- layers ---------------------------------------------------------------------------------------

def test_a_later_config_file_overrides_the_same_keys_and_keeps_the_others(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("train:\n  epochs: 7\n  batch_size: 16\noptim:\n  lr: 0.5\n")
    b.write_text("optim:\n  lr: 0.02\ntrain:\n  epochs: 3\n")
    cfg = config.load_config([a, b], ["train.epochs=4"])
    assert (cfg["train"]["epochs"], cfg["train"]["batch_size"], cfg["optim"]["lr"]) == (4, 16, 0.02)
    assert config.load_config([a])["train"]["epochs"] == 7 and config.load_config(a)["optim"]["lr"] == 0.5
    # an error names the file it is in
    b.write_text("train:\n  epocs: 3\n")
    assert _error(config.load_config, [a, b]).startswith(f"{b}:2: train.epocs")


def test_repeated_config_option_layers_the_files(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("train:\n  epochs: 7\n")
    b.write_text("optim:\n  lr: 0.02\n")
    res = invoke("train", "--config", a, "--config", b, "--print-config")
    assert res.exit_code == 0, res.output
    printed = config.load_config_text(res.output)
    assert printed["train"]["epochs"] == 7 and printed["optim"]["lr"] == 0.02


def test_resume_lays_the_config_file_over_the_runs_saved_config(data, tmp_path):
    run = tmp_path / "run"
    res = invoke("train", "--config", write_config(tmp_path / "c.yaml", data, run, epochs=1), "-q", "--no-report")
    assert res.exit_code == 0, res.output
    more = tmp_path / "more.yaml"
    more.write_text("train:\n  epochs: 2\n")      # no data.train, and no batch size (the run's is 8)
    res = invoke("train", "--resume", run, "--config", more, "-q", "--no-report")
    assert res.exit_code == 0, res.output
    with open(run / "metrics.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    saved = config.load_config(run / "config.yaml")
    assert saved["train"]["batch_size"] == 8 and saved["train"]["epochs"] == 2


# -- what --config is not --------------------------------------------------------------------------

@pytest.mark.parametrize("kind, needles", [
    ("run folder", ["is a run folder, not a config file", "--resume", "--init-from"]),
    ("folder", ["is a directory, not a config file"]),
    ("checkpoint", ["is a checkpoint (a .npz archive), not a YAML config", "--resume"]),
    ("empty", ["--config: the path is empty"]),
    ("stdin", ["--config -: a config is read from a file, not from standard input"]),
])
def test_config_that_is_not_a_config_file_is_one_line(tmp_path, kind, needles):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.npz").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    given = {"run folder": run, "folder": tmp_path, "checkpoint": run / "last.npz", "empty": "", "stdin": "-"}[kind]
    res = invoke("train", "--config", given)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def _project(tmp_path, monkeypatch):
    """(project folder with imgs/a and c.yaml naming 'imgs', the working folder elsewhere, c.yaml)."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "imgs" / "a").mkdir(parents=True)
    elsewhere.mkdir()
    cfg = project / "c.yaml"
    cfg.write_text("data:\n  train: imgs\n")
    monkeypatch.chdir(elsewhere)
    return project, elsewhere, cfg


def test_a_relative_path_meant_from_the_configs_folder_is_refused_saying_so(tmp_path, monkeypatch):
    project, elsewhere, cfg = _project(tmp_path, monkeypatch)
    message = _error(config.load_config, cfg)
    assert message.startswith(f"{cfg}:2: data.train: 'imgs' does not exist in the working folder"), message
    assert str(project / "imgs") in message and f"run from {project}" in message
    monkeypatch.chdir(project)                   # from the config's folder: the same path, accepted
    assert config.load_config(cfg)["data"]["train"] == "imgs"
    (elsewhere / "imgs").mkdir()                 # one in the working folder too: it is the one read
    monkeypatch.chdir(elsewhere)
    assert config.load_config(cfg)["data"]["train"] == "imgs"


def test_a_relative_path_that_a_later_layer_replaces_is_not_checked(tmp_path, monkeypatch):
    project, _, cfg = _project(tmp_path, monkeypatch)
    later = tmp_path / "later.yaml"
    later.write_text(f"data:\n  train: {project / 'imgs'}\n")
    assert config.load_config([cfg, later])["data"]["train"] == str(project / "imgs")
    assert config.load_config(cfg, [f"data.train={project}"])["data"]["train"] == str(project)
    assert "does not exist in the working folder" in _error(config.load_config, [later, cfg])


def test_data_train_errors_name_the_key_and_an_unexpanded_variable(tmp_path):
    res = invoke("train", "--set", "data.train=$HOME_DATA/train", "-q")
    assert res.exit_code == 1, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("Error: data.train: data folder") and "$NAME" in line, line


# -- values as users write them ---------------------------------------------------------------------

@pytest.mark.parametrize("text, epochs", [('"2"', 2), ("1e2", 100), ("2.0", 2), ("'3'", 3)])
def test_integer_keys_take_whole_numbers_written_as_text_or_floats(text, epochs):
    assert config.load_config_text(f"train:\n  epochs: {text}\n")["train"]["epochs"] == epochs
    assert config.load_config_text("", [f"train.batch_size={text}"])["train"]["batch_size"] == epochs


@pytest.mark.parametrize("text", ["2.5", '"2.5"', "true", '"two"'])
def test_integer_keys_refuse_what_is_not_a_whole_number(text):
    assert "expected an integer" in _error(config.load_config_text, f"train:\n  batch_size: {text}\n")


def test_wordings_dates_documents_case_and_sections():
    message = _error(config.load_config_text, "data:\n  train: 2024-01-01\n", source="c.yaml")
    assert message == "c.yaml:2: data.train: expected a string, got date 2024-01-01 (quote it in YAML)"
    assert config.parse_override("data.train=2024-01-01") == ("data.train", "2024-01-01")   # (--set: as typed)
    message = _error(config.load_config_text, "train:\n  epochs: 2\n---\n", source="c.yaml")
    assert message.startswith("c.yaml:3: could not parse YAML: the text holds more than one YAML document")
    assert "begun on" not in message
    assert "did you mean 'optim.lr'? (keys are case-sensitive)" in _error(config.load_config_text, "", ["OPTIM.LR=1"])
    message = _error(config.load_config_text, "augment:\n  hflip: 0.5\n")
    assert "did you mean 'augment.flip.horizontal' or 'augment.flip.vertical'?" in message
    assert "did you mean 'train'?" in _error(config.load_config_text, "trian:\n  epochs: 3\n")


def test_a_section_put_inside_another_a_case_slip_and_quoted_true_get_hints():
    # (a helper's portability pass: 'data.augment: unknown key' said nothing of where augment goes; PAD, AUTO,
    # and a quoted 'true' got no hint)
    message = _error(config.load_config_text, "data:\n  augment:\n    flip: true\n", source="c.yaml")
    assert message == "c.yaml:2: data.augment: unknown key; augment is a section of its own, at the top level " \
                      "(not inside data)"
    for given, hint in (("data.resize=PAD", "did you mean 'pad'?"), ("optim.name=Adam", "did you mean 'adam'?"),
                        ("train.epochs=AUTO", "did you mean 'auto'?"),
                        ("data.normalize='true'", "(quoted, it is text: write true without quotes)")):
        assert _error(config.load_config_text, "", [given]).endswith(hint), given



def test_a_choice_yaml_read_as_a_boolean_says_so():
    # (resize: no said "must be one of pad, stretch, crop, got False", nothing of YAML's booleans)
    assert _error(config.load_config_text, "data:\n  resize: no\n").endswith(
        "got false (YAML reads an unquoted no or off as false)")
    assert _error(config.load_config_text, "model:\n  batchnorm: off\n").endswith(
        "did you mean 'none'? (YAML reads an unquoted no or off as false)")


def test_gamma_above_one_is_taken_with_a_note():
    # (refusing it would refuse to resume a run saved with it: its config is validated again)
    cfg = config.load_config_text("", ["optim.gamma=2", "optim.schedule=step", "train.epochs=20"])
    assert config.setting_notes(cfg) == ["optim.gamma is 2: each 'drop' of the step schedule raises the rate"]
    assert config.setting_notes(config.load_config_text("", ["optim.gamma=1", "optim.schedule=step",
                                                              "train.epochs=20"])) == []


@pytest.mark.parametrize("sets, needle", [
    (["optim.schedule=step", "train.epochs=2"], "optim.step_size=10 epochs, but train.epochs is 2: the rate never"),
    (["optim.schedule=plateau", "train.early_stopping.patience=3"], "early stopping ends the run before"),
    (["optim.schedule=step", "train.epochs=11"], None),
    (["optim.schedule=plateau", "train.early_stopping.patience=6"], None),
    (["optim.schedule=plateau", "train.early_stopping.patience=0"], None),
])
def test_settings_that_do_nothing_get_a_note(sets, needle):
    notes = config.setting_notes(config.load_config_text("", sets))
    assert notes == [] if needle is None else (len(notes) == 1 and needle in notes[0]), notes


def test_the_note_is_printed_when_training_starts(data, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1)
    res = invoke("train", "--config", cfg, "--set", "optim.schedule=step", "-q", "--no-report")
    assert res.exit_code == 0, res.output
    assert "note: optim.schedule=step multiplies the rate by optim.gamma every optim.step_size=10" in res.output


def test_cv_takes_its_folds_from_data_folds(data, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1)
    res = invoke("cv", "--config", cfg, "--set", "data.folds=2", "-q", "--out",
                 tmp_path / "cv")
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path / "cv")).count("fold-3") == 0
    assert {"fold-1", "fold-2"} <= set(os.listdir(tmp_path / "cv"))


def test_out_with_a_tilde_is_the_home_folder(data, tmp_path, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    cfg = write_config(tmp_path / "c.yaml", data, "~/runs/one", epochs=1)
    res = invoke("train", "--config", cfg, "-q", "--no-report")
    assert res.exit_code == 0, res.output
    assert (home / "runs" / "one" / "last.npz").is_file() and not (work / "~").exists()


def test_numbers_written_in_other_scripts_digits_are_not_numbers():
    assert "expected an integer" in _error(config.load_config_text, 'train:\n  epochs: "\u0663"\n')
    assert "expected a number" in _error(config.load_config_text, 'optim:\n  lr: "\u0663"\n')
