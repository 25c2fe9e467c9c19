"""Tests for cnncli.data: decoding every mode, resize geometry, skip reasons, errors, cache, split."""

import io
import os
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from cnncli import data
from cnncli.data import decode as dec
from cnncli.data import decodemany as many
from cnncli.errors import DataError


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(d))
    return d


def save(path, img, fmt=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)
    return path


def gray(value, w=8, h=8):
    return Image.new("L", (w, h), value)


def noise_img(seed, w=40, h=30):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8))


def forged_png(width, height):
    """A tiny valid-looking PNG whose IHDR declares width x height (CRC fixed up)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1), 0).save(buf, "PNG")
    b = bytearray(buf.getvalue())
    ihdr_data = struct.pack(">II", width, height) + bytes(b[24:29])
    b[16:29] = ihdr_data
    b[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr_data))
    return bytes(b)


# ----------------------------------------------------------------------------- modes and sizes

def _16bit_png(p):
    save(p, Image.fromarray(np.full((10, 12), 128 * 257, dtype=np.uint16)))


def _palette():
    img = Image.new("P", (8, 8), 1)             # every pixel is palette index 1 = (10, 10, 10)
    img.putpalette([0, 0, 0, 10, 10, 10])
    return img


def _cases():
    """(file name, writer, expected constant pixel value or None, tolerance)."""
    return [
        ("l.png", lambda p: save(p, gray(77)), 77, 0),
        ("one_by_one.png", lambda p: save(p, gray(201, 1, 1)), 201, 0),
        ("wide_1000x3.png", lambda p: save(p, gray(90, 1000, 3)), 90, 0),
        ("tall_3x1000.bmp", lambda p: save(p, gray(91, 3, 1000)), 91, 0),
        ("odd_37x5.png", lambda p: save(p, gray(92, 37, 5)), 92, 0),
        ("bilevel.png", lambda p: save(p, Image.new("1", (9, 9), 1)), 255, 0),
        ("sixteen.png", _16bit_png, 128, 0),                      # scaled by 255/65535, not clipped
        ("rgb.png", lambda p: save(p, Image.new("RGB", (8, 8), (255, 0, 0))), 76, 1),
        ("rgba_transparent.png", lambda p: save(p, Image.new("RGBA", (8, 8), (0, 0, 0, 0))), 255, 0),
        ("rgba_opaque.png", lambda p: save(p, Image.new("RGBA", (8, 8), (0, 0, 255, 255))), 29, 1),
        ("la_half.png", lambda p: save(p, Image.new("LA", (8, 8), (0, 128))), 127, 1),
        ("palette.gif", lambda p: save(p, Image.new("RGB", (8, 8), (0, 255, 0)).convert("P")), 150, 2),
        ("palette_transparent.png", lambda p: save(p, _palette(), transparency=1), 255, 0),
        ("palette_transparent.gif", lambda p: save(p, _palette(), transparency=1), 255, 0),
        ("palette_opaque.png", lambda p: save(p, _palette()), 10, 0),
        ("cmyk.jpg", lambda p: save(p, Image.new("CMYK", (16, 16), (0, 0, 0, 0)), quality=95), 255, 2),
        ("l.tif", lambda p: save(p, gray(66)), 66, 0),
        ("sixteen.tiff", lambda p: save(p, Image.fromarray(np.full((6, 6), 65535, np.uint16))), 255, 0),
        ("float.tif", lambda p: save(p, Image.fromarray(np.full((6, 6), 0.5, np.float32))), 128, 0),
        ("int32.tif", lambda p: save(p, Image.fromarray(np.full((6, 6), 257 * 10, np.int32))), 10, 0),
        ("int32_8bit.tif", lambda p: save(p, Image.fromarray(np.full((6, 6), 200, np.int32))), 200, 0),
        ("int32_big.tif", lambda p: save(p, Image.fromarray(np.full((6, 6), 200_000, np.int32))), 255, 0),
        ("float_8bit.tif", lambda p: save(p, Image.fromarray(np.full((6, 6), 200.0, np.float32))), 200, 0),
        ("float_16bit.tif", lambda p: save(p, Image.fromarray(np.full((6, 6), 257 * 50.0, np.float32))), 50, 0),
        ("float_big.tif", lambda p: save(p, Image.fromarray(np.full((6, 6), 1e6, np.float32))), 255, 0),
        ("dark_sixteen.png", lambda p: save(p, Image.fromarray(np.full((6, 6), 200, np.uint16))), 1, 0),
        ("dark_sixteen.pgm", lambda p: save(p, Image.fromarray(np.full((6, 6), 200, np.uint16))), 1, 0),
        ("dark_sixteen.tif", lambda p: save(p, Image.fromarray(np.full((6, 6), 200, np.uint16))), 1, 0),
        ("dark_signed16.tif", lambda p: save(p, Image.fromarray(np.full((6, 6), 200, np.uint16)),  # opens as I
                                             tiffinfo={339: 2}), 1, 0),                                # (SampleFormat)
        ("rgb.webp", lambda p: save(p, Image.new("RGB", (8, 8), (100, 100, 100)), lossless=True), 100, 1),
        ("l.pgm", lambda p: save(p, gray(55)), 55, 0),
        ("rgb.ppm", lambda p: save(p, Image.new("RGB", (8, 8), (10, 20, 30))), 18, 1),
        ("l.pnm", lambda p: save(p, gray(57), "PPM"), 57, 0),
        ("bilevel.pbm", lambda p: save(p, Image.new("1", (9, 9), 1)), 255, 0),
        ("photo.jfif", lambda p: save(p, gray(150, 20, 20), "JPEG", quality=95), 150, 2),
        ("photo.jpe", lambda p: save(p, gray(150, 20, 20), "JPEG", quality=95), 150, 2),
        ("icon.ico", lambda p: save(p, Image.new("RGBA", (32, 32), (40, 40, 40, 255))), 40, 0),
        ("sixteen.pgm", lambda p: save(p, Image.fromarray(np.full((5, 5), 200 * 257, np.uint16))), 200, 0),
        ("rgb.bmp", lambda p: save(p, Image.new("RGB", (8, 8), (10, 20, 30))), 18, 1),
        ("upper.JPG", lambda p: save(p, gray(150, 20, 20), "JPEG", quality=95), 150, 2),
        ("big.jpeg", lambda p: save(p, Image.new("RGB", (1600, 1200), (60, 60, 60)), "JPEG"), 60, 2),
    ]


@pytest.mark.parametrize("name,writer,value,tol", _cases(), ids=[c[0] for c in _cases()])
@pytest.mark.parametrize("resize", data.RESIZE_MODES)
def test_every_mode_and_size_becomes_uint8_square(tmp_path, name, writer, value, tol, resize):
    p = tmp_path / name
    writer(p)
    a = data.load_image(p, image_size=32, resize=resize)
    assert a.shape == (32, 32) and a.dtype == np.uint8 and a.flags.c_contiguous
    assert np.abs(a.astype(int) - value).max() <= tol, (a.min(), a.max())


@pytest.mark.parametrize("ink,grey,background", [(255, 255, 0), (0, 0, 255), (200, 200, 0), (100, 100, 255)])
@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_composited_on_the_background_that_keeps_the_content_visible(tmp_path, mode, ink, grey,
                                                                                      background):
    # a disc of grey `ink` on a fully transparent field whose hidden colour is the opposite of the ink
    img = Image.new(mode, (40, 40), (255 - ink,) * (len(mode) - 1) + (0,))
    ImageDraw.Draw(img).ellipse([8, 8, 31, 31], fill=(ink,) * (len(mode) - 1) + (255,))
    a = data.load_image(save(tmp_path / "disc.png", img), resize="stretch").astype(int)
    assert abs(a[16, 16] - grey) <= 1 and a[0, 0] == background and a[31, 31] == background


@pytest.mark.parametrize("ink,background", [(200, 0), (40, 255)])
def test_a_16_bit_grey_png_with_a_transparent_grey_is_composited_as_an_8_bit_one(tmp_path, ink, background):
    # PNG's tRNS key of a grey image: the 16-bit file's key is a 16-bit value; its transparent field
    # decodes as the 8-bit file's does (it was kept, as if opaque, whatever the key)
    a = np.full((40, 40), 255 - ink, np.uint8)
    a[8:32, 8:32] = ink
    eight = data.load_image(save(tmp_path / "eight.png", Image.fromarray(a), transparency=255 - ink))
    sixteen = data.load_image(save(tmp_path / "sixteen.png", Image.fromarray(a.astype(np.uint16) * 257),
                                   transparency=(255 - ink) * 257))
    assert eight[0, 0] == background and abs(int(eight[16, 16]) - ink) <= 1
    assert np.array_equal(sixteen, eight)


def test_image_size_parameter(tmp_path):
    p = save(tmp_path / "x.png", noise_img(0, 50, 70))
    assert data.load_image(p, image_size=20).shape == (20, 20)
    assert data.load_image(p, image_size=64, resize="crop").shape == (64, 64)
    for bad in (0, -3, 2.5, "32", True):        # the argument named, not the file blamed ("a damaged PNG file")
        with pytest.raises(ValueError, match=f"image_size must be a positive integer, got {bad!r}"):
            data.load_image(p, image_size=bad)
    with pytest.raises(ValueError, match="max_pixels must be a positive integer, got 0"):
        data.load_image(p, max_pixels=0)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [gray(v, 10, 10).convert("P") for v in (40, 200, 120)]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(p).n_frames == 3
    a = data.load_image(p)
    assert abs(int(a.mean()) - 40) <= 1


def test_exif_orientation_applied_to_jpeg(tmp_path):
    arr = np.zeros((20, 40), np.uint8)        # (H, W): left half black, right half white
    arr[:, 20:] = 255
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6                          # "rotate 90 CW to display"
    p = tmp_path / "rot.jpg"
    img.save(p, "JPEG", quality=95, exif=exif.tobytes())
    a = data.load_image(p, resize="stretch").astype(int)
    # displayed image is 20 wide, 40 tall: the black left half becomes the top half
    assert a[:12].mean() < 30 and a[20:].mean() > 225


# ----------------------------------------------------------------------------- resize geometry

def test_stretch_geometry():
    a = np.zeros((32, 64), np.uint8)          # (H, W): left half 0, right half 255
    a[:, 32:] = 255
    out = data.resize_gray(a, 32, "stretch").astype(int)
    assert out.shape == (32, 32)
    assert (out[:, :15] < 5).all() and (out[:, 17:] > 250).all()
    assert (out == out[0]).all()              # every row identical


def test_crop_geometry_keeps_the_centre_square():
    a = np.zeros((32, 96), np.uint8)          # black | 200 | black, each 32 wide
    a[:, 32:64] = 200
    out = data.resize_gray(a, 32, "crop")
    assert (out == 200).all()
    tall = np.zeros((100, 20), np.uint8)
    tall[40:60] = 255
    out = data.resize_gray(tall, 32, "crop").astype(int)   # centre 20x20 is all white
    assert (out > 250).all()


@pytest.mark.parametrize("transpose", [False, True])
def test_pad_geometry_keeps_aspect_centres_and_fills_with_border_value(transpose):
    a = np.zeros((32, 64), np.uint8)          # (H, W) 1:2, a white 4-px frame round a black inside
    a[:4], a[-4:], a[:, :4], a[:, -4:] = 255, 255, 255, 255
    if transpose:
        a = a.T.copy()
    out = data.resize_gray(a, 32, "pad").astype(int)
    if transpose:
        out = out.T
    assert out.shape == (32, 32)
    assert (out[:8] == 255).all() and (out[24:] == 255).all()   # pad = border value (white)
    dark_rows = np.flatnonzero(out[:, 16] < 128)
    assert dark_rows.min() >= 9 and dark_rows.max() <= 22      # image occupies rows 8..23
    assert out[16, 16] < 10 and out[16, 3] < 10


def test_pad_fill_follows_dark_background():
    a = np.zeros((10, 40), np.uint8)
    a[3:7, 10:30] = 250
    out = data.resize_gray(a, 32, "pad")
    assert out[0, 0] == 0 and out[31, 31] == 0 and out.max() > 200


def test_bad_resize_mode_is_a_data_error(tmp_path):
    p = save(tmp_path / "x.png", gray(1))
    with pytest.raises(DataError, match="resize"):
        data.load_image(p, resize="squash")


# ----------------------------------------------------------------------------- bad files

def _bytes_of(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def bad_files():
    """name -> (bytes, expected substring of the reason)."""
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    png, jpg = _bytes_of(rgb, "PNG"), _bytes_of(rgb, "JPEG")
    bmp = bytearray(_bytes_of(rgb, "BMP"))
    bmp[30:34] = struct.pack("<I", 9)                              # a compression no BMP has
    return {
        "truncated.png": (png[: len(png) // 2], f"a truncated PNG file ({len(png) // 2:,} bytes): image file is"),
        "truncated.jpg": (jpg[: len(jpg) // 2], f"a truncated JPEG file ({len(jpg) // 2:,} bytes): image file is"),
        "compression.bmp": (bytes(bmp), f"a damaged BMP file ({len(bmp):,} bytes): Unsupported BMP compression (9)"),
        "header.jpg": (b"P5\n3 x4\n255\n" + bytes(12), "a damaged PNM file (24 bytes): "),   # PGM, whatever its name
        "zero.png": (b"", "empty file"),
        "text.png": (b"this is not an image\n", "looks like text"),
        "bomb.png": (forged_png(20000, 20000), "too large"),
        "bomb_under_pillow_limit.png": (forged_png(7000, 7000), "too large"),
        "pcx.png": (_bytes_of(rgb, "PCX"), "not a PNG/JPEG"),
        "targa.jpg": (_bytes_of(rgb, "TGA"), "not a PNG/JPEG"),
        "doc.tif": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        "garbage.webp": (bytes(range(256)) * 4, "its first bytes match none of these formats"),
        "stub.png": (png[:6], "a damaged or truncated PNG file (6 bytes)"),        # too short for Pillow to tell
        "stub.gif": (b"GIF89a", "a damaged or truncated GIF file (6 bytes)"),
        # formats cnn does not read, under a name it does: named, with what to do
        "iphone.jpg": (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(40),
                       "not a PNG/JPEG/BMP/GIF/PNM/TIFF/WebP/ICO image (it is an HEIC image: convert it to PNG or JPEG "
                       "first)"),
        "avif.png": (b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf" + bytes(40), "(it is an AVIF image: convert"),
        "layers.png": (b"8BPS\0\1" + bytes(40), "(it is a Photoshop (PSD) file: convert"),
        "drawing.png": (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="16">\n',
                        "(it is an SVG drawing: convert"),
        "scan.tif": (bytes(128) + b"DICM" + bytes(40), "(it is a DICOM file: convert"),
        "jxl.webp": (b"\xff\x0a" + bytes(40), "(it is a JPEG XL image: convert"),
        # a Mac's `._photo.jpg` beside photo.jpg (named here without the dot that hides it in a folder), as
        # `find -name '*.jpg'` lists it for cnn predict
        "appledouble.jpg": (b"\0\x05\x16\x07\0\x02\0\0Mac OS X        \0\x02" + bytes(40),
                            "(it is macOS's AppleDouble metadata, the ._name file a Mac writes"),
    }


@pytest.mark.parametrize("name", sorted(bad_files()))
def test_load_image_rejects_bad_file_with_reason(tmp_path, name):
    content, reason = bad_files()[name]
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError) as e:
        data.load_image(p)
    msg = str(e.value)
    assert msg.startswith(str(p) + ": ") and reason in msg and "\n" not in msg
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_pixel_limit_is_per_call_and_checked_before_decoding(tmp_path):
    p = save(tmp_path / "x.png", noise_img(0, 100, 100))
    assert data.load_image(p).shape == (32, 32)
    with pytest.raises(DataError, match="too large: 100x100"):
        data.load_image(p, max_pixels=5000)


def test_decompression_bomb_warning_becomes_a_skip_not_a_warning(tmp_path):
    p = tmp_path / "warn.png"               # 100 MP: above Pillow's warning limit, below its error limit
    p.write_bytes(forged_png(10000, 10000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match=r"too large: 100.0 megapixels \(limit 89.4785\); possible "
                                            "decompression bomb"):
            data.load_image(p, max_pixels=10**12)                               # (Pillow's limit: the lower)
        for big, limit in ((10000, 40), (20000, 40)):       # above Pillow's warning and error limits: ours named
            p.write_bytes(forged_png(big, big))
            with pytest.raises(DataError, match=rf"too large: {big * big / 1e6:.1f} megapixels \(limit {limit}\); "
                                                "possible decompression bomb$"):
                data.load_image(p)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def forged_jpeg(width, height):
    """A small valid JPEG whose frame header (SOF0) declares width x height."""
    b = bytearray(_bytes_of(gray(0), "JPEG"))
    sof = b.index(b"\xff\xc0")
    b[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(b)


def test_a_192_megapixel_phone_jpeg_loads_and_the_jpeg_limit_still_holds(tmp_path):
    img = Image.new("L", (16000, 12000), 220)        # mostly flat: ~2 MB on disk
    ImageDraw.Draw(img).ellipse([5000, 3000, 11000, 9000], fill=20)
    p = save(tmp_path / "d" / "dark" / "phone.jpg", img, quality=80)
    del img
    a = data.load_image(p)
    assert abs(int(a[16, 16]) - 20) <= 3 and abs(int(a[1, 1]) - 220) <= 3     # a dark disc on light
    save(tmp_path / "d" / "light" / "x.png", gray(220))
    ds, skipped = data.load_folder(tmp_path / "d", cache=False)
    assert skipped == [] and np.array_equal(ds.images[0], a)
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(forged_jpeg(20000, 15000))      # 300 MP: refused from its header
    with pytest.raises(DataError, match=r"too large: 20000x15000 = 300.0 megapixels \(limit 200 for a JPEG\)"):
        data.load_image(bomb)


def make_folder(root, per_class=3, classes=("cat", "dog")):
    for ci, c in enumerate(classes):
        for i in range(per_class):
            save(root / c / f"{i:03d}.png", noise_img(ci * 100 + i))
    return root


def test_bad_files_are_skipped_with_reasons_and_hidden_files_ignored(tmp_path):
    root = make_folder(tmp_path / "d")
    for name, (content, _) in bad_files().items():
        (root / "cat" / name).write_bytes(content)
    (root / "dog" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "dog" / "._001.png").write_bytes(b"\0\5\26\7AppleDouble")
    (root / "dog" / "notes.txt").write_text("hello")
    (root / ".hidden_class").mkdir()
    save(root / ".hidden_class" / "x.png", gray(3))
    ds, skipped = data.load_folder(root, cache=False)
    assert ds.classes == ["cat", "dog"]
    assert len(ds) == 6 and ds.images.shape == (6, 32, 32) and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    got = {os.path.basename(p): why for p, why in skipped}
    assert set(got) == set(bad_files())
    for name, (_, reason) in bad_files().items():
        assert reason in got[name], (name, got[name])
    assert all(os.path.isabs(p) or p.startswith(str(root)) for p, _ in skipped)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    n = len(bad_files())                                  # whose files they were: cat lost most of its own
    assert f"warning: unreadable files cost these classes 10% or more of their images: cat {n} of {n + 3} " \
           f"({n / (n + 3):.0%})" in ds.notes


def test_a_class_that_lost_few_files_is_not_named(tmp_path):
    root = make_folder(tmp_path / "d")
    for i in range(20):
        save(root / "dog" / f"more{i}.png", gray(i))
    (root / "dog" / "bad1.png").write_bytes(b"junk")
    (root / "dog" / "bad2.png").write_bytes(b"junk")          # 2 of 25: 8%
    ds, skipped = data.load_folder(root, cache=False)
    assert len(skipped) == 2 and not [n for n in ds.notes if "cost these classes" in n]
    (root / "dog" / "bad3.png").write_bytes(b"junk")          # 3 of 26: 12%
    ds, _ = data.load_folder(root, cache=False)
    assert [n for n in ds.notes if "cost these classes" in n] == [
        "warning: unreadable files cost these classes 10% or more of their images: dog 3 of 26 (12%)"]


def test_a_fifo_or_a_device_named_like_an_image_is_skipped_as_what_it_is(tmp_path):
    root = make_folder(tmp_path / "d")
    os.mkfifo(root / "cat" / "pipe.png")                     # reading it would block forever
    (root / "dog" / "zero.png").symlink_to("/dev/zero")       # reading it would never end
    (root / "dog" / "gone.png").symlink_to(tmp_path / "moved-away.png")
    with pytest.raises(DataError, match=r": not a regular file \(a folder\)$"):   # (it said "a device")
        data.load_image(root)
    ds, skipped = data.load_folder(root, cache=False)
    assert len(ds) == 6
    assert sorted((os.path.basename(p), why) for p, why in skipped) == [
        ("gone.png", "broken symbolic link (what it points to does not exist)"),
        ("pipe.png", "not a regular file (a FIFO)"), ("zero.png", "not a regular file (a device)")]


def test_images_of_a_single_grey_level_are_kept_and_counted_in_one_warning(tmp_path):
    root = make_folder(tmp_path / "d")
    save(root / "dog" / "blank.png", gray(255, 20, 20))
    save(root / "dog" / "clear.png", Image.new("RGBA", (8, 8), (0, 0, 0, 0)))
    for cache in (False, True, True):              # decoded, decoded into the cache, from the cache
        ds, skipped = data.load_folder(root, cache=cache)
        assert len(ds) == 8 and skipped == []
        assert ds.notes == [f"warning: 2 image(s) decode to a single grey level, e.g. {root / 'dog' / 'blank.png'}"]
    train, val = data.split(ds, np.arange(7), np.array([7]))
    assert train.notes == ds.notes and val.notes == []
    assert data.load_folder(make_folder(tmp_path / "e"), cache=False)[0].notes == []


def test_nearly_black_images_such_as_12_bit_data_in_16_bit_files_are_a_warning(tmp_path):
    root = make_folder(tmp_path / "d")
    ramp = (np.arange(40 * 30).reshape(30, 40) * 4095 // (40 * 30 - 1)).astype(np.uint16)      # 0..4095
    Image.fromarray(ramp).save(root / "cat" / "camera.png")
    save(root / "dog" / "dim.png", Image.fromarray((np.arange(64).reshape(8, 8) + 20).astype(np.uint8)))  # 20..83
    ds, _ = data.load_folder(root, cache=False)
    assert len(ds) == 8 and ds.notes == [
        f"warning: 1 image(s) are nearly black (no pixel above 16 of 255), e.g. {root / 'cat' / 'camera.png'}: "
        "its 16-bit samples reach only 4095 of 65535 (12-bit data); scale such files to their full range first"]


def test_nearly_black_8_bit_images_are_not_called_16_bit_files(tmp_path):
    root = make_folder(tmp_path / "d")
    dark = (np.arange(64).reshape(8, 8) // 8).astype(np.uint8)                                    # 0..7
    save(root / "cat" / "a_night.png", Image.fromarray(dark))
    ds, _ = data.load_folder(root, cache=False)
    assert ds.notes == [f"warning: 1 image(s) are nearly black (no pixel above 16 of 255), e.g. "
                        f"{root / 'cat' / 'a_night.png'}"]
    ramp = (np.arange(40 * 30).reshape(30, 40) * 4095 // (40 * 30 - 1)).astype(np.uint16)      # 0..4095
    Image.fromarray(ramp).save(root / "cat" / "camera.tif")                    # listed after a_night.png
    ds, _ = data.load_folder(root, cache=False)
    assert ds.notes == [
        f"warning: 2 image(s) are nearly black (no pixel above 16 of 255), e.g. {root / 'cat' / 'camera.tif'}: "
        "its 16-bit samples reach only 4095 of 65535 (12-bit data); scale such files to their full range first"]


def test_the_nearly_black_warning_names_the_bits_of_data_a_16_bit_file_holds(tmp_path):
    root = make_folder(tmp_path / "d")
    eight = (np.arange(64).reshape(8, 8) * 4).astype(np.uint16)                                # 0..252
    Image.fromarray(eight).save(root / "cat" / "scan.tif")
    ds, _ = data.load_folder(root, cache=False)
    assert ds.notes == [
        f"warning: 1 image(s) are nearly black (no pixel above 16 of 255), e.g. {root / 'cat' / 'scan.tif'}: "
        "its 16-bit samples reach only 252 of 65535 (8-bit data); scale such files to their full range first"]


def test_the_nearly_black_warning_names_float_samples_a_little_above_one(tmp_path):
    # (a 0..1 float TIFF with one sample at 1.01 decodes as 0..255 data, nearly black, and the warning said nothing
    # of why; a helper's mixed-formats pass)
    root = make_folder(tmp_path / "d")
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    ramp[0, 0] = 1.01
    Image.fromarray(ramp, mode="F").save(root / "cat" / "over.tif")
    ds, _ = data.load_folder(root, cache=False)
    assert ds.notes == [
        f"warning: 1 image(s) are nearly black (no pixel above 16 of 255), e.g. {root / 'cat' / 'over.tif'}: its "
        "float samples reach 1.01, so they are read as 0..255 (as 0..1 only up to 1.0); clip such files to 0..1 first"]


def test_the_single_grey_level_warning_names_nan_float_samples(tmp_path):
    # (a float TIFF whose foreground is NaN decoded all black, and the warning said nothing of NaN)
    root = make_folder(tmp_path / "d")
    mask = np.zeros((8, 8), np.float32)
    mask[2:6, 2:6] = np.nan
    Image.fromarray(mask, mode="F").save(root / "cat" / "nan.tif")
    ds, _ = data.load_folder(root, cache=False)
    assert ds.notes == [f"warning: 1 image(s) decode to a single grey level, e.g. {root / 'cat' / 'nan.tif'}: 16 of "
                        "its 64 float samples are NaN, read as 0"]
    os.remove(root / "cat" / "nan.tif")                # (a blank 16-bit file is named, with no false cause)
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(root / "cat" / "white16.png")
    ds, _ = data.load_folder(root, cache=False)
    assert ds.notes == [f"warning: 1 image(s) decode to a single grey level, e.g. {root / 'cat' / 'white16.png'}"]


def test_files_of_other_extensions_are_counted_in_one_note(tmp_path):
    root = make_folder(tmp_path / "d")
    for rel in ("cat/notes.txt", "cat/sub/scan.xyz", "dog/README", "dog/more.txt", "dog/Thumbs.db", "dog/.hidden"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    for cache in (False, True, True):              # decoded, into the cache, from the cache: scanned each time
        ds, _ = data.load_folder(root, cache=cache)
        assert len(ds) == 6
        assert ds.notes == ["note: 4 file(s) with other extensions were not read (.txt: 2, (no extension): 1, "
                            ".xyz: 1)"]
    assert data.load_folder(make_folder(tmp_path / "e"), cache=False)[0].notes == []


def test_the_note_on_other_extensions_names_the_image_formats_among_them(tmp_path):
    root = make_folder(tmp_path / "d")
    for rel in ("cat/IMG_0001.HEIC", "cat/IMG_0002.heic", "dog/art.psd", "dog/notes.txt"):
        (root / rel).write_bytes(b"x")
    assert data.load_folder(root, cache=False)[0].notes == [
        "note: 4 file(s) with other extensions were not read (.heic: 2, .psd: 1, .txt: 1); .heic and .psd are image "
        "formats cnn does not read: convert those files to PNG or JPEG"]
    (root / "cat" / "IMG_0002.heic").unlink()
    (root / "dog" / "art.psd").unlink()
    assert data.load_folder(root, cache=False)[0].notes == [
        "note: 2 file(s) with other extensions were not read (.heic: 1, .txt: 1); .heic is an image format cnn does "
        "not read: convert those files to PNG or JPEG"]


def test_strict_mode_lists_every_skipped_file(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "cat" / "zero.png").write_bytes(b"")
    (root / "dog" / "text.jpg").write_bytes(b"hello")
    with pytest.raises(DataError) as e:
        data.load_folder(root, strict=True)
    lines = str(e.value).splitlines()
    assert len(lines) == 3 and "2 unusable file(s)" in lines[0] and str(root) in lines[0]
    assert "zero.png: empty file" in lines[1] and "text.jpg: not a" in lines[2]


def test_nested_folders_case_insensitive_extensions_and_order(tmp_path):
    root = tmp_path / "d"
    save(root / "b" / "z.PNG", gray(1))
    save(root / "b" / "deep" / "er" / "a.JpEg", gray(2, 9, 9), "JPEG")
    save(root / "a" / "y.Tiff", gray(3))
    save(root / "a" / "x.bmp", gray(4))
    save(root / "__MACOSX" / "a" / "x.png", gray(5))
    save(root / "@eaDir" / "a" / "SYNOFILE_THUMB_S.jpg", gray(5), "JPEG")     # a NAS's thumbnails: no class
    save(root / "b" / "@eaDir" / "z.PNG" / "SYNOFILE_THUMB_M.jpg", gray(5), "JPEG")   # ... nor images of b
    save(root / "$RECYCLE.BIN" / "a" / "x.png", gray(5))
    save(root / "loose.png", gray(6))
    ds, skipped = data.load_folder(root, cache=False)
    rel = [os.path.relpath(p, root).replace(os.sep, "/") for p in ds.paths]
    assert rel == ["a/x.bmp", "a/y.Tiff", "b/deep/er/a.JpEg", "b/z.PNG"]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 1, 1]
    assert [int(round(ds.images[i].mean())) for i in range(4)] == [4, 3, 2, 1]
    assert [(os.path.basename(p), w) for p, w in skipped] == [("loose.png", "not inside a class subfolder")]


def test_folders_read_every_image_extension_a_single_file_may_have(tmp_path):
    root = tmp_path / "d"
    exts = [".ppm", ".pnm", ".pbm", ".jfif", ".jpe", ".ico", ".JFIF"]
    for i, ext in enumerate(exts):
        save(root / "a" / f"x{i}{ext}", gray(10 * i + 5, 16, 16).convert("RGBA" if ext == ".ico" else "L"),
             "JPEG" if ext.lower() in (".jfif", ".jpe") else None)
    save(root / "b" / "y.png", gray(1))
    ds, skipped = data.load_folder(root, cache=False)
    assert skipped == [] and [os.path.basename(p) for p in ds.paths[:-1]] == [f"x{i}{e}" for i, e in enumerate(exts)]
    assert [int(round(ds.images[i].mean())) for i in range(len(exts))] == [10 * i + 5 for i in range(len(exts))]


def test_parallel_decode_matches_serial(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", per_class=40, classes=("a", "b", "c"))
    (root / "b" / "bad.png").write_bytes(b"x")
    one, s1 = data.load_folder(root, workers=1, cache=False)
    monkeypatch.setattr(many, "PROCESS_MIN_IMAGES", 16)      # take the worker-process path
    calls = []
    real = many._decode_in_processes
    monkeypatch.setattr(many, "_decode_in_processes", lambda jobs, w: calls.append(w) or real(jobs, w))
    two, s2 = data.load_folder(root, workers=2, cache=False)
    assert calls == [2]
    assert np.array_equal(one.images, two.images) and np.array_equal(one.labels, two.labels)
    assert one.paths == two.paths and s1 == s2 and len(one) == 120
    assert any("bad.png" in p for p, _ in s2)


class _DIES:
    parent = None


def _dies_in_child(jobs):
    """A decode_many chunk worker that kills its process unless it runs in the test process."""
    if os.getpid() != _DIES.parent:
        os._exit(3)
    return _REAL_CHUNK(jobs)


_REAL_CHUNK = many._decode_chunk


def test_decode_falls_back_when_a_worker_process_dies_or_fork_is_missing(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", per_class=12, classes=("a", "b"))
    one, s1 = data.load_folder(root, workers=1, cache=False)
    monkeypatch.setattr(many, "PROCESS_MIN_IMAGES", 4)
    real = many._decode_chunk
    monkeypatch.setattr(_DIES, "parent", os.getpid())
    monkeypatch.setattr(many, "_decode_chunk", _dies_in_child)
    two, s2 = data.load_folder(root, workers=2, cache=False)
    assert np.array_equal(one.images, two.images) and one.paths == two.paths and s1 == s2
    monkeypatch.setattr(many, "_decode_chunk", real)
    import multiprocessing
    jobs = [(str(p), 32, "pad", data.MAX_PIXELS) for p in one.paths]
    with monkeypatch.context() as m:
        m.setattr(many.sys, "platform", "darwin")          # fork is used on Linux only
        assert many._decode_in_processes(jobs, 2) is None
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert many._decode_in_processes(jobs, 2) is None
    three, s3 = data.load_folder(root, workers=2, cache=False)
    assert np.array_equal(one.images, three.images) and s1 == s3


def _wrong_shape_chunk(jobs):
    """A decode chunk whose first image has the wrong shape: decode_array fails on it in its own loop,
    between two parts, while the worker pool is up."""
    out = _REAL_CHUNK(jobs)
    return [(np.zeros((3, 3), np.uint8), None)] + out[1:]


class _FailingBar:
    """A progress bar whose update raises, as a Ctrl-C landing in iter_decoded's own lines does."""

    def update(self, n):
        raise ValueError("stopped while counting")

    def close(self):
        pass


def test_an_error_between_two_parts_shuts_the_decode_workers_down_at_once(tmp_path, monkeypatch):
    """Whether the error comes in iter_decoded (its traceback then holds the worker pool's generator)
    or in decode_array's loop, the pool is shut down before the error reaches the caller, not left
    for the interpreter's exit to wait on (a Ctrl-C to `cnn predict` there hung it for ever)."""
    import multiprocessing

    root = make_folder(tmp_path / "d", per_class=20, classes=("a", "b"))
    jobs = many.Jobs(sorted(str(p) for p in root.rglob("*.png")), 32, "pad", data.MAX_PIXELS)
    monkeypatch.setattr(many, "PROCESS_MIN_IMAGES", 4)
    shut = []
    real_shut = many._shut
    monkeypatch.setattr(many, "_shut", lambda pool: shut.append(pool) or real_shut(pool))
    with monkeypatch.context() as m:
        m.setattr(many, "_bar", lambda total: _FailingBar())
        m.setattr(many.sys, "stderr", io.TextIOWrapper(io.BytesIO()))
        m.setattr(many.sys.stderr, "isatty", lambda: True)
        with pytest.raises(ValueError, match="stopped while counting") as err:     # (err keeps the frames)
            many.decode_array(jobs, workers=2, progress=True)
    assert len(shut) == 1 and multiprocessing.active_children() == [], err
    monkeypatch.setattr(many, "_decode_chunk", _wrong_shape_chunk)          # (the forked workers run it too)
    with pytest.raises(ValueError, match="could not broadcast") as err:
        many.decode_array(jobs, workers=2)
    assert len(shut) == 2 and multiprocessing.active_children() == [], err


def test_a_ctrl_c_during_the_decode_pools_shutdown_waits_for_its_end(tmp_path, monkeypatch):
    """A SIGINT as the worker pool shuts down is raised once the shutdown is over: cut short, it left
    the workers waiting for work and the exit waiting for them (a Ctrl-C to `cnn predict` hung it)."""
    import multiprocessing
    import signal
    from concurrent.futures import ProcessPoolExecutor

    root = make_folder(tmp_path / "d", per_class=20, classes=("a", "b"))
    jobs = many.Jobs(sorted(str(p) for p in root.rglob("*.png")), 32, "pad", data.MAX_PIXELS)
    monkeypatch.setattr(many, "PROCESS_MIN_IMAGES", 4)
    real = ProcessPoolExecutor.shutdown

    def interrupted(self, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)                                # Ctrl-C as the shutdown begins
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "shutdown", interrupted)
    with pytest.raises(KeyboardInterrupt):
        many.decode_array(jobs, workers=2)
    assert multiprocessing.active_children() == []


# ----------------------------------------------------------------------------- folder errors

def _error(root, **kw):
    with pytest.raises(DataError) as e:
        data.load_folder(root, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(root) in msg
    return msg


def test_missing_folder(tmp_path):
    assert _error(tmp_path / "nope") == f"data folder {tmp_path / 'nope'}: does not exist"
    assert _error(str(tmp_path / "*")).endswith(": does not exist (a wildcard pattern: give the one folder that "
                                               "holds the class subfolders)")
    assert _error("https://example.com/data").endswith(": does not exist (a URL: cnn reads image files on this "
                                                       "machine; download it first)")


def test_a_path_that_names_nothing_says_why_when_it_shows(tmp_path):
    from cnncli.data import scan

    for name in ("a.png", "b.png"):
        save(tmp_path / name, noise_img(0))
    cases = {str(tmp_path / "*.png"): " (a wildcard pattern that matches 2 path(s), but no shell expanded it: "
                                      "write it without quotes, or give the folder)",
             str(tmp_path / "*.jpg"): " (a wildcard pattern, and it matches nothing)",
             "~/nope.png": " (a shell expands ~ only outside quotes)",
             "http://example.com/a.png": " (a URL: cnn reads image files on this machine; download it first)",
             "": " (an empty path)",
             str(tmp_path / "nope.png"): ""}
    for path, hint in cases.items():
        with pytest.raises(DataError) as e:
            scan.list_images_and_bad(path)
        assert str(e.value) == f"{path}: no such file or folder{hint}"


def test_not_a_folder(tmp_path):
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    assert "not a folder" in _error(f)


def test_no_class_subfolders(tmp_path):
    root = tmp_path / "flat"
    save(root / "a.png", gray(1))
    assert _error(root).endswith("no class subfolders (expected one subfolder of images per class, e.g. "
                                 f"{root / 'cat'}); it holds 1 image file(s) itself: if it is a class folder, give "
                                 "the folder above it")
    (tmp_path / "empty").mkdir()
    assert _error(tmp_path / "empty").endswith(f"e.g. {tmp_path / 'empty' / 'cat'})")


def test_a_class_folder_given_for_the_data_folder_says_so_when_it_has_a_subfolder(tmp_path):
    # eval --data cat/, where cat/ holds its images and one subfolder of more: the subfolder is no class
    # of the model, and the images beside it say the folder given is a class folder
    root = make_folder(tmp_path / "d", classes=("cat", "dog"))
    save(root / "cat" / "more" / "x.png", noise_img(7))
    hint = "; it holds 3 image file(s) itself: if it is a class folder, give the folder above it"
    assert _error(root / "cat", classes=["cat", "dog"], missing_ok=True).endswith(
        "class folder(s) more not among the expected classes (cat, dog)" + hint)
    assert _error(root / "cat", classes=["cat", "dog"]).endswith("(missing cat, dog; extra more)" + hint)


def test_a_class_folder_in_other_case_beside_the_class_folder_is_not_told_to_be_renamed(tmp_path):
    # eval --data with cat/ and Cat/: renaming Cat to cat is no way out; the hint says which one is no class
    root = make_folder(tmp_path / "d", classes=("cat", "Cat", "dog"))
    beside = "; Cat beside cat: class names match exactly, case too, so Cat is no class: move its images into cat " \
             "or out of the data folder"
    assert _error(root, classes=["cat", "dog"], missing_ok=True).endswith("(cat, dog)" + beside)
    assert _error(root, classes=["cat", "dog"]).endswith("(extra Cat)" + beside)
    os.rename(root / "cat", root / "kitten")        # without cat/, renaming Cat is the way
    assert _error(root, classes=["cat", "dog"], missing_ok=True).endswith(
        "; Cat for cat: class names match exactly, case too: rename the folder")


def test_a_run_folder_given_for_the_data_folder_says_so(tmp_path):
    # (cnn eval RUN --data RUN, data.train=RUN: 'class folder(s) report not among the expected classes')
    run = tmp_path / "run"
    save(run / "report" / "curves.png", noise_img(1))
    (run / "best.npz").write_bytes(b"PK")
    hint = "; it is a run folder (it holds best.npz): give the folder of the images' class folders"
    assert _error(run).endswith("has only one class (report); need at least 2" + hint)
    assert _error(run, classes=["cat", "dog"], missing_ok=True).endswith("(cat, dog)" + hint)


def test_one_file_linked_into_two_class_folders_is_a_warning(tmp_path):
    root = make_folder(tmp_path / "d", classes=("a", "b", "c"))
    first = sorted((root / "a").iterdir())[0]
    ds, _ = data.load_folder(root, cache=False)
    assert not [n for n in ds.notes if "more than one class folder" in n]
    os.symlink(first, root / "b" / "link.png")                    # a's image, linked among b's
    os.link(first, root / "a" / "hard.png")                       # (a second name in its own class: no clash)
    os.symlink(root / "a", root / "c" / "all_of_a")               # a whole folder of a's, linked into c
    for _ in range(2):                                            # decoded, then from the cache
        ds, _ = data.load_folder(root)
        shared = [n for n in ds.notes if "more than one class folder" in n]
        n_a = sum(1 for p in ds.paths if os.path.basename(os.path.dirname(p)) == "a")
        assert shared == [f"warning: {n_a - 1} file(s) lie in more than one class folder (links to one file), e.g. "
                          f"a/{first.name} and b/link.png: each copy counts as the class of its folder"]


def test_one_class_folder_says_what_the_user_likely_meant(tmp_path):
    wrapped = tmp_path / "unzipped"                     # an archive's folder around the class folders
    make_folder(wrapped / "dataset")
    (wrapped / "__MACOSX").mkdir()
    assert _error(wrapped).endswith(f"has only one class (dataset); need at least 2; if the 2 folders in dataset "
                                    f"are the classes, give {wrapped / 'dataset'} instead")
    cls = tmp_path / "circle"                           # data.train given a class folder with a subfolder
    save(cls / "a.png", gray(1))
    save(cls / "b.png", gray(2))
    save(cls / "more" / "c.png", gray(3))
    assert _error(cls).endswith("has only one class (more); need at least 2; it holds 2 image file(s) itself: if "
                                "it is a class folder, give the folder above it")


def test_empty_class_folder(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("x")
    assert "empty" in _error(root) and "no image files" in _error(root)
    assert _error(root).endswith(f"every class folder needs an image: add some, or move that folder out of {root}")
    (root / "bare").mkdir()
    assert _error(root).endswith(f"every class folder needs an image: add some, or move those folders out of {root}")
    (root / "bare").rmdir()
    for name in ("IMG_1.HEIC", "IMG_2.HEIC", "notes"):   # (what it holds instead: say so)
        (root / "empty" / name).write_bytes(b"x")
    assert "class folder(s) with no image files: empty (it holds 2 .heic, 1 (no extension), 1 .txt file(s), " \
        "which are not read)" in _error(root)


def test_class_whose_images_are_all_bad(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "broken").mkdir()
    (root / "broken" / "a.png").write_bytes(b"")
    msg = _error(root)
    assert "no usable images" in msg and "broken" in msg


def test_single_class(tmp_path):
    root = make_folder(tmp_path / "d", classes=("only",))
    assert "only one class" in _error(root)


def test_no_images_at_all(tmp_path):
    root = tmp_path / "d"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        (root / c / "x.txt").write_text("x")
    assert "no image files" in _error(root)


def test_classes_must_match(tmp_path):
    root = make_folder(tmp_path / "d", classes=("cat", "dog", "eel"))
    msg = _error(root, classes=["cat", "dog", "fox"])
    assert "missing fox" in msg and "extra eel" in msg
    ds, _ = data.load_folder(root, classes=["eel", "cat", "dog"])     # given order sets the labels
    assert ds.classes == ["eel", "cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert os.path.basename(os.path.dirname(ds.paths[0])) == "eel"


def test_missing_ok_keeps_the_given_classes_and_their_indices(tmp_path, cache_in_tmp):
    # eval's load: fox has no folder, cat's images are all broken; the labels stay the model's
    root = make_folder(tmp_path / "d", classes=("cat", "dog", "eel"))
    for f in (root / "cat").iterdir():
        f.write_bytes(b"broken")
    assert "missing fox" in _error(root, classes=["fox", "dog", "eel", "cat"])
    for _ in range(2):                                            # decoded, then from the cache
        ds, skipped = data.load_folder(root, classes=["fox", "dog", "eel", "cat"], missing_ok=True)
        assert ds.classes == ["fox", "dog", "eel", "cat"] and len(skipped) == 3
        assert ds.labels.tolist() == [1, 1, 1, 2, 2, 2]
        assert [os.path.basename(os.path.dirname(p)) for p in ds.paths] == ["dog"] * 3 + ["eel"] * 3
    assert len(_pixel_files(cache_in_tmp)) == 1
    assert "class folder(s) eel not among the expected classes (cat, dog)" in _error(root, classes=["cat", "dog"],
                                                                                     missing_ok=True)
    assert "no usable images in class folder(s) cat" in _error(root, classes=["dog", "eel", "cat"])


# ----------------------------------------------------------------------------- cache

def _pixel_files(folder) -> list:
    """The dataset cache's pixel files in folder (not the -ids.npy of their files' identities)."""
    return [p for p in folder.glob("*.npy") if not p.name.endswith("-ids.npy")]


def _forbid_decoding(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("decoder called on a cache hit")
    monkeypatch.setattr(dec, "_decode", boom)


def test_cache_hit_does_not_decode_and_keeps_skips(tmp_path, monkeypatch, cache_in_tmp):
    root = make_folder(tmp_path / "d")
    (root / "dog" / "zero.png").write_bytes(b"")
    first, s1 = data.load_folder(root)
    assert len(_pixel_files(cache_in_tmp)) == 1
    assert not [p for p in cache_in_tmp.iterdir() if p.name.startswith(".tmp")]
    _forbid_decoding(monkeypatch)
    second, s2 = data.load_folder(root)
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)
    assert second.images.dtype == np.uint8 and second.labels.dtype == np.int64
    assert first.paths == second.paths and first.classes == second.classes
    assert s1 == s2 and len(s2) == 1 and "empty file" in s2[0][1]
    with pytest.raises(DataError, match="unusable"):       # strict still sees the cached skips
        data.load_folder(root, strict=True)


def test_cache_is_keyed_on_settings(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d")
    data.load_folder(root)
    calls = []
    real = dec._decode
    monkeypatch.setattr(dec, "_decode", lambda *a: calls.append(a) or real(*a))
    ds, _ = data.load_folder(root, image_size=16)
    assert ds.images.shape == (6, 16, 16) and len(calls) == 6
    data.load_folder(root, resize="crop")
    assert len(calls) == 12


@pytest.mark.parametrize("change", ["content", "mtime", "new_file", "removed_file"])
def test_cache_invalidated_when_files_change(tmp_path, monkeypatch, change):
    root = make_folder(tmp_path / "d")
    data.load_folder(root)
    target = root / "cat" / "001.png"
    if change == "content":
        save(target, noise_img(999, 60, 60))
    elif change == "mtime":
        st = os.stat(target)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    elif change == "new_file":
        save(root / "dog" / "new.png", gray(9))
    else:
        target.unlink()
    calls = []
    real = dec._decode
    monkeypatch.setattr(dec, "_decode", lambda *a: calls.append(a) or real(*a))
    ds, _ = data.load_folder(root)
    # only the changed or new file decodes again (the others' pixels come from the out-of-date entry)
    assert [os.path.basename(c[0]) for c in calls] == {"content": ["001.png"], "mtime": ["001.png"],
                                                       "new_file": ["new.png"], "removed_file": []}[change]
    expected = {"content": 6, "mtime": 6, "new_file": 7, "removed_file": 5}[change]
    assert len(ds) == expected
    assert ds.images.tobytes() == data.load_folder(root, cache=False)[0].images.tobytes()
    if change == "content":
        assert np.array_equal(ds.images[1], data.load_image(target))


@pytest.mark.parametrize("garbage", [b"", b"not a zip at all", b"PK\x03\x04" + b"\0" * 100])
def test_corrupt_cache_is_ignored_and_rebuilt(tmp_path, cache_in_tmp, garbage, monkeypatch):
    root = make_folder(tmp_path / "d")
    first, _ = data.load_folder(root)
    (cache_file,) = _pixel_files(cache_in_tmp)
    cache_file.write_bytes(garbage)
    again, _ = data.load_folder(root)
    assert np.array_equal(first.images, again.images)
    _forbid_decoding(monkeypatch)                           # the rebuilt cache is good again
    third, _ = data.load_folder(root)
    assert np.array_equal(first.images, third.images)


def test_cache_false_writes_nothing(tmp_path, cache_in_tmp):
    root = make_folder(tmp_path / "d")
    data.load_folder(root, cache=False)
    assert not cache_in_tmp.exists() or not list(cache_in_tmp.iterdir())


def test_unwritable_cache_dir_is_not_fatal(tmp_path, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache dir should be")
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(blocker / "sub"))
    ds, _ = data.load_folder(make_folder(tmp_path / "d"))
    assert len(ds) == 6


# ----------------------------------------------------------------------------- split

@pytest.mark.parametrize("counts,fraction", [((10, 10, 10), 0.2), ((1, 2, 3, 50), 0.1),
                                             ((7, 1, 4), 0.5), ((100, 3), 0.01), ((5, 5), 0.9)])
def test_stratified_split_properties(counts, fraction):
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(0).shuffle(labels)
    tr, va = data.stratified_split(labels, fraction, seed=3)
    assert tr.dtype == np.int64 and va.dtype == np.int64
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)             # sorted, unique
    assert not set(tr) & set(va) and len(tr) + len(va) == len(labels)
    for c, n in enumerate(counts):
        k = int((labels[va] == c).sum())
        expected = int(np.floor(fraction * n + 0.5))
        expected = min(max(expected, 1), n - 1) if n >= 2 else 0
        assert k == expected, (c, n, k)
    tr2, va2 = data.stratified_split(labels, fraction, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)


def test_stratified_split_depends_on_seed_and_fraction_zero_is_empty():
    labels = np.repeat(np.arange(4), 50)
    a = data.stratified_split(labels, 0.2, seed=0)[1]
    b = data.stratified_split(labels, 0.2, seed=1)[1]
    assert not np.array_equal(a, b)
    tr, va = data.stratified_split(labels, 0.0, seed=0)
    assert len(va) == 0 and np.array_equal(tr, np.arange(200))
    with pytest.raises(ValueError, match="fraction"):
        data.stratified_split(labels, 1.0, seed=0)


# ----------------------------------------------------------------------------- list_images

def test_list_images(tmp_path):
    root = tmp_path / "p"
    save(root / "b.png", gray(1))
    save(root / "sub" / "a.JPG", gray(1), "JPEG")
    save(root / "a.gif", gray(1))
    (root / "notes.txt").write_text("x")
    (root / ".hidden.png").write_bytes(b"x")
    save(root / ".git" / "c.png", gray(1))
    got = data.list_images(root)
    assert got == sorted(got)
    assert [os.path.relpath(p, root) for p in got] == ["a.gif", "b.png", os.path.join("sub", "a.JPG")]
    assert data.list_images(root / "b.png") == [str(root / "b.png")]
    with pytest.raises(DataError, match="no such file"):
        data.list_images(root / "missing")


def test_dataset_subset():
    ds = data.Dataset(np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4),
                      np.array([0, 1, 0], np.int64), ["a", "b"], ["x", "y", "z"])
    sub = ds.subset([2, 0])
    assert len(sub) == 2 and sub.paths == ["z", "x"] and np.array_equal(sub.images[0], ds.images[2])


# ----------------------------------------------------------------------------- robustness

@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"), ("BMP", "bmp"),
                                     ("TIFF", "tif"), ("WEBP", "webp"), ("PPM", "pgm")])
def test_mutated_files_never_crash(tmp_path, fmt, ext):
    """Random byte flips/truncations of a valid file: either a (32,32) uint8 image or a DataError."""
    img = noise_img(5, 24, 20) if fmt != "JPEG" else noise_img(5, 24, 20).convert("RGB")
    good = _bytes_of(img, fmt)
    rng = np.random.default_rng(42)
    outcomes = {"ok": 0, "skipped": 0}
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        for k in range(40):
            b = bytearray(good)
            for _ in range(int(rng.integers(1, 6))):
                b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
            if k % 3 == 0:
                b = b[: int(rng.integers(1, len(b)))]
            p = tmp_path / f"m{k}.{ext}"
            p.write_bytes(bytes(b))
            try:
                a = data.load_image(p)
                assert a.shape == (32, 32) and a.dtype == np.uint8
                outcomes["ok"] += 1
            except DataError as e:
                assert str(e).startswith(str(p)) and "\n" not in str(e)
                outcomes["skipped"] += 1
    assert outcomes["skipped"] > 0
    assert [str(w.message) for w in recorded] == []             # Pillow's metadata warnings stay quiet


def test_an_error_pillow_did_not_raise_is_not_called_damage(tmp_path):
    p = tmp_path / "fine.png"
    p.write_bytes(_bytes_of(noise_img(1), "PNG"))
    try:
        np.empty(1 << 62, np.uint8)                        # raised here, not in Pillow: no memory
    except MemoryError as e:
        reason = dec._damaged_reason(str(p), e, dec._one_line(e))
    assert reason.startswith("cannot decode: MemoryError: ") and "damaged" not in reason


def _damaged_tiff(compression: str) -> bytes:
    """A TIFF whose compressed strip has 20 bytes overwritten: it opens, and its pixels do not decode
    (libtiff, which decodes them for Pillow, complains about it on stderr unless silenced)."""
    from PIL import features

    if not features.check_codec("libtiff"):
        pytest.skip("this Pillow has no libtiff")
    b = bytearray(_bytes_of(noise_img(7, 40, 30), "TIFF", compression=compression))
    strip = Image.open(io.BytesIO(bytes(b))).tag_v2[273][0]     # StripOffsets
    b[strip + 10:strip + 30] = b"\xff" * 20
    return bytes(b)


@pytest.mark.parametrize("compression", ["tiff_lzw", "tiff_adobe_deflate"])
def test_a_damaged_compressed_tiff_is_one_reason_and_libtiff_prints_nothing(tmp_path, capfd, compression):
    p = tmp_path / "bad.tif"
    p.write_bytes(_damaged_tiff(compression))
    capfd.readouterr()
    [(a, reason)] = dec.decode_jobs([(str(p), 32, "pad", dec.MAX_PIXELS)])
    assert a is None
    assert reason == f"a damaged TIFF file ({p.stat().st_size:,} bytes): its pixel data does not decode " \
                     "(decoder error -2)"
    assert capfd.readouterr().err == ""           # not libtiff's "tempfile.tif: Using code not yet in table."


def test_decode_worker_processes_keep_libtiff_quiet_too(tmp_path):
    """In a fresh process that decodes nothing itself, its forked decode workers silence libtiff."""
    for i in range(8):
        (tmp_path / f"bad{i}.tif").write_bytes(_damaged_tiff("tiff_lzw"))
    script = ("import sys\nfrom cnncli.data import decodemany as many\nmany.PROCESS_MIN_IMAGES = 4\n"
              "arrays, why = many.decode_many(sys.argv[1:], workers=2)\nprint(sum(a is None for a in arrays))\n"
              "print(sorted({w.split(':')[0] for w in why}))\n")
    paths = sorted(str(p) for p in tmp_path.glob("*.tif"))
    res = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stderr == ""
    size = os.path.getsize(paths[0])
    assert res.stdout.splitlines() == ["8", f"['a damaged TIFF file ({size:,} bytes)']"]


def test_symlinked_class_folder_and_symlink_loop(tmp_path):
    root = make_folder(tmp_path / "d")
    elsewhere = make_folder(tmp_path / "other", classes=("eel",))
    os.symlink(elsewhere / "eel", root / "eel")
    os.symlink(root / "cat", root / "cat" / "loop")            # cat/loop -> cat
    ds, skipped = data.load_folder(root, cache=False)
    assert ds.classes == ["cat", "dog", "eel"] and np.bincount(ds.labels).tolist() == [3, 3, 3]
    assert skipped == []


def test_pathlist_stores_indexes_subsets_and_compares_like_a_list():
    import pickle

    from cnncli.data.pathlist import PathList

    names = ["b/x.png", "a/caf\udce9.png", "", "c/\u00e9t\u00e9.png", "z" * 300]
    pl = PathList(names, prefix="/root/")
    want = ["/root/" + n for n in names]
    assert len(pl) == 5 and list(pl) == want and pl == want and pl[-1] == want[-1] and pl[1:3] == want[1:3]
    assert pl.take([4, 0, 1]) == [want[4], want[0], want[1]] and pl.take([]) == []
    assert pickle.loads(pickle.dumps(pl)) == pl and pl != want[:4] and pl != want[::-1]
    with pytest.raises(IndexError):
        pl[5]


def test_a_stop_inside_the_pools_start_is_not_replaced_by_its_shutdown(tmp_path, monkeypatch):
    # SIGTERM during pool.submit (a test of test_data_scale hit it once in ~10 runs): the manager
    # thread is made but not started, and shutting the pool down raised RuntimeError ("cannot join
    # thread before it is started") in place of the stop, a traceback instead of its one line
    import multiprocessing
    from concurrent.futures import process as cf_process

    class Stop(Exception):
        pass

    def start(self):
        raise Stop()
    root = make_folder(tmp_path / "d", per_class=4, classes=("a", "b"))
    one, _ = data.load_folder(root, workers=1, cache=False)
    jobs = many.Jobs([str(p) for p in one.paths], 32, "pad", data.MAX_PIXELS)
    monkeypatch.setattr(cf_process._ExecutorManagerThread, "start", start)
    before = set(multiprocessing.active_children())
    with pytest.raises(Stop):
        list(many._process_parts(jobs, 2, multiprocessing.get_context("fork")))
    assert set(multiprocessing.active_children()) <= before            # its workers did not outlive it


@pytest.mark.parametrize("after", [1, 2])
def test_a_stop_right_after_a_workers_fork_waits_for_the_pool_to_know_it(tmp_path, monkeypatch, after):
    # A stop raised between a worker's fork and the pool's record of it left a worker no shutdown
    # ends; the exit then waits for it forever (CI: test_data_scale's SIGTERM during set-up printed
    # its line and hung). Here the signal comes right after the 1st or 2nd fork, as StopDuringSetup's.
    import multiprocessing
    import signal
    from multiprocessing import process as mp_process

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop()
    real, forks = mp_process.BaseProcess.start, []

    def start(self):
        real(self)
        forks.append(self)
        if len(forks) == after:
            os.kill(os.getpid(), signal.SIGTERM)
    root = make_folder(tmp_path / "d", per_class=4, classes=("a", "b"))
    one, _ = data.load_folder(root, workers=1, cache=False)
    jobs = many.Jobs([str(p) for p in one.paths], 32, "pad", data.MAX_PIXELS)
    before = set(multiprocessing.active_children())
    monkeypatch.setattr(mp_process.BaseProcess, "start", start)
    old = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Stop):
            list(many._process_parts(jobs, 2, multiprocessing.get_context("fork")))
        left = set(multiprocessing.active_children()) - before
    finally:
        signal.signal(signal.SIGTERM, old)
        for p in set(multiprocessing.active_children()) - before:    # a failing run must not hang pytest's exit
            p.kill()
            p.join(5)
    assert len(forks) == 2 and not left                   # both workers started, and none outlived the pool


def test_stops_held_delays_each_stop_to_the_blocks_end_and_restores_the_handlers():
    import signal

    from cnncli.lifeline import stops_held

    seen = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):             # SIGINT's own handler, after the block
            with stops_held():
                os.kill(os.getpid(), signal.SIGUSR1)
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):                      # handlers run between bytecodes: give them room
                    pass
                assert seen == []
        assert seen == [signal.SIGUSR1]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == [signal.SIGUSR1] * 2
    finally:
        signal.signal(signal.SIGUSR1, old)
        signal.signal(signal.SIGINT, old_int)


def test_class_names_match_in_either_unicode_form(tmp_path):
    # macOS writes é as e + a combining accent (NFD); the same name typed on Linux is one character
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    root = make_folder(tmp_path / "d", classes=("bar", decomposed))
    ds, _ = data.load_folder(root, classes=["bar", composed])
    assert ds.classes == ["bar", composed] and sorted(set(ds.labels.tolist())) == [0, 1]
    ds, _ = data.load_folder(root, classes=[composed, "bar"], missing_ok=True)      # cnn eval's own order
    assert ds.classes == [composed, "bar"] and np.bincount(ds.labels).tolist() == [3, 3]
    msg = _error(root, classes=["bar", "caff"])
    assert "missing caff" in msg


def test_two_folders_that_differ_only_in_unicode_form_stay_two_classes(tmp_path):
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    root = make_folder(tmp_path / "d", classes=(composed, decomposed))
    ds, _ = data.load_folder(root, cache=False)
    assert ds.classes == sorted([composed, decomposed])
    # they print alike (eval's table had two rows "café"): training says so, spelling both out
    assert [n for n in ds.notes if n.startswith("warning:")] == [
        f"warning: the class folders cafe\\u0301 and caf\\xe9 of {root} are one name in two Unicode forms "
        "(composed, and decomposed as macOS writes names): separate classes that print alike; merge them into "
        "one folder if they are one class"]
    ds, _ = data.load_folder(root, classes=[decomposed, composed])
    assert np.bincount(ds.labels).tolist() == [3, 3] and not ds.notes      # (a trained model's classes: no warning)
    assert not data.load_folder(make_folder(tmp_path / "e", classes=(composed, "bar")), cache=False)[0].notes


def test_the_folder_above_the_class_folders_is_a_warning(tmp_path):
    # data.train names parent/ of train/{cat,dog} and test/{cat,dog}: two "classes", train and test
    make_folder(tmp_path / "parent" / "train")
    make_folder(tmp_path / "parent" / "test")
    ds, _ = data.load_folder(tmp_path / "parent", cache=False)
    assert ds.classes == ["test", "train"]
    [warning] = [n for n in ds.notes if n.startswith("warning:")]
    assert "(test, train) hold their images only in subfolders (test: cat, dog)" in warning
    assert warning.endswith(f"give {tmp_path / 'parent' / 'test'} instead")
    # a class with one subfolder, or with images of its own, is a layout that says nothing
    save(tmp_path / "parent" / "train" / "loose.png", noise_img(7))
    assert not [n for n in data.load_folder(tmp_path / "parent", cache=False)[0].notes if n.startswith("warning:")]
    ds, _ = data.load_folder(make_folder(tmp_path / "one", classes=("a/x", "b/y")), cache=False)
    assert ds.classes == ["a", "b"] and not ds.notes
