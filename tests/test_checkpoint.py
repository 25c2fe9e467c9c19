"""Checkpoint save/load: round trip, atomicity under failure, and every hostile-file case."""

import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncli import checkpoint
from cnncli.checkpoint import FORMAT_VERSION, check_arrays, load, load_meta, save
from cnncli.errors import CheckpointError


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "params/conv1.w": rng.normal(size=(6, 1, 5, 5)).astype(np.float32),
        "params/fc2.b": np.zeros(12, np.float64),
        "optim/optim.t": np.array([7], np.int64),
        "rng/state": np.arange(5, dtype=np.uint64),
        "scalar": np.array(3.5),
    }


META = {"num_classes": 12, "classes": ["a", "b", "ü"], "best_val_loss": 0.25, "config": "x: 1\n",
        "worst": float("inf"), "history": [{"epoch": 1, "lr": 0.001}]}


def _write_npz(path, members, compression=zipfile.ZIP_STORED):
    """Write raw .npy members (name -> bytes) into a zip, bypassing `save`."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _npy_bytes(a, allow_pickle=False):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def _meta_bytes(meta):
    return _npy_bytes(np.frombuffer(json.dumps(meta).encode(), np.uint8))


# -- round trip ---------------------------------------------------------------------------------

def test_round_trip(tmp_path):
    path = tmp_path / "deep" / "er" / "last.npz"  # parent folders are created
    arrays = _arrays()
    save(path, arrays, META)
    got, meta = load(path)
    assert set(got) == set(arrays)
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype and got[k].shape == a.shape
        np.testing.assert_array_equal(got[k], a)
    assert meta == {**META, "format_version": FORMAT_VERSION}
    assert os.listdir(path.parent) == ["last.npz"]  # no temp files left behind
    with zipfile.ZipFile(path) as zf:  # uncompressed, as documented
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "c.npz"
    save(path, {"a": np.zeros(3)}, {"n": 1})
    save(path, {"b": np.ones(2)}, {"n": 2})
    arrays, meta = load(path)
    assert list(arrays) == ["b"] and meta["n"] == 2


def test_save_rejects_object_arrays_and_reserved_name(tmp_path):
    with pytest.raises(ValueError, match="'x'"):
        save(tmp_path / "c.npz", {"x": np.array([1, "a"], dtype=object)}, {})
    with pytest.raises(ValueError, match="__meta__"):
        save(tmp_path / "c.npz", {"__meta__": np.zeros(1)}, {})
    assert os.listdir(tmp_path) == []


# -- atomicity -------------------------------------------------------------------------------------

def _boom(*args, **kwargs):
    raise OSError("disk on fire")


@pytest.mark.parametrize("target", ["fsync", "savez", "replace", "savez_partial"])
def test_failed_save_keeps_old_file(tmp_path, monkeypatch, target):
    path = tmp_path / "last.npz"
    save(path, {"a": np.arange(10.0)}, {"epoch": 1})
    before = path.read_bytes()
    if target == "fsync":
        monkeypatch.setattr(checkpoint.os, "fsync", _boom)
    elif target == "replace":
        monkeypatch.setattr(checkpoint.os, "replace", _boom)
    elif target == "savez":
        monkeypatch.setattr(checkpoint.np, "savez", _boom)
    else:
        real = np.savez

        def partial(f, **kw):  # write half an archive, then fail
            real(f, **kw)
            f.seek(0)
            f.truncate(100)
            raise OSError("disk full")

        monkeypatch.setattr(checkpoint.np, "savez", partial)
    with pytest.raises(CheckpointError, match="cannot save the checkpoint") as err:   # one line naming the file
        save(path, {"a": np.arange(1000.0), "b": np.ones(5)}, {"epoch": 2})
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).endswith("the previous file there is unchanged")
    with pytest.raises(CheckpointError, match=r"cannot save the checkpoint \(.*\); nothing was written$"):
        save(tmp_path / "first.npz", {"a": np.arange(3.0)}, {"epoch": 1})     # (there was no previous file)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.npz"]
    arrays, meta = load(path)
    assert meta["epoch"] == 1 and arrays["a"].shape == (10,)


def test_keyboard_interrupt_mid_save_cleans_up(tmp_path, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.np, "savez", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path / "x.npz", {"a": np.zeros(1)}, {})
    assert os.listdir(tmp_path) == []


# -- hostile files ------------------------------------------------------------------------------

def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="nope.npz: no such checkpoint"):
        load(tmp_path / "nope.npz")
    with pytest.raises(CheckpointError, match="is a directory"):
        load(tmp_path)


def test_not_a_zip(tmp_path):
    path = tmp_path / "c.npz"
    path.write_text("hello, I am not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"c\.npz: not a checkpoint"):
        load(path)
    onnx, empty = tmp_path / "m.onnx", tmp_path / "e.npz"
    onnx.write_bytes(b"\x08\x07\x12\x06cnncli")                      # (an ONNX protobuf's first bytes)
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"m\.onnx: an ONNX model, not a checkpoint: give the \.npz it was"):
        load(onnx)
    with pytest.raises(CheckpointError, match=r"e\.npz: not a checkpoint \(\.npz zip archive\): the file is empty$"):
        load(empty)


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, 0.99])
def test_truncated_file(tmp_path, keep):
    path = tmp_path / "c.npz"
    save(path, _arrays(), META)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"c\.npz") as err:
        load(path)
    assert "not a checkpoint" not in str(err.value)                # it is one, damaged


class _Evil:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_array_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    evil = np.empty(1, dtype=object)
    evil[0] = _Evil(str(marker))
    _write_npz(path, {"params/conv1.w.npy": _npy_bytes(evil, allow_pickle=True),
                      "__meta__.npy": _meta_bytes({"format_version": 1})})
    with pytest.raises(CheckpointError, match=r"evil\.npz: array 'params/conv1.w' holds Python objects"):
        load(path)
    assert not marker.exists()


def test_plain_object_array_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    with open(path, "wb") as f:
        np.savez(f, names=np.array(["a", 1, None], dtype=object),
                 __meta__=np.frombuffer(b'{"format_version": 1}', np.uint8))
    with pytest.raises(CheckpointError, match="'names'.*objects"):
        load(path)


def test_declared_array_size_larger_than_data(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12,)})
    buf.write(b"\0" * 64)
    path = tmp_path / "lie.npz"
    _write_npz(path, {"w.npy": buf.getvalue(), "__meta__.npy": _meta_bytes({"format_version": 1})})
    with pytest.raises(CheckpointError, match="'w' declares"):
        load(path)


def test_zip_bomb_ratio(tmp_path):
    path = tmp_path / "bomb.npz"
    _write_npz(path, {"z.npy": _npy_bytes(np.zeros(2_000_000, np.uint8)),
                      "__meta__.npy": _meta_bytes({"format_version": 1})}, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 100_000
    with pytest.raises(CheckpointError, match="zip bomb"):
        load(path)


def test_total_size_cap(tmp_path):
    path = tmp_path / "big.npz"
    save(path, {"a": np.zeros(10_000)}, {})
    with pytest.raises(CheckpointError, match="exceeds the limit of 50000 bytes"):
        load(path, max_bytes=50_000)
    assert load(path)[0]["a"].shape == (10_000,)


def test_huge_declared_member_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "huge.npz"
    save(path, {"a": np.zeros(16)}, {})
    real_infolist = zipfile.ZipFile.infolist

    def lying_infolist(self):
        infos = real_infolist(self)
        infos[0].file_size = 5 * 1024 ** 3  # what a hostile central directory could declare
        return infos

    monkeypatch.setattr(zipfile.ZipFile, "infolist", lying_infolist)
    monkeypatch.setattr(zipfile.ZipFile, "open", _boom)  # reading anything would fail loudly
    with pytest.raises(CheckpointError, match="exceeds the limit"):
        load(path)


def test_non_npy_member(tmp_path):
    path = tmp_path / "odd.npz"
    _write_npz(path, {"readme.txt": b"hi", "__meta__.npy": _meta_bytes({"format_version": 1})})
    with pytest.raises(CheckpointError, match="'readme.txt' is not a .npy"):
        load(path)


@pytest.mark.parametrize("meta_member,match", [
    (None, "missing '__meta__'"),
    (_npy_bytes(np.frombuffer(b"\xff\xfe{", np.uint8)), "not valid UTF-8 JSON"),
    (_npy_bytes(np.frombuffer(b"{not json", np.uint8)), "not valid UTF-8 JSON"),
    (_npy_bytes(np.frombuffer(b"[1, 2]", np.uint8)), "must be a JSON object"),
    (_npy_bytes(np.zeros(3, np.float32)), "1-D uint8"),
    (_meta_bytes({"epoch": 3}), "no integer 'format_version'"),
    (_meta_bytes({"format_version": "1"}), "no integer 'format_version'"),
    (_meta_bytes({"format_version": FORMAT_VERSION + 1}), "format_version 2 is newer"),
])
def test_bad_meta(tmp_path, meta_member, match):
    path = tmp_path / "m.npz"
    members = {"a.npy": _npy_bytes(np.zeros(2))}
    if meta_member is not None:
        members["__meta__.npy"] = meta_member
    _write_npz(path, members)
    with pytest.raises(CheckpointError, match=match) as info:
        load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError) as meta_only:
        load_meta(path)
    assert str(meta_only.value) == str(info.value)          # the metadata alone: the same refusal


def test_load_meta_reads_the_metadata_alone(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    save(path, _arrays(), META)
    read = []
    real = checkpoint._read_member
    monkeypatch.setattr(checkpoint, "_read_member", lambda p, zf, key, info: read.append(key) or
                        real(p, zf, key, info))
    assert load_meta(path) == load(path)[1] == {**META, "format_version": FORMAT_VERSION}
    assert read[0] == "__meta__" and sorted(read[1:]) == sorted([*_arrays(), "__meta__"])
    for bad in (tmp_path / "nope.npz", tmp_path):
        with pytest.raises(CheckpointError) as whole:
            load(bad)
        with pytest.raises(CheckpointError) as meta_only:
            load_meta(bad)
        assert str(meta_only.value) == str(whole.value)


def test_corrupted_data_fails_crc(tmp_path):
    path = tmp_path / "c.npz"
    save(path, {"a": np.arange(1000, dtype=np.int64)}, {})
    data = bytearray(path.read_bytes())
    data[2000] ^= 0xFF  # inside the array data of member "a"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="'a'"):
        load(path)


# -- check_arrays --------------------------------------------------------------------------------

EXPECTED = {"params/conv1.w": ((6, 1, 5, 5), np.float32), "optim/optim.t": ((1,), np.int64)}


def _good():
    return {"params/conv1.w": np.zeros((6, 1, 5, 5), np.float32), "optim/optim.t": np.zeros(1, np.int64)}


def test_check_arrays_ok():
    check_arrays(_good(), EXPECTED, "x.npz")


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.pop("params/conv1.w"),
     r"x\.npz: missing array 'params/conv1.w' \(expected shape \(6, 1, 5, 5\), dtype float32\)"),
    (lambda d: d.update({"params/extra": np.zeros(2)}), r"unexpected array 'params/extra' \(found shape \(2,\)\)"),
    (lambda d: d.update({"params/conv1.w": np.zeros((6, 1, 3, 3), np.float32)}),
     r"'params/conv1.w' has shape \(6, 1, 3, 3\), expected \(6, 1, 5, 5\)"),
    (lambda d: d.update({"optim/optim.t": np.zeros(1, np.float64)}),
     r"'optim/optim.t' has dtype float64, expected int64"),
])
def test_check_arrays_errors(mutate, match):
    arrays = _good()
    mutate(arrays)
    with pytest.raises(CheckpointError, match=match):
        check_arrays(arrays, EXPECTED, "x.npz")


# -- property: arbitrary bytes never escape as anything but CheckpointError -----------------------

_VALID = io.BytesIO()
np.savez(_VALID, a=np.arange(20, dtype=np.float32), __meta__=np.frombuffer(b'{"format_version": 1}', np.uint8))
_VALID = _VALID.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=600),
    st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, len(_VALID)),
))
def test_random_and_mutated_files_only_raise_checkpoint_error(tmp_path, blob):
    if isinstance(blob, bytes):
        data = blob
    elif isinstance(blob, int):
        data = _VALID[:blob]
    else:
        buf = bytearray(_VALID)
        for pos, val in blob:
            buf[pos] = val
        data = bytes(buf)
    path = tmp_path / "fuzz.npz"
    path.write_bytes(data)
    try:
        arrays, meta = load(path)
    except CheckpointError as e:
        assert "\n" not in str(e) and "fuzz.npz" in str(e)
    else:
        assert isinstance(meta, dict) and all(isinstance(a, np.ndarray) for a in arrays.values())


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from e2e_util import invoke, make_folder

    tmp = tmp_path_factory.mktemp("meta")
    data = make_folder(tmp / "data", per_class=4, odd_files=False)
    res = invoke(["train", "--set", f"data.train={data}", "--set", "train.epochs=1", "--set", "train.batch_size=4",
                  "--out", tmp / "run", "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    return tmp, data, tmp / "run" / "last.npz"


@pytest.mark.parametrize("value", [None, "x", -1, {}, [1e308]], ids=repr)
def test_hostile_metadata_values_are_one_line_for_every_command(real_run, tmp_path, monkeypatch, value):
    # a hostile-input trial set each metadata key to these values: resume, --init-from, eval and
    # predict raised TypeError/AttributeError/KeyError/ValueError tracebacks for eps, classes,
    # preprocess, config, epoch, step and history
    from e2e_util import invoke

    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    tmp, data, ckpt = real_run
    arrays = dict(np.load(ckpt))
    meta = json.loads(arrays.pop(checkpoint.META_KEY).tobytes())
    for key in meta:
        if key == "format_version":
            continue
        bad = tmp_path / key / "last.npz"
        bad.parent.mkdir()
        save(bad, arrays, {**meta, key: value})
        for args in (["info", bad], ["eval", "--checkpoint", bad, "--data", data], ["predict", "--checkpoint", bad, data],
                     ["train", "--resume", bad, "-q", "--no-report"],
                     ["train", "--set", f"data.train={data}", "--set", "train.epochs=1", "--init-from", bad,
                      "--out", tmp_path / key / "ft", "-q", "--no-report"]):
            res = invoke(args)                          # (an exception would propagate: catch_exceptions=False)
            assert res.exit_code in (0, 1, 2), (key, args[0], res.output)
            errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
            assert res.exit_code == 0 or len(errors) == 1, (key, args[0], res.output)
