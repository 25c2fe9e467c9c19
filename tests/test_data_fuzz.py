"""Fuzz test of the decoder: thousands of byte-mutated PNG, JPEG, BMP, GIF and TIFF files are each
decoded or skipped with a reason (naming the format, when Pillow took the file for an image), and
nothing is printed. The decode loop runs in a subprocess with a timeout, so a hang or a crash of the
process (segfault) fails the test instead of killing the test run."""

import json
import subprocess
import sys

CHILD = r"""
import io, json, os, sys
import numpy as np
from PIL import Image
from cnncli.data import decode as dec

out, per_format = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(12345)
base = Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8))
kinds = {"png": ("PNG", base), "jpg": ("JPEG", base), "bmp": ("BMP", base),
         "gif": ("GIF", base.convert("P")), "tif": ("TIFF", base)}
jobs = []
for ext, (fmt, img) in kinds.items():
    buf = io.BytesIO()
    img.save(buf, fmt)
    good = buf.getvalue()
    for k in range(per_format):
        b = bytearray(good)
        how = k % 4
        if how == 0:                                     # flip a few random bytes
            for i in rng.integers(0, len(b), 1 + k % 8):
                b[i] = int(rng.integers(0, 256))
        elif how == 1:                                   # truncate
            b = b[: int(rng.integers(0, len(b)))]
        elif how == 2:                                   # overwrite a run with 0xff or 0x00
            i = int(rng.integers(0, len(b)))
            b[i:i + 8] = bytes([255 if k % 8 < 4 else 0]) * len(b[i:i + 8])
        else:                                            # insert random bytes
            i = int(rng.integers(0, len(b)))
            b[i:i] = rng.integers(0, 256, 1 + k % 16, dtype=np.uint8).tobytes()
        p = os.path.join(out, f"{ext}-{k:05d}.{ext}")
        with open(p, "wb") as f:
            f.write(bytes(b))
        jobs.append((p, 32, "pad", dec.MAX_PIXELS))
res = dec.decode_jobs(jobs)
ok = sum(a is not None and a.shape == (32, 32) and a.dtype == np.uint8 and r is None for a, r in res)
skipped = sum(a is None and isinstance(r, str) and len(r) > 0 for a, r in res)
unnamed = [r for a, r in res if r and r.startswith(("cannot decode:", "truncated image ("))]
print(json.dumps({"n": len(jobs), "ok": ok, "skipped": skipped, "unnamed": unnamed[:3]}))
"""


def test_mutated_images_are_decoded_or_skipped_with_a_reason(tmp_path):
    per_format = 500                                     # 2,500 cases, ~5-10 s
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(per_format)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]     # a segfault gives -11 here
    assert proc.stderr == ""                             # no traceback, nor a C library's own lines
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["n"] == 5 * per_format
    assert counts["ok"] + counts["skipped"] == counts["n"]
    assert counts["ok"] > 0 and counts["skipped"] > 0    # the mutations reach both outcomes
    assert counts["unnamed"] == []                       # each file Pillow failed on: its format and size
