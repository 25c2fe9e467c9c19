"""Notes on a training config's settings that do nothing in the run it starts, or not what a user
from Keras or PyTorch may think (a shift in pixels, a min_delta in accuracy's units): advice printed
before training, never an error. Not the validation of values (config_values.py, config.py).
"""

from .config_text import show
from .options import LEAVES, MIN_LR_SCHEDULES


def _get(cfg: dict, dotted: str):
    # the value of a dotted key of a full config
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def setting_notes(cfg) -> list:
    """Notes on settings that do nothing in this run (cfg with train.epochs resolved): a step schedule
    that never steps, a plateau schedule that early stopping always ends first, a setting away from
    its default that this optimizer, schedule, network or data source does not read (or augmentation
    that is off), AdamW without weight decay."""
    o, t, d = cfg["optim"], cfg["train"], cfg["data"]
    notes, patience = [], t["early_stopping"]["patience"]
    if o["schedule"] == "step" and o["step_size"] >= t["epochs"]:
        notes.append(f"optim.schedule=step multiplies the rate by optim.gamma every optim.step_size={o['step_size']} "
                     f"epochs, but train.epochs is {t['epochs']}: the rate never drops")
    if o["schedule"] in ("step", "plateau") and o["gamma"] > 1:
        notes.append(f"optim.gamma is {o['gamma']:g}: each 'drop' of the {o['schedule']} schedule raises the rate")
    schedule = f"optim.schedule={o['schedule']}"
    unread = [(key, why) for key, why in (
        ("optim.momentum", o["name"] not in ("momentum", "nesterov") and f"optim.name={o['name']} has no momentum"),
        ("optim.betas", o["name"] not in ("adam", "adamw") and "only adam and adamw read them"),
        ("optim.min_lr", o["schedule"] not in MIN_LR_SCHEDULES and f"{schedule} has no floor"),
        ("optim.step_size", o["schedule"] != "step" and f"{schedule} has no steps (step reads it)"),
        ("optim.gamma", o["schedule"] not in ("step", "plateau") and f"{schedule} has no drops (step and plateau "
                                                                      "read it)"),
        ("optim.plateau_patience", o["schedule"] != "plateau" and f"{schedule} is not plateau"),
        ("data.val_split", "data.val names the validation images" if d["val"] is not None else
         d["folds"] >= 2 and "data.folds' folds hold the validation images"),
        ("model.bn_eps", cfg["model"]["batchnorm"] == "none" and "model.batchnorm is none"),
        ("model.bn_momentum", cfg["model"]["batchnorm"] == "none" and "model.batchnorm is none"))
        if why and _get(cfg, key) != LEAVES[key].default]
    for key, why in unread:
        notes.append(f"{key}={show(_get(cfg, key))} does nothing in this run: {why}")
    if not cfg["augment"]["enabled"]:
        changed = [k for k in LEAVES if k.startswith("augment.") and k != "augment.enabled"
                   and _get(cfg, k) != LEAVES[k].default]
        if changed:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            verb = "does" if len(changed) == 1 else "do"
            notes.append(f"{', '.join(f'{k}={show(_get(cfg, k))}' for k in changed[:3])}{more} {verb} nothing in "
                         "this run: augment.enabled is false")
    if o["name"] == "adamw" and o["weight_decay"] == 0:
        notes.append("optim.name=adamw with optim.weight_decay=0 is Adam: AdamW's decoupled decay needs a weight "
                     "decay (PyTorch's default is 0.01, Keras' 0.004)")
    shift = cfg["augment"]["affine"]["shift"]
    if cfg["augment"]["enabled"] and 0 < shift < 1:
        notes.append(f"augment.affine.shift={shift:g} is in pixels (of {cfg['data']['image_size']}), not a fraction "
                     "of the width as Keras' width_shift_range: it moves an image by under a pixel")
    delta = t["early_stopping"]["min_delta"]
    if t["monitor"] == "val_acc" and delta >= 1:
        notes.append(f"train.early_stopping.min_delta={delta:g} is in val acc's units, a fraction (0.01 is one "
                     "point): no epoch improves on the first by it")
    if o["schedule"] == "plateau" and 0 < patience <= o["plateau_patience"]:
        notes.append(f"train.early_stopping.patience={patience} is not above optim.plateau_patience="
                     f"{o['plateau_patience']}: early stopping ends the run before the plateau schedule lowers "
                     "the rate")
    return notes
