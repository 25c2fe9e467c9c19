"""Per-class loss weights for `train.class_weight`: none, balanced, or a {class: weight} mapping.

`balanced` follows scikit-learn: weight_c = n_images / (n_classes * n_images_of_class_c). This module
only computes and checks the weights against the training classes; the loss applies them (train).
"""

from __future__ import annotations

import difflib

import numpy as np

from .data.names import matching_form
from .errors import ConfigError


def _yaml_number(name: str):
    """The number YAML 1.1 reads an unquoted class name as, as text ('010' -> '8', '1_000' -> '1000'),
    or None when it reads text."""
    import yaml

    try:
        value = yaml.safe_load(name)
    except yaml.YAMLError:
        return None
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def class_weights(setting, labels, classes) -> np.ndarray | None:
    """(C,) float64 weights for train.class_weight `setting`, or None for "none" (an unweighted loss).

    labels (N,) integer class indices of the training images; classes the C class names in index
    order. A mapping names classes (unlisted ones get 1.0); a name that is not a training class is a
    ConfigError naming it (with a did-you-mean), before any training starts.
    """
    n_classes = len(classes)
    if setting is None or setting == "none":
        return None
    if setting == "balanced":
        labels = np.asarray(labels)
        counts = np.bincount(labels, minlength=n_classes).astype(np.float64)  # (C,)
        present = counts > 0          # (a K-fold split can hold all of a small class out: it weighs nothing)
        weights = np.zeros(n_classes)
        weights[present] = labels.size / (int(present.sum()) * counts[present])   # (scikit-learn: classes in y)
        return weights
    if isinstance(setting, dict):
        form = matching_form(classes, [str(name) for name in setting])   # (a macOS folder's e + accent is é)
        index = {form(name): i for i, name in enumerate(classes)}
        weights = np.ones(n_classes)
        for name, w in setting.items():
            if form(str(name)) not in index:
                close = difflib.get_close_matches(str(name), list(index), n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else f"; the classes are: {', '.join(classes)}"
                number = [c for c in classes if _yaml_number(c) == str(name)]
                index_like = str(name).strip().isdigit() and int(str(name)) < n_classes   # ({0: 2}: '0' from --set)
                if not close and not number and index_like:
                    hint = f"; the keys are class names, not indices: class {int(str(name))} is " \
                           f"'{classes[int(str(name))]}'{hint}"
                if number:                     # {01: 2}, {010: 2}: YAML read the unquoted 01 as 1, 010 as 8
                    hint = f"; did you mean '{number[0]}'? (YAML reads an unquoted {number[0]} as the number " \
                           f"{name}: quote it, '{number[0]}')"
                raise ConfigError(f"train.class_weight: {name!r} is not a training class{hint}")
            if not (float(w) > 0 and np.isfinite(float(w))):
                raise ConfigError(f"train.class_weight: the weight of class {name!r} must be > 0, got {w!r}")
            weights[index[form(str(name))]] = float(w)
        return weights
    raise ConfigError(f"train.class_weight: must be none, balanced or a mapping {{class: weight}}, got {setting!r}")
