"""`cnn export --format onnx`: for tiny trained runs of all three network variants, onnxruntime gives
`cnn predict`'s probabilities to 1e-5 on real image files (uint8 and float inputs, batch 1 and 9);
graph, checker and metadata; bad checkpoints, unwritable outputs and a missing onnx: one line, no file.

onnx and onnxruntime are test extras: without them these tests skip, except under CI=true (fail)."""

from __future__ import annotations

import importlib
import json
import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnncli import __version__, data
from cnncli.cli import cli
from cnncli.predictor import Predictor
from e2e_util import draw, make_folder, write_config

VARIANTS = ("none", "channel", "unit")


def _require(name):
    """The module, or a skip; under CI=true a missing test extra fails instead of skipping."""
    if os.environ.get("CI", "").lower() == "true":
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"{name} is not installed (test extra): ONNX export tests skip")


@pytest.fixture(scope="module")
def onnx():
    return _require("onnx")


@pytest.fixture(scope="module")
def ort():
    return _require("onnxruntime")


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{variant: run folder} of one-epoch `cnn train` runs on a 3-class folder, plus probe images:
    the training PNGs/JPEG (some RGB, some 48x48) and non-square files that exercise `pad`."""
    tmp = tmp_path_factory.mktemp("export")
    train = make_folder(tmp / "data", per_class=6, odd_files=False)
    out = {}
    for bn in VARIANTS:
        cfg = write_config(tmp / f"{bn}.yaml", train, tmp / f"run-{bn}", epochs=1, batch_size=6)
        res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--set", f"model.batchnorm={bn}",
                                       "--quiet", "--no-report"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        out[bn] = tmp / f"run-{bn}"
    probe = tmp / "probe"
    probe.mkdir()
    rng = np.random.default_rng(7)
    for i, (w, h) in enumerate([(40, 24), (20, 50), (33, 31)]):
        draw("disc", rng, size=64).resize((w, h)).convert("RGB" if i % 2 else "L").save(probe / f"odd{i}.png")
    files = sorted(p for p in train.rglob("*") if p.is_file())[::3] + sorted(probe.iterdir())
    return tmp, out, [str(f) for f in files]


def _predict_json(run, files, num_classes):
    """`cnn predict --json` -> (N,C) probabilities in class order and the predicted class names."""
    res = invoke(["predict", "--checkpoint", run, "--json", "--top-k", num_classes, *files])
    assert res.exit_code == 0, res.output
    results = json.loads(res.stdout)
    assert [r["path"] for r in results] == files
    classes = Predictor.from_checkpoint(run / "best.npz").classes
    probs = np.array([[{t["class"]: t["probability"] for t in r["top_k"]}[c] for c in classes] for r in results])
    return probs, [r["class"] for r in results], classes


def _export(run, out, kind):
    res = invoke(["export", "--checkpoint", run, "--format", "onnx", "--out", out, "--input", kind])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    return out


def _feed(kind, files, prep):
    """The graph input for `files`, decoded exactly as `cnn predict` does (data.load_image)."""
    images = np.stack([data.load_image(f, image_size=prep["image_size"], resize=prep["resize"]) for f in files])
    if kind == "uint8":
        return images                                                  # (N,32,32) uint8
    x = (images.astype(np.float64) / 255.0 - prep["mean"]) / prep["std"]
    return x.astype(np.float32)[:, None]                               # (N,1,32,32) float32


@pytest.mark.parametrize("kind", ["uint8", "float"])
@pytest.mark.parametrize("bn", VARIANTS)
def test_onnxruntime_matches_cnn_predict(runs, ort, onnx, tmp_path, bn, kind):
    tmp, run_dirs, files = runs
    run = run_dirs[bn]
    want, want_classes, classes = _predict_json(run, files, 3)
    model_path = _export(run, tmp_path / "model.onnx", kind)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (inp,), (outp, logit_out) = session.get_inputs(), session.get_outputs()
    assert (inp.name, outp.name, logit_out.name) == ({"uint8": "pixels", "float": "input"}[kind], "probabilities",
                                                     "logits")
    feed = _feed(kind, files, Predictor.from_checkpoint(run / "best.npz").preprocess)
    batch, logits = session.run(None, {inp.name: feed})               # one call, N = len(files)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits.astype(np.float64))), want, rtol=0, atol=1e-5)
    assert [classes[i] for i in logits.argmax(axis=1)] == want_classes
    single = np.concatenate([session.run(None, {inp.name: feed[i:i + 1]})[0] for i in range(len(files))])
    assert batch.shape == (len(files), len(classes)) == want.shape and batch.dtype == np.float32
    np.testing.assert_allclose(batch, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(single, want, rtol=0, atol=1e-5)
    assert [classes[i] for i in batch.argmax(axis=1)] == want_classes
    assert [classes[i] for i in single.argmax(axis=1)] == want_classes


@pytest.mark.parametrize("bn", VARIANTS)
def test_graph_is_checked_and_folds_batchnorm(runs, onnx, tmp_path, bn):
    _, run_dirs, _ = runs
    model = onnx.load(str(_export(run_dirs[bn], tmp_path / "m.onnx", "uint8")))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    (inp,), (outp, logit_out) = model.graph.input, model.graph.output
    assert (outp.name, logit_out.name) == ("probabilities", "logits") and logit_out.doc_string
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(inp) == ["N", 32, 32] and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims(outp) == ["N", 3] and inp.doc_string and outp.doc_string
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    if bn == "none":
        assert not [n for n in inits if n.startswith("bn")] and "Mul" not in ops
        return
    shapes = {"unit": [(6, 32, 32), (16, 16, 16), (65,)], "channel": [(6, 1, 1), (16, 1, 1), (65,)]}[bn]
    ckpt = Predictor.from_checkpoint(run_dirs[bn] / "best.npz")
    for layer, shape in zip((1, 2, 3), shapes):
        scale, shift = inits[f"bn{layer}.scale"], inits[f"bn{layer}.shift"]
        assert scale.shape == shift.shape == shape
        g, b = ckpt.params[f"bn{layer}.gamma"], ckpt.params[f"bn{layer}.beta"]
        rm, rv = ckpt.buffers[f"bn{layer}.running_mean"], ckpt.buffers[f"bn{layer}.running_var"]
        want_scale = g / np.sqrt(rv + ckpt.eps)
        np.testing.assert_allclose(scale.reshape(want_scale.shape), want_scale, rtol=1e-6)
        np.testing.assert_allclose(shift.reshape(want_scale.shape), b - rm * want_scale, rtol=1e-5, atol=1e-6)
    assert ops.count("Mul") == ops.count("Add") == 3


@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_metadata_round_trip(runs, onnx, ort, tmp_path, kind):
    _, run_dirs, _ = runs
    path = _export(run_dirs["unit"], tmp_path / "m.onnx", kind)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert meta == props
    ckpt = Predictor.from_checkpoint(run_dirs["unit"] / "best.npz")
    assert json.loads(props["classes"]) == ckpt.classes
    prep = json.loads(props["preprocess"])
    assert {k: prep[k] for k in ("image_size", "resize", "mean", "std")} == \
        {k: ckpt.preprocess[k] for k in ("image_size", "resize", "mean", "std")}
    assert prep["normalize"] is True and ckpt.preprocess["std"] != 1.0
    assert (props["cnncli_version"], props["batchnorm"], props["input_kind"]) == (__version__, "unit", kind)
    assert (props["output_name"], props["logits_name"]) == ("probabilities", "logits")
    assert (props["top_k"], props["source_checkpoint"]) == ("3", f"{run_dirs['unit'].name}/best.npz")


def _no_leftovers(folder, before):
    assert sorted(os.listdir(folder)) == sorted(before)


def test_not_a_checkpoint_is_one_line_and_writes_nothing(onnx, tmp_path):
    fake = tmp_path / "notes.npz"
    fake.write_text("just some text\n")
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.zeros(3))                                     # an npz, but not cnncli's
    before = os.listdir(tmp_path)
    for ckpt, words in ((fake, "not a checkpoint"), (plain, "not a cnncli checkpoint")):
        res = invoke(["export", "--checkpoint", ckpt, "--out", tmp_path / "m.onnx"])
        assert res.exit_code == 1, res.output
        assert res.output.count("\n") == 1 and str(ckpt) in res.output and words in res.output
        assert "Traceback" not in res.output
    _no_leftovers(tmp_path, before)


def test_unwritable_outputs_are_one_line_and_leave_nothing(runs, onnx, tmp_path):
    _, run_dirs, _ = runs
    (tmp_path / "file").write_text("x")
    (tmp_path / "adir").mkdir()
    cases = [(tmp_path / "missing" / "m.onnx", "does not exist"), (tmp_path / "file" / "m.onnx", "is not a folder"),
             (tmp_path / "adir", "is a folder")]
    before = os.listdir(tmp_path)
    for out, words in cases:
        res = invoke(["export", "--checkpoint", run_dirs["none"], "--out", out])
        assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
        assert str(out) in res.output and words in res.output and "Traceback" not in res.output
    _no_leftovers(tmp_path, before)
    assert os.listdir(tmp_path / "adir") == []


def test_an_out_that_would_overwrite_a_checkpoint_is_refused(runs, onnx, tmp_path):
    _, run_dirs, _ = runs
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "best.npz").write_bytes((run_dirs["none"] / "best.npz").read_bytes())
    before = (copy / "best.npz").read_bytes()
    (copy / "config.yaml").write_text("keep")
    for out, words in ((copy / "best.npz", "is the checkpoint being exported"),
                       (tmp_path / "model.NPZ", "ends in .npz, a checkpoint's name"),
                       (copy / "config.yaml", "exists and is not a .onnx file; give a new name, or a .onnx")):
        res = invoke(["export", "--checkpoint", copy, "--out", out])
        assert res.exit_code == 1 and res.output == f"Error: {out}: {words}" + res.output.split(words, 1)[1]
        assert res.output.count("\n") == 1
    assert (copy / "best.npz").read_bytes() == before and not (tmp_path / "model.NPZ").exists()
    assert (copy / "config.yaml").read_text() == "keep"
    for _ in range(2):                                            # a .onnx file is replaced
        assert invoke(["export", "--checkpoint", copy, "--out", copy / "m.onnx"]).exit_code == 0
    res = invoke(["export", "--checkpoint", tmp_path / "gone.npz", "--out", copy / "m.onnx"])   # (m.onnx exists)
    assert res.exit_code == 1 and "gone.npz: no such checkpoint file" in res.output


def test_read_only_folder_is_one_line_and_leaves_nothing(runs, onnx, tmp_path, monkeypatch):
    """A mode-555 folder; where this user can write there anyway (root), open() is made to refuse."""
    from cnncli import atomic

    _, run_dirs, _ = runs
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):
        def refuse(path, *a, **kw):
            raise PermissionError(13, "Permission denied", str(path))
        monkeypatch.setattr(atomic, "open", refuse, raising=False)   # where the model file is opened
    try:
        res = invoke(["export", "--checkpoint", run_dirs["none"], "--out", ro / "m.onnx"])
        assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
        assert f"{ro / 'm.onnx'}: cannot write (permission denied: write where you may, or change the folder's " \
            "permissions)" in res.output and "Traceback" not in res.output
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def test_failed_write_keeps_the_old_file_and_no_temp(runs, onnx, tmp_path, monkeypatch):
    _, run_dirs, _ = runs
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous model")

    def broken_save(model, f, *a, **kw):
        f.write(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", broken_save)
    res = invoke(["export", "--checkpoint", run_dirs["none"], "--out", out])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert f"{out}: cannot write (no space left on the device: free some space, or write elsewhere)" in res.output
    assert out.read_bytes() == b"previous model" and os.listdir(tmp_path) == ["m.onnx"]


def test_missing_onnx_package_is_one_line(runs, tmp_path, monkeypatch):
    """`import onnx` fails (sys.modules entry None): a one-line hint to install the extra, no file."""
    _, run_dirs, _ = runs
    monkeypatch.setitem(sys.modules, "onnx", None)
    res = invoke(["export", "--checkpoint", run_dirs["none"], "--out", tmp_path / "m.onnx"])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert "pip install 'cnncli[onnx]'" in res.output and "Traceback" not in res.output
    assert os.listdir(tmp_path) == []


def test_float64_checkpoint_exports_in_float32(onnx, ort, tmp_path):
    """A float64 checkpoint: the graph is float32 and still within 1e-5 of the float64 Predictor."""
    from cnncli import model, optim
    from cnncli.config import load_config
    from cnncli.train import RunState, save_checkpoint

    cfg = load_config(None, ["model.batchnorm=unit", "data.train=x"])
    net = model.Network(num_classes=4, batchnorm="unit", seed=1, dtype=np.float64)
    rng = np.random.default_rng(2)
    for _ in range(3):
        net.train_step(rng.standard_normal((5, 1, 32, 32)), rng.integers(0, 4, 5))
    prep = {"image_size": 32, "resize": "pad", "mean": 0.3, "std": 0.2}
    save_checkpoint(tmp_path / "f64.npz", net, optim.Optimizer("sgd", net.params.flat.size, 0.1, dtype=np.float64),
                    RunState(), cfg, list("abcd"), prep)
    path = _export(tmp_path / "f64.npz", tmp_path / "f64.onnx", "uint8")
    images = rng.integers(0, 256, (6, 32, 32), dtype=np.uint8)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixels": images})[0]
    want = Predictor.from_checkpoint(tmp_path / "f64.npz").predict_proba(images)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["source_dtype"] == "float64"
    save_checkpoint(tmp_path / "bytes.npz", net, optim.Optimizer("sgd", net.params.flat.size, 0.1, dtype=np.float64),
                    RunState(), cfg, ["caf\udce9", "b", "c", "é"], prep)        # a folder named b"caf\xe9"
    path = _export(tmp_path / "bytes.npz", tmp_path / "bytes.onnx", "uint8")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["classes"]) == ["caf\\xe9", "b", "c", "é"]


def test_docs_pil_loader_matches_cnncli(runs, tmp_path):
    """docs/interop.md's Pillow-only loader gives data.load_image's pixels bitwise for each resize, on
    the probe files (PNG, JPEG, RGB, 48x48, non-square), a rotated-by-EXIF JPEG, 16-bit grey PNG and
    TIFF, a CMYK JPEG and transparent LA, RGBA and palette PNGs."""
    from pathlib import Path

    _, _, files = runs
    text = (Path(__file__).resolve().parents[1] / "docs" / "interop.md").read_text()
    start, end = "<!-- pil-gray:start -->\n```python\n", "```\n<!-- pil-gray:end -->"
    scope: dict = {}
    exec(text[text.index(start) + len(start): text.index(end)], scope)  # noqa: S102 - our own doc
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6                                                   # orientation: rotate 90
    draw("bar", np.random.default_rng(3), size=64).resize((60, 30)).save(rotated, exif=exif)
    rng = np.random.default_rng(4)
    extra = [rotated, tmp_path / "deep.png", tmp_path / "deep.tif", tmp_path / "dark16.png", tmp_path / "cmyk.jpg"]
    Image.fromarray(rng.integers(0, 65536, (40, 28)).astype(np.uint16)).save(extra[1])   # 16-bit grey PNG
    Image.fromarray(rng.integers(0, 65536, (28, 40)).astype(np.uint16)).save(extra[2])   # 16-bit grey TIFF
    Image.fromarray(rng.integers(0, 200, (32, 32)).astype(np.uint16)).save(extra[3])     # dark, not 8-bit
    draw("bar", rng, size=48).resize((300, 200)).convert("RGB").convert("CMYK").save(extra[4])   # draft shrinks it
    assert Image.open(extra[1]).mode.startswith("I") and Image.open(extra[4]).mode == "CMYK"
    grey = rng.random((30, 36))                                            # float TIFFs (mode F) in 4 ranges,
    for name, values in (("f01.tif", grey), ("f16.tif", grey * 65535), ("fneg.tif", grey * 2 - 1),
                         ("f04.tif", grey * 4), ("fbig.tif", grey * 1e6)):  # and a 32-bit integer TIFF
        Image.fromarray(values.astype(np.float32)).save(tmp_path / name)
        extra.append(tmp_path / name)
    Image.fromarray((grey * 3000).astype(np.int32)).save(tmp_path / "i32.tif")
    extra.append(tmp_path / "i32.tif")
    assert Image.open(extra[-2]).mode == "F" and Image.open(extra[-1]).mode == "I"
    ink = draw("disc", rng, size=40).resize((50, 36))                      # transparent: dark and light content
    for name, img in (("dark.png", Image.merge("LA", (Image.new("L", ink.size, 30), ink))),
                      ("light.png", Image.merge("RGBA", (ink, ink, ink, ink))),
                      ("pal.png", ink.convert("P"))):
        if name == "pal.png":
            img.info["transparency"] = 0
        img.save(tmp_path / name, **({"transparency": 0} if name == "pal.png" else {}))
        extra.append(tmp_path / name)
    assert {Image.open(f).mode for f in extra[-3:]} == {"LA", "RGBA", "P"}
    checked = [f for f in files] + [str(f) for f in extra]
    assert any(f.endswith(".jpg") for f in checked) and any("odd" in f for f in checked)
    for f in checked:
        for resize in ("pad", "stretch", "crop"):
            assert np.array_equal(scope["load_gray"](f, 32, resize), data.load_image(f, 32, resize)), (f, resize)


def test_an_export_under_another_extension_says_so(runs, onnx, tmp_path):
    _, run_dirs, _ = runs
    res = invoke(["export", "--checkpoint", run_dirs["none"], "--out", tmp_path / "model.txt"])
    assert res.exit_code == 0 and res.stdout.strip() == str(tmp_path / "model.txt")
    assert res.stderr.strip() == (f"note: {tmp_path / 'model.txt'} does not end in .onnx; it holds the ONNX model "
                                  "all the same")
    res = invoke(["export", "--checkpoint", run_dirs["none"], "--out", tmp_path / "m.ONNX"])
    assert res.exit_code == 0 and res.stderr == ""
