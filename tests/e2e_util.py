"""Helpers for the end-to-end tests: tiny image folders, configs and CLI invocation.

Not a test module (no test_ prefix); imported by test_cli_e2e.py and test_resume.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

SHAPES = ("bar", "column", "disc")


def draw(shape: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    img = Image.new("L", (size, size), int(rng.integers(0, 40)))
    d = ImageDraw.Draw(img)
    c = size / 2 + rng.uniform(-3, 3, size=2)
    r = size * rng.uniform(0.25, 0.35)
    fg = int(rng.integers(180, 256))
    if shape == "bar":
        d.rectangle([c[0] - r, c[1] - 2, c[0] + r, c[1] + 2], fill=fg)
    elif shape == "column":
        d.rectangle([c[0] - 2, c[1] - r, c[0] + 2, c[1] + r], fill=fg)
    else:
        d.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=fg)
    return img


def make_folder(root: Path, per_class: int = 12, seed: int = 0, odd_files: bool = True) -> Path:
    """root/<shape>/*.png (some RGB, some larger, one JPEG) plus, optionally, files a user folder has."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = draw(shape, rng, size=32 if i % 3 else 48)
            if i % 4 == 1:
                img = img.convert("RGB")
            ext = "jpg" if i == 5 else "png"
            img.save(root / shape / f"{i:03d}.{ext}")
    if odd_files:
        (root / SHAPES[0] / ".DS_Store").write_bytes(b"\0\1junk")
        (root / SHAPES[1] / "broken.png").write_bytes(b"not really a png")
        (root / SHAPES[2] / "empty.jpg").write_bytes(b"")
    return root


def write_config(path: Path, train: Path, out: Path, **extra) -> Path:
    lines = [
        "data:",
        f"  train: {train}",
        "  val_split: 0.25",
        "optim:",
        "  name: adam",
        "  lr: 0.003",
        "train:",
        f"  epochs: {extra.pop('epochs', 2)}",
        f"  batch_size: {extra.pop('batch_size', 8)}",
        f"  checkpoint_every: {extra.pop('checkpoint_every', 0)}",
        f"out: {out}",
    ]
    assert not extra, extra
    path.write_text("\n".join(lines) + "\n")
    return path


def cli_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["CNNCLI_CACHE_DIR"] = str(tmp / "cache")
    env.pop("COLUMNS", None)
    return env


def run_cli(args, tmp: Path, **kw) -> subprocess.CompletedProcess:
    """`python -m cnncli ARGS` in a real process (signals, exit codes, stderr as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "cnncli", *map(str, args)], env=cli_env(tmp),
                          capture_output=True, text=True, **kw)


def load_params(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.startswith(("params/", "buffers/", "optim/"))}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test's dataset cache in its own tmp folder (import it into a test module to use it)."""
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))


def invoke(args):
    """`cnn ARGS` in this process (click's CliRunner; exceptions propagate)."""
    from click.testing import CliRunner

    from cnncli.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


_NUMBA_PROBE = """
import sys, cnncli.cli
sys.argv = ["cnn", *sys.argv[1:]]
try:
    cnncli.cli.main()
except SystemExit as e:
    assert not e.code, e.code
print(f"numba-imported={'numba' in sys.modules}", file=sys.stderr)
"""


def run_cli_probing_numba(args, tmp: Path) -> tuple:
    """`cnn ARGS` in a fresh process -> (its CompletedProcess, whether it imported numba)."""
    res = subprocess.run([sys.executable, "-c", _NUMBA_PROBE, *map(str, args)], env=cli_env(tmp),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res, "numba-imported=True" in res.stderr


def child_pids(pid: int) -> list:
    """The pids of a process's children (Linux /proc; [] once it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not; Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
