"""Odd things in a real folder, from helpers' passes (2026-12-07): a class folder's broken link (the
class vanished without a word), a class whose every file is unreadable (the refusal named none of
them), cnn predict on a folder holding a link to its parent (it classified the sibling classes); and
a full disk: an empty run folder left, a raw errno line and a temporary file when a resume copies
best.npz, a failed save that did not say how to go on. Each test failed against the old code."""

from __future__ import annotations

import os
from collections import Counter

from cnncli import data as data_mod
from cnncli.data.dataset import index
from cnncli.errors import DataError
from e2e_util import invoke, make_folder, private_cache  # noqa: F401

import pytest


def test_a_broken_link_in_the_data_folder_or_a_class_folder_is_named_as_skipped(tmp_path):
    root = make_folder(tmp_path / "data", per_class=3, odd_files=False)
    first = sorted(p.name for p in root.iterdir())[0]
    os.symlink("/nonexistent/dir", root / "brokenclass")
    os.symlink("/nonexistent/dir", root / first / "gone")
    os.symlink("/nonexistent/README.md", root / "README.md")       # (a file's link: no class folder)
    ix, _ = index(str(root))
    assert ix.bad == [("brokenclass/", "broken symbolic link (what it points to does not exist): a class folder "
                                       "moved away?")]
    assert "brokenclass" not in ix.classes and ix.ignored["(broken link)"] == 1      # (first/gone: noted)
    seen = Counter()
    files, bad = data_mod.list_images_and_bad(root / first, seen)   # cnn predict's listing: a note, not a failure
    assert bad == [] and seen == Counter({"(broken link)": 1}) and len(files) == 3


def test_a_class_with_only_unreadable_files_names_them(tmp_path, private_cache):   # noqa: F811
    root = make_folder(tmp_path / "data", per_class=3, odd_files=False)
    (root / "broken_only").mkdir()
    (root / "broken_only" / "y.png").write_bytes(b"")
    (root / "broken_only" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (root / "loose.png").write_bytes((root / sorted(os.listdir(root))[0] / "000.png").read_bytes())
    with pytest.raises(DataError) as err:
        data_mod.load_folder(root)
    text = str(err.value)
    assert "no usable images in class folder(s) broken_only: 2 unreadable file(s) (broken_only/x.png: " in text, text
    assert "; broken_only/y.png: " in text and "loose.png" not in text


def test_predict_does_not_follow_a_folders_link_to_its_parent(tmp_path):
    root = make_folder(tmp_path / "data", per_class=3, odd_files=False)
    first = sorted(p.name for p in root.iterdir())[0]
    os.symlink("..", root / first / "up")
    seen = Counter()
    files, bad = data_mod.list_images_and_bad(root / first, seen)
    assert len(files) == 3 and all(os.path.dirname(f) == str(root / first) for f in files), files
    assert bad == [] and seen == Counter({"(link to this folder or one above)": 1})       # (a note, exit 0)
    assert data_mod.scan.ignored_note(seen) == ("note: 1 link(s) to the folder or a folder above it were not "
                                                "followed (they would read its images again)")   # (no 'file(s)')
    os.symlink(root / first, tmp_path / "linkA")                      # the folder given through a link: read
    files, bad = data_mod.list_images_and_bad(tmp_path / "linkA", Counter())
    assert len(files) == 3 and bad == []


def test_a_full_disk_leaves_no_empty_run_folder_and_no_half_copied_best(tmp_path, monkeypatch):
    import errno
    import shutil

    from cnncli import resume, runfolder
    from cnncli.errors import CheckpointError, CnnError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(runfolder, "claim_marker", full)
    with pytest.raises(CnnError, match=r"cannot create the run folder \(no space left on the device: free some "
                                       r"space, or write elsewhere\)$"):
        runfolder.new_run_dir(str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()                      # (an empty folder was left)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    (src / "best.npz").write_bytes(b"x" * 1000)
    monkeypatch.setattr(shutil, "copyfileobj", full)
    with pytest.raises(CheckpointError) as err:                 # (a raw errno line and a .tmp file before)
        resume.carry_best(src, dst)
    assert str(err.value) == (f"{dst / 'best.npz'}: cannot copy the run's best.npz there (no space left on the "
                              "device: free some space, or write elsewhere); nothing was trained yet")
    assert os.listdir(dst) == []


def test_a_checkpoint_that_cannot_be_saved_says_how_to_go_on(tmp_path, monkeypatch, private_cache):  # noqa: F811
    from cnncli import checkpoint
    from cnncli.errors import CheckpointError
    from e2e_util import write_config

    real, calls = checkpoint.save, []

    def save(path, arrays, meta):
        calls.append(path)
        if len(calls) > 2:                                      # (last.npz and best.npz of epoch 1 saved)
            raise CheckpointError(f"{path}: cannot save the checkpoint (No space left on device); the previous "
                                  "file there is unchanged")
        real(path, arrays, meta)
    monkeypatch.setattr(checkpoint, "save", save)
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    run = tmp_path / "run"
    res = invoke(["train", "--config", write_config(tmp_path / "c.yaml", data, run, epochs=3), "-q", "--no-report"])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1].endswith(
        f"the previous file there is unchanged; once there is room, go on from last.npz: cnn train --resume {run}"), \
        res.stderr


def test_a_folder_of_files_without_image_extensions_says_what_it_holds(tmp_path):
    # (a folder of extensionless PNGs said only "contains no image files (.bmp, ...)")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            (tmp_path / name / f"{name}{i}").write_bytes(b"\x89PNG whatever")
        (tmp_path / name / "x.heic").write_bytes(b"")
    with pytest.raises(DataError, match=r"contains no image files \(.*\) \(it holds 6 \(no extension\), 2 \.heic "
                                        r"file\(s\), which are not read\)$"):
        index(str(tmp_path))


def test_a_missing_data_folder_names_what_the_error_line_cannot_show(tmp_path):
    # (a trailing space, the other Unicode form of an accent, backslashes: 'does not exist' looked wrong)
    import unicodedata

    for name in ("données", "my data", "my data/a"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
    for given, hint in ((unicodedata.normalize("NFD", "données"), "another Unicode form than the name on disk, NFC"),
                        ("my data ", "(the name 'my data ' ends with a space; "),
                        ("\xa0my data", "(the name '\\xa0my data' begins with a space; "),
                        ("my data\\a", "(a Windows path: folders are separated by / here; ")):
        with pytest.raises(DataError, match=r": does not exist \(") as info:
            index(str(tmp_path / given))
        assert hint in str(info.value), str(info.value)
    with pytest.raises(DataError) as info:                              # (a byte that is not UTF-8: as \xNN)
        index(str(tmp_path / os.fsdecode(b"\xff ")))
    assert str(info.value).endswith("(the name '\\xff ' ends with a space)") and "\udcff" not in str(info.value)


def test_a_loop_of_file_links_is_named_as_one_a_file_not_a_folder(tmp_path):
    # two links to one another were 'loopa.png/: cannot scan folder' in a scan, 'broken symbolic link' in predict
    root = make_folder(tmp_path / "data", per_class=3, odd_files=False)
    first = sorted(p.name for p in root.iterdir())[0]
    os.symlink("loopb.png", root / first / "loopa.png")
    os.symlink("loopa.png", root / first / "loopb.png")
    files, bad = data_mod.list_images_and_bad(root / first, Counter())
    assert len(files) == 3 and bad == [(str(root / first / name), data_mod.scan.LINK_LOOP)
                                       for name in ("loopa.png", "loopb.png")], bad
    with pytest.raises(DataError, match="symbolic link loop"):
        data_mod.load_image(root / first / "loopa.png")


def test_a_class_folder_given_as_the_data_folder_says_so_when_a_subfolder_is_empty(tmp_path):
    # (data.train at a class folder holding 5 images, a subfolder and a link to itself: the error named the
    # link's empty 'class' and not the 5 images the folder holds itself)
    from PIL import Image

    cls = tmp_path / "cls"
    (cls / "nested").mkdir(parents=True)
    for i in range(5):
        Image.new("L", (32, 32), 40 * i).save(cls / f"{i}.png")
    Image.new("L", (32, 32), 90).save(cls / "nested" / "a.png")
    os.symlink(".", cls / "loop")
    with pytest.raises(DataError) as err:
        data_mod.load_folder(cls, cache=False)
    assert "class folder(s) with no image files: loop" in str(err.value)
    assert str(err.value).endswith("; it holds 5 image file(s) itself: if it is a class folder, give the folder "
                                   "above it")
