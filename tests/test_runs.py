"""`cnn runs`: every run folder below a folder (cv folds included), each row as its checkpoints and
metrics.csv say, the orders, unreadable runs as a row of their own, and no numba import.
"""

from __future__ import annotations

import csv
import json

import pytest

from cnncli.checkpoint import load as load_checkpoint, save as save_checkpoint
from e2e_util import invoke, make_folder, private_cache, run_cli_probing_numba, write_config  # noqa: F401


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    """runs/ with two plain runs (lr 0.003 and 0.0003), one fine-tuned from the first, a 2-fold cv,
    a run folder whose last.npz is garbage and a folder that is no run."""
    tmp = tmp_path_factory.mktemp("runs")
    data = make_folder(tmp / "data", per_class=10, odd_files=False)
    root = tmp / "runs"
    cfg = write_config(tmp / "cfg.yaml", data, root / "unused", epochs=3)
    for name, sets in (("fast", []), ("slow", ["--set", "optim.lr=0.0003"]),
                       ("tuned", ["--init-from", root / "fast", "--set", "train.epochs=2"])):
        res = invoke(["train", "--config", cfg, "--out", root / name, "-q", "--no-report", *sets])
        assert res.exit_code == 0, res.output
    res = invoke(["cv", "--config", cfg, "--folds", "2", "--out", root / "five-cv", "-q"])
    assert res.exit_code == 0, res.output
    (root / "broken").mkdir()
    (root / "broken" / "last.npz").write_bytes(b"not a zip")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("x")
    return tmp, root


def test_every_run_is_listed_as_its_files_say(experiments):
    tmp, root = experiments
    res = invoke(["runs", root, "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    names = [r["run"] for r in rows]
    assert names == [str(root / n) for n in ("broken", "fast", "five-cv/fold-1", "five-cv/fold-2", "slow", "tuned")]
    for row in rows:
        if row["run"].endswith("broken"):
            assert "not a checkpoint" in row["error"]
            continue
        run = root / row["run"][len(str(root)) + 1:]
        _, best = load_checkpoint(run / "best.npz")
        with open(run / "metrics.csv") as f:
            table = list(csv.DictReader(f))
        assert row["epochs"] == len(table) == row["epochs_total"]
        assert (row["best_epoch"], row["val_acc"], row["val_loss"]) == (
            best["epoch"], best["history"][-1]["val_acc"], best["history"][-1]["val_loss"])
        assert row["classes"] == 3 and row["batchnorm"] == "none" and row["optimizer"] == "adam"
    by_name = {r["run"]: r for r in rows}
    assert by_name[str(root / "tuned")]["init_from"] == str(root / "fast")
    assert by_name[str(root / "slow")]["lr"] == 0.0003 and by_name[str(root / "fast")]["init_from"] is None
    text = invoke(["runs", root]).output
    assert f"{root / 'broken'}" in text and "unreadable:" in text and str(root / "fast") in text


def test_every_row_has_every_field_a_status_and_the_test_accuracy(experiments):
    # (error rows lacked val_acc..: a script's row["val_acc"] raised KeyError; a stopped, a killed and a
    # training run looked alike; test_metrics.json's accuracy was not shown)
    import fcntl
    import shutil

    from cnncli.runs import FIELDS, format_runs

    _, root = experiments
    part = root / "part"
    shutil.copytree(root / "fast", part)
    (part / "test_metrics.json").write_text(json.dumps({"accuracy": 0.875}))
    last, meta = load_checkpoint(part / "last.npz")
    save_checkpoint(part / "last.npz", last, {**meta, "epoch": 1})
    try:
        rows = {r["run"]: r for r in json.loads(invoke(["runs", root, "--json"]).output)}
        for row in rows.values():
            assert set(FIELDS) <= set(row), row
        assert rows[str(root / "broken")]["status"] == "unreadable" and rows[str(root / "broken")]["val_acc"] is None
        assert rows[str(root / "fast")]["status"] == "finished" and rows[str(root / "fast")]["test_acc"] is None
        assert rows[str(part)]["status"] == "incomplete" and rows[str(part)]["test_acc"] == 0.875
        assert rows[str(part)]["monitor"] == "val_loss"
        info = invoke(["info", part]).output                              # (and cnn info, so the report, says so)
        assert "trained     1 of 3 epochs" in info and f"; unfinished: cnn train --resume {part} goes on" in info
        assert "unfinished" not in invoke(["info", root / "fast"]).output
        with open(part / ".claimed", "a+") as held:                       # as runlock.hold() holds it
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            row = json.loads(invoke(["runs", part, "--json"]).output)[0]
            assert row["status"] == "training"
            assert "; a process trains it now" in invoke(["info", part]).output
            text = format_runs([row])
        assert " 1/3~ " in text and "~ training now" in text and "87.50%" in text
        assert json.loads(invoke(["runs", part, "--json"]).output)[0]["status"] == "incomplete"
    finally:
        shutil.rmtree(part)


def test_orders(experiments):
    _, root = experiments
    for key, pick in (("val_loss", min), ("val_acc", max)):
        rows = json.loads(invoke(["runs", root, "--json", "--sort", key]).output)
        have = [r for r in rows if "error" not in r]
        values = [r[key] for r in have]
        assert values == sorted(values, reverse=key == "val_acc") and values[0] == pick(values)
        assert "error" in rows[-1]                                  # the unreadable run last
    rows = json.loads(invoke(["runs", root, "--json", "--sort", "time"]).output)
    times = [r["modified"] for r in rows if "error" not in r]
    assert times == sorted(times, reverse=True)


def test_names_sort_their_numbers_by_value():
    from cnncli.runs import sort_rows

    names = ["cv/fold-10", "cv/fold-2", "cv/fold-1", "cv-2/fold-1", "run", "run-10", "run-9", "Run-1"]
    got = [r["run"] for r in sort_rows([{"run": n} for n in names], "name")]
    assert got == ["Run-1", "cv-2/fold-1", "cv/fold-1", "cv/fold-2", "cv/fold-10", "run", "run-9", "run-10"]


def test_a_run_folder_itself_and_bad_roots(experiments, tmp_path):
    _, root = experiments
    rows = json.loads(invoke(["runs", root / "fast", "--json"]).output)
    assert [r["run"] for r in rows] == [str(root / "fast")]
    assert invoke(["runs", tmp_path]).output.strip() == "no run folders found"
    res = invoke(["runs", tmp_path / "nope"])
    assert res.exit_code == 1 and res.output.strip() == f"Error: {tmp_path / 'nope'}: no such folder"
    (tmp_path / "best.npz").write_bytes(b"x")                      # a file: said so, not "no such folder"
    res = invoke(["runs", tmp_path / "best.npz"])
    assert res.exit_code == 1 and res.output.strip() == \
        f"Error: {tmp_path / 'best.npz'}: is a file, not a folder of runs; `cnn info` describes a checkpoint"
    (tmp_path / "best.npz").unlink()
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "fast-link").symlink_to(root / "fast")   # one run, reached twice: one row
    rows = json.loads(invoke(["runs", root / "fast", tmp_path / "links", "--json"]).output)
    assert [r["run"] for r in rows] == [str(root / "fast")]


def test_runs_never_imports_numba(experiments, tmp_path):
    _, root = experiments
    res, imported = run_cli_probing_numba(["runs", root], tmp_path)
    assert "fold-2" in res.stdout and not imported


def test_hostile_run_metadata_shows_as_unknown(experiments, tmp_path):
    from cnncli import checkpoint

    _, root = experiments
    for name, config in (("number", 5), ("list", "- a\n- b\n"), ("broken", "train: [")):
        run = tmp_path / name
        run.mkdir()
        arrays, meta = checkpoint.load(root / "fast" / "last.npz")
        meta.pop("format_version")
        checkpoint.save(run / "last.npz", arrays, {**meta, "config": config})
    res = invoke(["runs", tmp_path, "--json"])
    assert res.exit_code == 0, res.output
    for row in json.loads(res.output):
        assert row["optimizer"] is None and row["epochs_total"] is None and row["epochs"] == 3, row


def test_a_run_without_a_checkpoint_is_a_row_saying_so(tmp_path):
    (tmp_path / "starting").mkdir()
    (tmp_path / "starting" / "config.yaml").write_text("data:\n  train: x\n")
    (tmp_path / "cv" / "fold-1").mkdir(parents=True)                 # a cv parent is no run; its fold is
    (tmp_path / "cv" / "config.yaml").write_text("data:\n  train: x\n")
    (tmp_path / "cv" / "fold-1" / "config.yaml").write_text("data:\n  train: x\n")
    rows = json.loads(invoke(["runs", tmp_path, "--json"]).output)
    assert [r["run"] for r in rows] == [str(tmp_path / "cv" / "fold-1"), str(tmp_path / "starting")]
    assert all(r["no_checkpoint"] and "no checkpoint yet" in r["error"] for r in rows)
    text = invoke(["runs", tmp_path]).output
    assert "no checkpoint yet" in text and "unreadable" not in text


def test_a_diverged_run_says_how_to_go_on_and_cnn_runs_marks_it_until_it_trains_again(tmp_path):
    data = make_folder(tmp_path / "data", per_class=8, odd_files=False)
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "unused", epochs=1)
    blown = ["--set", "optim.name=sgd", "--set", "optim.lr=1e30"]
    early, run = tmp_path / "runs" / "early", tmp_path / "runs" / "late"
    res = invoke(["train", "--config", cfg, "--out", early, "-q", "--no-report", *blown])
    # a tenth of the rate it diverged at (6.67e+29, in the warmup), not of optim.lr; the run's own config named
    assert res.exit_code == 1 and "no checkpoint was saved; try a lower optim.lr (e.g. 6.7e+28), or let " \
        f"`cnn lr-find --config {early / 'config.yaml'}` suggest one" in res.stderr
    assert res.stdout == f"{early}\n"                  # (its folder on stdout, as after a stop: RUN=$(cnn train ..))
    sgd = ["--set", "optim.name=sgd", "--set", "optim.lr=0.01"]
    assert invoke(["train", "--config", cfg, "--out", run, "-q", "--no-report", *sgd]).exit_code == 0
    res = invoke(["train", "--resume", run, "-q", "--no-report", "--set", "train.epochs=3", "--set", "optim.lr=1e30"])
    assert res.exit_code == 1 and "non-finite at epoch 2, step " in res.stderr
    assert f"the last good checkpoint is {run / 'last.npz'}; resume it at a lower rate: cnn train --resume {run} " \
           "--set optim.lr=9.3e+28" in res.stderr          # (the schedule had it below optim.lr by then)
    rows = {r["run"]: r for r in json.loads(invoke(["runs", tmp_path / "runs", "--json"]).output)}
    assert rows[str(early)]["error"].startswith("diverged before its first save: loss or gradients became "
                                                "non-finite at epoch 1, step ")
    assert rows[str(run)]["diverged"].startswith("loss or gradients became non-finite at epoch 2, step ")
    assert rows[str(run)]["epochs"] == 1 and "error" not in rows[str(run)]
    info = invoke(["info", early])                  # (it said 'stopped before its first save; start it again')
    assert info.exit_code == 1 and "its run diverged before its first save (loss or gradients became non-finite " \
        "at epoch 1, step " in info.output and "start it again at a lower optim.lr: cnn train --config " in info.output
    text = invoke(["runs", tmp_path / "runs"]).output
    assert " 1/1!" in text and "! diverged: its loss or gradients became non-finite" in text
    res = invoke(["train", "--resume", run, "-q", "--no-report", "--set", "train.epochs=2", "--set", "optim.lr=0.01"])
    assert res.exit_code == 0, res.output
    row = {r["run"]: r for r in json.loads(invoke(["runs", tmp_path / "runs", "--json"]).output)}[str(run)]
    assert row["diverged"] is None and row["epochs"] == 2 and not (run / "diverged.txt").exists()


def test_a_tiny_best_loss_stays_visible_and_aligned(experiments):
    from cnncli.runs import format_runs
    from cnncli.summary import _epoch_line

    _, root = experiments
    rows = [r for r in json.loads(invoke(["runs", root, "--json"]).output) if "error" not in r][:2]
    rows[0]["val_loss"] = 2.596e-05                     # a tiny set trained long: not 0.0000
    rows[0]["run"], rows[1]["run"] = "runs/a", "runs/b"  # names within the run column
    head, first, second = format_runs(rows).splitlines()[:3]
    assert " 2.596e-05 " in first and "0.0000" not in first
    assert head.index("val acc") + 7 == first.index("%") + 1 == second.index("%") + 1   # columns line up
    line = _epoch_line({"epoch": 313, "train_loss": 0.0022, "val_loss": 2.596e-05, "val_acc": 1.0})
    assert line == "epoch 313: train loss 0.0022, val loss 2.596e-05 acc 100.00%"


def test_run_names_in_any_script_keep_the_columns(experiments):
    from cnncli.runs import format_runs
    from cnncli.textwidth import width

    _, root = experiments
    rows = [r for r in json.loads(invoke(["runs", root, "--json"]).output) if "error" not in r][:2]
    rows[0]["run"], rows[1]["run"] = "runs/猫の実験", "runs/plain"     # 12 columns, 10 characters
    head, first, second = format_runs(rows).splitlines()[:3]
    col = width(head[:head.index("val acc")]) + 7
    assert width(first[:first.index("%") + 1]) == width(second[:second.index("%") + 1]) == col


def test_a_long_optimizer_and_rate_keep_the_columns(experiments):
    # ("momentum 0.0067", 15 characters, pushed the later columns two characters out of line)
    from cnncli.runs import format_runs

    _, root = experiments
    rows = [r for r in json.loads(invoke(["runs", root, "--json"]).output) if "error" not in r][:2]
    rows[0]["run"], rows[1]["run"] = "runs/a", "runs/b"
    rows[0]["optimizer"], rows[0]["lr"] = "momentum", 0.0067
    head, first, second = format_runs(rows).splitlines()[:3]
    assert "momentum 0.0067 " in first
    assert head.index("val acc") + 7 == first.index("%") + 1 == second.index("%") + 1


def test_runs_four_levels_down_are_found(tmp_path):
    # (runs/sweep/2026-12/lr1e-3/seed0 was 'no run folders found', and the default checkpoint missed it)
    from cnncli.runs import find_runs, newest_run
    from cnncli.predictor import save_model
    from cnncli import model

    deep = tmp_path / "runs" / "sweep" / "2026-12" / "lr1e-3" / "seed0"
    save_model(deep / "best.npz", model.Network(num_classes=3, seed=0), ["a", "b", "c"])
    assert find_runs([tmp_path / "runs"]) == [deep] and newest_run(tmp_path / "runs") == deep


def test_links_back_up_in_runs_are_read_once(tmp_path, monkeypatch):
    # (25 folders each holding up -> ..: cnn runs took 6.3 s, the folders read again through every link, ~n**4)
    import os

    from cnncli import model, runs as runs_mod
    from cnncli.predictor import save_model

    runs = tmp_path / "runs"
    save_model(runs / "real" / "best.npz", model.Network(num_classes=3, seed=0), ["a", "b", "c"])
    for i in range(25):
        (runs / f"s{i}").mkdir()
        os.symlink("..", runs / f"s{i}" / "up")
    looked, real_is_run = [], runs_mod.is_run
    monkeypatch.setattr(runs_mod, "is_run", lambda folder: looked.append(folder) or real_is_run(folder))
    assert runs_mod.find_runs([runs]) == [runs / "real"]
    assert len(looked) == 27                              # runs, real and the 25 folders: each once
    os.symlink("real", runs / "z_latest")                 # (a 'latest' link does not hide the real folder's name)
    assert runs_mod.find_runs([runs]) == [runs / "real"] == runs_mod.find_runs([runs, runs / "real"])


def test_the_tables_of_runs_and_eval_fit_columns_when_set_and_keep_their_width_when_not(experiments, monkeypatch):
    # (COLUMNS=40: cnn runs printed 119-column rows and cnn eval a 48-column class table, as on a wide screen)
    from cnncli.runs import format_runs

    tmp, root = experiments
    rows = json.loads(invoke(["runs", root, "--json"]).output)
    monkeypatch.delenv("COLUMNS", raising=False)            # (not a terminal, no COLUMNS: the full table)
    wide, table = invoke(["runs", root]).output, invoke(["eval", "--checkpoint", root / "fast", "--data", tmp / "data"])
    assert wide.rstrip("\n") == format_runs(rows) and max(map(len, wide.splitlines())) > 100
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.chdir(tmp)                                 # (run names runs/fast, ...: within 40 columns)
    narrow = invoke(["runs"]).output
    assert all(len(line) <= 40 or line.startswith(f"  started from {root}") for line in narrow.splitlines()), narrow
    fast = next(r for r in rows if r["run"] == str(root / "fast"))
    block = narrow[narrow.index("runs/fast\n"):].split("\n", 1)[1]
    assert f"epochs {fast['epochs']}/{fast['epochs_total']}" in block and f"val acc {fast['val_acc']:.2%}" in block
    assert "  unreadable: " in narrow[narrow.index("runs/broken\n"):]
    res = invoke(["eval", "--checkpoint", root / "fast", "--data", tmp / "data"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    at = lines.index("") + 1
    assert all(len(line) <= 40 for line in lines[at:]), res.stdout
    assert lines[at].split() == ["class", "prec.", "recall", "f1", "support"]
    numbers = [line.split()[1:] for line in lines[at + 1:at + 4]]      # the same values as the wide table
    wide_lines = table.stdout.splitlines()
    assert numbers == [line.split()[1:] for line in wide_lines[at + 1:at + 4]]
    assert max(map(len, wide_lines)) > 40
