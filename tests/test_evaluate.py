"""Tests for cnncli.evaluate: metrics against a slow loop reference and hand-checked cases."""

import json
import math
import warnings

import numpy as np
import pytest

from cnncli.evaluate import PROB_EPS, compute_metrics
from cnncli.metrics_text import format_metrics


def reference_metrics(probs, labels, classes, top_k=3):
    """Slow, loop-based metrics written independently of the vectorized code."""
    n, c = len(probs), len(classes)
    k = min(top_k, c)
    confusion = [[0] * c for _ in range(c)]
    correct = top_correct = 0
    loss = 0.0
    for i in range(n):
        row = [float(v) for v in probs[i]]
        best = 0
        for j in range(c):
            if row[j] > row[best]:
                best = j
        confusion[labels[i]][best] += 1
        correct += best == labels[i]
        order = sorted(range(c), key=lambda j: (-row[j], j))
        top_correct += labels[i] in order[:k]
        for j in range(c):
            p = min(max(row[j], PROB_EPS), 1 - PROB_EPS)
            loss -= math.log(p) if j == labels[i] else math.log(1 - p)
    per_class = {}
    f1s = []                                    # of the classes true or predicted at least once
    for j, name in enumerate(classes):
        tp = confusion[j][j]
        pred = sum(confusion[r][j] for r in range(c))
        sup = sum(confusion[j])
        prec = tp / pred if pred else 0.0
        rec = tp / sup if sup else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        if pred or sup:
            f1s.append(f1)
        per_class[name] = {"precision": prec, "recall": rec, "f1": f1, "support": sup}
    return {
        "accuracy": correct / n,
        "loss": loss / n,
        "top_k": k,
        "top_k_accuracy": top_correct / n,
        "num_images": n,
        "per_class": per_class,
        "macro_f1": sum(f1s) / len(f1s),
        "confusion": confusion,
    }


def assert_metrics_equal(got, want, rel=1e-9):
    assert set(got) >= set(want)
    for key in ("accuracy", "loss", "top_k_accuracy", "macro_f1"):
        assert got[key] == pytest.approx(want[key], rel=rel, abs=1e-12), key
    assert got["top_k"] == want["top_k"]
    assert got["num_images"] == want["num_images"]
    assert got["confusion"] == want["confusion"]
    assert list(got["per_class"]) == list(want["per_class"])
    for name, m in want["per_class"].items():
        for key, value in m.items():
            assert got["per_class"][name][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)


@pytest.mark.parametrize("seed,n,c,k", [(0, 40, 3, 2), (1, 200, 12, 3), (2, 7, 5, 10), (3, 1, 2, 1)])
def test_matches_loop_reference(seed, n, c, k):
    rng = np.random.default_rng(seed)
    probs = rng.random((n, c)).astype(np.float32)  # (N,C)
    labels = rng.integers(0, c, n)
    classes = [f"class{j}" for j in range(c)]
    got = compute_metrics(probs, labels, classes, top_k=k)
    assert_metrics_equal(got, reference_metrics(probs, labels, classes, top_k=k))


def test_matches_reference_with_ties_and_saturated_probabilities():
    rng = np.random.default_rng(5)
    probs = rng.choice([0.0, 0.5, 1.0], size=(60, 4)).astype(np.float32)  # many ties, exact 0 and 1
    labels = rng.integers(0, 4, 60)
    classes = list("abcd")
    got = compute_metrics(probs, labels, classes, top_k=2)
    assert np.isfinite(got["loss"])
    assert_metrics_equal(got, reference_metrics(probs, labels, classes, top_k=2))


def test_perfect_classifier():
    labels = np.array([0, 1, 2, 2, 1, 0, 0])
    probs = np.full((7, 3), 0.01)
    probs[np.arange(7), labels] = 0.99
    m = compute_metrics(probs, labels, ["a", "b", "c"])
    assert m["accuracy"] == 1.0 and m["top_k_accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert m["confusion"] == [[3, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert all(v["precision"] == 1.0 and v["recall"] == 1.0 for v in m["per_class"].values())
    assert [v["support"] for v in m["per_class"].values()] == [3, 2, 2]
    # summed BCE: -log(0.99) for the true class plus -log(0.99) for each of the two others
    assert m["loss"] == pytest.approx(-3 * math.log(0.99))


def test_all_wrong_and_class_never_predicted_has_zero_precision_without_nan():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.7, 0.3, 0.0], [0.6, 0.4, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any numpy divide warning fails the test
        m = compute_metrics(probs, labels, ["x", "y", "z"], top_k=2)
    assert m["accuracy"] == 0.0
    assert m["top_k_accuracy"] == 1.0  # the true class is always second
    assert m["confusion"] == [[0, 2, 0], [2, 0, 0], [0, 0, 0]]
    z = m["per_class"]["z"]  # never true, never predicted
    assert z == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["x"]["precision"] == 0.0 and m["macro_f1"] == 0.0
    flat = [m["accuracy"], m["loss"], m["macro_f1"]] + [v for c in m["per_class"].values() for v in c.values()]
    assert all(np.isfinite(flat))


def test_macro_f1_averages_the_classes_true_or_predicted_as_scikit_learn_does():
    # true: a a b ; predicted: a b c -> a: F1 2/3, b: 1, c (predicted, never true): 0; d (neither): left out
    labels = np.array([0, 0, 1])
    probs = np.array([[0.9, 0.1, 0.0, 0.0], [0.1, 0.2, 0.8, 0.0], [0.1, 0.8, 0.2, 0.0]])
    m = compute_metrics(probs, labels, ["a", "b", "c", "d"])
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    try:
        from sklearn.metrics import f1_score
    except ImportError:
        return
    assert m["macro_f1"] == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))


def test_hand_checked_precision_recall():
    # true: a a a b ; predicted: a a b b -> a: P=1, R=2/3 ; b: P=1/2, R=1
    labels = np.array([0, 0, 0, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    m = compute_metrics(probs, labels, ["a", "b"])
    assert m["top_k"] == 2  # clipped to the number of classes
    assert m["per_class"]["a"]["precision"] == pytest.approx(1.0)
    assert m["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["accuracy"] == pytest.approx(0.75)


def test_loss_clips_probabilities():
    m = compute_metrics(np.array([[0.0, 1.0]]), np.array([0]), ["a", "b"])
    assert m["loss"] == pytest.approx(-2 * math.log(PROB_EPS))


def test_bad_shapes_raise_value_error():
    with pytest.raises(ValueError, match="classes"):
        compute_metrics(np.zeros((2, 3)), np.zeros(2, int), ["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        compute_metrics(np.zeros((2, 2)), np.zeros(3, int), ["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        compute_metrics(np.zeros((2, 2)), np.array([0, 2]), ["a", "b"])


def test_format_metrics_is_aligned_and_names_classes():
    rng = np.random.default_rng(1)
    classes = ["cat", "a_really_long_folder_name_for_a_class", "dog"]
    labels = rng.integers(0, 3, 30)
    m = compute_metrics(rng.random((30, 3)), labels, classes)
    text = format_metrics(m)
    lines = text.splitlines()
    assert f"{m['accuracy']:.4f}" in text and f"{m['macro_f1']:.4f}" in text
    table = [ln for ln in lines if ln.startswith(("cat", "dog", "a_really"))]
    assert len(table) == 6  # per-class rows and confusion rows
    assert len({len(ln) for ln in table[:3]}) == 1  # per-class rows share one width
    assert len({len(ln) for ln in table[3:]}) == 1  # confusion rows share one width
    assert all(len(ln) < 120 for ln in lines)  # long names are truncated
    for row, line in zip(m["confusion"], table[3:]):
        assert [int(v) for v in line.split()[1:]] == row


def test_confusion_columns_are_numbered_when_their_shortened_names_clash():
    # 40 folders class_00_circle .. class_39_bar: every column was headed 'class~' in a helper's eval
    rng = np.random.default_rng(3)
    classes = [f"class_{i:02d}_shape{i}" for i in range(12)]
    labels = rng.integers(0, 12, 60)
    m = compute_metrics(rng.random((60, 12)), labels, classes)
    lines = format_metrics(m).splitlines()
    at = lines.index("confusion matrix (rows = true class, columns = predicted class, numbered as the rows)")
    assert lines[at + 1].split()[3:] == [str(i + 1) for i in range(12)], lines[at + 1]
    rows = lines[at + 2:at + 14]
    assert [r.split()[0] for r in rows] == [str(i + 1) for i in range(12)]
    for row, line in zip(m["confusion"], rows):
        assert [int(v) for v in line.split()[2:]] == row
    plain = format_metrics(compute_metrics(rng.random((9, 3)), rng.integers(0, 3, 9), ["cat", "dog", "eel"]))
    assert "confusion matrix (rows = true class, columns = predicted class)\n" in plain


def test_class_names_that_cut_alike_are_printed_whole_in_the_per_class_table():
    # (photos_of_category_number_A and _B were both 'photos_of_category_numb~')
    rng = np.random.default_rng(4)
    classes = ["photos_of_category_number_A", "photos_of_category_number_B", "x"]
    lines = format_metrics(compute_metrics(rng.random((9, 3)), rng.integers(0, 3, 9), classes)).splitlines()
    rows = [line.split()[0] for line in lines if line.startswith(("photos", "x "))]
    assert rows == classes, lines
    short = format_metrics(compute_metrics(rng.random((9, 3)), rng.integers(0, 3, 9), ["a" * 30, "b", "c"]))
    assert "a" * 23 + "~  " in short                  # (no clash: still cut at 24 columns)


def test_more_classes_than_a_terminal_holds_leave_the_matrix_to_json():
    from cnncli.metrics_text import MATRIX_CLASSES

    n = MATRIX_CLASSES + 1
    rng = np.random.default_rng(4)
    m = compute_metrics(rng.random((200, n)), rng.integers(0, n, 200), [f"c{i}" for i in range(n)])
    text = format_metrics(m)
    assert f"confusion matrix: {n} classes, too many to print here (--json holds it" in text
    assert "true \\ pred" not in text and max(map(len, text.splitlines())) < 120
    assert len(m["confusion"]) == n                                       # (the metrics keep it)


def test_format_metrics_spells_out_two_forms_of_one_name():
    # class folders 'café' composed and decomposed (two classes): the table had two rows "café"
    rng = np.random.default_rng(2)
    classes = ["bar", "caf\u00e9", "cafe\u0301"]
    m = compute_metrics(rng.random((12, 3)), rng.integers(0, 3, 12), classes)
    lines = format_metrics(m).splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("class ")) + 1
    rows = [ln.split()[0] for ln in lines[first:first + 3]]
    assert rows == ["bar", "caf\\xe9", "cafe\\u0301"], rows                   # the per-class table
    assert "caf\u00e9" not in format_metrics(m) and "caf\u00e9" in m["per_class"]   # (the keys stay the names)



def test_format_metrics_aligns_names_by_terminal_columns():
    # CJK names take two columns a character, a combining accent none, a name that is not valid
    # UTF-8 prints escaped (cl\xff, 6 columns): every table row ends in the same column
    from cnncli.textwidth import width

    classes = ["猫", "犬の子ども", "cat", "cl\udcff", "e\u0301clair"]
    rng = np.random.default_rng(2)
    m = compute_metrics(rng.random((40, 5)), rng.integers(0, 5, 40), classes)
    lines = format_metrics(m).splitlines()
    start = lines.index(next(ln for ln in lines if ln.startswith("class ")))
    per_class = lines[start:start + 6]
    assert len({width(ln) for ln in per_class}) == 1, per_class
    cstart = lines.index("confusion matrix (rows = true class, columns = predicted class)") + 1
    confusion = lines[cstart:cstart + 6]
    assert len({width(ln) for ln in confusion}) == 1, confusion
    assert "cl\\xff" in per_class[4] and "cl\\xff" in confusion[0]      # escaped, not cut
    for row, line in zip(m["confusion"], confusion[1:]):
        assert [int(v) for v in line.split()[-5:]] == row

# ---------------------------------------------------------------- evaluate() and predict_paths() on a real checkpoint

CLASSES = ["bright", "dark", "stripes"]


def write_image_folder(root, classes, per_class=4, seed=0):
    """One subfolder per class of 32x32 grayscale PNGs with a class-dependent mean brightness."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (32, 32)) + 80 * c
            Image.fromarray(img.astype(np.uint8), mode="L").save(root / name / f"{i}.png")
    return root


def write_checkpoint(path, classes, seed=0):
    """A checkpoint in the design.md layout built from model.init_params."""
    from cnncli import checkpoint, model

    params = model.init_params(num_classes=len(classes), batchnorm="none", seed=seed)
    arrays = {f"params/{name}": np.array(value) for name, value in params.items()}
    arrays["params/fc2.b"] = np.linspace(-1, 1, len(classes)).astype(np.float32)
    meta = {
        "cnncli_version": "test", "num_classes": len(classes), "batchnorm": "none", "eps": 1e-5,
        "dtype": "float32", "classes": list(classes),
        "preprocess": {"image_size": 32, "resize": "pad", "mean": 0.3, "std": 0.3},
        "epoch": 1, "step": 1, "epoch_step": 0, "best_val_loss": None, "config": "", "history": [],
    }
    checkpoint.save(path, arrays, meta)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate")
    data_dir = write_image_folder(base / "data", CLASSES)
    (data_dir / "dark" / "broken.png").write_bytes(b"not a png at all")
    return write_checkpoint(base / "model.npz", CLASSES), data_dir


def test_evaluate_equals_compute_metrics_of_the_predictor(trained):
    from cnncli.evaluate import evaluate
    from cnncli.predictor import Predictor

    ckpt, data_dir = trained
    metrics, dataset, probs = evaluate(ckpt, data_dir, batch_size=5)
    assert dataset.classes == CLASSES and probs.shape == (12, 3)
    expected_probs = Predictor.from_checkpoint(ckpt).predict_proba(dataset.images)
    np.testing.assert_allclose(probs, expected_probs, rtol=1e-6)
    want = compute_metrics(expected_probs, dataset.labels, CLASSES)
    assert_metrics_equal(metrics, want, rel=1e-6)  # float32 sums may differ with the batch split
    assert metrics["skipped"] == 1  # broken.png
    assert metrics["checkpoint"] == str(ckpt) and metrics["data"] == str(data_dir)
    json.dumps(metrics)  # what `cnn eval --json` prints must serialise
    assert "skipped" in format_metrics(metrics)


def test_evaluate_class_mismatch_is_a_data_error_naming_the_difference(trained, tmp_path):
    from cnncli.errors import DataError
    from cnncli.evaluate import evaluate

    ckpt, _ = trained
    other = write_image_folder(tmp_path / "other", ["bright", "dark", "zigzag"], per_class=2)
    with pytest.raises(DataError) as err:
        evaluate(ckpt, other)
    assert "zigzag" in str(err.value) and "\n" not in str(err.value)


def test_a_folder_of_unreadable_images_names_them_and_why(trained, tmp_path):
    # (cnn eval --data of files none of which decodes said only 'no readable images to evaluate')
    from cnncli.errors import DataError
    from cnncli.evaluate import evaluate

    ckpt, _ = trained
    for name, body in (("bright/a.png", b"text"), ("dark/b.png", b""), ("dark/c.jpg", b"x"), ("dark/d.png", b"y")):
        (tmp_path / "bad" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "bad" / name).write_bytes(body)
    with pytest.raises(DataError) as err:
        evaluate(ckpt, tmp_path / "bad")
    root = tmp_path / "bad"
    assert str(err.value) == (f"{root}: no readable images to evaluate: 4 unreadable file(s) ({root}/bright/a.png: "
                              "not a PNG/JPEG/BMP/GIF/PNM/TIFF/WebP/ICO image (it looks like text); "
                              f"{root}/dark/b.png: empty file (0 bytes); {root}/dark/c.jpg: not a "
                              "PNG/JPEG/BMP/GIF/PNM/TIFF/WebP/ICO image (it looks like text); ...)")


def test_predict_paths_ranks_classes_and_reports_bad_files(trained, tmp_path):
    from cnncli.predictions import predict_paths
    from cnncli.predictor import Predictor

    ckpt, data_dir = trained
    predictor = Predictor.from_checkpoint(ckpt)
    good = sorted(str(p) for p in (data_dir / "bright").glob("[0-9].png"))
    bad = str(data_dir / "dark" / "broken.png")
    missing = str(tmp_path / "missing.png")
    results, failures = predict_paths(predictor, [good[0], bad, good[1], missing], top_k=2)
    assert [r["path"] for r in results] == good[:2]
    assert [f[0] for f in failures] == [bad, missing] and all(f[1] for f in failures)
    from cnncli.data import load_image

    probs = predictor.predict_proba(np.stack([load_image(p) for p in good[:2]]))  # (2,C)
    for r, row in zip(results, probs):
        assert r["class"] == CLASSES[int(np.argmax(row))]
        assert r["probability"] == pytest.approx(row.max())
        assert len(r["top_k"]) == 2 and r["top_k"][0]["class"] == r["class"]
        assert r["top_k"][0]["probability"] >= r["top_k"][1]["probability"]
        assert r["top_k"][1]["probability"] == pytest.approx(np.sort(row)[-2])
    assert predict_paths(predictor, [missing], top_k=3) == ([], [(missing, failures[1][1])])


def test_random_inputs_match_reference_and_stay_finite():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None)
    @given(st.integers(1, 30), st.integers(2, 6), st.integers(1, 7), st.integers(0, 2**32 - 1))
    def check(n, c, k, seed):
        rng = np.random.default_rng(seed)
        probs = rng.choice([0.0, 0.25, 0.5, 1.0], size=(n, c)) if seed % 2 else rng.random((n, c))  # (N,C)
        labels = rng.integers(0, c, n)
        classes = [f"c{j}" for j in range(c)]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = compute_metrics(probs, labels, classes, top_k=k)
        assert_metrics_equal(got, reference_metrics(probs, labels, classes, top_k=k))
        assert sum(map(sum, got["confusion"])) == n
        assert got["accuracy"] <= got["top_k_accuracy"] <= 1.0

    check()


def test_bce_loss_and_top_k_in_row_chunks_equal_the_one_shot_formulas(monkeypatch):
    import cnncli.evaluate as ev

    rng = np.random.default_rng(3)
    probs = rng.random((1003, 5))
    probs[0, 0], probs[1, 1] = 0.0, 1.0
    labels = rng.integers(0, 5, 1003)
    p = np.clip(probs, ev.PROB_EPS, 1 - ev.PROB_EPS)
    onehot = np.zeros(probs.shape, dtype=bool)
    onehot[np.arange(1003), labels] = True
    want = float((-np.where(onehot, np.log(p), np.log1p(-p)).sum(axis=1)).mean())
    monkeypatch.setattr(ev, "ROWS", 64)
    assert ev.bce_loss(probs, labels) == want
    assert np.array_equal(ev.top_k_indices(probs, 3), np.argsort(-probs, axis=1, kind="stable")[:, :3])


def test_a_class_name_that_is_not_utf8_is_spelled_alike_in_csv_header_and_rows(tmp_path):
    from cnncli.evaluate import top_k_indices
    from cnncli.predictions import _results, write_predictions_csv

    classes = ["caf\udce9", "plain"]                                 # os.fsdecode of b"caf\xe9"
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    results = _results(["a.png", "b.png"], np.arange(2), probs, top_k_indices(probs, 2), classes)
    assert write_predictions_csv(tmp_path / "p.csv", results, classes) == 2
    head, first, second = (tmp_path / "p.csv").read_text(encoding="utf-8").splitlines()
    assert head == "path,class,probability,caf\\xe9,plain"
    assert first.startswith("a.png,caf\\xe9,0.9,0.9,") and second.startswith("b.png,plain,0.8,")



def test_every_loss_printout_keeps_a_tiny_loss_visible(tmp_path):
    from cnncli.crossval import format_summary
    from cnncli.report import render_html

    rng = np.random.default_rng(2)
    m = compute_metrics(rng.random((30, 3)), rng.integers(0, 3, 30), ["a", "b", "c"])
    m["loss"] = 2.596e-05                                 # a tiny set trained long: not 0.0000
    assert "2.596e-05" in format_metrics(m) and "2.596e-05" in render_html("t", m, ["a", "b", "c"], [], "", [], [])
    folds = [{"fold": k, "epochs_run": 9, "best_epoch": 9, "val_loss": v, "val_acc": 1.0}
             for k, v in ((1, 2.596e-05), (2, 0.25))]
    summary = {"folds": folds, "summary": {"val_acc": {"mean": 1.0, "std": 0.0, "folds": 2},
                                           "val_loss": {"mean": 0.125013, "std": 0.124987}}}
    head, first, second, total = format_summary(tmp_path, summary).splitlines()[:4]
    assert " 2.596e-05 " in first and " 0.2500 " in second and "0.0000" not in first
    assert head.index("val acc") + 7 == first.index("%") + 1 == second.index("%") + 1   # columns line up
    assert "val loss 0.1250 +- 0.1250" in total


def test_the_json_names_the_confusion_matrix_classes_in_order():
    # (--json's confusion was a bare list of lists: its order could only be guessed from per_class's keys)
    rng = np.random.default_rng(5)
    m = compute_metrics(rng.random((20, 3)), rng.integers(0, 3, 20), ["zeta", "alpha", "mid"])
    assert m["classes"] == ["zeta", "alpha", "mid"] and len(m["confusion"]) == 3
    assert [sum(row) for row in m["confusion"]] == [m["per_class"][c]["support"] for c in m["classes"]]


def test_eval_strict_refuses_unreadable_images_a_plain_eval_skips(tmp_path):
    # (a CI gate on a test folder passed with images it could not read: eval had no --strict)
    from click.testing import CliRunner

    from cnncli import model
    from cnncli.cli import cli
    from cnncli.predictor import save_model
    from e2e_util import make_folder

    data = make_folder(tmp_path / "data", per_class=3)                  # (a broken file, an empty one)
    ckpt = save_model(tmp_path / "m.npz", model.Network(num_classes=3, seed=0), ["bar", "column", "disc"])
    args = ["eval", "--checkpoint", str(ckpt), "--data", str(data), "--json"]
    plain = CliRunner().invoke(cli, args)
    assert plain.exit_code == 0 and json.loads(plain.stdout)["skipped"] == 2, plain.output
    strict = CliRunner().invoke(cli, [*args, "--strict"])
    assert strict.exit_code == 1 and strict.stdout == "" and "2 unusable file(s) or folder(s) (strict mode)" in \
        strict.stderr, strict.output


def test_the_tables_narrow_to_the_columns_given_and_keep_every_number():
    # (COLUMNS=40: the per-class table was 66 columns wide with long names, the matrix 60)
    rng = np.random.default_rng(5)
    classes = ["a_really_long_folder_name_for_a_class", "dog", "photos_of_category_number_A", "eel", "fox"]
    m = compute_metrics(rng.random((50, 5)), rng.integers(0, 5, 50), classes)
    wide = format_metrics(m).splitlines()
    assert format_metrics(m, None).splitlines() == wide and max(map(len, wide)) > 60
    for columns in (40, 50, 60):
        lines = format_metrics(m, columns).splitlines()
        at = lines.index("") + 1                         # the tables, after the summary's lines
        assert all(len(line) <= columns for line in lines[at:]), (columns, lines)
        rows = [line.split()[-4:] for line in lines[at + 1:at + 6]]
        assert rows == [[f"{m['per_class'][c][k]:.4f}" for k in ("precision", "recall", "f1")]
                        + [str(m["per_class"][c]["support"])] for c in classes]
        assert [[int(v) for v in line.split()[-5:]] for line in lines[-5:]] == m["confusion"]
