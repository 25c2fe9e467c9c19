"""Checkpoint files: an uncompressed .npz of named arrays plus a JSON "__meta__" member.

`save` is atomic (temp file in the same folder, fsync, os.replace); `load` treats the file as
hostile: no pickles, no object arrays, size caps checked before reading, one-line CheckpointError.
This module knows nothing about models or optimizers: it stores and checks named arrays only.
"""

import json
import math
import os
import zipfile

import numpy as np

from .atomic import write_atomic, write_failed
from .errors import CheckpointError, Stopped, one_line

FORMAT_VERSION = 1
META_KEY = "__meta__"
MAX_BYTES = 2 * 1024 ** 3  # default cap on the total uncompressed size of a checkpoint
MAX_RATIO = 20  # declared uncompressed size may be at most this many times the file size


def save(path, arrays, meta) -> None:
    """Write `arrays` (name -> ndarray) and `meta` (JSON-serialisable dict) to `path` atomically.

    Either the new file is complete at `path` or the previous file there is untouched.
    """
    path = os.fspath(path)
    if META_KEY in arrays:
        raise ValueError(f"arrays: the name {META_KEY!r} is reserved for the metadata")
    members = {}
    for name, value in arrays.items():
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise ValueError(f"arrays[{name!r}]: object arrays cannot be stored (dtype {a.dtype})")
        members[name] = a
    meta = dict(meta)
    meta["format_version"] = FORMAT_VERSION
    try:
        raw = json.dumps(meta, ensure_ascii=False, sort_keys=False).encode("utf-8")
    except UnicodeEncodeError:  # a name that is not valid UTF-8 (surrogate escapes): \udcXX round-trips
        raw = json.dumps(meta, ensure_ascii=True, sort_keys=False).encode("ascii")
    members[META_KEY] = np.frombuffer(raw, dtype=np.uint8)  # (bytes,)

    folder = os.path.dirname(os.path.abspath(path))
    had = os.path.isfile(path)                    # (a folder there is no previous file)
    try:
        os.makedirs(folder, exist_ok=True)
        write_atomic(path, lambda f: np.savez(f, **members))
    except OSError as err:                        # full disk, quota, read-only: one line, old file intact
        line = f"{path}: cannot save the checkpoint"
        raise write_failed(err, path, had, lambda words: CheckpointError(f"{line} {words}")) from None
    _fsync_dir(folder)


def _fsync_dir(folder):
    """Make the rename durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path, max_bytes=MAX_BYTES):
    """Read a checkpoint written by `save`: returns (arrays dict, meta dict).

    Never unpickles and never trusts sizes: every problem is a one-line CheckpointError naming
    the file (and the array key when one is at fault).
    """
    path = os.fspath(path)
    zf, infos = _open(path, max_bytes)
    with zf:
        arrays = {key: _read_member(path, zf, key, info) for key, info in infos.items()}
    meta = _parse_meta(path, arrays.pop(META_KEY, None))
    return arrays, meta


def load_meta(path, max_bytes=MAX_BYTES) -> dict:
    """The metadata of a checkpoint, checked as `load` checks it, without reading its arrays (for
    callers that load the whole file later anyway, or only read the run's state)."""
    path = os.fspath(path)
    zf, infos = _open(path, max_bytes)
    with zf:
        raw = _read_member(path, zf, META_KEY, infos[META_KEY]) if META_KEY in infos else None
    return _parse_meta(path, raw)


def is_onnx(path) -> bool:
    """Whether `path` names an ONNX model: a .onnx file name (any case); the file is read later."""
    return os.fspath(path).lower().endswith(".onnx")


def _not_a_zip(path: str) -> str:
    """What a file that zipfile cannot open is, as far as its first bytes and name tell."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if head.startswith(b"PK"):
        return "a damaged or truncated checkpoint (its zip archive cannot be read)"
    if is_onnx(path):
        return "an ONNX model, not a checkpoint: give the .npz it was exported from"
    # an ONNX ModelProto opens with its ir_version (field 1, a small varint), then producer_name,
    # producer_version, domain, model_version, doc_string, graph or opset_import (fields 2-8)
    if len(head) >= 3 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] in b"\x12\x1a\x22\x28\x32\x3a\x42":
        return ("an ONNX model, not a checkpoint: give the .npz it was exported from (cnn info, eval and predict "
                "run an ONNX model from a file whose name ends in .onnx)")
    return "not a checkpoint (.npz zip archive)" + (": the file is empty" if not head else "")


def _open(path: str, max_bytes):
    """(the open zip, its validated members): every problem a one-line CheckpointError."""
    if not os.path.exists(path):
        what = "file" if str(path).lower().endswith(".npz") else "file or run folder"
        from cnncli.data.reasons import missing_hint     # (a quoted ~, Windows' backslashes, ...)

        raise CheckpointError(f"{path}: no such checkpoint {what}{missing_hint(os.fspath(path))}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    try:
        file_size = os.path.getsize(path)
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: {_not_a_zip(path)}") from None
    except Stopped:         # (a stop signal's line, raised while reading: not a damaged file)
        raise
    except Exception as e:  # zipfile raises many types on hostile directories (NotImplementedError, ...)
        raise CheckpointError(f"{path}: cannot open checkpoint: {one_line(e)}") from None
    try:
        return zf, _check_members(path, zf, file_size, max_bytes)
    except BaseException:
        zf.close()
        raise


def _check_members(path, zf, file_size, max_bytes):
    """Validate the zip directory before reading any data: names, duplicates, declared sizes."""
    infos = {}
    total = 0
    for info in zf.infolist():
        name = info.filename
        if not name.endswith(".npy") or info.is_dir():
            raise CheckpointError(f"{path}: member {name!r} is not a .npy array")
        key = name[:-len(".npy")]
        if key in infos:
            raise CheckpointError(f"{path}: array {key!r} appears twice")
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{path}: array {key!r} is encrypted")
        total += info.file_size
        infos[key] = info
    if total > max_bytes:
        raise CheckpointError(
            f"{path}: declared uncompressed size {total} bytes exceeds the limit of {max_bytes} bytes")
    if total > MAX_RATIO * file_size:
        raise CheckpointError(
            f"{path}: declared uncompressed size {total} bytes is over {MAX_RATIO}x the file size "
            f"({file_size} bytes); refusing a possible zip bomb")
    return infos


def _read_member(path, zf, key, info):
    """One array, header checked first: no object dtype, data size consistent with the member."""
    fmt = np.lib.format
    try:
        with zf.open(info) as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            if dtype.hasobject:
                raise CheckpointError(
                    f"{path}: array {key!r} holds Python objects (dtype {dtype}); refusing to unpickle")
            header_end = f.tell()
            declared = math.prod(shape) * dtype.itemsize  # exact: Python ints do not overflow
            if declared != info.file_size - header_end:
                raise CheckpointError(
                    f"{path}: array {key!r} declares {declared} data bytes but holds "
                    f"{info.file_size - header_end}")
        with zf.open(info) as f:
            return fmt.read_array(f, allow_pickle=False)
    except (CheckpointError, Stopped):   # (a stop signal's line, raised while reading: not a damaged file)
        raise
    except Exception as e:  # any decoding failure of an untrusted file is a bad checkpoint
        raise CheckpointError(f"{path}: array {key!r} is unreadable: {one_line(e)}") from None


def _parse_meta(path, raw):
    if raw is None:
        raise CheckpointError(f"{path}: missing {META_KEY!r} (not a cnncli checkpoint)")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path}: {META_KEY!r} must be a 1-D uint8 array, got {raw.dtype} {raw.shape}")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: {META_KEY!r} is not valid UTF-8 JSON: {one_line(e)}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: {META_KEY!r} must be a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: {META_KEY!r} has no integer 'format_version'")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version} is newer than this cnncli supports "
            f"({FORMAT_VERSION}); upgrade cnncli")
    if version < 1:
        raise CheckpointError(f"{path}: invalid format_version {version}")
    _check_meta_types(path, meta, MODEL_META)
    return meta


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# what each metadata key must hold when present (runfolder.save_checkpoint writes them): a hostile or
# damaged file then fails in one line naming the key, not deep in a command as a TypeError. The
# model's keys on every load; the run's (what --resume and --init-from read) in check_run_meta, so
# cnn info and cnn runs still show a model whose run metadata is broken
MODEL_META = {
    "batchnorm": (lambda v: isinstance(v, str), "a string"),
    "dtype": (lambda v: isinstance(v, str), "a string"),
    "num_classes": (lambda v: _count(v), "a whole number"),
    "eps": (lambda v: _number(v) and math.isfinite(v) and v > 0, "a positive number"),
    "classes": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of class names"),
    "preprocess": (lambda v: isinstance(v, dict) and _count(v.get("image_size")) and isinstance(v.get("resize"), str)
                   and _number(v.get("mean")) and math.isfinite(v["mean"])
                   and _number(v.get("std")) and math.isfinite(v["std"]) and v["std"] > 0,
                   "{image_size, resize, mean, std > 0}"),
}
RUN_META = {
    "config": (lambda v: isinstance(v, str), "the config's YAML text"),
    **{k: (_count, "a whole number >= 0") for k in ("epoch", "epoch_step", "step", "correct", "seen", "bad_epochs")},
    "loss_sum": (lambda v: _number(v) and math.isfinite(v), "a finite number"),
    "epoch_time": (lambda v: _number(v) and math.isfinite(v) and v >= 0, "a number of seconds >= 0"),
    "best_val_loss": (lambda v: v is None or _number(v), "a number or null"),
    "best_acc": (lambda v: v is None or _number(v), "a number or null"),
    "stopped_early": (lambda v: isinstance(v, bool), "true or false"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of epoch rows"),
    "data": (lambda v: isinstance(v, dict), "a mapping"),
    "came_from": (lambda v: isinstance(v, list) and all(
        isinstance(r, dict) and isinstance(r.get("checkpoint"), str) and _count(r.get("epoch"))
        and _count(r.get("step")) for r in v), "a list of {checkpoint, epoch, step} rows"),
}


def model_only(meta: dict) -> bool:
    """Whether `meta` describes a model without its run (predictor.save_model's file: no config,
    optimizer state or epochs), which no run can continue and no validation split be rebuilt for."""
    return "config" not in meta and "epoch" not in meta


def check_run_meta(path, meta: dict) -> None:
    """CheckpointError naming the first run-state key of `meta` (config, epoch, step, history, ...)
    that holds the wrong kind of value: what a resume or a fine-tuning start reads."""
    _check_meta_types(path, meta, RUN_META)


def _check_meta_types(path, meta: dict, types: dict) -> None:
    for key, (ok, what) in types.items():
        if key in meta and not ok(meta[key]):
            shown = json.dumps(meta[key])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise CheckpointError(f"{path}: checkpoint metadata {key!r} is {shown}, not {what}; a damaged or "
                                  "hand-edited checkpoint")


def check_arrays(arrays, expected, path) -> None:
    """Check that `arrays` holds exactly the keys of `expected` (name -> (shape, dtype))."""
    for key in expected:
        if key not in arrays:
            shape, dtype = expected[key]
            raise CheckpointError(
                f"{path}: missing array {key!r} (expected shape {tuple(shape)}, dtype {np.dtype(dtype)})")
    for key in arrays:
        if key not in expected:
            raise CheckpointError(f"{path}: unexpected array {key!r} (found shape {np.shape(arrays[key])})")
    for key, (shape, dtype) in expected.items():
        a = arrays[key]
        if tuple(a.shape) != tuple(shape):
            raise CheckpointError(
                f"{path}: array {key!r} has shape {tuple(a.shape)}, expected {tuple(shape)}")
        if a.dtype != np.dtype(dtype):
            raise CheckpointError(f"{path}: array {key!r} has dtype {a.dtype}, expected {np.dtype(dtype)}")
