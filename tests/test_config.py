"""Config: defaults, YAML files, --set overrides, every error message, dump round trip, fuzzing."""

import copy
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncli import config
from cnncli.config import (DEFAULTS, HELP, LEAVES, OPTIONS, SECTIONS, dump, get, load_config,
                           load_config_text, parse_override, reference_table, validate)
from cnncli.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(fn, *args, **kwargs):
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


# -- defaults and the single source of truth ----------------------------------------------------

def test_defaults_match_the_documented_table():
    expected = {
        "data.train": None, "data.val": None, "data.test": None, "data.val_split": 0.1, "data.folds": 0,
        "data.fold": 0, "data.seed": 0, "data.image_size": 32,
        "data.resize": "pad", "data.normalize": True, "data.strict": False, "data.cache": True, "data.demo": False,
        "model.batchnorm": "none", "model.num_classes": None, "model.bn_eps": 1e-5, "model.bn_momentum": 0.1,
        "optim.name": "adam", "optim.lr": 0.001, "optim.momentum": 0.9, "optim.betas": [0.9, 0.999],
        "optim.weight_decay": 0.0, "optim.schedule": "cosine", "optim.warmup_epochs": 1.0,
        "optim.step_size": 10, "optim.plateau_patience": 5, "optim.gamma": 0.1, "optim.min_lr": 0.0,
        "train.epochs": "auto", "train.batch_size": 64, "train.seed": 0, "train.init_from": None,
        "train.threads": 0, "train.checkpoint_every": 100,
        "train.monitor": "val_loss", "train.early_stopping.patience": 0, "train.early_stopping.min_delta": 0.0,
        "train.early_stopping.restore_best": True, "train.tensorboard": True, "train.top_k": 3,
        "train.class_weight": "none",
        "augment.enabled": True, "augment.affine.p": 0.9, "augment.affine.shift": 4.0,
        "augment.affine.rotate": 10.0, "augment.affine.scale": [0.9, 1.1], "augment.affine.shear": 5.0,
        "augment.flip.horizontal": 0.0, "augment.flip.vertical": 0.0, "augment.jitter.p": 0.5,
        "augment.jitter.brightness": 0.1, "augment.jitter.contrast": 0.2, "augment.noise.p": 0.2,
        "augment.noise.std": 0.02, "augment.erase.p": 0.0, "augment.erase.scale": [0.02, 0.1],
        "out": "runs/latest",
    }
    assert {o.key: o.default for o in OPTIONS} == expected
    assert list(HELP) == list(expected) and all(h and "\n" not in h for h in HELP.values())
    assert load_config() == DEFAULTS == validate({})
    assert DEFAULTS["train"]["early_stopping"]["patience"] == 0


def test_choices_agree_with_the_optimizer_module():
    from cnncli import optim

    assert config.OPTIMIZER_NAMES == optim.OPTIMIZERS
    assert config.SCHEDULE_NAMES == optim.SCHEDULES


def test_validate_does_not_share_or_mutate():
    cfg = {"optim": {"betas": [0.5, 0.6]}}
    before = copy.deepcopy(cfg)
    a = validate(cfg)
    assert cfg == before
    a["optim"]["betas"][0] = 0.1
    assert validate({})["optim"]["betas"] == [0.9, 0.999] and DEFAULTS["optim"]["betas"] == [0.9, 0.999]


def test_get():
    cfg = load_config(overrides=["optim.lr=0.5"])
    assert get(cfg, "optim.lr") == 0.5
    assert get(cfg, "train.early_stopping.patience") == 0
    assert get({}, "train.batch_size") == 64  # absent known key -> default
    assert get(cfg, "train.early_stopping") == {"patience": 0, "min_delta": 0.0, "restore_best": True}
    assert "did you mean 'optim.lr'" in _error(get, cfg, "optim.lrr")


# -- loading and precedence ---------------------------------------------------------------------

def test_file_then_overrides_precedence(tmp_path):
    path = _write(tmp_path, "optim:\n  lr: 0.01\n  name: sgd\ntrain:\n  epochs: 3\n")
    cfg = load_config(path, ["optim.lr=0.2", "train.epochs=5", "optim.lr=0.3"])
    assert cfg["optim"]["lr"] == 0.3  # the last --set wins
    assert cfg["train"]["epochs"] == 5  # --set beats the file
    assert cfg["optim"]["name"] == "sgd"  # the file beats the default
    assert cfg["train"]["batch_size"] == 64  # untouched default


def test_dotted_keys_in_files_and_empty_sections(tmp_path):
    cfg = load_config(_write(tmp_path, "optim.lr: 0.05\ntrain:\n  early_stopping.patience: 2\nmodel:\n"))
    assert cfg["optim"]["lr"] == 0.05 and cfg["train"]["early_stopping"]["patience"] == 2
    assert cfg["model"] == DEFAULTS["model"]


def test_empty_file_and_bom(tmp_path):
    assert load_config(_write(tmp_path, "")) == DEFAULTS
    assert load_config(_write(tmp_path, "# only a comment\n")) == DEFAULTS
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufefftrain:\n  epochs: 2\n".encode("utf-8"))
    assert load_config(path)["train"]["epochs"] == 2


def test_numbers_yaml_leaves_as_text_are_accepted_for_floats():
    # YAML 1.1 reads "1e-3" as a string; for a float key that is clearly a number
    cfg = load_config(overrides=["optim.lr=1e-3", "optim.weight_decay=5E-4", "optim.betas=[0.9, 9.99e-1]"])
    assert cfg["optim"]["lr"] == 0.001 and cfg["optim"]["weight_decay"] == 0.0005
    assert cfg["optim"]["betas"] == [0.9, 0.999]
    assert load_config(overrides=["optim.lr=3"])["optim"]["lr"] == 3.0  # int accepted for float
    assert isinstance(load_config(overrides=["optim.lr=3"])["optim"]["lr"], float)


def test_null_where_allowed_and_relative_paths_kept():
    cfg = load_config(overrides=["data.train=../imgs/train", "data.val=null", "model.num_classes=5"])
    assert cfg["data"]["train"] == "../imgs/train" and cfg["data"]["val"] is None
    assert cfg["model"]["num_classes"] == 5
    assert load_config(overrides=["model.num_classes="])["model"]["num_classes"] is None


def test_parse_override():
    assert parse_override("optim.lr=0.5") == ("optim.lr", 0.5)
    assert parse_override(" train.epochs = 7") == ("train.epochs", 7)
    assert parse_override("data.train=a=b") == ("data.train", "a=b")
    assert parse_override("optim.betas=[0.8, 0.9]") == ("optim.betas", [0.8, 0.9])
    assert parse_override("data.val=") == ("data.val", None)
    assert parse_override("data.train=runs#2/x") == ("data.train", "runs#2/x")          # no comment in YAML
    assert parse_override("data.train='/data/x #old'") == ("data.train", "/data/x #old")
    assert parse_override("data.val=null") == ("data.val", None)


@pytest.mark.parametrize("text, needle", [
    # YAML dropped " #old" and the run trained on /data/x; folded a line break into a space
    ("data.train=/data/x #old", "--set data.train: YAML reads '#old' as a comment; to keep it, quote the value: "
                                "--set 'data.train=\"...\"'"),
    ("data.train=/data/a\nb", "--set data.train: the value holds a line break, which YAML folds into a space; "
                              "quote the value"),
    ("data.train=/data/a\udcfeb", "--set data.train: the value holds bytes that are not valid UTF-8 "
                                  "(/data/a\\xfeb); give a path whose name is valid UTF-8 (a symlink to it will do)"),
])
def test_an_override_that_yaml_would_change_is_refused(text, needle):
    with pytest.raises(ConfigError) as err:
        parse_override(text)
    assert str(err.value) == needle


# -- every error case ----------------------------------------------------------------------------

@pytest.mark.parametrize("text,needles", [
    ("data:\n  train: x\n optim: [\n", ["cfg.yaml:3:", "could not parse YAML"]),
    ("a: [1, 2\n", ["cfg.yaml:", "could not parse YAML"]),
    ("optim:\n  lr: [0.1\n", ["cfg.yaml:3:", "could not parse YAML", "(begun on line 2)"]),   # where [ opened
    ("train:\n  epochs: 1\n  epochs: 2\n", ["cfg.yaml:3:", "duplicate key 'epochs'"]),
    ("- 1\n- 2\n", ["cfg.yaml:", "top level must be a mapping"]),
    ("just text\n", ["cfg.yaml:", "top level must be a mapping"]),
    ("optim:\n  lrr: 0.1\n", ["cfg.yaml:2:", "optim.lrr", "did you mean 'optim.lr'?"]),
    ("lr: 0.1\n", ["cfg.yaml:1:", "did you mean 'optim.lr'?"]),
    ("train:\n  lr: 0.1\n", ["cfg.yaml:2:", "train.lr", "did you mean 'optim.lr'?"]),
    ("train:\n  batchsize: 8\n", ["cfg.yaml:2:", "did you mean 'train.batch_size'?"]),
    ("trian:\n  epochs: 3\n", ["cfg.yaml:1:", "did you mean 'train'?"]),
    ("zzz: 1\n", ["cfg.yaml:1:", "zzz: unknown key", "sections are"]),
    ("optim: 3\n", ["cfg.yaml:1:", "optim: is a section", "lr"]),
    ("1: 2\n", ["cfg.yaml:1:", "keys must be strings"]),
    ("optim: {lr: 1,000}\n", ["cfg.yaml:1:", "optim.0: keys must be strings", "a comma ends an entry", "1000"]),
    ("optim:\n  lr: -1\n", ["cfg.yaml:2:", "optim.lr", "> 0", "-1"]),
    ("optim:\n  lr: 0\n", ["optim.lr", "> 0"]),
    ("optim:\n  lr: .nan\n", ["optim.lr", "finite"]),
    ("optim:\n  lr: fast\n", ["optim.lr", "expected a number", "'fast'"]),
    ("train:\n  batch_size: 0\n", ["cfg.yaml:2:", "train.batch_size", ">= 1"]),
    ("train:\n  epochs: 0\n", ["train.epochs", ">= 1"]),
    ("train:\n  epochs: true\n", ["train.epochs", "expected an integer", "bool"]),
    ("train:\n  epochs: 2.5\n", ["train.epochs", "expected an integer", "float"]),
    ("train:\n  epochs: 99999999999999\n", ["train.epochs", "must be <= 2147483647"]),
    ("data:\n  val_split: 1.5\n", ["data.val_split", "[0, 1)"]),
    ("data:\n  val_split: 1\n", ["data.val_split", "[0, 1)"]),
    ("data:\n  val_split: -0.1\n", ["data.val_split", "[0, 1)"]),
    ("optim:\n  momentum: 1.0\n", ["optim.momentum", "[0, 1)"]),
    ("optim:\n  momentum: -0.1\n", ["optim.momentum", "[0, 1)"]),
    ("optim:\n  betas: [0.9, 1.0]\n", ["optim.betas", "[0, 1)"]),
    ("optim:\n  betas: [0.9]\n", ["optim.betas", "two numbers"]),
    ("optim:\n  betas: 0.9\n", ["optim.betas", "two numbers"]),
    ("optim:\n  weight_decay: -0.01\n", ["optim.weight_decay", ">= 0"]),
    ("model:\n  bn_eps: 0\n", ["model.bn_eps", "> 0"]),
    ("model:\n  bn_momentum: 1.5\n", ["model.bn_momentum", "(0, 1]"]),
    ("model:\n  num_classes: 1\n", ["model.num_classes", ">= 2"]),
    ("model:\n  batchnorm: batch\n", ["model.batchnorm", "none, unit, channel", "'batch'"]),
    ("model:\n  batchnorm: null\n", ["model.batchnorm", "must not be null", "none, unit, channel"]),
    ("optim:\n  name: adma\n", ["optim.name", "sgd, momentum, nesterov, adam, adamw", "did you mean 'adam'"]),
    ("optim:\n  schedule: cos\n", ["optim.schedule", "constant, step, cosine"]),
    ("train:\n  threads: -1\n", ["train.threads", ">= 0"]),
    ("train:\n  early_stopping:\n    patience: -2\n", ["cfg.yaml:3:", "train.early_stopping.patience", ">= 0"]),
    ("train:\n  early_stopping: yes\n", ["train.early_stopping: is a section"]),
    ("data:\n  image_size: 64\n", ["data.image_size", "only 32", "32x32"]),
    ("data:\n  train: 2024\n", ["data.train", "expected a string", "quote"]),
    ("data:\n  train: ''\n", ["data.train", "must not be empty"]),
    ("data:\n  normalize: 1\n", ["data.normalize", "true or false"]),
    ("out: null\n", ["out", "must not be null"]),
    ("optim:\n  lr: 0.01\n  min_lr: 0.1\n", ["optim.min_lr", "<= optim.lr"]),
    ("train:\n  epochs: 5\noptim:\n  warmup_epochs: 20\n", ["optim.warmup_epochs", "<= train.epochs (5)"]),
    ("train:\n  epochs: Auto\n", ["train.epochs", "expected an integer or auto", "'Auto'"]),
    ("train:\n\tepochs: 3\n", ["cfg.yaml:2:", "could not parse YAML", "(a tab: YAML indents with spaces only)"]),
    ("optim:\n  name: nesterov\n  momentum: 0\n", ["cfg.yaml:3:", "optim.momentum", "> 0 with optim.name=nesterov"]),
])
def test_file_errors_name_file_line_and_key(tmp_path, text, needles):
    message = _error(load_config, _write(tmp_path, text))
    assert message.startswith(str(tmp_path / "cfg.yaml"))
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.mark.parametrize("overrides,needles", [
    (["optim.lrr=0.1"], ["--set optim.lrr", "did you mean 'optim.lr'?"]),
    (["train.batchsize=3"], ["did you mean 'train.batch_size'?"]),
    (["epochs=3"], ["did you mean 'train.epochs'?"]),
    (["train.lr=0.1"], ["--set train.lr", "did you mean 'optim.lr'?"]),             # a key in the wrong section
    (["train.out=runs/x"], ["did you mean 'out'?"]),
    (["optim.seed=1"], ["did you mean 'data.seed' or 'train.seed'?"]),
    (["optim.zzz=1"], ["--set optim.zzz", "optim has: betas, gamma, lr,"]),       # not its own section
    (["augment.affine.zz=1"], ["augment.affine has: p, rotate, scale"]),
    (["noequals"], ["--set noequals", "KEY=VALUE"]),
    (["=3"], ["missing the key"]),
    (["optim=3"], ["--set optim: is a section", "optim.name="]),
    (["train.early_stopping=3"], ["train.early_stopping: is a section", "or a mapping, e.g. train.early_stopping={"]),
    (["train.early_stopping={patiense: 3}"], ["--set train.early_stopping.patiense", "did you mean"]),
    (["optim={lr: -1}"], ["--set optim.lr", "> 0"]),
    (["optim.lr=-1"], ["--set optim.lr", "> 0"]),
    (["optim.lr=[1, 2"], ["--set optim.lr", "could not parse YAML"]),
    (["optim.lr="], ["--set optim.lr", "must not be null"]),
    (["train.batch_size=0"], ["--set train.batch_size", ">= 1"]),
    (["model.batchnorm=batch"], ["model.batchnorm", "none, unit, channel"]),
])
def test_override_errors(overrides, needles):
    message = _error(load_config, None, overrides)
    for needle in needles:
        assert needle in message, (needle, message)


def test_a_section_takes_a_mapping_on_the_command_line_as_in_a_file(tmp_path):
    path = _write(tmp_path, "train:\n  early_stopping:\n    patience: 7\n    min_delta: 0.1\n")
    cfg = load_config(path, ["train.early_stopping={patience: 3}", "augment={enabled: false, affine: {p: 0.2}}"])
    assert cfg["train"]["early_stopping"]["patience"] == 3 and cfg["train"]["early_stopping"]["min_delta"] == 0.1
    assert cfg["augment"]["enabled"] is False and cfg["augment"]["affine"]["p"] == 0.2
    assert cfg == load_config(path, ["train.early_stopping.patience=3", "augment.enabled=false", "augment.affine.p=0.2"])


def test_override_error_wins_over_file_position(tmp_path):
    # the bad value came from --set, so the message must say --set, not the file
    path = _write(tmp_path, "optim:\n  lr: 0.1\n")
    assert _error(load_config, path, ["optim.lr=-5"]).startswith("--set optim.lr")


def test_file_problems(tmp_path):
    assert _error(load_config, tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such config file"
    assert "is a directory" in _error(load_config, tmp_path)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"data:\n  train: caf\xe9\n")
    message = _error(load_config, bad)
    assert message.startswith(f"{bad}:2:") and "not UTF-8" in message
    text = "data:\n  train: café\noptim:\n  lr: 0.02\n"         # PowerShell 5's `>` writes UTF-16
    for encoding in ("utf-16", "utf-16-be", "utf-8-sig"):
        path = tmp_path / f"{encoding}.yaml"
        path.write_bytes((b"\xfe\xff" if encoding == "utf-16-be" else b"") + text.encode(encoding))
        cfg = load_config(path)
        assert cfg["data"]["train"] == "café" and cfg["optim"]["lr"] == 0.02, encoding
    bare = tmp_path / "utf16-no-mark.yaml"                   # (YAML said: character '\x00' is not allowed)
    bare.write_bytes(text.encode("utf-16-le"))
    assert _error(load_config, bare) == f"{bare}: looks like UTF-16 text without its byte-order mark; save it as UTF-8"
    binary = tmp_path / "zeros.npy"                         # (a binary file with many NULs is no UTF-16 text)
    binary.write_bytes(b"\x93NUMPY\x01\x00" + bytes(200) + b"\x01\x02" * 10)
    assert "not UTF-8 text" in _error(load_config, binary)


def test_validate_errors_without_a_file():
    assert _error(validate, {"optim": {"lr": -1}}).startswith("optim.lr: must be > 0")
    assert "top level must be a mapping" in _error(validate, [1, 2])
    assert "did you mean 'optim'" in _error(validate, {"optimm": {}})


# -- dump / reference --------------------------------------------------------------------------

def test_dump_round_trip_with_and_without_comments(tmp_path):
    cfg = load_config(overrides=["optim.lr=0.02", "data.train='my data/train: \"x\" # y'", "optim.betas=[0.5, 0.75]",
                                 "train.early_stopping.patience=4", "out=runs/é ü", "data.val=yes-no"])
    for comments in (True, False):
        text = dump(cfg, comments=comments)
        assert any(line.lstrip().startswith("#") for line in text.splitlines()) == comments
        assert load_config_text(text) == cfg
        assert validate(yaml.safe_load(text)) == cfg
        path = _write(tmp_path, text, f"dump{comments}.yaml")
        assert load_config(path) == cfg


def test_dump_order_and_content():
    text = dump(load_config(overrides=["optim.lr=0.5"]))
    assert "  lr: 0.5" in text and "batchnorm: none" in text and "early_stopping:" in text
    position = 0
    for key in LEAVES:  # keys appear in OPTIONS order, each at its nesting depth
        position = text.index(f"\n{'  ' * key.count('.')}{key.rsplit('.', 1)[-1]}:", position) + 1
    for key, help_text in HELP.items():
        assert help_text in text


def test_reference_table():
    table = reference_table()
    lines = table.strip().splitlines()
    assert lines[0] == "| key | default | meaning |"
    assert len(lines) == 2 + len(OPTIONS)
    assert "| `optim.lr` | `0.001` |" in table and "| `data.train` | `null` |" in table
    assert all(line.count(" | ") == 2 for line in lines[2:])


def test_demo_config_is_valid_and_says_what_it_should():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg["data"]["train"] == "data/demo/train" and cfg["data"]["val"] is None   # (held out from train)
    assert cfg["data"]["test"] == "data/demo/test"                  # never seen in training nor in best.npz
    assert cfg["data"]["demo"] is True and cfg["out"] == "runs/demo"
    assert cfg["optim"]["name"] == "adam" and cfg["train"]["batch_size"] == 64
    text = (REPO / "configs" / "demo.yaml").read_text()
    assert text.count("#") >= 10  # it is what new users read: keep it commented


# -- properties: nothing but ConfigError escapes --------------------------------------------------

_KEY_PARTS = sorted({p for k in LEAVES for p in k.split(".")}) + ["", "x", "optim.lr", "train.early_stopping"]
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10 ** 20, 10 ** 20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["1e-3", "pad", "adam", "none", "-1", ".5", "nan", "inf"]),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from(_KEY_PARTS), st.text(max_size=6), st.integers()), inner, max_size=4),
), max_leaves=12)
_configs = st.dictionaries(st.one_of(st.sampled_from(_KEY_PARTS + list(LEAVES) + SECTIONS), st.text(max_size=8)),
                           _values, max_size=6)


def _only_config_errors(fn, *args):
    try:
        return fn(*args)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)
        return None


@settings(max_examples=150, deadline=None)
@given(_configs)
def test_random_nested_dicts_only_raise_config_error(cfg):
    out = _only_config_errors(validate, cfg)
    if out is not None:
        assert validate(out) == out and set(out) == set(DEFAULTS)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(list(LEAVES) + SECTIONS + ["optim.lrr", "a.b"]),
              st.one_of(st.text(max_size=15), st.sampled_from(["[0.1, 0.2]", "{a: 1}", "1e-9", "-3", "true",
                                                               "null", "&a [*a]", "!!python/object:os.system"]))),
), max_size=4))
def test_random_overrides_only_raise_config_error(overrides):
    _only_config_errors(load_config, None, overrides)


_yaml_lines = st.lists(st.builds(
    lambda indent, key, sep, value: f"{' ' * indent}{key}{sep}{value}",
    st.sampled_from([0, 0, 2, 2, 4, 1, 3]),
    st.sampled_from(_KEY_PARTS + ["- ", "? ", "&x ", "*x", "!!binary", "<<"]),
    st.sampled_from([": ", ":", " ", ": [", ": {", ": |", ""]),
    st.one_of(st.sampled_from(["0.1", "1e-3", "null", "[1, 2]", "*x", "&x 1", "yes", "'q", "\"\\x", "2001-02-30",
                               "!!python/name:os.system", "{a: [", "~", "-5", "64"]), st.text(max_size=8)),
), max_size=10)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=80), _yaml_lines.map("\n".join)))
def test_random_yaml_text_only_raises_config_error(text):
    _only_config_errors(load_config_text, text, (), "fuzz.yaml")


def _valid_value(opt):
    if opt.kind == "bool":
        return st.booleans()
    if opt.kind == "choice":
        return st.sampled_from(opt.choices)
    if opt.kind == "unit_pair":
        return st.lists(st.floats(0, 0.999), min_size=2, max_size=2)
    if opt.kind == "pair":
        return st.lists(st.floats(0.01, 1), min_size=2, max_size=2).map(sorted)
    if opt.kind == "weights":
        weight = st.floats(0.01, 100)
        return st.sampled_from(["none", "balanced"]) | st.dictionaries(st.sampled_from(["a", "b", "7"]), weight,
                                                                       min_size=1)
    if opt.kind == "str":
        text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
                       min_size=1, max_size=20)                 # (a NUL is refused: no path holds one)
        return text.filter(lambda s: s.strip()) | (st.none() if opt.default is None else st.nothing())
    if opt.key == "data.image_size":
        return st.just(32)
    lo, hi = {"optim.momentum": (0, 0.999), "data.val_split": (0, 0.99), "model.bn_momentum": (0.01, 1),
              "model.num_classes": (2, 1000), "train.epochs": (1, 1000), "train.batch_size": (1, 4096),
              "optim.step_size": (1, 100), "optim.plateau_patience": (1, 100), "train.top_k": (1, 20),
              "train.threads": (0, 64),
              "model.bn_eps": (1e-9, 1), "optim.lr": (1e-6, 10), "optim.gamma": (0.01, 1),
              "augment.affine.shift": (0, 16), "augment.affine.rotate": (0, 180),
              "augment.affine.shear": (0, 45)}.get(opt.key, (0, 1000 if not opt.key.startswith("augment.") else 1))
    if opt.kind == "epochs":
        value = st.integers(lo, hi) | st.just("auto")
    elif opt.kind == "int":
        value = st.integers(lo, hi)
    else:
        value = st.floats(lo, hi)
        if math.ceil(lo) <= math.floor(hi):
            value = value | st.integers(math.ceil(lo), math.floor(hi))
    return value | (st.none() if opt.default is None else st.nothing())


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({}, optional={o.key: _valid_value(o) for o in OPTIONS}))
def test_valid_configs_validate_and_round_trip(flat):
    if flat.get("train.epochs", "auto") != "auto" and flat.get("optim.warmup_epochs", 1.0) > flat["train.epochs"]:
        flat["optim.warmup_epochs"] = 0.0
    if flat.get("optim.min_lr", 0) > flat.get("optim.lr", 0.001):
        flat["optim.min_lr"] = 0.0
    if flat.get("model.batchnorm", "none") != "none" and flat.get("train.batch_size", 2) < 2:
        flat["train.batch_size"] = 2           # batch statistics need 2 images (a cross-check)
    if flat.get("data.folds") == 1:
        flat["data.folds"] = 0                  # 0 (off) or >= 2
    if flat.get("optim.name") == "nesterov" and flat.get("optim.momentum") == 0:
        flat["optim.momentum"] = 0.5            # Nesterov needs a momentum (a cross-check)
    if flat.get("data.folds", 0) and (flat.get("data.fold", 0) >= flat["data.folds"] or flat.get("data.val")):
        flat["data.folds"] = 0                  # the fold cross-checks
    cfg = validate(config.nest(flat))
    for key, value in flat.items():
        got = get(cfg, key)
        assert got == value or (isinstance(value, int) and got == float(value))
    assert load_config_text(dump(cfg)) == cfg
    assert load_config_text(dump(cfg, comments=False)) == cfg
    overrides = [f"{k}={config._flow(get(cfg, k))}" for k in LEAVES]
    assert load_config(None, overrides) == cfg


# -- augment and class_weight ----------------------------------------------------------------------

@pytest.mark.parametrize("override,needles", [
    ("augment.affine.rotate=-5", ["augment.affine.rotate", "[0, 180]", "-5"]),
    ("augment.affine.p=1.5", ["augment.affine.p", "[0, 1]", "1.5"]),
    ("augment.flip.vertical=-0.1", ["augment.flip.vertical", "[0, 1]"]),
    ("augment.affine.scale=[1.2, 0.9]", ["augment.affine.scale", "lo <= hi", "[1.2, 0.9]"]),
    ("augment.affine.scale=[0, 1]", ["augment.affine.scale", "(0, 4]"]),
    ("augment.erase.scale=[0.1, 2]", ["augment.erase.scale", "(0, 1]"]),
    ("augment.erase.scale=0.1", ["augment.erase.scale", "two numbers"]),
    ("augment.affine.scale=[a, 1]", ["augment.affine.scale", "two numbers"]),
    ("augment.afine.p=0.5", ["did you mean 'augment.affine.p'"]),
    ("augment.enabld=true", ["did you mean 'augment.enabled'"]),
    ("augment.enabled=1", ["augment.enabled", "true or false"]),
    ("train.class_weight=balancd", ["train.class_weight", "did you mean 'balanced'"]),
    ("train.class_weight={a: 0}", ["train.class_weight", "'a'", "> 0"]),
    ("train.class_weight={a: -1}", ["train.class_weight", "> 0"]),
    ("train.class_weight={a: x}", ["train.class_weight", "class name: number"]),
    ("train.class_weight={yes: 5}", ["train.class_weight", "a class name read as true: YAML reads an unquoted yes",
                                     "quote the name, e.g. 'yes': 5"]),
    ("train.class_weight={null: 5}", ["train.class_weight", "a class name read as null"]),
    ("train.class_weight={}", ["train.class_weight", "non-empty"]),
    ("train.class_weight=[1, 2]", ["train.class_weight", "got list"]),
])
def test_augment_and_class_weight_errors(override, needles):
    message = _error(load_config, None, [override])
    for needle in needles:
        assert needle in message


def test_augment_and_class_weight_values_round_trip(tmp_path):
    path = _write(tmp_path, "augment:\n  enabled: true\n  affine: {scale: [0.8, 1.25], rotate: 15}\n"
                            "train:\n  class_weight: {cat: 2, 7: 0.5}\n")
    cfg = load_config(path)
    assert cfg["augment"]["enabled"] is True and cfg["augment"]["affine"]["scale"] == [0.8, 1.25]
    assert cfg["augment"]["affine"]["rotate"] == 15.0 and cfg["augment"]["affine"]["shift"] == 4.0
    assert cfg["train"]["class_weight"] == {"cat": 2.0, "7": 0.5}
    assert type(cfg["train"]["class_weight"]) is dict
    assert load_config_text(dump(cfg)) == cfg


# -- train.epochs=auto --------------------------------------------------------------------------

def test_auto_epochs_spend_the_step_budget_within_the_clamp():
    lo, hi = config.AUTO_EPOCHS
    steps = config.AUTO_STEPS
    assert config.auto_epochs(1080, 64) == min(round(steps / 17), hi)      # 17 steps per epoch
    assert config.auto_epochs(10800, 64) == round(steps / 169)              # 169 steps per epoch
    assert lo < config.auto_epochs(10800, 64) < hi
    assert config.auto_epochs(10, 64) == hi and config.auto_epochs(10 ** 7, 64) == lo
    sizes = [100, 1000, 5000, 20000, 100000]
    picked = [config.auto_epochs(n, 64) for n in sizes]
    assert picked == sorted(picked, reverse=True)                            # more images, fewer epochs


def test_resolve_epochs_fills_auto_and_checks_warmup():
    cfg = load_config()
    resolved = config.resolve_epochs(cfg, 10800)
    assert resolved["train"]["epochs"] == config.auto_epochs(10800, 64) and cfg["train"]["epochs"] == "auto"
    assert load_config_text(dump(resolved))["train"]["epochs"] == resolved["train"]["epochs"]
    assert config.resolve_epochs(load_config(None, ["train.epochs=3"]), 10800)["train"]["epochs"] == 3
    msg = _error(config.resolve_epochs, load_config(None, ["optim.warmup_epochs=50"]), 10 ** 6)
    assert "optim.warmup_epochs" in msg and "train.epochs=auto is 10" in msg
