"""Through the CLI: `cnn eval --fail-under` (both sides of the threshold, each metric, --json kept)
and `cnn augment-preview` (the PNG, its size, and variants that differ from the originals)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cnncli import augment_preview
from cnncli.data import printable
from e2e_util import invoke, make_folder, private_cache, write_config  # noqa: F401


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    data = make_folder(tmp / "data", odd_files=False)
    cfg = write_config(tmp / "cfg.yaml", data, tmp / "run", epochs=1)
    res = invoke(["train", "--config", cfg, "--quiet", "--no-report"])
    assert res.exit_code == 0, res.output
    plain = invoke(["eval", "--checkpoint", tmp / "run", "--data", data, "--json"])
    return tmp, data, json.loads(plain.stdout)


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1", "top_k_accuracy"])
def test_fail_under_each_metric_both_sides(trained, metric):
    tmp, data, metrics = trained
    value = metrics[metric]
    base = ["eval", "--checkpoint", tmp / "run", "--data", data, "--json", "--metric", metric]
    ok = invoke(base + ["--fail-under", value])
    assert ok.exit_code == 0 and json.loads(ok.stdout) == metrics
    if value < 1.0:  # a threshold just above the value fails
        above = min(1.0, value + 1e-3)
        bad = invoke(base + ["--fail-under", above])
        assert bad.exit_code == 1
        assert json.loads(bad.stdout) == metrics  # the JSON still prints, unchanged
        line = bad.stderr.strip()
        assert "\n" not in line and metric in line and f"{value:.4f}" in line and f"{above:g}" in line
    low = invoke(["eval", "--checkpoint", tmp / "run", "--data", data, "--metric", metric, "--fail-under", 0])
    assert low.exit_code == 0 and "accuracy" in low.stdout


def test_fail_under_default_metric_is_accuracy_and_range_is_checked(trained):
    tmp, data, metrics = trained
    res = invoke(["eval", "--checkpoint", tmp / "run", "--data", data, "--fail-under", 1.0])
    assert res.exit_code == (0 if metrics["accuracy"] >= 1.0 else 1)
    if res.exit_code:
        assert "accuracy" in res.stderr and "macro_f1" not in res.stderr
    assert invoke(["eval", "--checkpoint", tmp / "run", "--data", data, "--fail-under", 1.5]).exit_code == 2
    nan = invoke(["eval", "--checkpoint", tmp / "run", "--data", data, "--fail-under", "nan"])
    assert nan.exit_code == 2 and "Invalid value for '--fail-under': nan is no threshold" in nan.output \
        and nan.stdout == ""
    alone = invoke(["eval", "--checkpoint", tmp / "run", "--data", data, "--metric", "macro_f1"])
    assert alone.exit_code == 2 and "Invalid value for --metric: chooses what --fail-under checks; add --fail-under X" \
        in alone.output and alone.stdout == ""                    # refused before any metric is printed


def test_augment_preview_png(tmp_path):
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    out = tmp_path / "sub" / "grid.png"
    out.parent.mkdir()
    res = invoke(["augment-preview", "--set", f"data.train={data}", "--set", "augment.enabled=true",
                  "--set", "augment.affine.p=1", "--set", "augment.affine.rotate=30",
                  "--out", out, "--rows", 3, "--cols", 4])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    img = Image.open(out)
    assert img.size == augment_preview.grid_size(3, 4) and img.format == "PNG"
    cells = np.asarray(img.convert("L"))
    c, g, top = augment_preview.CELL, augment_preview.GAP, augment_preview.HEADER_H + augment_preview.GAP
    for r in range(3):
        y = top + r * (c + g)
        tiles = [cells[y:y + c, augment_preview.LABEL_W + g + k * (c + g):][:, :c] for k in range(4)]
        assert all(not np.array_equal(tiles[0], t) for t in tiles[1:])
    again = tmp_path / "again.png"
    invoke(["augment-preview", "--set", f"data.train={data}", "--out", again, "--rows", 3, "--cols", 4,
            "--set", "augment.affine.p=1", "--set", "augment.affine.rotate=30"])
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(img))  # seeded: same picture
    default = tmp_path / "default.png"                                     # one row per class by default
    assert invoke(["augment-preview", "--set", f"data.train={data}", "--out", default, "--cols", 2]).exit_code == 0
    assert Image.open(default).size == augment_preview.grid_size(3, 2)     # (3 classes)


def test_augment_preview_writes_the_format_its_extension_names_and_one_line_when_it_cannot(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", per_class=2, odd_files=False)
    common = ["augment-preview", "--set", f"data.train={data}", "--rows", 2, "--cols", 2]
    for name, kind in (("g.jpg", "JPEG"), ("g.WEBP", "WEBP"), ("g", "PNG"), ("g.psd", "PNG")):
        res = invoke([*common, "--out", tmp_path / name])
        assert res.exit_code == 0, res.output
        assert Image.open(tmp_path / name).format == kind
        note = f"note: {tmp_path / name} does not end in an image extension Pillow writes (.png, .jpg, ...); " \
            "it holds a PNG"
        assert (note in res.stderr) == (name in ("g", "g.psd")), res.stderr      # (.psd: Pillow only reads it)
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file" / "g.png", tmp_path / "file" / "sub" / "g.png"):   # its folder is a file
        res = invoke([*common, "--out", out])
        assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
        assert res.output.strip() == f"Error: {out}: {str(tmp_path / 'file')!r} is not a folder"   # (as export says)

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(Image.Image, "save", read_only)
    res = invoke([*common, "--out", tmp_path / "ro.png"])
    assert res.exit_code == 1 and res.output.strip() == f"Error: {tmp_path / 'ro.png'}: cannot write the preview " \
        "(the file system is read-only: write elsewhere)"
    assert not list(tmp_path.glob(".ro.png.tmp-*"))


def test_augment_preview_identity_settings_repeat_the_original(tmp_path):
    data = make_folder(tmp_path / "data", per_class=2, odd_files=False)
    out = tmp_path / "grid.png"
    zero = [f"augment.{k}=0" for k in ("affine.p", "jitter.p", "noise.p", "erase.p")]
    args = ["augment-preview", "--set", f"data.train={data}", "--out", out, "--rows", 2, "--cols", 3,
            "--set", "augment.enabled=false"]   # on by default: the note says the variants would not be used
    res = invoke(args + [a for z in zero for a in ("--set", z)])
    assert res.exit_code == 0 and "augment.enabled is false" in res.stderr
    cells = np.asarray(Image.open(out))
    c, g, top = augment_preview.CELL, augment_preview.GAP, augment_preview.HEADER_H + augment_preview.GAP
    left = augment_preview.LABEL_W + g
    assert np.array_equal(cells[top:top + c, left:left + c], cells[top:top + c, left + 2 * (c + g):][:, :c])


def test_augment_preview_errors_are_one_line(tmp_path):
    res = invoke(["augment-preview", "--set", "augment.affine.rotate=-1", "--set", f"data.train={tmp_path}"])
    assert res.exit_code == 2 and "augment.affine.rotate" in res.output
    res = invoke(["augment-preview", "--set", f"data.train={tmp_path / 'missing'}", "--out", tmp_path / "g.png"])
    assert res.exit_code == 1 and "missing" in res.output and "Traceback" not in res.output


def test_preview_labels_fit_their_column_and_draw_other_scripts():
    font = augment_preview.label_font()
    width = augment_preview.LABEL_W - 8
    for name in ("circle", "Треугольник", "a-very-long-class-name-that-cannot-fit", "tab\there"):
        label, shown = augment_preview.fit_label(name, font, width), printable(name)
        assert font.getlength(label) <= width and "\t" not in label
        assert label == shown or (label.endswith("~") and len(label) > 1 and shown.startswith(label[:-1]))
    pytest.importorskip("matplotlib")                       # DejaVu Sans: Cyrillic glyphs, not boxes
    assert getattr(font, "path", "").endswith("DejaVuSans.ttf")
    # no CJK in DejaVu Sans: the escape, not an empty box (a new user's 中文 square read as "□□ square")
    assert augment_preview.fit_label("\u4e2d\u6587 square", font, 500) == "\\u4e2d\\u6587 square"


def test_preview_labels_drop_accents_in_an_ascii_only_font(monkeypatch):
    # no DejaVu Sans (no matplotlib, none among the system's fonts): Pillow's own font draws é as a box
    from PIL import ImageFont

    real = ImageFont.truetype

    def missing(font=None, *args, **kw):
        if "DejaVu" in str(font):
            raise OSError("cannot open resource")
        return real(font, *args, **kw)                      # (Pillow's default font is read through it)
    monkeypatch.setattr(ImageFont, "truetype", missing)
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)        # (import matplotlib fails)
    font = augment_preview.label_font()
    assert font.ascii_only
    assert augment_preview.fit_label("triangle_\u00e9", font, 200) == "triangle_e"
    assert augment_preview.fit_label("cafe\u0301", font, 200) == "cafe"


def test_augment_preview_says_which_files_it_skipped(tmp_path):
    # it decoded a folder with 25 broken files and said nothing (a helper's pass)
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    first = sorted(p for p in data.iterdir())[0]
    (first / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    res = invoke(["augment-preview", "--set", f"data.train={data}", "--out", tmp_path / "g.png", "--cols", 2])
    assert res.exit_code == 0, res.output
    assert "warning: skipped 1 unusable file(s):" in res.stderr and "broken.png" in res.stderr


def test_a_preview_or_plot_never_replaces_a_config_a_checkpoint_or_a_training_image(tmp_path):
    # (augment-preview -o ap.yaml, -o data/train/a/img0.png and lr-find --plot run/best.npz wrote PNGs over them)
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", epochs=1)
    image = sorted(data.glob("*/*.png"))[0]
    keep = {p: p.read_bytes() for p in (cfg, image)}
    for target, words in ((cfg, "exists and is no picture"), (image, f"lies in the data folder {data}")):
        res = invoke(["augment-preview", "--config", cfg, "-o", target])
        assert res.exit_code == 1 and f"Error: {target}: {words}" in res.stderr, res.stderr
    (tmp_path / "m.npz").write_bytes(b"PK")
    res = invoke(["lr-find", "--config", cfg, "--plot", tmp_path / "m.npz"])
    assert res.exit_code == 1 and "is no picture" in res.stderr or "matplotlib" in res.stderr, res.stderr
    assert {p: p.read_bytes() for p in (cfg, image)} == keep and (tmp_path / "m.npz").read_bytes() == b"PK"


def test_augment_preview_into_a_missing_folder_is_refused_as_export_refuses_it(tmp_path, monkeypatch):
    # (augment-preview --out some/missing/dir/x.png made the three folders, where export and predict
    # --csv refuse a missing folder in one line)
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    monkeypatch.chdir(tmp_path)
    res = invoke(["augment-preview", "--set", f"data.train={data}", "--out", "some/missing/dir/x.png"])
    assert res.exit_code == 1 and res.stderr == "Error: some/missing/dir/x.png: folder 'some/missing/dir' does not " \
                                                "exist\n", res.stderr
    assert not (tmp_path / "some").exists()
    (tmp_path / "afile").write_text("mine")
    res = invoke(["augment-preview", "--set", f"data.train={data}", "--out", "afile/x.png"])
    assert res.exit_code == 1 and res.stderr == "Error: afile/x.png: 'afile' is not a folder\n", res.stderr
