"""The README stays true: its config reference is the one config.py generates, its resume rules name
every key resume.py freezes, and it opens with the two commands CI and new users rely on."""

from pathlib import Path

from cnncli import config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_matches_the_code():
    text = README.read_text()
    start, end = "<!-- config-reference:start -->\n", "\n<!-- config-reference:end -->"
    table = text[text.index(start) + len(start): text.index(end)]
    assert table.strip() == config.reference_table().strip()


def test_readme_opens_with_exactly_two_commands():
    lines = README.read_text().splitlines()
    assert lines[0] == "```bash" and lines[3] == "```"
    assert lines[1].startswith("pip install -e . && cnn train")
    assert lines[2] == "pip install -e '.[test]' && python -m pytest -q"
    assert lines[2] in (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()


def test_readme_names_every_key_resume_refuses_to_change():
    from cnncli.resume import FROZEN

    text = README.read_text()
    bullet = text[text.index("- **Cannot change**"): text.index("- **May change**")]
    named = {key for key in FROZEN if f"`{key}`" in bullet}
    named |= {key for key in FROZEN if key.startswith("model.") and "every `model.*` key" in bullet}
    assert named == set(FROZEN), sorted(set(FROZEN) - named)


def test_readme_python_api_block_runs_as_written(tmp_path):
    """The block of "## Python API", run in a fresh process from a folder holding what it names: the
    demo's best.npz (a checkpoint saved from Python) and one demo test image."""
    import os
    import subprocess
    import sys

    import numpy as np

    from cnncli import demo, model
    from cnncli.predictor import save_model

    text = README.read_text()
    section = text[text.index("## Python API"):]
    start = section.index("```python\n") + len("```python\n")
    block = section[start:section.index("\n```", start)]
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    save_model(tmp_path / "runs" / "demo" / "best.npz", model.Network(num_classes=12, seed=0), list(demo.CLASSES))
    star = tmp_path / "data" / "demo" / "test" / "star"
    star.mkdir(parents=True)
    (star / "00000.png").write_bytes(demo.png_bytes(np.full((32, 32), 200, np.uint8)))
    res = subprocess.run([sys.executable, "-c", block + "\nprint('ran', p.predict_proba(images_uint8).shape)"],
                         cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(README.parent)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "ran (1, 12)"
    assert (tmp_path / "mine.npz").is_file()


def test_the_demo_configs_auto_epochs_comment_is_what_auto_picks():
    import re

    import numpy as np

    from cnncli import demo
    from cnncli.data import stratified_split

    cfg = config.load_config(README.parent / "configs" / "demo.yaml", [])
    said = int(re.search(r"auto, would pick (\d+) here", (README.parent / "configs" / "demo.yaml").read_text())[1])
    labels = np.repeat(np.arange(len(demo.CLASSES)), 600)         # generate_demo's 600 training images a class
    train, _ = stratified_split(labels, cfg["data"]["val_split"], cfg["data"]["seed"])
    assert said == config.auto_epochs(len(train), cfg["train"]["batch_size"])
