"""Tests for cnncli.demo: layout, determinism, atomic ensure_demo, and that the pictures vary."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from cnncli import data, demo
from cnncli.errors import DataError

SMALL = dict(train_per_class=4, test_per_class=2)


def tree_bytes(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def test_layout_and_counts(tmp_path):
    root = demo.generate_demo(tmp_path / "d", seed=0, **SMALL)
    assert len(demo.CLASSES) == 12 and list(demo.CLASSES) == sorted(demo.CLASSES)
    for split, n in (("train", 4), ("test", 2)):
        assert sorted(os.listdir(os.path.join(root, split))) == list(demo.CLASSES)
        for c in demo.CLASSES:
            files = sorted(os.listdir(os.path.join(root, split, c)))
            assert files == [f"{i:05d}.png" for i in range(n)]
            with Image.open(os.path.join(root, split, c, files[0])) as im:
                assert im.format == "PNG" and im.mode == "L" and im.size == (32, 32)
    marker = json.loads((tmp_path / "d" / demo.MARKER).read_text())
    assert marker["generator_version"] == demo.DEMO_VERSION and marker["seed"] == 0
    assert demo.is_complete(root, seed=0, **SMALL)
    ds, skipped = data.load_folder(os.path.join(root, "train"), cache=False)
    assert skipped == [] and ds.classes == list(demo.CLASSES) and len(ds) == 48
    assert np.bincount(ds.labels).tolist() == [4] * 12


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a = tree_bytes(demo.generate_demo(tmp_path / "a", seed=7, **SMALL))
    b = tree_bytes(demo.generate_demo(tmp_path / "b", seed=7, **SMALL))
    c = tree_bytes(demo.generate_demo(tmp_path / "c", seed=8, **SMALL))
    assert a == b
    pngs = [k for k in a if k.endswith(".png")]
    assert len(pngs) == 72
    assert sum(a[k] != c[k] for k in pngs) == len(pngs)


def test_images_vary_and_train_test_differ(tmp_path):
    root = demo.generate_demo(tmp_path / "d", train_per_class=6, test_per_class=6)
    tr, _ = data.load_folder(os.path.join(root, "train"), cache=False)
    te, _ = data.load_folder(os.path.join(root, "test"), cache=False)
    x = tr.images.reshape(len(tr), -1).astype(np.float64)     # (N, S*S)
    assert (x.std(axis=1) > 5).all()                            # each image has a visible shape
    assert len({im.tobytes() for im in tr.images}) == len(tr)   # no duplicates
    assert not {im.tobytes() for im in tr.images} & {im.tobytes() for im in te.images}
    means = x.mean(axis=1)
    assert means.max() - means.min() > 60                      # brightness/polarity vary


def test_every_class_renders_a_distinct_shape():
    """Same random draws, different class -> different foreground masks (no two classes alike)."""
    masks = []
    for name in demo.CLASSES:
        a = demo.render(name, np.random.default_rng(123)).astype(np.float64)
        masks.append(a)
    for i in range(12):
        for j in range(i + 1, 12):
            assert np.abs(masks[i] - masks[j]).mean() > 2, (demo.CLASSES[i], demo.CLASSES[j])


def test_png_bytes_round_trip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (7, 11), dtype=np.uint8)
    p = tmp_path / "x.png"
    p.write_bytes(demo.png_bytes(a))
    with Image.open(p) as im:
        im.load()
        assert im.mode == "L" and np.array_equal(np.asarray(im), a)


def test_ensure_demo_generates_once(tmp_path, monkeypatch):
    root = tmp_path / "demo"
    assert demo.ensure_demo(root, **SMALL) == str(root)
    assert demo.is_complete(root, **SMALL)
    mode = root.stat().st_mode & 0o777                          # as a folder mkdir makes, not mkdtemp's 0700
    assert mode == 0o777 & ~demo._umask() == (root / "train").stat().st_mode & 0o777
    before = tree_bytes(root)

    def fail(*a, **k):
        raise AssertionError("regenerated a complete demo")
    monkeypatch.setattr(demo, "generate_demo", fail)
    demo.ensure_demo(root, **SMALL)
    assert tree_bytes(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]   # no temporary folders left behind


def test_ensure_demo_repairs_incomplete_or_stale(tmp_path):
    root = tmp_path / "demo"
    demo.ensure_demo(root, **SMALL)
    os.remove(root / "train" / "star" / "00001.png")
    assert not demo.is_complete(root, **SMALL)
    demo.ensure_demo(root, **SMALL)
    assert demo.is_complete(root, **SMALL)
    marker = json.loads((root / demo.MARKER).read_text())
    marker["generator_version"] = -1
    (root / demo.MARKER).write_text(json.dumps(marker))
    demo.ensure_demo(root, **SMALL)
    assert demo.is_complete(root, **SMALL)
    demo.ensure_demo(root, train_per_class=5, test_per_class=1)      # other settings regenerate
    assert demo.is_complete(root, train_per_class=5, test_per_class=1)
    assert len(os.listdir(root / "train" / "ring")) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    root = tmp_path / "demo"
    real, calls = demo.render, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) > 30:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(demo, "render", flaky)
    with pytest.raises(KeyboardInterrupt):
        demo.ensure_demo(root, **SMALL)
    assert not root.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(demo, "render", real)
    demo.ensure_demo(root, **SMALL)
    assert demo.is_complete(root, **SMALL)


def test_ensure_demo_refuses_a_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a cnncli demo"):
        demo.ensure_demo(root, **SMALL)
    assert (root / "thesis.tex").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    demo.ensure_demo(empty, **SMALL)                                   # an empty folder is fine
    assert demo.is_complete(empty, **SMALL)


@pytest.mark.parametrize("added, named", [("NOTES.txt", "NOTES.txt"), ("mywork/keep.txt", "mywork"),
                                           (".git/HEAD", ".git"), (".my_notes.md", ".my_notes.md"),
                                           ("train/star/my_extra.png", "train/star/my_extra.png"),
                                           ("train_hidden/x.png", "train_hidden"), ("test/other/a.png", "test/other")])
def test_a_demo_folder_to_generate_again_that_holds_a_users_files_is_left_alone(tmp_path, added, named):
    # a regeneration (the demo incomplete: a class's count off) replaced the whole folder, deleting
    # the files a user had added to it or a train/ renamed aside
    import shutil

    root = tmp_path / "demo"
    demo.ensure_demo(root, **SMALL)
    os.remove(root / "train" / "ring" / "00001.png")
    (root / added).parent.mkdir(parents=True, exist_ok=True)
    (root / added).write_bytes(b"mine")
    with pytest.raises(DataError, match=f"holds what the generator did not make \\({named}\\)"):
        demo.ensure_demo(root, **SMALL)
    assert (root / added).read_bytes() == b"mine" and not (root / "train" / "ring" / "00001.png").exists()
    (shutil.rmtree if (root / named).is_dir() else os.remove)(root / named)
    demo.ensure_demo(root, **SMALL)                                   # nothing of the user's: generated again
    assert demo.is_complete(root, **SMALL)


@pytest.mark.parametrize("inside", ["#recycle/report.docx", "lost+found/inode123", "@eaDir/thesis.docx",
                                    ".DS_Store/kept", "train/circle/00600.png", "train/circle/00002.png/mine.txt"])
def test_folders_named_like_os_leftovers_and_files_past_the_count_are_the_users(tmp_path, inside):
    # (#recycle, @eaDir, a folder named .DS_Store counted as debris: the folder was replaced, their files gone;
    # a user's 00600.png among the generated names was deleted; a folder named 00099.png too)
    root = tmp_path / "share"
    if inside.startswith("train/"):                        # (in a demo to generate again: a file missing)
        demo.ensure_demo(root, **SMALL)
        os.remove(root / "train" / "ring" / "00001.png")
        if (root / inside).parent.name.endswith(".png"):
            os.remove((root / inside).parent)
    (root / inside).parent.mkdir(parents=True, exist_ok=True)
    (root / inside).write_text("precious")
    with pytest.raises(DataError):
        demo.ensure_demo(root, **SMALL)
    assert (root / inside).read_text() == "precious"


def test_what_an_os_leaves_in_a_demo_folder_does_not_stop_its_regeneration(tmp_path):
    # (.DS_Store, Thumbs.db, ._00001.png, @eaDir refused it as a user's files; and the 'Generating' line
    # came before the refusal)
    root = tmp_path / "demo"
    demo.ensure_demo(root, **SMALL)
    os.remove(root / "train" / "ring" / "00001.png")
    for junk in (".DS_Store", "train/circle/Thumbs.db", "train/._00001.png"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(b"os")
    said = []
    demo.ensure_demo(root, say=said.append, **SMALL)
    assert demo.is_complete(root, **SMALL) and said == [f"Generating the built-in demo dataset in {root} ..."]
    os.remove(root / "train" / "ring" / "00001.png")
    (root / "mine.txt").write_text("mine")
    said.clear()
    with pytest.raises(DataError, match="mine.txt"):
        demo.ensure_demo(root, say=said.append, **SMALL)
    assert said == []                                                  # (no 'Generating' before a refusal)
    fresh = tmp_path / "fresh"                            # (a new folder holding only .DS_Store is empty)
    fresh.mkdir()
    (fresh / ".DS_Store").write_bytes(b"os")
    demo.ensure_demo(fresh, **SMALL)
    assert demo.is_complete(fresh, **SMALL)
    os.remove(fresh / "train" / "ring" / "00001.png")     # (a ._ file is no image of the count)
    (fresh / "train" / "ring" / "._00001.png").write_bytes(b"os")
    assert not demo.is_complete(fresh, **SMALL)


def test_parallel_generation_writes_the_same_bytes(tmp_path):
    sizes = dict(train_per_class=70, test_per_class=14)             # 1008 images: the parallel path
    a = tree_bytes(demo.generate_demo(tmp_path / "par", workers=2, **sizes))
    b = tree_bytes(demo.generate_demo(tmp_path / "ser", workers=1, **sizes))
    assert len(a) == 1008 + 1 and a == b


@pytest.mark.parametrize("train, val, generated", [
    ("p/train", None, True), ("p/train", "p/test", True),
    ("p/trian", None, False), ("nope", None, False),                  # a typo is an error, not a demo
    ("p/train", "q/test", False), ("p/train", "p/nope2", False),
])
def test_data_demo_generates_only_where_the_demo_goes(tmp_path, monkeypatch, train, val, generated):
    from cnncli import config, rundata

    calls = []
    monkeypatch.setattr(demo, "ensure_demo", lambda root, say=None: calls.append(root))
    sets = [f"data.train={tmp_path / train}", "data.demo=true"] + ([f"data.val={tmp_path / val}"] if val else [])
    with pytest.raises(DataError, match="does not exist"):           # (the stub generated nothing)
        rundata.load_datasets(config.load_config(None, sets))
    assert calls == ([tmp_path / "p"] if generated else [])


def test_eval_of_a_demo_run_says_when_it_generates_the_demo_again(tmp_path, monkeypatch):
    # cnn eval RUN of a data.demo run whose demo folder was gone wrote 9,000 files there without a word
    from click.testing import CliRunner

    from cnncli import model
    from cnncli.cli import cli
    from cnncli.predictor import save_model

    real = demo.ensure_demo
    monkeypatch.setattr(demo, "ensure_demo", lambda root, say=None: real(root, say=say, **SMALL))
    run = tmp_path / "run"
    save_model(run / "best.npz", model.Network(num_classes=12, seed=0), list(demo.CLASSES))
    (run / "config.yaml").write_text(f"data: {{train: {tmp_path / 'gone' / 'train'}, demo: true, val_split: 0.5}}\n")
    res = CliRunner().invoke(cli, ["eval", str(run)])
    assert res.exit_code == 0, res.output
    assert f"Generating the built-in demo dataset in {tmp_path / 'gone'} ...\n" in res.stderr
    assert demo.is_complete(tmp_path / "gone", **SMALL)


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="Linux /proc needed")
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_killed_cnn_demo_leaves_no_worker_behind(tmp_path, sig):
    # its spawned renderers outlived it (blocked on their queue for an hour, holding the pipes of
    # whoever ran it) when cnn demo was killed while they rendered
    import signal
    import subprocess
    import sys
    import time

    from e2e_util import alive, child_pids

    cnn = subprocess.Popen([sys.executable, "-m", "cnncli", "demo", str(tmp_path / "demo")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers = []
    while time.monotonic() < deadline and cnn.poll() is None:   # the renderers (and the resource tracker)
        workers = child_pids(cnn.pid)
        if len(workers) >= 3 and any(tmp_path.glob("*/train/*/*.png")):   # (the demo renders into a sibling)
            break
        time.sleep(0.05)
    assert cnn.poll() is None and len(workers) >= 3, "the demo's workers did not start"
    cnn.send_signal(getattr(signal, sig))
    cnn.wait(timeout=30)
    deadline = time.monotonic() + 15
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, f"{len(left)} worker(s) outlived cnn demo"


def test_a_full_disk_while_generating_names_the_demo_folder(tmp_path, monkeypatch):
    # it said "Error: [Errno 28] No space left on device", naming nothing
    import errno

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(demo, "generate_demo", full)
    with pytest.raises(DataError) as err:
        demo.ensure_demo(tmp_path / "demo")
    assert str(err.value) == (f"demo folder {tmp_path / 'demo'}: cannot write the demo dataset (no space left on "
                              "the device: free some space, or write elsewhere); nothing was left behind")
    assert os.listdir(tmp_path) == []
