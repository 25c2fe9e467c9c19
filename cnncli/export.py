"""`cnn export`: a checkpoint's inference network as an ONNX model, built with onnx.helper.

The graph computes what infer.py computes (BN with running statistics folded into a scale and shift,
per unit or per channel), in float32, with a dynamic batch dimension; it needs the optional `onnx`
package (cnncli[onnx]). This module does not run models (onnxruntime does: docs/interop.md) nor train.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import __version__
from .arch import IMAGE_SHAPE
from .atomic import folder_problem, kept, why_unwritten, write_atomic
from .errors import CnnError
from .infer import bn_folds
from .predictor import Predictor, input_table
from .runfolder import printable

OPSET = 17          # onnxruntime runs opsets 7..23 (1.20+); 17 keeps older runtimes working too
IR_VERSION = 8      # the IR version that introduced opset 17
INPUT_KINDS = ("uint8", "float")
INPUT_NAMES = {"uint8": "pixels", "float": "input"}
OUTPUT_NAME = "probabilities"
INPUT_DOCS = {
    "uint8": "pixels: (N,32,32) uint8 grayscale images, already decoded and resized as the checkpoint's "
             "preprocessing says (metadata 'preprocess'); the graph applies (v/255 - mean) / std itself.",
    "float": "input: (N,1,32,32) float32 normalized images, (v/255 - mean) / std of the uint8 pixels v "
             "with mean and std of the metadata 'preprocess'.",
}
OUTPUT_DOC = ("probabilities: (N,C) float32, the sigmoid output of each class (independent, not summing "
              "to 1); the class names are the metadata 'classes' in column order.")
LOGITS_NAME = "logits"
LOGITS_DOC = ("logits: (N,C) float32, fc2's output before the sigmoid, in the same columns: a runtime's Sigmoid "
              "may round probabilities under about 1e-7 to 0, so rank classes by these when such matter.")


class ExportError(CnnError):
    """Export impossible: onnx missing, output path unusable."""


def import_onnx(needs: str = "cnn export needs"):
    """The onnx module, or ExportError naming the extra to install (`needs`: who needs it)."""
    try:
        import onnx
        from onnx import checker, helper, numpy_helper  # noqa: F401  (submodules used below)
    except ImportError as e:
        raise ExportError(f"{needs} the onnx package ({e}); install it with: "
                          "pip install 'cnncli[onnx]'") from None
    return onnx


def _check_out(out: Path, checkpoint) -> None:
    """ExportError when `out` cannot be a file we create: its folder is missing or not a folder,
    `out` is a folder, the checkpoint being exported, named like a checkpoint (.npz), or an existing
    file other than a .onnx one (a run's config.yaml, say): slips that would put an ONNX model where
    another file was. Whether the folder is writable shows when writing."""
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; give the .onnx file to write")
    if out.exists() and os.path.exists(checkpoint) and os.path.samefile(out, checkpoint):
        raise ExportError(f"{out}: is the checkpoint being exported; give the .onnx file to write")
    if out.suffix.lower() == ".npz":
        raise ExportError(f"{out}: ends in .npz, a checkpoint's name; an ONNX model goes into a .onnx file")
    if out.exists() and out.suffix.lower() != ".onnx":
        raise ExportError(f"{out}: exists and is not a .onnx file; give a new name, or a .onnx file to replace")
    problem = folder_problem(out)
    if problem:
        raise ExportError(f"{out}: {problem}")


def _input_nodes(helper, kind: str, table: np.ndarray, inits: list) -> tuple[list, str]:
    """Nodes from the graph input to the (N,1,32,32) float32 network input -> (nodes, its name).

    uint8: a lookup in the 256-entry table of predictor.input_table (the exact values `cnn predict`
    feeds the network), then a channel axis; float: the input is "x" already."""
    from onnx import TensorProto

    if kind == "float":
        return [], INPUT_NAMES["float"]
    inits.append(("input_table", table))                             # (256,)
    inits.append(("channel_axis", np.array([1], dtype=np.int64)))
    nodes = [
        helper.make_node("Cast", [INPUT_NAMES["uint8"]], ["pixel_index"], name="to_index",
                         to=TensorProto.INT32),
        helper.make_node("Gather", ["input_table", "pixel_index"], ["normalized"], name="normalize", axis=0),
        helper.make_node("Unsqueeze", ["normalized", "channel_axis"], ["x"], name="add_channel"),
    ]
    return nodes, "x"


def _bn_nodes(helper, layer: int, src: str, folds: dict, inits: list) -> tuple[list, str]:
    """z * scale + shift for BN layer `layer` (nothing without BN) -> (nodes, output name)."""
    if not folds:
        return [], src
    scale, shift = folds[layer]
    inits += [(f"bn{layer}.scale", scale), (f"bn{layer}.shift", shift)]
    nodes = [helper.make_node("Mul", [src, f"bn{layer}.scale"], [f"bn{layer}.scaled"], name=f"bn{layer}.scale"),
             helper.make_node("Add", [f"bn{layer}.scaled", f"bn{layer}.shift"], [f"bn{layer}.out"],
                              name=f"bn{layer}.shift")]
    return nodes, f"bn{layer}.out"


def _network_nodes(helper, params, folds: dict, src: str, inits: list) -> list:
    """conv [BN] maxpool ELU twice, flatten (C order), fc1 [BN] ELU, fc2, sigmoid: infer._forward's
    order (pool before ELU: ELU increases, so both orders give the same values)."""
    nodes = []
    for layer, conv in ((1, "conv1"), (2, "conv2")):
        inits += [(f"{conv}.w", params[f"{conv}.w"]), (f"{conv}.b", params[f"{conv}.b"])]
        nodes.append(helper.make_node("Conv", [src, f"{conv}.w", f"{conv}.b"], [f"{conv}.out"], name=conv,
                                      kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=[1, 1]))
        bn, src = _bn_nodes(helper, layer, f"{conv}.out", folds, inits)
        nodes += bn
        nodes += [helper.make_node("MaxPool", [src], [f"pool{layer}.out"], name=f"pool{layer}",
                                   kernel_shape=[2, 2], strides=[2, 2]),
                  helper.make_node("Elu", [f"pool{layer}.out"], [f"elu{layer}.out"], name=f"elu{layer}", alpha=1.0)]
        src = f"elu{layer}.out"
    nodes.append(helper.make_node("Flatten", [src], ["flat"], name="flatten", axis=1))      # (N,1024)
    inits += [("fc1.w", params["fc1.w"]), ("fc1.b", params["fc1.b"])]
    nodes.append(helper.make_node("Gemm", ["flat", "fc1.w", "fc1.b"], ["fc1.out"], name="fc1", transB=1))
    bn, src = _bn_nodes(helper, 3, "fc1.out", folds, inits)
    nodes += bn
    nodes.append(helper.make_node("Elu", [src], ["elu3.out"], name="elu3", alpha=1.0))       # (N,65)
    inits += [("fc2.w", params["fc2.w"]), ("fc2.b", params["fc2.b"])]
    nodes += [helper.make_node("Gemm", ["elu3.out", "fc2.w", "fc2.b"], [LOGITS_NAME], name="fc2", transB=1),
              helper.make_node("Sigmoid", [LOGITS_NAME], [OUTPUT_NAME], name="sigmoid")]       # (N,C)
    return nodes


def metadata(predictor: Predictor, kind: str, source=None) -> dict:
    """The model's metadata_props: every value a string (JSON for the structured ones). source: the
    checkpoint file exported, recorded as its folder's name and its own (runs/demo/best.npz as
    demo/best.npz: a shipped file names no folder of the machine it was made on; `cnn info` shows
    it); top_k: its config's train.top_k
    (`cnn eval` of the ONNX model reports the same top-k accuracy)."""
    from .evaluate import checkpoint_top_k

    prep = predictor.preprocess
    mean, std = float(prep["mean"]), float(prep["std"])
    return {
        # (a class folder whose name is not UTF-8 is written with its bad bytes as \xNN, as the CLI prints it)
        "classes": json.dumps([printable(c) for c in predictor.classes], ensure_ascii=False),
        "preprocess": json.dumps({"image_size": int(prep["image_size"]), "resize": prep["resize"], "mean": mean,
                                  "std": std, "normalize": not (mean == 0.0 and std == 1.0)}),
        "cnncli_version": __version__,
        "batchnorm": predictor.batchnorm,
        "input_kind": kind,
        "input_name": INPUT_NAMES[kind],
        "output_name": OUTPUT_NAME,
        "logits_name": LOGITS_NAME,
        "source_dtype": str(predictor.params.flat.dtype),
        "top_k": str(checkpoint_top_k(predictor.meta)),
        **({"source_checkpoint": printable(_last_two(source))} if source is not None else {}),
    }


def _last_two(path) -> str:
    """'demo/best.npz' of runs/demo/best.npz (or of /home/a/runs/demo/best.npz)."""
    full = os.path.abspath(os.fspath(path))
    return f"{os.path.basename(os.path.dirname(full))}/{os.path.basename(full)}"


def build_model(predictor: Predictor, kind: str = "uint8", source=None):
    """An onnx.ModelProto of the predictor's network (float32, opset OPSET), checked by onnx.checker;
    source: the checkpoint file it comes from, for the metadata."""
    onnx = import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    if kind not in INPUT_KINDS:
        raise ValueError(f"kind must be one of {INPUT_KINDS}, got {kind!r}")
    f32 = np.dtype(np.float32)
    params = {k: np.ascontiguousarray(v, dtype=f32) for k, v in predictor.params.items()}
    folds = {k: (s.astype(f32), t.astype(f32)) for k, (s, t) in
             bn_folds(predictor.params, predictor.buffers, predictor.batchnorm, predictor.eps,
                       predictor.params.flat.dtype).items()}
    table = input_table(predictor.preprocess["mean"], predictor.preprocess["std"], f32)   # (256,)
    inits: list = []
    nodes, src = _input_nodes(helper, kind, table, inits)
    nodes += _network_nodes(helper, params, folds, src, inits)
    shape = ["N", *IMAGE_SHAPE] if kind == "float" else ["N", *IMAGE_SHAPE[1:]]
    elem = TensorProto.FLOAT if kind == "float" else TensorProto.UINT8
    graph = helper.make_graph(
        nodes, "cnncli", [helper.make_tensor_value_info(INPUT_NAMES[kind], elem, shape, INPUT_DOCS[kind])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", len(predictor.classes)], OUTPUT_DOC),
         helper.make_tensor_value_info(LOGITS_NAME, TensorProto.FLOAT, ["N", len(predictor.classes)], LOGITS_DOC)],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(a), name) for name, a in inits],
        doc_string=f"cnncli {predictor.batchnorm} network: {INPUT_DOCS[kind]} -> {OUTPUT_DOC} And {LOGITS_DOC}")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="cnncli", producer_version=__version__)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, metadata(predictor, kind, source))
    onnx.checker.check_model(model, full_check=True)
    return model


def _write_atomic(onnx, model, out: Path) -> None:
    """`out` whole or untouched (atomic.write_atomic); an OSError becomes one ExportError line."""
    previous = kept(out)
    try:
        write_atomic(out, lambda f: onnx.save_model(model, f))
    except OSError as e:
        raise ExportError(f"{out}: cannot write ({why_unwritten(e, out)}){previous}") from None


def export_onnx(checkpoint, out, kind: str = "uint8") -> Path:
    """Write the checkpoint file `checkpoint` as an ONNX model at `out` (see build_model) -> out."""
    onnx = import_onnx()
    out = Path(out)
    _check_out(out, checkpoint)
    model = build_model(Predictor.from_checkpoint(checkpoint), kind, checkpoint)
    _write_atomic(onnx, model, out)
    return out
