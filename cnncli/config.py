"""The training config: every key, its default and its help text (OPTIONS is the single source).

YAML loading, `--set a.b=VALUE` overrides, validation with "did you mean" hints, dump and the
README reference table. Every problem is a one-line ConfigError naming the file, line and key.
This module does not touch data or models: relative paths stay as given (the trainer resolves them).
"""

import difflib
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

import yaml

from .errors import ConfigError

OPTIMIZER_NAMES = ("sgd", "momentum", "nesterov", "adam", "adamw")  # == optim.OPTIMIZERS (tested)
SCHEDULE_NAMES = ("constant", "step", "cosine")  # == optim.SCHEDULES (tested)
CLASS_WEIGHTS = ("none", "balanced")  # train.class_weight's named settings (or a mapping)
MAX_INT = 2 ** 31 - 1  # sanity bound on every integer (keeps numpy int32/int64 use safe downstream)
AUTO_STEPS = 3000  # train.epochs=auto: the optimizer-step budget ...
AUTO_EPOCHS = (10, 150)  # ... divided by the steps per epoch, clamped to this range


def _range(lo=None, hi=None, lo_open=False, hi_open=False):
    """A check: value -> problem text or None, for lo <(=) value <(=) hi."""
    def check(v):
        bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
        bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
        if not (bad_lo or bad_hi):
            return None
        if lo is not None and hi is not None and hi != MAX_INT:
            return f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        if bad_lo:
            return f"must be {'>' if lo_open else '>='} {lo}"
        return f"must be {'<' if hi_open else '<='} {hi}"
    return check


def _image_size(v):
    if v == 32:
        return None
    return "only 32 is accepted: the network takes 32x32 images (other sizes are not supported yet)"


def _not_empty(v):
    return None if v.strip() else "must not be empty"


def _pair(lo, hi, lo_open=False):
    """A check for [a, b]: lo <(=) a <= b <= hi."""
    def check(v):
        a, b = v
        if (a <= lo if lo_open else a < lo) or b > hi:
            return f"each value must be in {'(' if lo_open else '['}{lo}, {hi}]"
        return None if a <= b else "must be [lo, hi] with lo <= hi"
    return check


def _class_weight(v):
    if isinstance(v, str):  # _weights checked the name
        return None
    if not v:
        return "must be none, balanced or a non-empty mapping {class: weight}"
    for name, w in v.items():
        if not (w > 0):
            return f"the weight of class {name!r} must be > 0"
    return None


@dataclass(frozen=True)
class Option:
    key: str                    # dotted path, e.g. "optim.lr"
    default: Any                # None means "null is allowed"
    help: str                   # one line, used by dump() and reference_table()
    kind: str                   # "str" | "int" | "float" | "bool" | "choice" | "unit_pair" | "pair" | "weights"
    choices: tuple = ()
    check: Optional[Callable] = None


OPTIONS = (
    Option("data.train", None, "Folder of class subfolders (one subfolder per class); required for training.", "str",
           check=_not_empty),
    Option("data.val", None, "Validation folder with the same class subfolders; when null, data.val_split of "
           "the training images is held out.", "str", check=_not_empty),
    Option("data.val_split", 0.1, "Fraction of the training images held out for validation, in (0, 1); used "
           "only when data.val is null; stratified by class, seeded by data.seed.", "float",
           check=_range(0, 1, True, True)),
    Option("data.seed", 0, "Seed of the train/validation split.", "int", check=_range(0, MAX_INT)),
    Option("data.image_size", 32, "Side of the square network input; the network takes 32x32, so only 32 is "
           "accepted.", "int", check=_image_size),
    Option("data.resize", "pad", "How images become square: pad (keep aspect, pad with the border colour), "
           "stretch, or crop (center crop).", "choice", choices=("pad", "stretch", "crop")),
    Option("data.normalize", True, "Standardize pixels by the training set's mean and std (stored in the "
           "checkpoint).", "bool"),
    Option("data.strict", False, "Refuse to start when any image is unreadable (otherwise skip it and list it "
           "in skipped.txt).", "bool"),
    Option("data.cache", True, "Keep decoded images in the dataset cache (see `cnn cache`) and reuse them "
           "while no file changed; false decodes every time (same as --no-cache).", "bool"),
    Option("data.demo", False, "When true and the data folders are missing, generate the built-in 12-class "
           "demo dataset there.", "bool"),
    Option("model.batchnorm", "none", "Batch normalization: none, unit (per activation) or channel (per "
           "feature map).", "choice", choices=("none", "unit", "channel")),
    Option("model.num_classes", None, "Number of classes; inferred from the class folders when null (a "
           "mismatch is an error).", "int", check=_range(2, MAX_INT)),
    Option("model.bn_eps", 1e-5, "Batch-norm epsilon added to the variance, > 0.", "float",
           check=_range(0, None, True)),
    Option("model.bn_momentum", 0.1, "Batch-norm running-statistics momentum (PyTorch convention), in (0, 1].",
           "float", check=_range(0, 1, True, False)),
    Option("optim.name", "adam", "Optimizer: sgd, momentum (SGD with momentum), nesterov, adam, or adamw "
           "(decoupled weight decay).", "choice", choices=OPTIMIZER_NAMES),
    Option("optim.lr", 0.001, "Base learning rate, > 0.", "float", check=_range(0, None, True)),
    Option("optim.momentum", 0.9, "Momentum for momentum/nesterov, in [0, 1).", "float",
           check=_range(0, 1, False, True)),
    Option("optim.betas", [0.9, 0.999], "Adam/AdamW moment decay rates [beta1, beta2], each in [0, 1).",
           "unit_pair"),
    Option("optim.weight_decay", 0.0, "Weight decay, >= 0 (L2 added to the gradient; decoupled for adamw).",
           "float", check=_range(0)),
    Option("optim.schedule", "cosine", "Learning-rate schedule after warmup: constant, step (times "
           "optim.gamma every optim.step_size epochs) or cosine (down to optim.min_lr).", "choice",
           choices=SCHEDULE_NAMES),
    Option("optim.warmup_epochs", 1.0, "Epochs of linear warmup from ~0 to optim.lr (may be fractional; 0 = "
           "none), <= train.epochs.",
           "float", check=_range(0)),
    Option("optim.step_size", 10, "Epochs between learning-rate drops, for schedule=step.", "int",
           check=_range(1, MAX_INT)),
    Option("optim.gamma", 0.1, "Learning-rate factor at each drop, for schedule=step, > 0.", "float",
           check=_range(0, None, True)),
    Option("optim.min_lr", 0.0, "Final learning rate of the cosine schedule, in [0, optim.lr].", "float",
           check=_range(0)),
    Option("train.epochs", "auto", "Number of passes over the training images, >= 1, or auto: about "
           f"{AUTO_STEPS} optimizer steps, clamped to [{AUTO_EPOCHS[0]}, {AUTO_EPOCHS[1]}] epochs (resolved once "
           "the training set is known, printed and saved resolved in config.yaml).", "epochs",
           check=_range(1, MAX_INT)),
    Option("train.batch_size", 64, "Images per optimizer step, >= 1.", "int", check=_range(1, MAX_INT)),
    Option("train.seed", 0, "Seed of the weight init and the data order.", "int", check=_range(0, MAX_INT)),
    Option("train.threads", 0, "Numba threads; 0 = all cores.", "int", check=_range(0, MAX_INT)),
    Option("train.checkpoint_every", 100, "Steps between saves of last.npz (0 = only at the end of each "
           "epoch).", "int", check=_range(0, MAX_INT)),
    Option("train.early_stopping.patience", 10, "Epochs without validation-loss improvement before stopping; "
           "0 = never stop early.", "int", check=_range(0, MAX_INT)),
    Option("train.early_stopping.min_delta", 0.0, "Smallest validation-loss decrease that counts as an "
           "improvement, >= 0.", "float", check=_range(0)),
    Option("train.early_stopping.restore_best", True, "When stopping early, restore the best weights into "
           "last.npz.", "bool"),
    Option("train.top_k", 3, "k of the top-k accuracy that cnn eval (unless --top-k) and cnn report show, >= 1.",
           "int", check=_range(1, MAX_INT)),
    Option("train.class_weight", "none", "Loss weight per class: none, balanced (n_images / (n_classes * "
           "n_images_of_class), sklearn's convention) or a mapping {class: weight > 0}, unlisted classes 1.",
           "weights", check=_class_weight),
    Option("augment.enabled", True, "Augment training batches (never validation, eval or predict) with the "
           "transforms below, each drawn per image from (train.seed, epoch, step).", "bool"),
    Option("augment.affine.p", 0.9, "Probability of a random affine (shift, rotation, scale, shear) per image, "
           "in [0, 1].", "float", check=_range(0, 1)),
    Option("augment.affine.shift", 2.0, "Largest shift in pixels (of 32) per axis, in [0, 16].", "float",
           check=_range(0, 16)),
    Option("augment.affine.rotate", 10.0, "Largest rotation in degrees either way, in [0, 180].", "float",
           check=_range(0, 180)),
    Option("augment.affine.scale", [0.9, 1.1], "Zoom factor range [lo, hi], 0 < lo <= hi <= 4.", "pair",
           check=_pair(0, 4, lo_open=True)),
    Option("augment.affine.shear", 5.0, "Largest horizontal shear in degrees either way, in [0, 45].", "float",
           check=_range(0, 45)),
    Option("augment.flip.horizontal", 0.0, "Probability of a left-right mirror, in [0, 1] (0: letters and "
           "digits are not mirror-symmetric).", "float", check=_range(0, 1)),
    Option("augment.flip.vertical", 0.0, "Probability of an up-down mirror, in [0, 1].", "float",
           check=_range(0, 1)),
    Option("augment.jitter.p", 0.5, "Probability of brightness/contrast jitter per image, in [0, 1].", "float",
           check=_range(0, 1)),
    Option("augment.jitter.brightness", 0.1, "Largest brightness change, a fraction of the 0..255 range, "
           "in [0, 1].", "float", check=_range(0, 1)),
    Option("augment.jitter.contrast", 0.2, "Largest contrast change: a factor in [1-c, 1+c] about the image "
           "mean, c in [0, 1].", "float", check=_range(0, 1)),
    Option("augment.noise.p", 0.2, "Probability of added Gaussian noise per image, in [0, 1].", "float",
           check=_range(0, 1)),
    Option("augment.noise.std", 0.02, "Noise standard deviation, a fraction of the 0..255 range, in [0, 1].",
           "float", check=_range(0, 1)),
    Option("augment.erase.p", 0.0, "Probability of erasing a random rectangle (filled with the image's "
           "background) per image, in [0, 1].", "float", check=_range(0, 1)),
    Option("augment.erase.scale", [0.02, 0.1], "Area fraction range [lo, hi] of the erased rectangle, "
           "0 < lo <= hi <= 1.", "pair", check=_pair(0, 1, lo_open=True)),
    Option("out", "runs/latest", "Run folder: config.yaml, metrics.csv, last.npz, best.npz, report/.", "str",
           check=_not_empty),
)

LEAVES = {o.key: o for o in OPTIONS}
SECTIONS = sorted({".".join(o.key.split(".")[:i]) for o in OPTIONS for i in range(1, o.key.count(".") + 1)})
HELP = {o.key: o.help for o in OPTIONS}


def _nest(flat):
    """{"a.b": 1} -> {"a": {"b": 1}}, keeping the order of `flat`."""
    out = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _copy(value):
    return list(value) if isinstance(value, list) else value


DEFAULTS = _nest({o.key: _copy(o.default) for o in OPTIONS})


# -- messages ---------------------------------------------------------------------------------

def _show(value, limit=60):
    """A short one-line rendering of a user value."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _type_name(value):
    if isinstance(value, dict):
        return "mapping"
    names = {bool: "bool", int: "int", float: "float", str: "string", list: "list"}
    return names.get(type(value), type(value).__name__)


def _show_key(key):
    return key if key.isprintable() and key.strip() == key and key else repr(key)


def _where(origin):
    """Message prefix for where a value came from: 'cfg.yaml:7: ', '--set ', or ''."""
    if origin is None:
        return ""
    kind, source, line = origin
    if kind == "set":
        return "--set "
    return f"{source}:{line}: " if line else f"{source}: "


def _fail(origin, key, problem):
    raise ConfigError(f"{_where(origin)}{_show_key(key)}: {problem}")


def _suggest(key):
    """" did you mean 'x'?" for a mistyped dotted key, or a list of what exists there."""
    known = list(LEAVES) + SECTIONS
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:  # a bare leaf name in the wrong place: "lr" -> "optim.lr"
        last = key.rsplit(".", 1)[-1]
        by_name = {}
        for k in LEAVES:
            by_name.setdefault(k.rsplit(".", 1)[-1], k)
        names = difflib.get_close_matches(last, list(by_name), n=1, cutoff=0.75)
        close = [by_name[n] for n in names]
    if close:
        return f"unknown key; did you mean '{close[0]}'?"
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    if parent in SECTIONS:
        children = sorted({k[len(parent) + 1:].split(".")[0] for k in known if k.startswith(parent + ".")})
        return f"unknown key; {parent} has: {', '.join(children)}"
    return f"unknown key; the sections are: {', '.join(s for s in SECTIONS if '.' not in s)}, and out"


# -- YAML -------------------------------------------------------------------------------------

class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """SafeLoader (libyaml when available) whose mappings remember key lines and reject duplicates."""


class _Lined(dict):
    lines: dict


def _construct_mapping(loader, node):
    seen = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key_node.value!r}", key_node.start_mark)
            seen[key_node.value] = True
    loader.flatten_mapping(node)
    data = _Lined()
    data.lines = {}
    yield data
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found unhashable key",
                key_node.start_mark) from None
        data[key] = loader.construct_object(value_node, deep=True)
        data.lines[key] = key_node.start_mark.line + 1


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _parse_yaml(text, where, with_line=True):
    """Safe-load one YAML document; ConfigError '<where>:<line>: could not parse YAML: ...'."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None and with_line else ""
        problem = " ".join(f"{e.problem or ''} {e.context or ''}".split()) or type(e).__name__
        raise ConfigError(f"{where}{line}: could not parse YAML: {problem}") from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow
        line = f":{text[:e.position].count(chr(10)) + 1}" if with_line and isinstance(e.position, int) else ""
        ch = chr(e.character) if isinstance(e.character, int) else str(e.character)
        raise ConfigError(f"{where}{line}: could not parse YAML: character {ch!r} is not allowed") from None
    except Exception as e:  # e.g. ValueError for an impossible date, RecursionError for deep nesting
        raise ConfigError(f"{where}: could not parse YAML: {' '.join(str(e).split()) or type(e).__name__}") from None


# -- flattening user input --------------------------------------------------------------------

def _flatten(mapping, prefix, origin_of, out):
    """Walk a (possibly partial, possibly dotted-key) mapping into out[dotted] = (value, origin)."""
    for key, value in mapping.items():
        origin = origin_of(mapping, key)
        if not isinstance(key, str):
            _fail(origin, f"{prefix}{key!r}", "keys must be strings")
        full = prefix + key
        if full in LEAVES:
            out[full] = (value, origin)
        elif full in SECTIONS:
            if value is None:  # an empty section, e.g. "optim:" with nothing under it
                continue
            if not isinstance(value, dict):
                children = sorted({k[len(full) + 1:].split(".")[0] for k in LEAVES if k.startswith(full + ".")})
                _fail(origin, full, f"is a section: expected a mapping of {', '.join(children)}, "
                                    f"got {_type_name(value)} {_show(value)}")
            _flatten(value, full + ".", origin_of, out)
        else:
            _fail(origin, full, _suggest(full))


def _file_origin(source):
    def origin_of(mapping, key):
        line = getattr(mapping, "lines", {}).get(key)
        return ("file", source, line)
    return origin_of


def _no_origin(mapping, key):
    return None


# -- checking values --------------------------------------------------------------------------

_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_KIND_TEXT = {"str": "a string", "int": "an integer", "epochs": "an integer or auto", "float": "a number", "bool": "true or false",
              "unit_pair": "a list of two numbers, e.g. [0.9, 0.999]",
              "pair": "a list of two numbers [lo, hi], e.g. [0.9, 1.1]",
              "weights": "none, balanced or a mapping {class: weight}"}


def _as_float(v):
    """float(v) for numbers and for numeric strings YAML 1.1 leaves as text (e.g. 1e-3); else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:
            return None
    if isinstance(v, str) and _FLOAT_TEXT.fullmatch(v.strip()):
        return float(v.strip())
    return None


def _check_value(opt, value, origin):
    """The value converted to the option's type, or ConfigError naming the key."""
    if value is None:
        if opt.default is None:
            return None
        expected = f"one of {', '.join(opt.choices)}" if opt.kind == "choice" else _KIND_TEXT[opt.kind]
        _fail(origin, opt.key, f"must not be null (expected {expected})")
    original = value
    shown = _show(dict(value) if isinstance(value, dict) else value)
    wrong = f"expected {_KIND_TEXT.get(opt.kind, 'a string')}, got {_type_name(value)} {shown}"
    if opt.kind == "str":
        if not isinstance(value, str):
            hint = " (quote it in YAML)" if isinstance(value, (int, float)) else ""
            _fail(origin, opt.key, wrong + hint)
    elif opt.kind == "bool":
        if not isinstance(value, bool):
            _fail(origin, opt.key, wrong)
    elif opt.kind in ("int", "epochs"):
        if opt.kind == "epochs" and value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(origin, opt.key, wrong)
    elif opt.kind == "float":
        f = _as_float(value)
        if f is None:
            _fail(origin, opt.key, wrong)
        if not math.isfinite(f):
            _fail(origin, opt.key, f"must be a finite number, got {_show(value)}")
        value = f
    elif opt.kind == "choice":
        if not isinstance(value, str) or value not in opt.choices:
            close = difflib.get_close_matches(str(value), opt.choices, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            _fail(origin, opt.key, f"must be one of {', '.join(opt.choices)}, got {_show(value)}{hint}")
    elif opt.kind == "unit_pair":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            _fail(origin, opt.key, wrong)
        pair = [_as_float(v) for v in value]
        if any(v is None or not (0.0 <= v < 1.0) for v in pair):
            _fail(origin, opt.key, f"each value must be a number in [0, 1), got {_show(value)}")
        value = pair
    elif opt.kind == "pair":
        pair = [_as_float(v) for v in value] if isinstance(value, (list, tuple)) and len(value) == 2 else None
        if pair is None or any(v is None or not math.isfinite(v) for v in pair):
            _fail(origin, opt.key, wrong)
        value = pair
    elif opt.kind == "weights":
        value = _weights(opt, value, origin, wrong)
    if opt.check is not None:
        problem = opt.check(value)
        if problem:
            _fail(origin, opt.key, f"{problem}, got {_show(original)}")
    return value


def _weights(opt, value, origin, wrong):
    """A class_weight value: "none" | "balanced" | {class name: float} (integer names become text)."""
    if isinstance(value, str):
        if value not in CLASS_WEIGHTS:
            close = difflib.get_close_matches(value, CLASS_WEIGHTS, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            _fail(origin, opt.key, f"must be none, balanced or a mapping {{class: weight}}, got {_show(value)}{hint}")
        return value
    if not isinstance(value, dict):
        _fail(origin, opt.key, wrong)
    out = {}
    for name, w in value.items():
        f = _as_float(w)
        if isinstance(name, bool) or not isinstance(name, (str, int)) or f is None or not math.isfinite(f):
            _fail(origin, opt.key, f"expected {{class name: number}}, got {_show(name)}: {_show(w)}")
        out[str(name)] = f
    return out


def _resolve(values):
    """values: dotted -> (value, origin). Returns the full nested config, every default filled."""
    flat = {}
    for opt in OPTIONS:
        if opt.key in values:
            value, origin = values[opt.key]
            flat[opt.key] = _check_value(opt, value, origin)
        else:
            flat[opt.key] = _copy(opt.default)
    origin = lambda key: values.get(key, (None, None))[1]  # noqa: E731
    if flat["optim.min_lr"] > flat["optim.lr"]:
        _fail(origin("optim.min_lr"), "optim.min_lr",
              f"must be <= optim.lr ({flat['optim.lr']}), got {flat['optim.min_lr']}")
    if flat["train.epochs"] != "auto" and flat["optim.warmup_epochs"] > flat["train.epochs"]:
        _fail(origin("optim.warmup_epochs"), "optim.warmup_epochs",
              f"must be <= train.epochs ({flat['train.epochs']}), got {flat['optim.warmup_epochs']}")
    if flat["model.batchnorm"] != "none" and flat["train.batch_size"] < 2:
        _fail(origin("train.batch_size"), "train.batch_size",
              f"must be >= 2 with model.batchnorm={flat['model.batchnorm']} (batch statistics), "
              f"got {flat['train.batch_size']}")
    return _nest(flat)


# -- public API -------------------------------------------------------------------------------

def auto_epochs(n_train, batch_size):
    """train.epochs=auto for n_train training images: AUTO_STEPS optimizer steps, clamped to AUTO_EPOCHS."""
    steps_per_epoch = max(math.ceil(n_train / batch_size), 1)
    return min(max(round(AUTO_STEPS / steps_per_epoch), AUTO_EPOCHS[0]), AUTO_EPOCHS[1])


def resolve_epochs(cfg, n_train, origin="train.epochs=auto"):
    """cfg with train.epochs an integer (auto resolved for n_train images); ConfigError when
    optim.warmup_epochs exceeds it."""
    t = cfg["train"]
    epochs = auto_epochs(n_train, t["batch_size"]) if t["epochs"] == "auto" else t["epochs"]
    if cfg["optim"]["warmup_epochs"] > epochs:
        _fail(None, "optim.warmup_epochs", f"must be <= train.epochs ({origin} is {epochs}), "
                                           f"got {cfg['optim']['warmup_epochs']}")
    return {**cfg, "train": {**t, "epochs": epochs}}


def parse_override(text):
    """'a.b.c=VALUE' -> ('a.b.c', value parsed as YAML); ConfigError for a bad key or syntax."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"--set {_show(text) if not isinstance(text, str) else _show_key(text)}: "
                          f"expected KEY=VALUE, e.g. --set optim.lr=0.01")
    key, raw = text.split("=", 1)
    key = key.strip()
    origin = ("set", None, None)
    if not key:
        raise ConfigError(f"--set {_show_key(text)}: missing the key before '=', e.g. --set optim.lr=0.01")
    if key in SECTIONS:
        children = [k[len(key) + 1:] for k in LEAVES if k.startswith(key + ".")]
        _fail(origin, key, f"is a section, not a value; set one of its keys, e.g. {key}.{children[0]}=...")
    if key not in LEAVES:
        _fail(origin, key, _suggest(key))
    value = _parse_yaml(raw, f"--set {key}", with_line=False) if raw.strip() else None
    return key, value


def validate(cfg):
    """Check a (possibly partial, nested) config; return the full config with every default filled."""
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"config: the top level must be a mapping of sections, got {_type_name(cfg)}")
    values = {}
    _flatten(cfg, "", _no_origin, values)
    return _resolve(values)


def load_config_text(text, overrides=(), source="<config>"):
    """Parse YAML text (from a file or a checkpoint), apply overrides, validate."""
    data = _parse_yaml(text, source) if text.strip() else None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (data:, model:, optim:, "
                          f"train:, augment:, out:), got {_type_name(data)}")
    values = {}
    _flatten(data, "", _file_origin(source), values)
    for text_ in overrides:
        key, value = parse_override(text_)
        values[key] = (value, ("set", None, None))
    return _resolve(values)


def load_config(path=None, overrides=()):
    """Defaults, then the YAML file at `path` (when given), then each "a.b=VALUE" override."""
    if path is None:
        return load_config_text("", overrides)
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory, not a config file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    return load_config_text(text, overrides, source=path)


def get(cfg, key):
    """cfg["a"]["b"] for key "a.b"; the default when a known key is absent; ConfigError when unknown."""
    if key not in LEAVES and key not in SECTIONS:
        _fail(None, key, _suggest(key))
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if key in LEAVES:
                return _copy(LEAVES[key].default)
            return get(DEFAULTS, key)
        node = node[part]
    return node


def _flow(value):
    """One-line YAML for a value (flow style)."""
    text = yaml.dump(value, Dumper=_Dumper, default_flow_style=True, width=1 << 30, allow_unicode=True)
    if text.endswith("\n...\n"):
        text = text[:-5]
    return text.rstrip("\n")


def dump(cfg, comments=True):
    """YAML text of the resolved config in OPTIONS order (help text as comments); loads back equal."""
    cfg = validate(cfg)
    lines = []
    open_sections = []
    for opt in OPTIONS:
        *section, leaf = opt.key.split(".")
        common = 0
        while common < min(len(section), len(open_sections)) and section[common] == open_sections[common]:
            common += 1
        open_sections = open_sections[:common]
        for depth in range(common, len(section)):
            if depth == 0 and lines:
                lines.append("")
            lines.append("  " * depth + section[depth] + ":")
            open_sections.append(section[depth])
        if not section and lines:
            lines.append("")
        indent = "  " * len(section)
        if comments:
            lines.append(f"{indent}# {opt.help}")
        value = get(cfg, opt.key)
        if isinstance(value, list):
            block = f"{leaf}: {_flow(value)}\n"
        else:
            block = yaml.dump({leaf: value}, Dumper=_Dumper, default_flow_style=False, width=1 << 30,
                              allow_unicode=True, sort_keys=False)
        lines.extend(indent + line if line else line for line in block.rstrip("\n").split("\n"))
    return "\n".join(lines) + "\n"


def reference_table():
    """Markdown table of every key: key, default, meaning."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for opt in OPTIONS:
        default = _flow(opt.default).replace("|", "\\|")
        rows.append(f"| `{opt.key}` | `{default}` | {opt.help.replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"
