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
