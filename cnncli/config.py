"""The training config: YAML loading, `--set a.b=VALUE` overrides, validation with "did you mean"
hints, dump and the README reference table, over the schema in options.py (re-exported here).
Every problem is a one-line ConfigError naming the file, line and key.
This module does not touch data or models: relative paths stay as given (the trainer reads them from
the working folder); it looks at the file system once, to refuse a config file's relative path that
names nothing from there but names something beside the file.
"""

import datetime
import math
import os

import yaml

from .errors import ConfigError
from .config_text import Dumper, fail, parse_yaml, show, show_key, suggest, type_name
from .config_values import check_value
from .settingnotes import setting_notes  # noqa: F401  (re-exported: config.setting_notes)
from .options import (AUTO_EPOCHS, AUTO_STEPS, CLASS_WEIGHTS, DEFAULTS, HELP, LEAVES,  # noqa: F401
                      MIN_LR_SCHEDULES, OPTIMIZER_NAMES, OPTIONS, SCHEDULE_NAMES, SECTIONS, copy_value, nest)


# -- flattening user input --------------------------------------------------------------------

def _flatten(mapping, prefix, origin_of, out):
    """Walk a (possibly partial, possibly dotted-key) mapping into out[dotted] = (value, origin)."""
    for key, value in mapping.items():
        origin = origin_of(mapping, key)
        if not isinstance(key, str):
            comma = (" (in {...} a comma ends an entry: lr: 1,000 reads as lr: 1 and a key 000; write 1000)"
                     if isinstance(key, (int, float)) and not isinstance(key, bool) and value is None else "")
            fail(origin, f"{prefix}{key!r}", f"keys must be strings{comma}")
        full = prefix + key
        if full in LEAVES:
            out[full] = (value, origin)
        elif full in SECTIONS:
            if value is None:  # an empty section, e.g. "optim:" with nothing under it
                continue
            if not isinstance(value, dict):
                children = sorted({k[len(full) + 1:].split(".")[0] for k in LEAVES if k.startswith(full + ".")})
                fail(origin, full, f"is a section: expected a mapping of {', '.join(children)}, "
                                    f"got {type_name(value)} {show(value)}")
            _flatten(value, full + ".", origin_of, out)
        else:
            fail(origin, full, suggest(full))


def _file_origin(source):
    def origin_of(mapping, key):
        line = getattr(mapping, "lines", {}).get(key)
        return ("file", source, line)
    return origin_of


def _no_origin(mapping, key):
    return None


def _resolve(values):
    """values: dotted -> (value, origin). Returns the full nested config, every default filled."""
    flat = {}
    for opt in OPTIONS:
        if opt.key in values:
            value, origin = values[opt.key]
            flat[opt.key] = check_value(opt, value, origin)
        else:
            flat[opt.key] = copy_value(opt.default)
    origin = lambda key: values.get(key, (None, None))[1]  # noqa: E731
    if flat["optim.schedule"] in MIN_LR_SCHEDULES and flat["optim.min_lr"] > flat["optim.lr"]:
        fail(origin("optim.min_lr"), "optim.min_lr",
              f"must be <= optim.lr ({flat['optim.lr']}), got {flat['optim.min_lr']}")
    if flat["train.epochs"] != "auto" and flat["optim.warmup_epochs"] > flat["train.epochs"]:
        fail(origin("optim.warmup_epochs"), "optim.warmup_epochs",
              f"must be <= train.epochs ({flat['train.epochs']}), got {flat['optim.warmup_epochs']}")
    if flat["optim.name"] == "nesterov" and flat["optim.momentum"] == 0:
        fail(origin("optim.momentum") or origin("optim.name"), "optim.momentum",
             "must be > 0 with optim.name=nesterov (Nesterov's look-ahead is along the momentum; PyTorch's SGD "
             "refuses it too; optim.name=sgd is plain SGD), got 0")
    if flat["data.folds"] and flat["data.fold"] >= flat["data.folds"]:
        fail(origin("data.fold"), "data.fold", f"must be < data.folds ({flat['data.folds']}), got {flat['data.fold']}")
    if flat["data.folds"] and flat["data.val"]:
        fail(origin("data.folds"), "data.folds", "holds out a fold of data.train, so data.val must be null "
             f"(it is {flat['data.val']!r})")
    if flat["model.batchnorm"] != "none" and flat["train.batch_size"] < 2:
        fail(origin("train.batch_size"), "train.batch_size",
              f"must be >= 2 with model.batchnorm={flat['model.batchnorm']} (batch statistics), "
              f"got {flat['train.batch_size']}")
    return nest(flat)


# -- public API -------------------------------------------------------------------------------

def auto_epoch_count(n_train, batch_size) -> tuple:
    """(steps per epoch, the epochs that make about AUTO_STEPS optimizer steps before AUTO_EPOCHS'
    clamp) for n_train training images."""
    steps_per_epoch = max(math.ceil(n_train / batch_size), 1)
    return steps_per_epoch, round(AUTO_STEPS / steps_per_epoch)


def auto_epochs(n_train, batch_size):
    """train.epochs=auto for n_train training images: AUTO_STEPS optimizer steps, clamped to AUTO_EPOCHS."""
    return min(max(auto_epoch_count(n_train, batch_size)[1], AUTO_EPOCHS[0]), AUTO_EPOCHS[1])


def resolve_epochs(cfg, n_train, origin="train.epochs=auto"):
    """cfg with train.epochs an integer (auto resolved for n_train images); ConfigError when
    optim.warmup_epochs exceeds it."""
    t = cfg["train"]
    epochs = auto_epochs(n_train, t["batch_size"]) if t["epochs"] == "auto" else t["epochs"]
    if cfg["optim"]["warmup_epochs"] > epochs:
        fail(None, "optim.warmup_epochs", f"must be <= train.epochs ({origin} is {epochs}), "
                                           f"got {cfg['optim']['warmup_epochs']}")
    return {**cfg, "train": {**t, "epochs": epochs}}


def parse_override(text):
    """'a.b.c=VALUE' -> ('a.b.c', value parsed as YAML; a mapping when a.b.c is a section); ConfigError
    for a bad key or syntax."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"--set {show(text) if not isinstance(text, str) else show_key(text)}: "
                          f"expected KEY=VALUE, e.g. --set optim.lr=0.01")
    key, raw = text.split("=", 1)
    key = key.strip()
    origin = ("set", None, None)
    if not key:
        raise ConfigError(f"--set {show_key(text)}: missing the key before '=', e.g. --set optim.lr=0.01")
    if key not in LEAVES and key not in SECTIONS:
        fail(origin, key, suggest(key))
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:                       # (a command line's undecodable bytes)
        shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        fail(origin, key, f"the value holds bytes that are not valid UTF-8 ({shown}); give a path whose name "
                          "is valid UTF-8 (a symlink to it will do)")
    value = parse_yaml(raw, f"--set {key}", with_line=False) if raw.strip() else None
    unquoted = not raw.strip().startswith(("'", '"'))
    if key in LEAVES and LEAVES[key].kind == "str" and isinstance(value, (bool, int, float, datetime.date)) \
            and not any(c in raw for c in "#\n"):
        value = raw.strip()                          # a folder named 2024 or no: the text as typed
    if unquoted and isinstance(value, (str, type(None))) and value != (raw.strip() or None):
        if "#" in raw:                               # "data.train=/data/x #old" trained on /data/x
            fail(origin, key, f"YAML reads {show(raw[raw.index('#') - 1:].strip())} as a comment; to keep it, "
                              f"quote the value: --set '{key}=\"...\"'")
        if "\n" in raw:
            fail(origin, key, "the value holds a line break, which YAML folds into a space; quote the value")
    if key in SECTIONS and not isinstance(value, dict):       # a section takes a mapping, as in a file
        children = [k[len(key) + 1:] for k in LEAVES if k.startswith(key + ".")]
        fail(origin, key, f"is a section, not a value; set one of its keys, e.g. {key}.{children[0]}=..., "
                          f"or a mapping, e.g. {key}={{{children[0]}: ...}}")
    return key, value


def layered(base: dict, over: dict, prefix: str = "") -> dict:
    """base (a nested config) with the keys of `over` (nested too, maybe partial) laid over it: a
    section's keys one by one (an empty section, "data:" in YAML, changes nothing), a leaf whole
    (train.class_weight: null is a value)."""
    out = dict(base)
    for key, value in over.items():
        section = f"{prefix}{key}" in SECTIONS and isinstance(base.get(key), dict)
        if section and (value is None or isinstance(value, dict)):
            out[key] = layered(base[key], value or {}, f"{prefix}{key}.")
        else:
            out[key] = value
    return out


def validate(cfg):
    """Check a (possibly partial, nested) config; return the full config with every default filled."""
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"config: the top level must be a mapping of sections, got {type_name(cfg)}")
    values = {}
    _flatten(cfg, "", _no_origin, values)
    return _resolve(values)


def _layer(text, source, values):
    """Parse one layer's YAML text (a file, or a checkpoint's config) into values (dotted -> (value,
    origin)), over what earlier layers put there."""
    if not isinstance(text, str):                 # (a hand-edited checkpoint's "config")
        raise ConfigError(f"{source}: expected the config's YAML text, got {type_name(text)}")
    data = parse_yaml(text, source) if text.strip() else None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (data:, model:, optim:, "
                          f"train:, augment:, out:), got {type_name(data)}")
    _flatten(data, "", _file_origin(source), values)


PATH_KEYS = ("data.train", "data.val", "data.test", "train.init_from")


def _beside_config(values, files):
    """ConfigError for a relative path that a config file gives (the value that won: not one a later
    file or --set replaced) and that names nothing from the working folder but names something beside
    that file: paths are read from the working folder, and the user most likely ran from another one.
    files: {source name: the config file's path}."""
    for key in PATH_KEYS:
        value, origin = values.get(key, (None, None))
        if not isinstance(value, str) or not value.strip() or "\x00" in value:     # (a NUL: check_value's)
            continue
        if os.path.isabs(os.path.expanduser(value)):
            continue
        if not origin or origin[0] != "file" or origin[1] not in files:
            continue
        here = os.path.dirname(os.path.abspath(files[origin[1]]))
        there = os.path.normpath(os.path.join(here, value))
        if not os.path.exists(value) and os.path.exists(there) and os.path.abspath(value) != there:
            fail(origin, key, f"{value!r} does not exist in the working folder {os.getcwd()}, but {there} does: "
                              "a config's relative paths are read from the working folder; run from "
                              f"{here} or give the absolute path")


def load_layers(layers, overrides=()):
    """The config of `layers`, [(YAML text, source name, config file path or None)], each laid over
    the ones before it (a later layer's keys win), then each "a.b=VALUE" override; validated."""
    values = {}
    for text, source, _ in layers:
        _layer(text, source, values)
    for text_ in overrides:
        key, value = parse_override(text_)
        if key in SECTIONS:                                   # --set train.early_stopping={patience: 3}
            _flatten(value, key + ".", lambda mapping, k: ("set", None, None), values)
        else:
            values[key] = (value, ("set", None, None))
    _beside_config(values, {source: path for _, source, path in layers if path is not None})
    return _resolve(values)


def load_config_text(text, overrides=(), source="<config>"):
    """Parse YAML text (from a file or a checkpoint), apply overrides, validate."""
    return load_layers([(text, source, None)], overrides)


def config_files(path) -> list:
    """`--config`'s value as a list of paths: None -> [], one path -> [it], a sequence as given."""
    if path is None:
        return []
    return [path] if isinstance(path, (str, os.PathLike)) else list(path)


def _demo_hint(path) -> str:
    """For the README's first command run outside the repository (an installed package has no configs/)."""
    if os.path.basename(os.path.normpath(path)) != "demo.yaml":
        return ""
    return (" (configs/demo.yaml is in the repository's folder, not in the installed package: run from there, or "
            "anywhere: cnn train --set data.demo=true --set data.train=data/demo/train --out runs/demo)")


def read_config_file(path) -> str:
    """The text of a config file (UTF-8, with or without a BOM, or UTF-16 with one); ConfigError naming
    the path for a missing, unreadable or binary one, and what a run folder or checkpoint is for."""
    path = os.fspath(path)
    if not path.strip():
        raise ConfigError("--config: the path is empty")
    if path == "-":
        raise ConfigError("--config -: a config is read from a file, not from standard input; give its path")
    if os.path.isdir(path):
        run = any(os.path.isfile(os.path.join(path, n)) for n in ("last.npz", "best.npz"))
        raise ConfigError(f"{path}: is a " + ("run folder, not a config file: --resume continues it, --init-from "
                                              "starts a new run from its weights" if run else
                                              "directory, not a config file"))
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file" + _demo_hint(path)) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from None
    if raw[:4] == b"PK\x03\x04":                        # a zip: a .npz checkpoint given as the config
        raise ConfigError(f"{path}: is a checkpoint (a .npz archive), not a YAML config: --resume continues its "
                          "run, --init-from starts a new run from its weights")
    from cnncli.data.pathlines import utf16_encoding

    if utf16_encoding(raw) in ("utf-16-le", "utf-16-be"):        # (YAML said: character '\x00' is not allowed)
        raise ConfigError(f"{path}: looks like UTF-16 text without its byte-order mark; save it as UTF-8")
    try:
        return raw.decode("utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig")  # (PowerShell 5)
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None


def file_layers(path) -> list:
    """load_layers' layers of the config file(s) at `path` (None, one path or a sequence), read."""
    return [(read_config_file(p), os.fspath(p), os.fspath(p)) for p in config_files(path)]


def load_config(path=None, overrides=()):
    """Defaults, then the YAML file(s) at `path` (one path or a sequence, later files' keys winning),
    then each "a.b=VALUE" override."""
    return load_layers(file_layers(path), overrides)


def require_train(cfg):
    """Raise the one-line error of a command that trains on data.train when the config names none."""
    if not cfg["data"]["train"]:
        raise ConfigError("data.train is not set: give --config FILE or --set data.train=FOLDER (try the demo: "
                          "--config configs/demo.yaml in the repository's folder, or anywhere --set data.demo=true "
                          "--set data.train=data/demo/train)")


def get(cfg, key):
    """cfg["a"]["b"] for key "a.b"; the default when a known key is absent; ConfigError when unknown."""
    if key not in LEAVES and key not in SECTIONS:
        fail(None, key, suggest(key))
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if key in LEAVES:
                return copy_value(LEAVES[key].default)
            return get(DEFAULTS, key)
        node = node[part]
    return node


def _flow(value):
    """One-line YAML for a value (flow style)."""
    text = yaml.dump(value, Dumper=Dumper, default_flow_style=True, width=1 << 30, allow_unicode=True)
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
            block = yaml.dump({leaf: value}, Dumper=Dumper, default_flow_style=False, width=1 << 30,
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
