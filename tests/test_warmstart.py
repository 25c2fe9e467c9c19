"""train.init_from / `cnn train --init-from`: a new run starts from a checkpoint's weights. Checked on
the network `cnn train` builds (runsetup.setup): every layer, BN parameter and running statistic
equal to the source's, the output rows matched by class name (new classes get the seeded init),
the source's input mean/std; through the CLI: the run's config and checkpoint, resuming it, and
one-line errors for every bad source.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from cnncli import config as config_mod
from cnncli import model, runsetup
from cnncli.checkpoint import load as load_checkpoint
from cnncli.distributed import Comm
from e2e_util import invoke, load_params, make_folder, private_cache, write_config  # noqa: F401


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 2-epoch per-channel BN run on bar/column/disc (so BN weights and running statistics are not
    their initial values), its folder and config."""
    tmp = tmp_path_factory.mktemp("warm")
    data = make_folder(tmp / "data", per_class=12, odd_files=False)
    cfg = write_config(tmp / "src.yaml", data, tmp / "src", epochs=2)
    res = invoke(["train", "--config", cfg, "-q", "--no-report", "--set", "model.batchnorm=channel"])
    assert res.exit_code == 0, res.output
    return tmp, data, tmp / "src"


def setup_net(tmp, data, init_from, out, **sets):
    """The network, preprocessing and printed lines `cnn train` starts with (no run folder made)."""
    overrides = [f"data.train={data}", f"train.init_from={init_from}", "model.batchnorm=channel",
                 "train.epochs=1", *(f"{k}={v}" for k, v in sets.items())]
    cfg = config_mod.load_config(None, overrides)
    lines = []
    (_, _), _, _, _, _, (net, _, preprocess) = runsetup.setup(cfg, None, out, True, lines.append, Comm(),
                                                              run_folder=False)
    return net, preprocess, lines


def source_arrays(run):
    arrays, meta = load_checkpoint(run / "best.npz")
    return arrays, meta


def test_same_classes_copy_every_array_and_the_input_statistics(source):
    tmp, data, src = source
    net, preprocess, lines = setup_net(tmp, data, src, tmp / "unused")
    arrays, meta = source_arrays(src)
    for name, view in net.params.items():
        assert view.tobytes() == arrays[f"params/{name}"].tobytes(), name
    for name, view in net.buffers.items():
        assert view.tobytes() == arrays[f"buffers/{name}"].tobytes(), name
    fresh = model.Network(num_classes=3, batchnorm="channel", dtype=np.float32, seed=0)
    assert not np.array_equal(fresh.params["conv1.w"], net.params["conv1.w"])      # not the seed's init
    assert not np.array_equal(fresh.buffers["bn1.running_var"], net.buffers["bn1.running_var"])
    assert (preprocess["mean"], preprocess["std"]) == (meta["preprocess"]["mean"], meta["preprocess"]["std"])
    assert any(line.startswith(f"Weights from {src / 'best.npz'}: every layer") for line in lines), lines


def test_other_classes_keep_the_shared_output_rows_by_name(source, tmp_path):
    tmp, data, src = source
    other = tmp_path / "other"
    shutil.copytree(data, other)
    (other / "bar").rename(other / "ring")          # classes column, disc, ring: two shared, at new indices
    net, _, lines = setup_net(tmp, other, src / "last.npz", tmp_path / "unused")
    arrays, _ = load_checkpoint(src / "last.npz")
    for name, view in net.params.items():
        if not name.startswith("fc2."):
            assert view.tobytes() == arrays[f"params/{name}"].tobytes(), name
    fresh = model.Network(num_classes=3, batchnorm="channel", dtype=np.float32, seed=0)
    for key in ("fc2.w", "fc2.b"):
        src_rows, rows = arrays[f"params/{key}"], net.params[key]
        assert rows[0].tobytes() == src_rows[1].tobytes()         # column: source row 1
        assert rows[1].tobytes() == src_rows[2].tobytes()         # disc: source row 2
        assert rows[2].tobytes() == fresh.params[key][2].tobytes()    # ring: the seeded init
        assert not np.array_equal(rows[2], src_rows[0])
    assert any("2 shared class(es); new: ring (train.seed's init); the source's bar left out" in line
               for line in lines), lines                          # (the class dropped was not named)


def test_a_fine_tuned_run_records_its_source_and_resumes_bitwise(source, tmp_path):
    tmp, data, src = source
    args = ["-q", "--no-report", "--set", "model.batchnorm=channel", "--init-from", src]
    full = write_config(tmp_path / "full.yaml", data, tmp_path / "full", epochs=2)
    assert invoke(["train", "--config", full, *args]).exit_code == 0
    part = write_config(tmp_path / "part.yaml", data, tmp_path / "part", epochs=1)
    assert invoke(["train", "--config", part, *args]).exit_code == 0
    saved = yaml.safe_load((tmp_path / "part" / "config.yaml").read_text())
    assert saved["train"]["init_from"] == str(src)                  # absolute, as data.train
    _, meta = load_checkpoint(tmp_path / "part" / "last.npz")
    _, src_meta = source_arrays(src)
    assert meta["preprocess"]["mean"] == src_meta["preprocess"]["mean"]
    info = invoke(["info", tmp_path / "part", "--json"])
    assert json.loads(info.output)["training"]["init_from"] == str(src)       # cnn info says so too
    assert f"starting from {src}'s weights" in invoke(["info", tmp_path / "part"]).output
    assert json.loads(invoke(["info", src, "--json"]).output)["training"]["init_from"] is None
    # the same config file (which has no init_from) resumes it: the run's own weights continue
    res = invoke(["train", "--config", part, "--resume", tmp_path / "part", "--set", "train.epochs=2",
                  "--set", "model.batchnorm=channel", "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    a, b = load_params(tmp_path / "full" / "last.npz"), load_params(tmp_path / "part" / "last.npz")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


@pytest.mark.parametrize("case, needle", [
    ("missing", "train.init_from: {tmp}/nope: no such checkpoint file"),
    ("garbage", "train.init_from: {tmp}/garbage.npz:"),
    ("empty_run", "train.init_from: {tmp}/empty: run folder has no best.npz or last.npz"),
    ("batchnorm", "has model.batchnorm=channel, the config says none"),
    ("normalize", "was trained with data.normalize=true, the config says false"),
    ("with_resume", "--init-from starts a new run from a checkpoint's weights, --resume continues a run"),
    ("set_on_resume", "train.init_from applies to a new run; --resume continues from"),
])
def test_a_bad_source_is_one_line_and_exit_2_before_any_work(source, tmp_path, case, needle):
    tmp, data, src = source
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 not a zip at all")
    (tmp_path / "empty").mkdir()
    init = {"missing": tmp_path / "nope", "garbage": tmp_path / "garbage.npz",
            "empty_run": tmp_path / "empty"}.get(case, src)
    args = ["train", "--set", f"data.train={data}", "--out", tmp_path / "run", "-q", "--no-report",
            "--set", f"model.batchnorm={'none' if case == 'batchnorm' else 'channel'}"]
    if case == "normalize":
        args += ["--set", "data.normalize=false"]
    if case == "with_resume":
        args += ["--resume", src]
    if case == "set_on_resume":
        args = ["train", "--resume", src, "--set", f"train.init_from={src}", "-q", "--no-report"]
    else:
        args += ["--init-from", init]
    res = invoke(args)
    assert res.exit_code == 2                    # a config problem, as the other config errors
    out = res.output.strip()
    assert len(out.splitlines()) == 1 and "Traceback" not in out, out
    assert needle.format(tmp=tmp_path) in out, out
    assert not (tmp_path / "run").exists()


def test_fewer_classes_name_the_source_classes_left_out(source, tmp_path):
    tmp, data, src = source
    fewer = tmp_path / "fewer"
    shutil.copytree(data, fewer)
    shutil.rmtree(fewer / "bar")
    _, _, lines = setup_net(tmp, fewer, src / "last.npz", tmp_path / "unused")
    assert f"Weights from {src / 'last.npz'}: every layer (the output rows of these classes; the source's bar " \
           "left out)" in lines, lines
