"""cnn predict streams: PREDICT_CHUNK images decoded and classified at a time, each chunk's lines
written before the next chunk is decoded, the same bytes as one pass over every image; the pixel and
overflow warnings counted over all the chunks, said once; a stop keeps the lines already written.
Each test fails on the predict that decoded every image before its first line.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnncli import checkpoint, model, predictions
from cnncli.cli import cli
from cnncli.data import decodemany
from cnncli.predictor import Predictor, save_model
from e2e_util import cli_env, draw


@pytest.fixture()
def ckpt(tmp_path):
    return save_model(tmp_path / "m.npz", model.Network(num_classes=3, seed=0), ["a", "b", "c"])


@pytest.fixture()
def folder(tmp_path):
    """12 files in name order: drawn shapes, two flat images and two nearly black ones in different
    chunks of 2, a broken file between them."""
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        draw(("bar", "column", "disc")[i % 3], rng).save(root / f"{i:02d}.png")
    Image.new("L", (32, 32), 200).save(root / "01f.png")                              # flat
    Image.new("L", (32, 32), 90).save(root / "05f.png")                               # flat
    (root / "03b.png").write_bytes(b"not a png")
    dark = (np.arange(32 * 32).reshape(32, 32) % 12).astype(np.uint8)                  # no pixel above 11
    Image.fromarray(dark).save(root / "02d.png")
    Image.fromarray(dark[::-1].copy()).save(root / "06d.png")
    return root


def _chunked(monkeypatch, chunk):
    monkeypatch.setattr(predictions, "PREDICT_CHUNK", chunk)
    monkeypatch.setattr(decodemany, "CHUNK", 2)          # (the files decode 2 at a time, as a big folder's do)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("form", [[], ["--top-k", "2"], ["--json"], ["--csv", "-"]])
def test_predictions_in_chunks_are_the_bytes_of_one_pass(ckpt, folder, tmp_path, monkeypatch, form):
    one = invoke("predict", ckpt, folder, tmp_path / "nope.png", *form)
    _chunked(monkeypatch, 2)
    chunked = invoke("predict", ckpt, folder, tmp_path / "nope.png", *form)
    assert one.exit_code == chunked.exit_code == 1, chunked.output                  # (the broken file, nope.png)
    assert chunked.stdout == one.stdout and chunked.stderr == one.stderr
    assert chunked.stdout.count(str(folder)) == 11 + ("--json" in form)
    if "--json" in form:                                   # one list; the failures after the predictions
        assert [sorted(r) for r in json.loads(chunked.stdout)][-3:] == [["class", "path", "probability", "top_k"],
                                                                       ["error", "path"], ["error", "path"]]


def test_the_first_chunks_predictions_come_before_the_rest_is_decoded(ckpt, folder, monkeypatch):
    _chunked(monkeypatch, 2)
    decoded = []
    real = decodemany._decode_chunk
    monkeypatch.setattr(decodemany, "_decode_chunk", lambda jobs: decoded.extend(jobs) or real(jobs))
    paths = sorted(map(str, folder.iterdir()))
    results, failures = predictions.predict_stream(Predictor.from_checkpoint(ckpt), paths, top_k=1)
    first = next(results)
    assert first["path"] == paths[0] and len(decoded) == 2 and failures == []
    rest = list(results)
    assert len(decoded) == 12 and [r["path"] for r in [first, *rest]] == [p for p in paths if "03b" not in p]
    assert [p for p, _ in failures] == [str(folder / "03b.png")]


def test_the_pixel_warnings_count_every_chunk_and_are_said_once(ckpt, folder, monkeypatch):
    _chunked(monkeypatch, 2)
    res = invoke("predict", ckpt, folder)
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: 2 image(s) decode to a single grey level, e.g. {folder / '01f.png'}",
                        f"warning: 2 image(s) are nearly black (no pixel above 16 of 255), e.g. {folder / '02d.png'}"]


def test_outputs_that_are_not_finite_are_counted_over_every_chunk(ckpt, folder, monkeypatch):
    arrays, meta = checkpoint.load(ckpt)
    for k in ("params/conv1.w", "params/conv2.w", "params/fc1.w", "params/fc2.w"):
        arrays[k] = arrays[k] * np.float32(1e30)
    meta.pop("format_version", None)
    checkpoint.save(ckpt, arrays, meta)
    _chunked(monkeypatch, 2)
    res = invoke("predict", ckpt, folder)
    assert res.stderr.count("not finite") == 1, res.stderr
    assert "warning: the model's outputs are not finite for 11 of 11 image(s)" in res.stderr


def test_a_stop_mid_stream_keeps_the_lines_written_without_a_traceback(ckpt, folder, monkeypatch):
    everything = invoke("predict", ckpt, folder).stdout.splitlines(keepends=True)
    _chunked(monkeypatch, 2)
    calls = []
    real = decodemany._decode_chunk

    def stopped_at_the_third(jobs):
        calls.append(jobs)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(jobs)
    monkeypatch.setattr(decodemany, "_decode_chunk", stopped_at_the_third)
    res = invoke("predict", ckpt, folder)
    assert res.exit_code == 130 and res.stderr == "Error: interrupted\n", res.output
    assert res.stdout == "".join(everything[:4])                 # two chunks of 2, written before the stop


_STOPPED = """
import os, signal, sys
from cnncli import predictions
from cnncli.cli import main
from cnncli.data import decodemany
predictions.PREDICT_CHUNK = decodemany.CHUNK = 2
real, calls = decodemany._decode_chunk, []
def stop_at_the_third(jobs):
    calls.append(jobs)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGINT)          # (a Ctrl-C)
    return real(jobs)
decodemany._decode_chunk = stop_at_the_third
sys.argv = ["cnn", "predict", *sys.argv[1:]]
main()
"""


def test_a_ctrl_c_mid_stream_in_cnns_own_process(ckpt, folder, tmp_path):
    res = subprocess.run([sys.executable, "-c", _STOPPED, str(ckpt), str(folder)], env=cli_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 130 and res.stderr == "Error: interrupted\n", res.stderr
    assert len(res.stdout.splitlines()) == 4 and res.stdout.startswith(str(folder / "00.png"))


# `cnn predict` whose images decode 2 at a time, each pair 0.01 s late (the Ctrl-C comes while it predicts)
_SLOWED = """
import sys, time
from cnncli import predictions
from cnncli.cli import main
from cnncli.data import decodemany
predictions.PREDICT_CHUNK = decodemany.CHUNK = 2
real = decodemany._decode_chunk
def slowed(jobs):
    time.sleep(0.01)
    return real(jobs)
decodemany._decode_chunk = slowed
sys.argv = ["cnn", "predict", *sys.argv[1:]]
main()
"""


def test_a_ctrl_c_mid_json_list_leaves_a_whole_json_document(ckpt, tmp_path):
    # the list was left open ('[ {...}, {...},' and no ']'): standard output was no JSON document
    import os
    import signal

    root = tmp_path / "many"
    root.mkdir()
    for i in range(600):
        Image.new("L", (32, 32), i % 256).save(root / f"{i:03d}.png")
    proc = subprocess.Popen([sys.executable, "-c", _SLOWED, str(ckpt), str(root), "--json"], env=cli_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = [proc.stdout.readline() for _ in range(30)]                # (a few predictions out)
    os.killpg(proc.pid, signal.SIGINT)                                   # (a Ctrl-C: the whole process group)
    out, err = proc.stdout.read(), proc.stderr.read()                 # (communicate: not what readline buffered)
    proc.wait(timeout=120)
    assert proc.returncode == 130 and err == "Error: interrupted\n", (proc.returncode, err)
    listed = json.loads("".join(seen) + out)
    assert 0 < len(listed) < 600 and listed[0]["path"] == str(root / "000.png"), len(listed)


def test_a_ctrl_c_as_a_json_item_is_echoed_comes_once_it_is_out(monkeypatch, capsys):
    # (a KeyboardInterrupt raised inside the echo would close the list after a piece never written)
    import os
    import signal

    import click

    from cnncli.cli_common import echo_json_list

    real = click.echo

    def ctrl_c_then_echo(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        real(*args, **kwargs)
    monkeypatch.setattr(click, "echo", ctrl_c_then_echo)
    with pytest.raises(KeyboardInterrupt):
        echo_json_list(iter([{"path": "a.png"}, {"path": "b.png"}]))
    assert json.loads(capsys.readouterr().out) == [{"path": "a.png"}]


def test_a_chunk_is_whole_batches_above_the_numpy_forwards_limit():
    # (so each image is classified in the batch, and by the forward, of one call on every image)
    from cnncli.predictor import NUMPY_MAX_IMAGES

    assert predictions.PREDICT_CHUNK % 256 == 0 and predictions.PREDICT_CHUNK > NUMPY_MAX_IMAGES


_ON_A_TERMINAL = """
import fcntl, struct, sys, termios
fcntl.ioctl(2, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))       # (tqdm draws no bar 0 wide)
from tqdm import tqdm
from cnncli import predictions
from cnncli.cli import main
from cnncli.data import decodemany
predictions.PREDICT_CHUNK = decodemany.CHUNK = 2
decodemany._bar = lambda total: tqdm(total=total, desc="decoding images", leave=False, file=sys.stderr,
                                     mininterval=0, dynamic_ncols=True)                # (drawn at every update)
sys.argv = ["cnn", "predict", *sys.argv[1:]]
main()
"""


def _screen_lines(raw: str) -> list:
    """The lines a terminal shows for this output: a carriage return goes back to the line's start."""
    lines = []
    for line in raw.split("\n"):
        cells, at = [], 0
        for ch in line:
            if ch == "\r":
                at = 0
                continue
            cells[at:at + 1] = [ch]
            at += 1
        lines.append("".join(cells).rstrip())
    return lines


@pytest.mark.parametrize("form", [[], ["--json"]])   # (--json: a chunk's last item, "  }", ends no line)
def test_on_a_terminal_the_predictions_are_not_drawn_over_by_the_progress_bar(ckpt, folder, tmp_path, form):
    pty = pytest.importorskip("pty")
    import os

    expected = invoke("predict", ckpt, folder, *form).stdout.splitlines()
    pid, fd = pty.fork()                      # stdout and stderr: one terminal
    if pid == 0:                              # (the child: never returns to pytest)
        os.execve(sys.executable, [sys.executable, "-c", _ON_A_TERMINAL, str(ckpt), str(folder), *form],
                  cli_env(tmp_path))
    raw = _read_terminal(fd)
    os.waitpid(pid, 0)
    assert "decoding images" in raw.decode(), raw          # (a bar was drawn between the chunks)
    shown = [line for line in _screen_lines(raw.decode()) if line]
    assert shown[:len(expected)] == expected, raw


def _read_terminal(fd) -> bytes:
    """What a pseudo-terminal's other end shows until its child ends."""
    import os

    raw = b""
    while True:
        try:
            got = os.read(fd, 65536)
        except OSError:                       # (EIO: the child has ended)
            return raw
        if not got:
            return raw
        raw += got


def test_with_standard_output_a_pipe_the_bar_is_cleared_before_each_chunks_lines(ckpt, folder, tmp_path):
    # (`cnn predict big/ | head` on a terminal: head writes the lines there; after the bar, they began on its line)
    import os
    import re
    import threading

    pytest.importorskip("pty")
    master, slave = os.openpty()                   # stderr: a terminal; stdout: a pipe
    proc = subprocess.Popen([sys.executable, "-c", _ON_A_TERMINAL, str(ckpt), str(folder)], stdout=subprocess.PIPE,
                            stderr=slave, env=cli_env(tmp_path))
    os.close(slave)
    raw = []
    reader = threading.Thread(target=lambda: raw.append(_read_terminal(master)))
    reader.start()
    out = proc.stdout.read()
    proc.wait(timeout=300)
    reader.join(timeout=60)
    os.close(master)
    screen = b"".join(raw).decode()
    assert out.decode() == invoke("predict", ckpt, folder).stdout and "decoding images" in screen, screen
    clears = re.findall(r"\r {20,}\r", screen)      # (tqdm's clear: the bar's line blanked, the cursor at its start)
    assert len(clears) >= 6, screen                  # (11 images, 6 chunks of 2: one before each chunk's lines)
