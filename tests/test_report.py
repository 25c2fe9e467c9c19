"""Tests for cnncli.report: PNGs are valid pictures, the HTML references them, escapes names, and its numbers
equal evaluate() for the same checkpoint and data. The run folder is built by hand (model + checkpoint.save)."""

import html
import json
import os
import math
import re
import shutil
import sys

import numpy as np
import pytest

from cnncli.errors import CnnError
from cnncli.report import MATPLOTLIB_MISSING, most_confident_errors, read_history, write_report

PNGS = ("curves.png", "confusion.png", "per_class.png", "errors.png", "filters.png")
CLASSES = ["circle", "square", "x<y>&z"]  # a folder name that must be escaped in HTML
METRICS_CSV = (
    "epoch,step,train_loss,train_acc,val_loss,val_acc,lr,time_s\n"
    "1,4,3.1,0.40,3.0,0.42,0.01,1.5\n"
    "2,8,2.5,0.55,2.6,0.50,0.01,3.0\n"
    "3,12,2.0,0.70,2.4,0.61,0.001,4.5\n"
)

try:
    import matplotlib  # noqa: F401

    HAVE_MPL = True
except ImportError:  # pragma: no cover - the test extra installs it
    HAVE_MPL = False
needs_matplotlib = pytest.mark.skipif(not HAVE_MPL, reason="matplotlib (the 'plots' extra) is not installed")


def write_image_folder(root, classes, per_class=5, seed=0):
    """One subfolder per class of 32x32 grayscale PNGs with a class-dependent pattern."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (32, 32))
            if c % 3 == 0:
                img = img + 180 * ((yy - 16) ** 2 + (xx - 16) ** 2 < (6 + i) ** 2)
            elif c % 3 == 1:
                img = img + 180 * ((abs(yy - 16) < 4 + i) & (abs(xx - 16) < 4 + i))
            else:
                img = img + 3 * (xx + yy) + 10 * i
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(folder / f"img{i}.png")
    return root


def write_checkpoint(path, classes, seed=0):
    """A checkpoint in the design.md layout from model.init_params (seed 0 predicts two of the three classes)."""
    from cnncli import checkpoint, model

    params = model.init_params(num_classes=len(classes), batchnorm="none", seed=seed)
    arrays = {f"params/{name}": np.array(value) for name, value in params.items()}
    meta = {
        "cnncli_version": "test",
        "num_classes": len(classes),
        "batchnorm": "none",
        "eps": 1e-5,
        "dtype": "float32",
        "classes": list(classes),
        "preprocess": {"image_size": 32, "resize": "pad", "mean": 0.2, "std": 0.3},
        "epoch": 3,
        "step": 12,
        "epoch_step": 0,
        "best_val_loss": 2.4,
        "config": "",
        "history": [],
    }
    checkpoint.save(path, arrays, meta)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run_dir, data_dir, report path) with the report written once for the module."""
    if not HAVE_MPL:
        pytest.skip("matplotlib (the 'plots' extra) is not installed")
    base = tmp_path_factory.mktemp("report")
    data_dir = write_image_folder(base / "data", CLASSES, per_class=6)
    run_dir = base / "run"
    run_dir.mkdir()
    write_checkpoint(run_dir / "best.npz", CLASSES, seed=0)
    write_checkpoint(run_dir / "last.npz", CLASSES, seed=2)
    (run_dir / "metrics.csv").write_text(METRICS_CSV)
    (run_dir / "config.yaml").write_text("model:\n  batchnorm: none  # <script>alert(1)</script>\n")
    out = write_report(run_dir, data_dir=data_dir)
    return run_dir, data_dir, out


def embedded_metrics(text):
    match = re.search(r'<script type="application/json" id="metrics">(.*?)</script>', text, re.S)
    assert match, "no machine-readable metrics block"
    return json.loads(match.group(1))


@needs_matplotlib
def test_pngs_are_valid_pictures_and_html_references_each(run):
    from PIL import Image

    run_dir, _, out = run
    assert out == run_dir / "report" / "report.html"
    text = out.read_text(encoding="utf-8")
    for name in PNGS:
        path = out.parent / name
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert im.size[0] >= 200 and im.size[1] >= 150, (name, im.size)
        assert path.stat().st_size < 1_500_000, name
        assert f'href="{name}"' in text
    assert text.count('src="data:image/png;base64,') == len(PNGS)
    assert out.stat().st_size < 5_000_000


@needs_matplotlib
def test_html_numbers_equal_evaluate(run):
    from cnncli.evaluate import evaluate

    run_dir, data_dir, out = run
    want, dataset, _ = evaluate(run_dir / "best.npz", data_dir)
    text = out.read_text(encoding="utf-8")
    got = embedded_metrics(text)
    assert got["num_images"] == want["num_images"] == len(CLASSES) * 6
    for key in ("accuracy", "loss", "top_k_accuracy", "macro_f1"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    assert got["confusion"] == want["confusion"]
    assert list(got["per_class"]) == CLASSES
    for name, m in want["per_class"].items():
        assert got["per_class"][name] == pytest.approx(m, rel=1e-12), name
    assert len({tuple(row) for row in want["confusion"]}) > 1  # the model does not predict one class for all
    assert got["classes"] == CLASSES
    # the human-readable tables show the same numbers
    assert f"<td>accuracy</td><td>{want['accuracy']:.4f}</td>" in text
    assert f"<td>{want['loss']:.4f}</td>" in text
    for name, row in zip(CLASSES, want["confusion"]):
        assert f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" in text
    for name, m in want["per_class"].items():
        cells = [m["precision"], m["recall"], m["f1"]]
        assert (f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{v:.4f}</td>" for v in cells)
                + f"<td>{m['support']}</td></tr>") in text


@needs_matplotlib
def test_user_text_is_escaped(run):
    _, _, out = run
    text = out.read_text(encoding="utf-8")
    assert "x<y>&z" not in text  # neither in tables, captions nor the JSON block
    assert "x&lt;y&gt;&amp;z" in text
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert text.count("<script") == 1  # only the metrics block


@needs_matplotlib
def test_curves_use_metrics_csv_and_last_row_is_shown(run):
    _, _, out = run
    text = out.read_text(encoding="utf-8")
    assert "<td>val_loss</td><td>2.4</td>" in text and "<td>lr</td><td>0.001</td>" in text


@needs_matplotlib
def test_falls_back_to_last_npz_without_metrics_csv(run, tmp_path):
    from cnncli.evaluate import evaluate

    run_dir, data_dir, _ = run
    other = tmp_path / "run2"
    other.mkdir()
    (other / "last.npz").write_bytes((run_dir / "last.npz").read_bytes())
    out = write_report(other, data_dir=data_dir, out_dir=tmp_path / "pictures")
    assert out == tmp_path / "pictures" / "report.html"
    assert all((out.parent / name).is_file() for name in PNGS)
    got = embedded_metrics(out.read_text(encoding="utf-8"))
    want, _, _ = evaluate(other / "last.npz", data_dir)
    assert got["checkpoint"].endswith("last.npz")
    assert got["confusion"] == want["confusion"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-12)


@needs_matplotlib
def test_missing_checkpoint_or_folder_is_a_user_error(tmp_path):
    with pytest.raises(CnnError, match="best.npz or last.npz"):
        write_report(tmp_path, data_dir=tmp_path)
    with pytest.raises(CnnError, match="run folder not found"):
        write_report(tmp_path / "nope")


def test_without_matplotlib_the_message_names_the_extra(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(CnnError) as err:
        write_report(tmp_path)
    assert str(err.value) == MATPLOTLIB_MISSING == "the plots need matplotlib: pip install 'cnncli[plots]'"


def test_read_history_keeps_last_row_per_epoch_and_empty_cells_are_nan(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,step,train_loss,train_acc,val_loss,val_acc,lr,time_s\n"
        "1,5,2.0,0.5,,,0.1,1\n"
        "1,10,1.5,0.6,1.7,0.55,0.1,2\n"
        "2,20,1.0,0.8,,,0.05,4\n"
    )
    rows = read_history(path)
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    assert rows[0]["step"] == 10 and rows[0]["val_loss"] == 1.7
    assert math.isnan(rows[1]["val_loss"]) and rows[1]["lr"] == 0.05
    assert read_history(tmp_path / "missing.csv") == []


def test_most_confident_errors_orders_wrong_predictions_by_confidence():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95], [0.3, 0.7]])  # (N,C)
    labels = np.array([0, 0, 1, 1, 0])
    idx, pred, prob = most_confident_errors(probs, labels)
    assert idx.tolist() == [1, 4, 2]  # wrong ones: 1 (0.8), 2 (0.6), 4 (0.7)
    assert pred.tolist() == [1, 1, 0]
    assert prob.tolist() == pytest.approx([0.8, 0.7, 0.6])
    assert most_confident_errors(probs, labels, limit=1)[0].tolist() == [1]


# ---------------------------------------------------------------- a real run folder written by train.py


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-epoch training run on a tiny folder (validation = a stratified quarter of it)."""
    if not HAVE_MPL:
        pytest.skip("matplotlib (the 'plots' extra) is not installed")
    from cnncli import config, train

    base = tmp_path_factory.mktemp("trained")
    data_dir = write_image_folder(base / "data", CLASSES, per_class=8)
    cfg = config.load_config(None, [f"data.train={data_dir}", "data.val_split=0.25", "train.epochs=2",
                                    "train.batch_size=8", f"out={base / 'run'}"])
    run_dir = train.train(cfg, quiet=True, echo=lambda message: None)
    return run_dir, data_dir, cfg


@needs_matplotlib
def test_report_rebuilds_validation_split_from_config(trained_run):
    from cnncli import train
    from cnncli.evaluate import compute_metrics
    from cnncli.predictor import Predictor

    run_dir, _, cfg = trained_run
    out = write_report(run_dir)
    got = embedded_metrics(out.read_text(encoding="utf-8"))
    _, val_ds, _ = train.load_datasets(cfg)
    predictor = Predictor.from_checkpoint(run_dir / "best.npz")
    want = compute_metrics(predictor.predict_proba(val_ds.images), val_ds.labels, predictor.classes)
    assert got["num_images"] == len(val_ds.labels) == 6
    assert got["confusion"] == want["confusion"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-12)
    # the report's loss is the trainer's validation loss of the best epoch (same definition, same images)
    best = min(read_history(run_dir / "metrics.csv"), key=lambda row: row["val_loss"])
    assert got["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert got["accuracy"] == pytest.approx(best["val_acc"], abs=1e-9)


@needs_matplotlib
def test_cli_report_numbers_equal_cli_eval_json(trained_run, tmp_path):
    from click.testing import CliRunner

    from cnncli.cli import cli

    run_dir, data_dir, _ = trained_run
    runner = CliRunner()
    result = runner.invoke(cli, ["report", str(run_dir), "--data", str(data_dir), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    got = embedded_metrics((tmp_path / "r" / "report.html").read_text(encoding="utf-8"))
    result = runner.invoke(cli, ["eval", "--checkpoint", str(run_dir / "best.npz"), "--data", str(data_dir), "--json"])
    assert result.exit_code == 0, result.output
    want = json.loads(result.stdout)
    assert got["num_images"] == want["num_images"] == 24
    for key in ("accuracy", "loss", "top_k_accuracy", "macro_f1"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    assert got["confusion"] == want["confusion"]
    for name in CLASSES:
        assert got["per_class"][name] == pytest.approx(want["per_class"][name], rel=1e-12)
    given = runner.invoke(cli, ["report", str(run_dir / "best.npz"), "--out", str(tmp_path / "f")])   # a file in it
    assert given.exit_code == 0 and given.stdout.strip() == str(tmp_path / "f" / "report.html"), given.output


@needs_matplotlib
def test_unwritable_output_is_a_user_error(run, tmp_path):
    run_dir, data_dir, _ = run
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CnnError, match="cannot write the report"):
        write_report(run_dir, data_dir=data_dir, out_dir=blocker / "report")


@needs_matplotlib
def test_a_report_that_cannot_be_written_names_the_file_and_suggests_another_folder(run, tmp_path, monkeypatch):
    # a full disk named the folder; a read-only run folder did not say --out writes elsewhere
    import errno

    from cnncli import report

    run_dir, data_dir, _ = run

    def full(path, write, text=False):                # (each picture is written whole or not at all)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(report, "write_atomic", full)
    with pytest.raises(CnnError) as err:
        write_report(run_dir, data_dir=data_dir, out_dir=tmp_path / "rep")
    assert str(err.value) == f"{tmp_path / 'rep' / 'curves.png'}: cannot write the report (no space left on the " \
        "device: free some space, or write elsewhere)"

    def denied(path, write, text=False):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    monkeypatch.setattr(report, "write_atomic", denied)
    with pytest.raises(CnnError, match=r"\(permission denied\); --out DIR writes it elsewhere$"):
        write_report(run_dir, data_dir=data_dir, out_dir=tmp_path / "rep")


@needs_matplotlib
def test_a_run_without_validation_images_reports_its_curves_and_filters(tmp_path):
    from cnncli import config, train

    data_dir = write_image_folder(tmp_path / "data", CLASSES, per_class=4)
    cfg = config.load_config(None, [f"data.train={data_dir}", "data.val_split=0", "train.epochs=2",
                                    "train.batch_size=8", f"out={tmp_path / 'run'}"])
    run_dir = train.train(cfg, quiet=True, echo=lambda message: None)
    out = write_report(run_dir)
    names = sorted(p.name for p in out.parent.glob("*.png"))
    assert names == ["curves.png", "filters.png"]
    text = out.read_text(encoding="utf-8")
    got = embedded_metrics(text)
    assert "confusion" not in got and "no validation images" in got["data"] and "--data" in got["data"]
    assert "Confusion matrix" not in text and "curves.png" in text
    full = write_report(run_dir, data_dir=data_dir, out_dir=tmp_path / "full")   # --data: the whole report
    assert embedded_metrics(full.read_text(encoding="utf-8"))["num_images"] == 12
    assert (tmp_path / "full" / "confusion.png").is_file()


@needs_matplotlib
def test_a_class_name_no_font_draws_is_escaped_in_the_figures_and_kept_in_the_html(tmp_path, monkeypatch):
    """A CJK class name on a machine without a CJK font used to be an empty box in every figure, with
    matplotlib's 'Glyph missing' warnings on stderr; it is now its escape (\\u56db) in the figures,
    drawn by any installed font that has it, and itself in the HTML."""
    import warnings

    from cnncli import report

    classes = ["circle", "四", "é"]
    data = write_image_folder(tmp_path / "data", classes, per_class=3)
    (tmp_path / "run").mkdir()
    write_checkpoint(tmp_path / "run" / "best.npz", classes)
    drawn, real = [], report.plot_confusion
    monkeypatch.setattr(report, "plot_confusion", lambda fig, m, names: (drawn.append(names), real(fig, m, names)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # no "Glyph ... missing from font(s)"
        out = write_report(tmp_path / "run", data_dir=data)
    family, drawable = report.font_plan(classes, matplotlib)
    assert not [f for f in family if f.startswith("Last Resort")], family   # (matplotlib's boxes: drew 四 as one)
    expect = "四" if drawable("四") else "\\u56db"
    assert drawn == [["circle", expect, "é"]] and drawable("é")
    assert "四" in out.read_text(encoding="utf-8")


def test_a_read_only_home_gets_no_matplotlib_warnings(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("matplotlib")
    (tmp_path / "home").write_text("a file where the home folder would be: nothing can be made under it")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path))
    code = ("import os; from cnncli.report import matplotlib_parts; matplotlib_parts(); "
            "print(os.environ['MPLCONFIGDIR'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.strip().startswith(str(tmp_path / "cnncli-matplotlib-"))


def test_the_learning_rate_axis_spans_at_most_five_decades(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from cnncli.report import plot_curves

    lrs = [1e-3 * 0.5 * (1 + np.cos(np.pi * e / 40)) for e in range(1, 40)] + [1e-10]   # cosine, near 0 at the end
    history = [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1), "train_acc": 0.5,
                "val_acc": 0.5, "lr": lr} for e, lr in enumerate(lrs)]
    assert min(x for x in lrs if x > 0) < 1e-9
    fig = Figure()
    plot_curves(fig, history)
    ax_lr = [ax for ax in fig.axes if ax.get_ylabel() == "learning rate"][0]
    low, high = ax_lr.get_ylim()
    assert ax_lr.get_yscale() == "log" and high / low < 1e5 and low < 1e-6 and high > 1e-3, (low, high)


@needs_matplotlib
def test_skipped_files_point_to_a_command_that_lists_them(run, tmp_path):
    from click.testing import CliRunner

    from cnncli.cli import cli

    run_dir, data_dir, _ = run
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    first = sorted(p for p in data.iterdir() if p.is_dir())[0]
    for i in range(7):                                  # more than the five the warning names
        (first / f"broken{i}.png").write_bytes(b"")
    res = CliRunner().invoke(cli, ["report", str(run_dir), "--data", str(data), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "  ... and 2 more (cnn eval --json lists them all)" in res.stderr.splitlines()
    res = CliRunner().invoke(cli, ["eval", "--checkpoint", str(run_dir), "--data", str(data), "--no-cache"])
    assert "  ... and 2 more (--json lists them all)" in res.stderr.splitlines()


@needs_matplotlib
def test_a_report_never_writes_over_a_users_pictures(run, tmp_path):
    # (cnn report RUN --out pics overwrote the user's curves.png, confusion.png and report.html; with a report.html
    # there it removed the user's per_class.png)
    run_dir, data_dir, _ = run
    pics = tmp_path / "pics"
    pics.mkdir()
    for name in ("curves.png", "report.html"):
        (pics / name).write_bytes(b"mine")
    with pytest.raises(CnnError, match="holds curves.png, report.html, no earlier report's"):
        write_report(run_dir, data_dir=data_dir, out_dir=pics)
    assert {p.name: p.read_bytes() for p in pics.iterdir()} == {"curves.png": b"mine", "report.html": b"mine"}
    again = tmp_path / "again"                          # (an earlier report's folder: drawn again)
    write_report(run_dir, data_dir=data_dir, out_dir=again)
    assert write_report(run_dir, data_dir=data_dir, out_dir=again) == again / "report.html"


def test_a_file_outside_a_run_folder_is_named_not_its_folder(tmp_path, monkeypatch):
    # cnn report model.npz (a checkpoint copied out of its run) or junk.npz: the file given is named,
    # not the folder it lies in (which was 'run folder has no best.npz or last.npz')
    from click.testing import CliRunner

    from cnncli.cli import cli

    monkeypatch.chdir(tmp_path)
    write_checkpoint(tmp_path / "model.npz", CLASSES)
    (tmp_path / "junk.npz").write_text("not a checkpoint")
    runner = CliRunner()
    res = runner.invoke(cli, ["report", "model.npz"])
    assert res.exit_code == 1 and res.output.startswith("Error: model.npz: a checkpoint outside a run folder "
                                                        "(no best.npz or last.npz beside it)"), res.output
    res = runner.invoke(cli, ["report", "junk.npz"])
    assert res.exit_code == 1 and res.output == "Error: junk.npz: not a checkpoint (.npz zip archive)\n", res.output
