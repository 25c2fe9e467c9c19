"""How one config value is checked against its option (options.py) and converted to its type: numbers
given as text (YAML 1.1 reads 1e-3 as a string), whole numbers for the integer keys, the choices with
"did you mean", the class-weight mapping. Used by config.py only; it reads no files.
"""

import datetime
import difflib
import math
import re

from .config_text import fail, show, type_name
from .options import CLASS_WEIGHTS

_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", re.ASCII)     # (0-9 only)
_KIND_TEXT = {"str": "a string", "int": "an integer", "epochs": "an integer or auto", "float": "a number",
              "bool": "true or false",
              "unit_pair": "a list of two numbers, e.g. [0.9, 0.999]",
              "pair": "a list of two numbers [lo, hi], e.g. [0.9, 1.1]",
              "weights": "none, balanced or a mapping {class: weight}"}

# Keras' and PyTorch's names of a choice (lower case) -> ours, for the "did you mean" of a choice
CHOICE_ALIASES = {"reducelronplateau": "plateau", "cosineannealing": "cosine", "cosineannealinglr": "cosine",
                  "cosinedecay": "cosine", "steplr": "step", "none": "constant", "constantlr": "constant",
                  "accuracy": "val_acc", "val_accuracy": "val_acc", "sgdm": "momentum"}


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


def _as_int(v):
    """v as an int when it is a whole number: an int, a float such as 2.0 or 1e2, or a numeric string
    ("2", "1e2": YAML 1.1 leaves 1e2 as text), as the float keys take numeric strings; else None."""
    f = _as_float(v)
    if f is None or not math.isfinite(f) or f != int(f):
        return None
    return v if isinstance(v, int) else int(f)


def check_value(opt, value, origin):
    """The value converted to the option's type, or ConfigError naming the key."""
    if value is None:
        if opt.default is None:
            return None
        expected = f"one of {', '.join(opt.choices)}" if opt.kind == "choice" else _KIND_TEXT[opt.kind]
        fail(origin, opt.key, f"must not be null (expected {expected})")
    original = value
    shown = show(dict(value) if isinstance(value, dict) else value)
    wrong = f"expected {_KIND_TEXT.get(opt.kind, 'a string')}, got {type_name(value)} {shown}"
    if opt.kind == "str":
        if not isinstance(value, str):
            hint = " (quote it in YAML)" if isinstance(value, (int, float, datetime.date)) else ""
            fail(origin, opt.key, wrong + hint)
        if "\x00" in value:                           # (no path holds one; os.path functions raise on it)
            fail(origin, opt.key, f"holds a NUL character (\\x00), which no path or name can: {shown}")
    elif opt.kind == "bool":
        if not isinstance(value, bool):
            quoted = isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off")
            fail(origin, opt.key, wrong + (f" (quoted, it is text: write {value.strip().lower()} without quotes)"
                                           if quoted else ""))
    elif opt.kind in ("int", "epochs"):
        if opt.kind == "epochs" and value == "auto":
            return value
        whole = _as_int(value)
        if whole is None:
            auto = opt.kind == "epochs" and isinstance(value, str) and value.strip().lower() == "auto"
            fail(origin, opt.key, wrong + ("; did you mean 'auto'?" if auto else ""))
        value = whole
    elif opt.kind == "float":
        f = _as_float(value)
        if f is None:
            fail(origin, opt.key, wrong)
        if not math.isfinite(f):
            fail(origin, opt.key, f"must be a finite number, got {show(value)}")
        value = f
    elif opt.kind == "choice":
        if not isinstance(value, str) or value not in opt.choices:
            typed = str(value).strip().lower()
            close = ([c for c in opt.choices if c.lower() == typed]                             # (PAD, Adam)
                     or [c for c in [CHOICE_ALIASES.get(typed)] if c in opt.choices]            # (ReduceLROnPlateau)
                     or difflib.get_close_matches(str(value), opt.choices, n=1, cutoff=0.6))
            hint = f"; did you mean '{close[0]}'?" if close else ""
            if isinstance(value, bool):          # (resize: no, batchnorm: off: YAML 1.1's booleans, unquoted)
                said = "an unquoted yes or on as true" if value else "an unquoted no or off as false"
                hint = (f"; did you mean 'none'? (YAML reads {said})" if not value and "none" in opt.choices
                        else f" (YAML reads {said})")
            fail(origin, opt.key, f"must be one of {', '.join(opt.choices)}, got {show(value)}{hint}")
    elif opt.kind == "unit_pair":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            fail(origin, opt.key, wrong)
        pair = [_as_float(v) for v in value]
        if any(v is None or not (0.0 <= v < 1.0) for v in pair):
            fail(origin, opt.key, f"each value must be a number in [0, 1), got {show(value)}")
        value = pair
    elif opt.kind == "pair":
        pair = [_as_float(v) for v in value] if isinstance(value, (list, tuple)) and len(value) == 2 else None
        if pair is None or any(v is None or not math.isfinite(v) for v in pair):
            fail(origin, opt.key, wrong)
        value = pair
    elif opt.kind == "weights":
        value = _weights(opt, value, origin, wrong)
    if opt.check is not None:
        problem = opt.check(value)
        if problem:
            fail(origin, opt.key, f"{problem}, got {show(original)}")
    return value


def _weights(opt, value, origin, wrong):
    """A class_weight value: "none" | "balanced" | {class name: float} (integer names become text)."""
    if isinstance(value, str):
        if value not in CLASS_WEIGHTS:
            close = difflib.get_close_matches(value, CLASS_WEIGHTS, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            fail(origin, opt.key, f"must be none, balanced or a mapping {{class: weight}}, got {show(value)}{hint}")
        return value
    if not isinstance(value, dict):
        fail(origin, opt.key, wrong)
    out = {}
    for name, w in value.items():
        f = _as_float(w)
        if isinstance(name, bool) or name is None:     # YAML read an unquoted yes/no/on/off/true/false/null
            read = {True: "true", False: "false", None: "null"}[name]
            fail(origin, opt.key, f"a class name read as {read}: YAML reads an unquoted yes, no, on, off, "
                                  f"true, false or null as that; quote the name, e.g. 'yes': {show(w)}")
        if not isinstance(name, (str, int)) or f is None or not math.isfinite(f):
            fail(origin, opt.key, f"expected {{class name: number}}, got {show(name)}: {show(w)}")
        out[str(name)] = f
    return out
