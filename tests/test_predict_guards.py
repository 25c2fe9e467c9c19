"""What cnn predict and cnn export refuse before they write or read the wrong thing: --csv over a
checkpoint, an image or an input list; an ONNX file given as predict's model; two checkpoints to
export; the fold that export takes after a cnn cv, named as one. Each test fails on the behaviour
before it (the file overwritten, the newest run used instead, the last --checkpoint kept)."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from PIL import Image

from cnncli import model
from cnncli.cli import cli
from cnncli.predictor import save_model


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def ckpt(tmp_path):
    return save_model(tmp_path / "m.npz", model.Network(num_classes=3, seed=0), ["a", "b", "c"])


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "one.png"
    Image.new("L", (32, 32), 90).save(path)
    return path


def _last_line(res):
    return res.output.strip().splitlines()[-1]


@pytest.mark.parametrize("target", ["checkpoint", "image", "list", "other"])
def test_csv_does_not_overwrite_an_input_or_a_file_that_is_not_a_csv(tmp_path, ckpt, image, target):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{image}\n")
    other = tmp_path / "notes.md"
    other.write_text("mine\n")
    path = {"checkpoint": ckpt, "image": image, "list": listing, "other": other}[target]
    before = path.read_bytes()
    res = invoke("predict", ckpt, listing if target == "list" else image, "--csv", path)
    assert res.exit_code == 1, res.output
    assert _last_line(res).startswith(f"Error: --csv {path}: "), res.output
    assert path.read_bytes() == before


def test_csv_overwrites_an_earlier_csv(tmp_path, ckpt, image):
    out = tmp_path / "p.csv"
    out.write_text("old\n")
    res = invoke("predict", ckpt, image, "--csv", out, "--top-k", "2")
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith("path,class,probability,a,b,c\n")
    assert "note: --top-k does not change --csv's rows" in res.output


def test_an_onnx_file_as_predicts_model_is_named_not_replaced_by_the_newest_run(tmp_path, image, monkeypatch):
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"\x08\x08\x12\x07pytorch")
    monkeypatch.chdir(tmp_path)
    save_model(tmp_path / "runs" / "other" / "best.npz", model.Network(num_classes=3, seed=1), ["a", "b", "c"])
    res = invoke("predict", onnx_file, image)
    assert res.exit_code == 1, res.output                            # (as with --checkpoint model.onnx)
    assert res.output.startswith(f"Error: {onnx_file}: ") and "Checkpoint: runs/other" not in res.output
    assert "Traceback" not in res.output and len(res.output.splitlines()) == 1    # (tests/test_onnx_read.py)


def test_export_refuses_two_checkpoints(tmp_path, ckpt):
    second = save_model(tmp_path / "m2.npz", model.Network(num_classes=3, seed=1), ["a", "b", "c"])
    res = invoke("export", "--checkpoint", ckpt, "--checkpoint", second, "-o", tmp_path / "x.onnx")
    assert res.exit_code == 2, res.output
    assert "2 checkpoints" in res.output and "export writes one model" in res.output
    assert not os.path.exists(tmp_path / "x.onnx")


def test_exports_default_after_a_cv_says_it_is_one_fold(tmp_path, monkeypatch, capsys):
    from cnncli.cli_common import checkpoints_or_newest

    monkeypatch.chdir(tmp_path)
    for k in (1, 2):
        save_model(tmp_path / "runs" / "cv" / f"fold-{k}" / "best.npz", model.Network(num_classes=3, seed=k),
                   ["a", "b", "c"])
        os.utime(tmp_path / "runs" / "cv" / f"fold-{k}" / "best.npz", (1000 + k, 1000 + k))
    (tmp_path / "runs" / "cv" / "cv.json").write_text("{}")
    assert checkpoints_or_newest([]) == (os.path.join("runs", "cv", "fold-2"),)
    line = capsys.readouterr().err
    assert "one fold of the cnn cv runs/cv" in line, line
    assert checkpoints_or_newest([], ensemble=True) == (os.path.join("runs", "cv"),)


def test_csv_refuses_an_empty_path_and_the_list_redirected_to_standard_input(tmp_path, ckpt, image):
    import subprocess
    import sys

    from e2e_util import cli_env

    res = invoke("predict", ckpt, image, "--csv", "")
    assert res.exit_code == 2 and "--csv: the path is empty" in res.output, res.output
    listing = tmp_path / "list.txt"
    listing.write_text(f"{image}\n")
    with open(listing) as stdin:
        proc = subprocess.run([sys.executable, "-m", "cnncli", "predict", str(ckpt), "-", "--csv", str(listing)],
                              stdin=stdin, capture_output=True, text=True, env=cli_env(tmp_path))
    assert proc.returncode == 1 and "is the list read from standard input" in proc.stderr, proc.stderr
    assert listing.read_text() == f"{image}\n"


@pytest.mark.parametrize("second", ["checkpoint", "run folder", "runs"])
def test_a_second_model_among_the_paths_is_refused_not_read_as_images(tmp_path, ckpt, image, second):
    run = tmp_path / "runs" / "x"
    (run / "report").mkdir(parents=True)
    save_model(run / "best.npz", model.Network(num_classes=3, seed=1), ["a", "b", "c"])
    (run / "config.yaml").write_text("data:\n  train: x\n")                # (as every run folder holds)
    Image.new("L", (32, 32), 10).save(run / "report" / "curves.png")        # (it classified such pictures)
    path = {"checkpoint": run / "best.npz", "run folder": run, "runs": tmp_path / "runs"}[second]
    for args in (("predict", ckpt, path, image), ("predict", "--checkpoint", ckpt, image, path)):
        res = invoke(*args)
        assert res.exit_code == 2, res.output
        assert _last_line(res).startswith(f"Error: {path} "), res.output
        assert "not images to classify; to average models, give each with --checkpoint" in res.output


def test_a_negative_running_variance_is_refused_not_predicted_as_nan(tmp_path, image):
    from cnncli import checkpoint

    path = save_model(tmp_path / "bn.npz", model.Network(num_classes=3, batchnorm="channel", seed=0), ["a", "b", "c"])
    arrays, meta = checkpoint.load(path)
    arrays["buffers/bn2.running_var"][0] = -1.0
    checkpoint.save(path, arrays, meta)
    import importlib.util

    export = [("export", path, "-o", tmp_path / "bn.onnx")] if importlib.util.find_spec("onnx") else []   # (extra)
    for args in [("predict", path, image), *export]:
        res = invoke(*args)
        assert res.exit_code == 1, res.output
        assert _last_line(res) == (f"Error: {path}: array 'buffers/bn2.running_var' holds 1 negative variance(s); "
                                   "refusing a broken checkpoint"), res.output
    assert not (tmp_path / "bn.onnx").exists()


def test_export_to_a_dash_is_refused_not_written_as_a_file_named_dash(tmp_path, ckpt, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("export", ckpt, "-o", "-")
    assert res.exit_code == 2
    assert _last_line(res) == "Error: --out -: export writes the model to a file; give its path, e.g. -o model.onnx"
    assert not (tmp_path / "-").exists()
    res = invoke("export", ckpt, "-o", "")                               # (it said '.: is a folder')
    assert res.exit_code == 2 and _last_line(res) == ("Error: --out: the path is empty; give the .onnx file to "
                                                      "write, e.g. -o model.onnx")
    res = invoke("predict", "--checkpoint", tmp_path / "nope", tmp_path / "x.png")   # (a run folder meant)
    assert res.exit_code == 1
    assert _last_line(res) == f"Error: {tmp_path / 'nope'}: no such checkpoint file or run folder"


def test_a_folder_of_images_that_holds_a_checkpoint_is_still_images(tmp_path, ckpt, image):
    # (a copy of best.npz among the images, or a class folder with one: no config.yaml, no run)
    imgs = tmp_path / "imgs"
    (imgs / "cat").mkdir(parents=True)
    Image.new("L", (32, 32), 40).save(imgs / "cat" / "a.png")
    save_model(imgs / "cat" / "best.npz", model.Network(num_classes=3, seed=1), ["a", "b", "c"])
    for path in (imgs, imgs / "cat"):
        res = invoke("predict", "--checkpoint", ckpt, path)
        assert res.exit_code == 0, res.output
        assert "cat/a.png" in res.stdout


def test_paths_on_standard_input_may_be_nul_separated_or_start_with_a_byte_order_mark(tmp_path, ckpt, image):
    # (find -print0 | cnn predict - ended in a traceback, 'embedded null byte'; a BOM was kept in the first path)
    import json
    import shutil

    odd = tmp_path / "a\nb.png"                         # a name with a newline: only -print0 can pass it
    shutil.copy(image, odd)
    latin = tmp_path / os.fsdecode(b"\xff\xfex.png")               # (`ls` of it starts with bytes FF FE)
    shutil.copy(image, latin)
    for raw, n in ((f"{image}\0{odd}\0".encode(), 2), (b"\xef\xbb\xbf" + f"{image}\n".encode(), 1),
                   (f"{image}\r\n".encode("utf-16"), 1),               # (PowerShell's pipe: UTF-16 with its mark)
                   (f"{image}\n".encode("utf-16-le"), 1),               # (and without it)
                   (os.fsencode(image) + b"\n" + os.fsencode(latin) + b"\n", 2)):
        res = CliRunner().invoke(cli, ["predict", "--checkpoint", str(ckpt), "--json", "-"], input=raw)
        assert res.exit_code == 0, res.output
        paths = [r["path"] for r in json.loads(res.stdout)]
        assert paths[0] == str(image) and len(paths) == n, paths


@pytest.mark.parametrize("typed, meant", [("runs/mesy", "runs/messy"), ("runs/messy/best.npzz", "runs/messy/best.npz"),
                                          ("runs/messy/bset.npz", "runs/messy/best.npz"), ("old.npz", None)])
def test_a_mistyped_checkpoint_is_an_error_not_the_newest_runs_predictions(tmp_path, image, monkeypatch, typed, meant):
    # `cnn predict runs/mesy img.png` classified the image with the newest run under ./runs, unasked
    monkeypatch.chdir(tmp_path)
    save_model(tmp_path / "runs" / "messy" / "best.npz", model.Network(num_classes=3, seed=1), ["a", "b", "c"])
    (tmp_path / "runs" / "messy" / "config.yaml").write_text("out: runs/messy\n")
    res = invoke("predict", typed, image)
    hint = f" (did you mean {meant}?)" if meant else ""
    assert res.exit_code == 1 and res.output == f"Error: {typed}: no such checkpoint or run folder{hint}\n"
    for missing in ("gone.png", "runs/gone.png", "runs/messy/gone.png", "pictures"):   # (a missing image or folder
        res = invoke("predict", missing, image)                                        # is one of the images)
        assert res.exit_code == 1 and "Checkpoint: runs/messy" in res.output, res.output
        assert f"{missing}: no such file or folder" in res.output, res.output
    (tmp_path / "exp1").mkdir()                             # (a run folder in the working folder: `-` is a list)
    (tmp_path / "exp1" / "best.npz").write_bytes((tmp_path / "runs" / "messy" / "best.npz").read_bytes())
    (tmp_path / "exp1" / "config.yaml").write_text("out: exp1\n")
    res = CliRunner().invoke(cli, ["predict", "-"], input=f"{image}\n")
    assert res.exit_code == 0 and str(image) in res.stdout, res.output


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WebP", "ICO", "PPM"])
def test_an_image_piped_in_or_saved_as_a_list_is_named_not_read_as_paths(tmp_path, ckpt, image, fmt):
    # `cat img.jpg | cnn predict -` printed 57 errors for 'paths' cut from the JPEG's bytes; an image
    # named photo.txt was 'not UTF-8 text'
    from cnncli.data.reasons import image_in

    data = tmp_path / f"img.{fmt.lower()}"
    Image.new("L", (32, 32), 90).save(data, fmt)
    res = CliRunner().invoke(cli, ["predict", "--checkpoint", str(ckpt), "-"], input=data.read_bytes())
    named = {"PPM": "PNM"}.get(fmt, fmt)
    assert res.exit_code == 1 and res.output.count("error:") == 1 and (
        f"error: -: standard input holds {'an' if named[0] in 'AEIOU' else 'a'} {named} image, not a list of paths: "
        "give its file name (cnn predict IMAGE)\n") in res.output, res.output
    listed = tmp_path / "photo.txt"
    listed.write_bytes(data.read_bytes())
    res = invoke("predict", ckpt, listed)
    assert res.exit_code == 1 and f"error: {listed}: is " in res.output and "image, not a list of paths" in res.output
    assert image_in(f"GIF89a.png\n{image}\n".encode()) is None                  # (a list is text)
    assert image_in("GIF89a\u00a0holiday.png\n".encode()) is None                # (a non-breaking space too)
    assert image_in(b"GIF89a.png\ncaf\xe9.png\n") is None                         # (a Latin-1 list)
    assert image_in(b"P6 2023 05 sports day.png\nx.png\n") is None                # (a name like a PNM header)
    assert image_in(b"P6 2023 05 12 holiday.png\nx.png\n") is None
    assert image_in(b"P6\n# Created by GIMP\n32 32\n255\n" + bytes(64)) == "a PNM image"   # (with a comment)
    assert image_in(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'") == "a NumPy .npy array"
    assert image_in(ckpt.read_bytes()[:512]) == "a zip archive (a .npz checkpoint?)"


def test_csv_does_not_overwrite_a_runs_training_history(tmp_path, ckpt, image):
    run = tmp_path / "run"
    save_model(run / "best.npz", model.Network(num_classes=3, seed=0), ["a", "b", "c"])
    (run / "config.yaml").write_text("out: run\n")
    (run / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n")
    (tmp_path / "hist.csv").symlink_to(run / "metrics.csv")
    for target in (run / "metrics.csv", tmp_path / "hist.csv", f"{run}/nonexist/../metrics.csv"):
        res = invoke("predict", ckpt, image, "--csv", target)
        assert res.exit_code == 1 and f"is the training history of the run folder {run}" in res.output, res.output
    assert (run / "metrics.csv").read_text() == "epoch,train_loss\n1,0.5\n"
    cv = tmp_path / "cv"                                # (a cnn cv folder has no metrics.csv of its own)
    save_model(cv / "fold-1" / "best.npz", model.Network(num_classes=3, seed=0), ["a", "b", "c"])
    (cv / "fold-1" / "config.yaml").write_text("out: cv/fold-1\n")
    for _ in range(2):
        assert invoke("predict", ckpt, image, "--csv", cv / "metrics.csv").exit_code == 0
    res = invoke("predict", ckpt, image, "--csv", run / "predictions.csv")         # (beside it: fine)
    assert res.exit_code == 0 and (run / "predictions.csv").is_file()


def test_a_zip_that_is_no_checkpoint_and_a_bare_name_beside_a_run_are_images(tmp_path, ckpt, image, monkeypatch):
    # (images.zip, model.pt were taken for checkpoints: 'member 0.png is not a .npy array'; `cnn predict cat imgs`
    # beside a run folder 'cats' aborted with 'did you mean cats?'; runs/MESSY took the newest run unasked)
    import zipfile

    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as z:
        z.write(image, "0.png")
    res = invoke("predict", "--checkpoint", ckpt, "images.zip", image)
    assert "is a checkpoint" not in res.output and str(image) in res.output, res.output
    res = invoke("predict", "images.zip", image)
    assert "images.zip is a checkpoint" not in res.output and "member" not in res.output, res.output
    (tmp_path / "renamed.bin").write_bytes(ckpt.read_bytes())          # (a checkpoint under another name)
    assert invoke("predict", "renamed.bin", image).exit_code == 0
    save_model(tmp_path / "runs" / "messy" / "best.npz", model.Network(num_classes=3, seed=1), ["a", "b", "c"])
    (tmp_path / "runs" / "messy" / "config.yaml").write_text("out: runs/messy\n")
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "best.npz").write_bytes(ckpt.read_bytes())
    (tmp_path / "cats" / "config.yaml").write_text("out: cats\n")
    for missing in ("cat", "cats.txt"):
        res = invoke("predict", missing, image)
        assert f"{missing}: no such" in res.output and "checkpoint or run folder" not in res.output, res.output
    res = invoke("predict", "runs/MESSY", image)
    assert res.exit_code == 1 and res.output == "Error: runs/MESSY: no such checkpoint or run folder (did you mean " \
                                                "runs/messy?)\n"
