"""How config text is read and how its problems are worded: the YAML loader that keeps line
numbers and refuses duplicate keys, and the one-line ConfigError messages with "did you mean".

Used by config.py only; it knows the schema (options.py) but validates no values.
"""

import datetime
import difflib
import re

import yaml

from .errors import ConfigError, one_line
from .options import LEAVES, SECTIONS

# -- messages ---------------------------------------------------------------------------------

def show(value, limit=60):
    """A short one-line rendering of a user value (a date YAML read, as written: 2024-01-01; a boolean
    as YAML writes it: false)."""
    text = (value.isoformat() if isinstance(value, (datetime.date, datetime.time)) else
            str(value).lower() if isinstance(value, bool) else repr(value))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def type_name(value):
    if isinstance(value, dict):
        return "mapping"
    names = {bool: "bool", int: "int", float: "float", str: "string", list: "list"}
    return names.get(type(value), type(value).__name__)


def show_key(key):
    return key if key.isprintable() and key.strip() == key and key else repr(key)


def where(origin):
    """Message prefix for where a value came from: 'cfg.yaml:7: ', '--set ', or ''."""
    if origin is None:
        return ""
    kind, source, line = origin
    if kind == "set":
        return "--set "
    return f"{source}:{line}: " if line else f"{source}: "


def fail(origin, key, problem):
    raise ConfigError(f"{where(origin)}{show_key(key)}: {problem}")


def _near_leaf(name):
    """[the key] of the leaf whose last name is spelt like `name` ("lrr" -> optim.lr), or []."""
    by_name = {}
    for k in LEAVES:
        by_name.setdefault(k.rsplit(".", 1)[-1], k)
    return [by_name[n] for n in difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.75)]


# the names Keras, PyTorch and Lightning users write (a key's last part, or a whole key, lower case) -> ours
KEY_ALIASES = {
    "learning_rate": "'optim.lr'", "optimizer": "'optim.name'", "optim.type": "'optim.name'",
    "nesterov": "optim.name: nesterov", "scheduler": "'optim.schedule'",
    "lr_scheduler": "'optim.schedule'", "warmup": "'optim.warmup_epochs'", "max_epochs": "'train.epochs'",
    "validation_split": "'data.val_split'", "horizontal_flip": "'augment.flip.horizontal' (a probability, e.g. 0.5)",
    "vertical_flip": "'augment.flip.vertical' (a probability, e.g. 0.5)", "rotation": "'augment.affine.rotate'",
    "rotation_range": "'augment.affine.rotate'", "width_shift_range": "'augment.affine.shift' (in pixels)",
    "height_shift_range": "'augment.affine.shift' (in pixels)", "zoom_range": "'augment.affine.scale'",
    "shear_range": "'augment.affine.shear'"}


def suggest(key):
    """" did you mean 'x'?" for a mistyped dotted key, or a list of what exists there. In a known
    section: a known name from another section ("train.lr" -> optim.lr, "train.out" -> out, every
    section that has it), else a near name in that section, else what it has. Elsewhere: a near
    spelling of a whole key ("trian.epochs"), a known name ("lr"), a section ("optimm"), a near name
    ("lrr")."""
    known = list(LEAVES) + SECTIONS
    alias = KEY_ALIASES.get(key.lower()) or KEY_ALIASES.get(key.rsplit(".", 1)[-1].lower())
    if alias:                                                 # learning_rate, horizontal_flip, ...
        return f"unknown key; did you mean {alias}?"
    same = [k for k in known if k.lower() == key.lower()]
    if same:                                                  # OPTIM.LR: keys are lower case
        return f"unknown key; did you mean '{same[0]}'? (keys are case-sensitive)"
    parent, last = key.rsplit(".", 1) if "." in key else ("", key)
    if parent and last in SECTIONS and "." not in last:      # data: {augment: ...}
        return f"unknown key; {last} is a section of its own, at the top level (not inside {parent})"
    moved = [k for k in LEAVES if k.rsplit(".", 1)[-1] == last and k != key]
    if parent in SECTIONS:
        children = sorted({k[len(parent) + 1:].split(".")[0] for k in known if k.startswith(parent + ".")})
        close = [] if moved else [f"{parent}.{n}" for n in difflib.get_close_matches(last, children, n=1, cutoff=0.6)]
        if not moved and not close:
            return f"unknown key; {parent} has: {', '.join(children)}"
    else:
        close = difflib.get_close_matches(key, list(LEAVES), n=1, cutoff=0.8)
        if not close and not moved:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or _near_leaf(last)
    leaves = [k for k in LEAVES if close and k.startswith(close[0] + ".")]
    if "." in key and 0 < len(leaves) <= 3:          # augment.hflip -> the keys of augment.flip one can set
        return "unknown key; did you mean " + " or ".join(f"'{k}'" for k in leaves) + "?"
    if close:
        return f"unknown key; did you mean '{close[0]}'?"
    if moved:
        return "unknown key; did you mean " + " or ".join(f"'{k}'" for k in moved) + "?"
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
Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _glued(lines, mark) -> int:
    """The 1-based number of the line above the parser's stop that holds a key glued to its value
    (epochs:1, read as the text 'epochs:1', so the next key's ':' is refused), else 0."""
    if mark is None or not 0 < mark.line < len(lines):
        return 0
    above = _line_above(lines, mark.line)
    indent = [len(ln) - len(ln.lstrip(" ")) for ln in lines]
    glued = above is not None and indent[above] == indent[mark.line] \
        and re.match(r"\s*[A-Za-z_][\w.]*:[^\s:/\\]", lines[above])       # (a sibling key, not text in a value)
    return above + 1 if glued else 0


def _line_above(lines, n: int):
    """The index of the nearest line above line n that holds something but a comment, or None."""
    return next((i for i in range(n - 1, -1, -1) if lines[i].strip() and not lines[i].lstrip().startswith("#")),
                None)


def _dedented(lines, mark) -> bool:
    """Whether the parser stopped at the first character of a line indented less than the line
    above it that holds something (a key out of line with its neighbours), not inside a value."""
    if mark is None or not 0 < mark.line < len(lines):
        return False
    indent = [len(ln) - len(ln.lstrip(" ")) for ln in lines]
    above = _line_above(lines, mark.line)
    return mark.column == indent[mark.line] and above is not None and indent[mark.line] < indent[above]


def parse_yaml(text, where, with_line=True):
    """Safe-load one YAML document; ConfigError '<where>:<line>: could not parse YAML: ...'."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None and with_line else ""
        problem = " ".join(f"{e.problem or ''} {e.context or ''}".split()) or type(e).__name__
        if "expected a single document" in (e.context or ""):   # a second document after a '---' line
            problem = "the text holds more than one YAML document (a '---' line after the first); keep one"
        lines = text.splitlines()
        if mark is not None and mark.line < len(lines) and "\t" in lines[mark.line][:mark.column + 1]:
            problem += " (a tab: YAML indents with spaces only)"
        elif ("mapping values are not allowed" in problem or "did not find expected key" in problem) \
                and _glued(lines, mark):                                                # (epochs:1 above)
            problem += f" (line {_glued(lines, mark)}: a key needs a space after its ':', or it is read as text)"
        elif "mapping values are not allowed" in problem:     # (a key indented under a key: value line)
            problem += (" (a line indented more than the key above it, whose value is already given, or a "
                        "': ' inside a value to quote)")
        elif "did not find expected key" in problem and _dedented(lines, mark):
            problem += " (a line indented less than the keys above it)"
        elif "unknown escape character" in problem or "expected hexdecimal" in problem:  # ("C:\Users\me")
            problem += (" (in double quotes a backslash starts an escape such as \\n: write a path with / or "
                        "in single quotes)")
        start = e.context_mark
        if with_line and mark is not None and start is not None and start.line < mark.line and "---" not in problem:
            problem += f" (begun on line {start.line + 1})"          # an unclosed [ or quote: where it opened
        raise ConfigError(f"{where}{line}: could not parse YAML: {problem}") from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow
        line = f":{text[:e.position].count(chr(10)) + 1}" if with_line and isinstance(e.position, int) else ""
        ch = chr(e.character) if isinstance(e.character, int) else str(e.character)
        raise ConfigError(f"{where}{line}: could not parse YAML: character {ch!r} is not allowed") from None
    except Exception as e:  # e.g. ValueError for an impossible date, RecursionError for deep nesting
        raise ConfigError(f"{where}: could not parse YAML: {one_line(e)}") from None
