"""An ONNX model `cnn export` wrote, read back: its metadata checked (classes, preprocessing),
OnnxPredictor running it with onnxruntime behind the interface `cnn eval` and `cnn predict` use
(ensemble.load), and `cnn info`'s description of it (with the onnx package). Not an exporter
(export.py); another producer's ONNX model, without cnncli's metadata, is refused in one line.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from cnncli import arch
from cnncli.arch import IMAGE_SHAPE
from cnncli.data.decode import RESIZE_MODES
from cnncli.errors import CheckpointError
from cnncli.export import INPUT_KINDS, import_onnx
from cnncli.predictor import input_table


def _check_file(path) -> None:
    """CheckpointError when `path` is no file to read a model from: missing, a folder, empty."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such ONNX model file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not an ONNX model file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: not an ONNX model: the file is empty")


def _json(path, props: dict, key: str, kind):
    try:
        value = json.loads(props[key])
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: ONNX metadata '{key}' is not the JSON cnn export writes ({props[key]!r:.60})")
    return value


def check_metadata(path, props: dict) -> dict:
    """The metadata_props cnn export writes (export.metadata), checked as a checkpoint's are -> a dict
    with classes, preprocess (image_size, resize, mean, std), batchnorm, input_kind, input_name,
    output_name and what else the file records (source_checkpoint, top_k, cnncli_version)."""
    missing = [k for k in ("classes", "preprocess", "input_kind", "input_name", "output_name") if k not in props]
    if missing:
        raise CheckpointError(f"{path}: not an ONNX model cnn export wrote (its metadata has no {missing[0]!r}); cnn "
                              "runs only those: run this one with onnxruntime itself")
    classes = _json(path, props, "classes", list)
    if len(classes) < 2 or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise CheckpointError(f"{path}: ONNX metadata 'classes' does not list 2 or more distinct names")
    prep = _json(path, props, "preprocess", dict)
    for key, kind in (("image_size", int), ("resize", str), ("mean", (int, float)), ("std", (int, float))):
        if not isinstance(prep.get(key), kind) or isinstance(prep.get(key), bool):
            raise CheckpointError(f"{path}: ONNX metadata 'preprocess' lacks a valid '{key}'")
    if prep["image_size"] != IMAGE_SHAPE[-1] or prep["resize"] not in RESIZE_MODES or not prep["std"] > 0:
        raise CheckpointError(f"{path}: ONNX metadata 'preprocess' ({props['preprocess']}) is not one cnn export "
                              f"writes: image_size {IMAGE_SHAPE[-1]}, resize one of {', '.join(RESIZE_MODES)}, std > 0")
    if props["input_kind"] not in INPUT_KINDS:
        raise CheckpointError(f"{path}: ONNX metadata 'input_kind' is {props['input_kind']!r}, not one of "
                              f"{', '.join(INPUT_KINDS)}")
    top_k = props.get("top_k", "")
    return {"classes": classes, "preprocess": {k: prep[k] for k in ("image_size", "resize", "mean", "std")},
            "batchnorm": props.get("batchnorm") if props.get("batchnorm") in arch.BATCHNORM else None,
            "input_kind": props["input_kind"], "input_name": props["input_name"],
            "output_name": props["output_name"], "source_checkpoint": props.get("source_checkpoint"),
            "top_k": int(top_k) if top_k.isdigit() else None, "cnncli_version": props.get("cnncli_version")}


def _import_ort(path):
    try:
        import onnxruntime
    except ImportError as e:
        raise CheckpointError(f"{path}: running an ONNX model needs onnxruntime ({e}); install it with: "
                              "pip install onnxruntime") from None
    return onnxruntime


def _runtime_reason(err: Exception) -> str:
    """onnxruntime's message without its '[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from
    PATH failed:' head, nor the C++ source line and function it names ('/onnxruntime_src/.../model.cc:256
    onnxruntime::Model::Model(...) Unsupported model IR version: 99, ...'), on one line."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text.split(" failed:", 1)[-1].strip() if "Load model from" in text else text
    where = re.match(r"/\S+:\d+ [^(]*\(", text)          # (a source location, then a signature's parentheses)
    if where:
        depth = 1
        for end in range(where.end(), len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                return text[end + 1:].strip() or text
    return text


# what the graph's input must be for each input_kind of the metadata: (onnxruntime's type, rank)
_FEEDS = {"uint8": ("tensor(uint8)", 3), "float": ("tensor(float)", 4)}


def _check_graph(path, info: dict, inputs: dict, outputs: dict) -> None:
    """CheckpointError when the graph does not take and give what its metadata says: the input it names
    of the kind's type and shape ((N,S,S) uint8 or (N,1,S,S) float; a named dimension passes), the
    output it names with a column per class, and no other input."""
    if info["input_name"] not in inputs or info["output_name"] not in outputs:
        raise CheckpointError(f"{path}: its graph lacks the input {info['input_name']!r} or the output "
                              f"{info['output_name']!r} its metadata names")
    side, (dtype, rank) = info["preprocess"]["image_size"], _FEEDS[info["input_kind"]]
    given = inputs[info["input_name"]]
    want = ["N", side, side] if rank == 3 else ["N", 1, side, side]
    if given.type != dtype or len(given.shape) != rank or \
            any(isinstance(g, int) and g != w for g, w in zip(given.shape[1:], want[1:])):
        raise CheckpointError(f"{path}: its graph takes {given.name!r} as {given.type} {list(given.shape)}, not "
                              f"the {dtype} {want} its metadata's input_kind {info['input_kind']!r} means")
    others = sorted(set(inputs) - {info["input_name"]})
    if others:
        raise CheckpointError(f"{path}: its graph takes inputs other than {info['input_name']!r} ({others[0]!r}): "
                              "not the one-input graph cnn export writes")
    width = outputs[info["output_name"]].shape[-1]
    if isinstance(width, int) and width != len(info["classes"]):
        raise CheckpointError(f"{path}: its output has {width} columns but its metadata lists "
                              f"{len(info['classes'])} classes")


class OnnxPredictor:
    """An exported model run by onnxruntime (CPU), as a Predictor for evaluate and predict: classes,
    preprocess, meta, predict_proba. The probabilities are float32 (the graph's) widened to float64."""

    def __init__(self, runtime, path, info: dict):
        self.runtime, self.path, self.info = runtime, os.fspath(path), info   # (onnxruntime's InferenceSession)
        self.classes = list(info["classes"])
        self.preprocess = dict(info["preprocess"])
        self.batchnorm = info["batchnorm"]
        self.meta = {"top_k": info["top_k"]} if info["top_k"] else {}    # (evaluate.checkpoint_top_k reads it)
        self._table = input_table(self.preprocess["mean"], self.preprocess["std"], np.float32)   # (256,)

    @classmethod
    def load(cls, path) -> "OnnxPredictor":
        """The model at `path`; a missing, unreadable or foreign file, or no onnxruntime: one CheckpointError line."""
        _check_file(path)
        ort = _import_ort(path)
        options = ort.SessionOptions()
        options.log_severity_level = 4     # (fatal only: a failed run is our one line, not also its log on stderr)
        try:
            runtime = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
            props = runtime.get_modelmeta().custom_metadata_map
        except Exception as e:          # (onnxruntime's own types: InvalidProtobuf, InvalidArgument, Fail, ...)
            raise CheckpointError(f"{path}: not a readable ONNX model ({_runtime_reason(e)})") from None
        info = check_metadata(path, props)
        _check_graph(path, info, {i.name: i for i in runtime.get_inputs()}, {o.name: o for o in runtime.get_outputs()})
        return cls(runtime, path, info)

    def predict_proba(self, images_u8: np.ndarray, batch_size: int = 256, fast=None) -> np.ndarray:
        """(N,S,S) uint8 -> (N,C) float64 sigmoid outputs, `batch_size` images per run of the graph (fast:
        Predictor's choice of forward, which one graph does not have; cnn predict's chunks pass it)."""
        side = self.preprocess["image_size"]
        if not isinstance(images_u8, np.ndarray) or images_u8.dtype != np.uint8 or images_u8.shape[1:] != (side, side):
            raise ValueError(f"images_u8 must be (N,{side},{side}) uint8, got {getattr(images_u8, 'shape', None)} "
                             f"{getattr(images_u8, 'dtype', type(images_u8).__name__)}")
        n = images_u8.shape[0]
        out = np.empty((n, len(self.classes)), dtype=np.float64)    # (N,C)
        for start in range(0, n, batch_size):
            batch = images_u8[start:start + batch_size]               # (B,S,S) uint8
            feed = batch if self.info["input_kind"] == "uint8" else self._table[batch][:, None]   # (B,1,S,S)
            try:
                got = self.runtime.run([self.info["output_name"]], {self.info["input_name"]: feed})[0]   # (B,C)
            except Exception as e:      # (onnxruntime's own types: a graph that fails on real input)
                raise CheckpointError(f"{self.path}: onnxruntime could not run it ({_runtime_reason(e)})") from None
            if getattr(got, "shape", None) != (len(batch), len(self.classes)):
                raise CheckpointError(f"{self.path}: its output for {len(batch)} image(s) is "
                                      f"{list(getattr(got, 'shape', []))}, not [{len(batch)}, {len(self.classes)}] "
                                      "(a column per class of its metadata)")
            out[start:start + len(batch)] = got
        return out


def _value_info(onnx, v) -> dict:
    """{name, type, shape} of a graph input or output (shape: numbers, or the name of a dynamic dim)."""
    t = v.type.tensor_type
    dtype = str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)) if t.elem_type else "?"
    return {"name": v.name, "type": dtype,
            "shape": [d.dim_param or d.dim_value for d in t.shape.dim]}


def describe(path) -> dict:
    """What `cnn info` shows of an exported ONNX model, JSON-ready; read with the onnx package (a
    missing one, a corrupt or foreign file: one CheckpointError line). Runs nothing."""
    _check_file(path)
    onnx = import_onnx("cnn info reads an ONNX model with")
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as e:          # (protobuf's DecodeError, ...)
        raise CheckpointError(f"{path}: not a readable ONNX model ({str(e).strip() or type(e).__name__})") from None
    info = check_metadata(path, {p.key: p.value for p in model.metadata_props})
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    ops: dict = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"model": os.fspath(path), "bytes": os.path.getsize(path), "format": "onnx",
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "ir_version": int(model.ir_version), "opset": opsets.get("ai.onnx"),
            **{k: info[k] for k in ("classes", "preprocess", "batchnorm", "input_kind", "source_checkpoint", "top_k")},
            "inputs": [_value_info(onnx, v) for v in model.graph.input],
            "outputs": [_value_info(onnx, v) for v in model.graph.output],
            "operators": ops,
            "parameters": int(sum(int(np.prod(t.dims)) for t in model.graph.initializer)),
            "source_dtype": next((p.value for p in model.metadata_props if p.key == "source_dtype"), None)}


def _io_text(v: dict) -> str:
    return f"{v['name']} {v['type']} [{', '.join(map(str, v['shape']))}]"


def format_info(d: dict) -> str:
    """The text `cnn info` prints for describe()'s dict (summary.format_info's layout)."""
    from cnncli.data.names import listed, told_apart
    from cnncli.runfolder import printable
    from cnncli.summary import _bytes

    prep = d["preprocess"]
    normalize = (f"(pixel/255 - {prep['mean']:.4f}) / {prep['std']:.4f}"
                 + (" inside the graph" if d["input_kind"] == "uint8" else " before the graph (float input)"))
    lines = [
        f"model       {printable(d['model'])} (ONNX, {_bytes(d['bytes'])}, {printable(d['producer'])}, "
        f"IR {d['ir_version']}, opset {d['opset']})",
        f"classes     {len(d['classes'])}: {', '.join(told_apart(d['classes'], listed))}",
        f"input       {prep['image_size']}x{prep['image_size']} grayscale (resize: {prep['resize']}), "
        f"normalized as {normalize}",
        f"network     batchnorm {d['batchnorm'] or 'unknown'}"
        + (" (folded into a scale and shift)" if d["batchnorm"] not in (None, "none") else "")
        + f", float32 from a {d['source_dtype'] or 'float32'} checkpoint, {d['parameters']:,} values",
        "inputs      " + "; ".join(map(_io_text, d["inputs"])),
        "outputs     " + "; ".join(map(_io_text, d["outputs"])),
        "operators   " + ", ".join(f"{op} {n}" for op, n in d["operators"].items()),
    ]
    if d["source_checkpoint"]:
        lines.append(f"exported    from {printable(d['source_checkpoint'])}"
                     + (f" (eval's top-k: {d['top_k']})" if d["top_k"] else ""))
    return "\n".join(lines)
