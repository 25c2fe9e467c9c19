"""cnn reads back the ONNX models cnn export writes: `cnn eval` and `cnn predict` on the .onnx give the
.npz's metrics and classes (onnxruntime's float32 against numba/NumPy: probabilities within 1e-5,
the tolerance test_export.py holds the graph to), `cnn info` shows what the file holds; a missing
onnxruntime or onnx, a foreign or corrupt .onnx, and the places an ONNX model cannot go (an ensemble,
eval without --data, report, resume, export): one line each.

onnx and onnxruntime are test extras: without them these tests skip (pytest.importorskip)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cnncli.cli import cli
from e2e_util import make_folder, write_config

ATOL = 1e-5         # float32 onnxruntime against cnn's float32 numba/NumPy forward, per probability


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, run folder, data folder, {kind: exported .onnx}) of a one-epoch channel-BN run trained
    with train.top_k 2 (the .onnx records it), exported with uint8 and float inputs."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    tmp = tmp_path_factory.mktemp("onnxread")
    data = make_folder(tmp / "data", per_class=6, odd_files=False)
    cfg = write_config(tmp / "c.yaml", data, tmp / "run", epochs=1, batch_size=6)
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--set", "model.batchnorm=channel",
                                   "--set", "train.top_k=2", "--quiet", "--no-report"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    models = {}
    for kind in ("uint8", "float"):
        models[kind] = tmp / f"m-{kind}.onnx"
        assert invoke("export", tmp / "run", "-o", models[kind], "--input", kind).exit_code == 0
    return tmp, tmp / "run", data, models


def _one_line_error(res, path, *parts, code=1):
    assert res.exit_code == code, res.output
    assert res.output.startswith(f"Error: {path}: ") and len(res.output.splitlines()) == 1, res.output
    for part in parts:
        assert part in res.output, res.output


@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_eval_of_the_onnx_gives_the_npz_metrics(trained, kind):
    _, run, data, models = trained
    want = json.loads(invoke("eval", "--checkpoint", run, "--data", data, "--json").stdout)
    res = invoke("eval", "--checkpoint", models[kind], "--data", data, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["checkpoint"] == str(models[kind]) and got["top_k"] == want["top_k"] == 2     # (recorded at export)
    for key in ("accuracy", "top_k_accuracy", "confusion", "classes", "per_class", "macro_f1", "num_images"):
        assert got[key] == want[key], key
    assert got["loss"] == pytest.approx(want["loss"], abs=ATOL)


def test_the_onnx_probabilities_are_the_npz_ones(trained):
    from cnncli.ensemble import load
    from cnncli.evaluate import evaluate_predictor

    _, run, data, models = trained
    _, _, want = evaluate_predictor(load([run])[0], data)
    for kind in models:
        predictor, files = load([models[kind]])
        assert files == [models[kind]] and predictor.classes == ["bar", "column", "disc"]
        _, _, got = evaluate_predictor(predictor, data)
        assert got.dtype == np.float64 and got.shape == want.shape == (18, 3)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("chunk", [None, 4])
def test_predict_with_the_onnx_gives_the_npz_classes(trained, monkeypatch, chunk):
    from cnncli import predictions

    _, run, data, models = trained
    want = json.loads(invoke("predict", run, data, "--json", "--top-k", 3).stdout)
    if chunk:                                           # (cnn predict's chunks: 18 images, 4 at a time)
        monkeypatch.setattr(predictions, "PREDICT_CHUNK", chunk)
    for args in (["--checkpoint", models["uint8"], data], [models["float"], data]):     # (both model forms)
        res = invoke("predict", *args, "--json", "--top-k", 3)
        assert res.exit_code == 0, res.output
        got = json.loads(res.stdout)
        assert [(r["path"], r["class"]) for r in got] == [(r["path"], r["class"]) for r in want]
        for g, w in zip(got, want):
            assert {t["class"]: t["probability"] for t in g["top_k"]} == \
                pytest.approx({t["class"]: t["probability"] for t in w["top_k"]}, abs=ATOL)


def test_info_shows_what_the_onnx_holds(trained):
    tmp, run, _, models = trained
    res = invoke("info", models["uint8"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"model       {models['uint8']} (ONNX, ") and "opset 17" in lines[0]
    assert "classes     3: bar, column, disc" in lines
    assert any(line.startswith("input       32x32 grayscale (resize: pad), normalized as (pixel/255 - ")
               for line in lines)
    assert "batchnorm channel (folded into a scale and shift)" in res.stdout
    assert "inputs      pixels uint8 [N, 32, 32]" in lines
    assert "outputs     probabilities float32 [N, 3]; logits float32 [N, 3]" in lines
    assert f"exported    from {run.name}/best.npz (eval's top-k: 2)" in lines
    summary = json.loads(invoke("info", models["float"], "--json").stdout)
    assert summary["classes"] == ["bar", "column", "disc"] and summary["input_kind"] == "float"
    assert [i["name"] for i in summary["inputs"]] == ["input"]
    assert summary["source_checkpoint"] == f"{run.name}/best.npz"


def test_a_missing_onnxruntime_is_one_line(trained, monkeypatch):
    _, _, data, models = trained
    monkeypatch.setitem(sys.modules, "onnxruntime", None)           # (import onnxruntime fails)
    _one_line_error(invoke("predict", models["uint8"], data / "disc"), models["uint8"], "pip install onnxruntime")
    _one_line_error(invoke("eval", models["uint8"], "--data", data), models["uint8"], "pip install onnxruntime")


def test_a_missing_onnx_for_info_is_one_line(trained, monkeypatch):
    _, _, _, models = trained
    monkeypatch.setitem(sys.modules, "onnx", None)
    res = invoke("info", models["uint8"])
    assert res.exit_code == 1 and len(res.output.splitlines()) == 1, res.output
    assert "cnn info reads an ONNX model with the onnx package" in res.output
    assert "pip install 'cnncli[onnx]'" in res.output


def test_a_foreign_corrupt_or_empty_onnx_is_one_line_naming_it(trained):
    import onnx

    tmp, _, data, models = trained
    foreign = onnx.load(str(models["uint8"]))
    del foreign.metadata_props[:]                                    # (another producer's model: no cnncli metadata)
    onnx.save(foreign, str(tmp / "foreign.onnx"))
    (tmp / "corrupt.onnx").write_bytes(models["uint8"].read_bytes()[:5000])    # (cut short)
    (tmp / "empty.onnx").write_bytes(b"")
    cases = {"foreign.onnx": "not an ONNX model cnn export wrote (its metadata has no 'classes')",
             "corrupt.onnx": "not a readable ONNX model (", "empty.onnx": "not an ONNX model: the file is empty"}
    for name, why in cases.items():
        path = tmp / name
        _one_line_error(invoke("predict", path, data / "disc"), path, why)
        _one_line_error(invoke("eval", "--checkpoint", path, "--data", data), path, why)
        _one_line_error(invoke("info", path), path, why)


def test_where_an_onnx_cannot_go_is_one_line(trained):
    tmp, run, data, models = trained
    m = models["uint8"]
    _one_line_error(invoke("eval", m, run, "--data", data), m, "an ONNX model does not join an ensemble")
    _one_line_error(invoke("predict", "--checkpoint", run, "--checkpoint", m, data), m, "does not join an ensemble")
    _one_line_error(invoke("eval", m), m, "an ONNX model holds no run to rebuild its validation images from; "
                                          "pass --data", code=2)          # (a usage error: exit 2)
    _one_line_error(invoke("report", m), m, "an ONNX model holds no run to draw")
    _one_line_error(invoke("export", m, "-o", tmp / "again.onnx"), m, "an ONNX model, not a checkpoint")
    assert not (tmp / "again.onnx").exists()
    res = invoke("train", "--resume", m)
    assert res.exit_code != 0 and "an ONNX model, not a checkpoint" in res.output and "Traceback" not in res.output


def test_an_onnx_among_the_images_or_alone_is_named_as_a_model(trained):
    _, run, data, models = trained
    m = models["uint8"]
    for args in ((run, data / "disc", m), ("--checkpoint", run, m), (m, data / "disc", models["float"])):
        res = invoke("predict", *args)                     # (not classified as an image that fails to decode)
        assert res.exit_code == 2 and res.output.splitlines()[-1].startswith(f"Error: {args[-1]} is an ONNX model, "
                                                                             "not images to classify"), res.output
    res = invoke("predict", m)
    assert res.exit_code == 2 and f"Error: {m} is an ONNX model: give the images to classify after it" in res.output


def _graph_with_our_metadata(tmp, name, nodes, inputs, inits, out_shape):
    """A .onnx of these nodes with the metadata cnn export writes (classes bar, column, disc; input_kind
    uint8): a graph cnn export did not make that claims to be one."""
    import onnx
    from onnx import TensorProto, helper

    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, out_shape)
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, [out], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"classes": '["bar", "column", "disc"]', "input_kind": "uint8",
                                   "preprocess": '{"image_size": 32, "resize": "pad", "mean": 0.5, "std": 0.25}',
                                   "input_name": "pixels", "output_name": "probabilities"})
    onnx.save(model, str(tmp / name))
    return tmp / name


def test_a_graph_that_does_not_take_or_give_what_its_metadata_says_is_one_line(trained, capfd):
    import onnx
    from onnx import TensorProto, helper

    tmp, _, data, _ = trained
    pixels = helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", 32, 32])
    to_rows = [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
               helper.make_node("Flatten", ["f"], ["x"])]
    cases = {   # (each was a traceback from onnxruntime's run, or NumPy's assignment of its output)
        "float28.onnx": ([helper.make_node("Flatten", ["pixels"], ["x"]), helper.make_node("MatMul", ["x", "w"], ["p"]),
                          helper.make_node("Sigmoid", ["p"], ["probabilities"])],
                         [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 1, 28, 28])],
                         [helper.make_tensor("w", TensorProto.FLOAT, [784, 3], [0.0] * 2352)],
                         "its graph takes 'pixels' as tensor(float) ['N', 1, 28, 28], not the tensor(uint8)"),
        "fails.onnx": (to_rows + [helper.make_node("Reshape", ["x", "s"], ["probabilities"])], [pixels],
                       [helper.make_tensor("s", TensorProto.INT64, [2], [-1, 5])],
                       "onnxruntime could not run it ("),              # (1024 values a row: no rows of 5)
    }
    for name, (nodes, inputs, inits, why) in cases.items():
        path = _graph_with_our_metadata(tmp, name, nodes, inputs, inits, ["N", 3])
        _one_line_error(invoke("predict", path, data / "disc"), path, why)
        _one_line_error(invoke("eval", "--checkpoint", path, "--data", data), path, why)
        assert capfd.readouterr().err == ""     # (onnxruntime logs no error of its own on the descriptor)
    six = to_rows + [helper.make_node("Slice", ["x", "a", "b", "axis"], ["y"]),
                     helper.make_node("Reshape", ["y", "s"], ["probabilities"])]      # (N,6) as (2N,3)
    path = _graph_with_our_metadata(tmp, "rows.onnx", six, [pixels],
                                    [helper.make_tensor("a", TensorProto.INT64, [1], [0]),
                                     helper.make_tensor("b", TensorProto.INT64, [1], [6]),
                                     helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
                                     helper.make_tensor("s", TensorProto.INT64, [2], [-1, 3])], ["N", 3])
    _one_line_error(invoke("predict", path, data / "disc"), path, "its output for 6 image(s) is [12, 3], not [6, 3]")
    ir99 = onnx.load(str(trained[3]["uint8"]))
    ir99.ir_version = 99                       # (onnxruntime's reason, without its C++ source line and function)
    onnx.save(ir99, str(tmp / "ir99.onnx"))
    _one_line_error(invoke("predict", tmp / "ir99.onnx", data / "disc"), tmp / "ir99.onnx",
                    "not a readable ONNX model (Unsupported model IR version: 99")


def test_an_onnx_under_another_name_is_told_as_one(trained):
    tmp, _, data, models = trained
    renamed = tmp / "model.bin"                         # (or a symlink `model` to it)
    renamed.write_bytes(models["uint8"].read_bytes())
    why = "an ONNX model, not a checkpoint: give the .npz it was exported from (cnn info, eval and predict run"
    _one_line_error(invoke("predict", "--checkpoint", renamed, data / "disc"), renamed, why)
    _one_line_error(invoke("eval", renamed, "--data", data), renamed, why)
    _one_line_error(invoke("info", renamed), renamed, why)


def test_a_mistyped_onnx_name_is_told_the_one_beside_it(trained, monkeypatch):
    tmp, _, data, models = trained
    monkeypatch.chdir(tmp)
    res = invoke("predict", "m-unit8.onnx", data / "disc")            # (m-uint8.onnx, two letters swapped)
    assert res.exit_code == 1 and res.output == "Error: m-unit8.onnx: no such ONNX model file (did you mean " \
                                                "m-uint8.onnx?)\n", res.output
