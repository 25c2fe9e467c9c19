"""The config schema: every key, its default, its help text and its check (OPTIONS is the single
source), and the nested DEFAULTS built from it.

Data only: loading YAML, overrides, validation messages, dump and the README table are config.py.
"""

from dataclasses import dataclass
from typing import Any, Callable, Optional

OPTIMIZER_NAMES = ("sgd", "momentum", "nesterov", "adam", "adamw")  # == optim.OPTIMIZERS (tested)
SCHEDULE_NAMES = ("constant", "step", "cosine", "plateau")  # == optim.SCHEDULES (tested)
MIN_LR_SCHEDULES = ("cosine", "plateau")                      # the schedules optim.min_lr applies to
CLASS_WEIGHTS = ("none", "balanced")  # train.class_weight's named settings (or a mapping)
MAX_INT = 2 ** 31 - 1  # sanity bound on every integer (keeps numpy int32/int64 use safe downstream)
AUTO_STEPS = 10000  # train.epochs=auto: the optimizer-step budget ...
AUTO_EPOCHS = (10, 400)  # ... divided by the steps per epoch, clamped to this range


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


def _folds(v):
    return None if v == 0 or 2 <= v <= MAX_INT else "must be 0 (off) or >= 2"


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
    Option("data.train", None, "Folder of class subfolders (one subfolder per class), or a labels CSV (columns "
           "path and label); required for training.", "str",
           check=_not_empty),
    Option("data.val", None, "Validation folder (or labels CSV) with the training's classes (a class may be missing: "
           "a note says so); when null, data.val_split of the training images is held out.", "str",
           check=_not_empty),
    Option("data.test", None, "Test folder (or labels CSV; some of the classes will do), evaluated with best.npz "
           "(else last.npz) once training ends: printed and written to test_metrics.json in the run folder. Its "
           "classes are checked before training starts.", "str", check=_not_empty),
    Option("data.val_split", 0.1, "Fraction of the training images held out for validation, in [0, 1) (0: "
           "none, train on every image); used only when data.val is null; stratified by class (each class of "
           "2 or more images gives at least 1, and keeps at least 1 for training), seeded by data.seed.", "float",
           check=_range(0, 1, False, True)),
    Option("data.folds", 0, "K-fold cross-validation (cnn cv sets it): when >= 2, the validation images are "
           "fold data.fold of K stratified folds of data.train (data.val_split is not used); 0 = off.", "int",
           check=_folds),
    Option("data.fold", 0, "Which of the data.folds folds is held out for validation, in [0, data.folds).",
           "int", check=_range(0, MAX_INT)),
    Option("data.seed", 0, "Seed of the train/validation split (and of the folds).", "int",
           check=_range(0, MAX_INT)),
    Option("data.image_size", 32, "Side of the square network input; the network takes 32x32, so only 32 is "
           "accepted.", "int", check=_image_size),
    Option("data.resize", "pad", "How images become square: pad (keep aspect, pad with the border colour: "
           "the median of the resized image's edge pixels, so an object cropped tight to its edges pads with "
           "its own colour; stretch suits such crops), stretch, or crop (center crop).", "choice",
           choices=("pad", "stretch", "crop")),
    Option("data.normalize", True, "Standardize pixels by the training set's mean and std (stored in the "
           "checkpoint).", "bool"),
    Option("data.strict", False, "Refuse to start when any image is unreadable (otherwise skip it and list it "
           "in skipped.txt).", "bool"),
    Option("data.cache", True, "Keep decoded images in the dataset cache (see `cnn cache`) and reuse them "
           "while no file changed; false decodes every time (same as --no-cache).", "bool"),
    Option("data.demo", False, "When true and the data folders are missing, generate the built-in 12-class "
           "demo dataset there: data.train must then be FOLDER/train (FOLDER/test is made beside it).", "bool"),
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
           "optim.gamma every optim.step_size epochs), cosine (down to optim.min_lr) or plateau (times optim.gamma "
           "after optim.plateau_patience epochs without an improvement of train.monitor, not below optim.min_lr; "
           "Keras' ReduceLROnPlateau).", "choice",
           choices=SCHEDULE_NAMES),
    Option("optim.warmup_epochs", 1.0, "Epochs of linear warmup from ~0 to optim.lr (may be fractional; 0 = "
           "none), <= train.epochs.",
           "float", check=_range(0)),
    Option("optim.step_size", 10, "Epochs between learning-rate drops, for schedule=step.", "int",
           check=_range(1, MAX_INT)),
    Option("optim.plateau_patience", 5, "Epochs without an improvement of train.monitor before each "
           "learning-rate drop, for schedule=plateau.", "int", check=_range(1, MAX_INT)),
    Option("optim.gamma", 0.1, "Learning-rate factor at each drop, for schedule=step or plateau, > 0 (above 1 "
           "the rate rises, with a note).", "float", check=_range(0, None, True)),
    Option("optim.min_lr", 0.0, "Final learning rate of the cosine schedule, and the floor of plateau's, in "
           "[0, optim.lr] (other schedules do not read it).", "float",
           check=_range(0)),
    Option("train.epochs", "auto", "Number of passes over the training images, >= 1, or auto: about "
           f"{AUTO_STEPS} optimizer steps, clamped to [{AUTO_EPOCHS[0]}, {AUTO_EPOCHS[1]}] epochs (resolved once "
           "the training set is known, printed and saved resolved in config.yaml).", "epochs",
           check=_range(1, MAX_INT)),
    Option("train.batch_size", 64, "Images per optimizer step, >= 1.", "int", check=_range(1, MAX_INT)),
    Option("train.seed", 0, "Seed of the weight init and the data order.", "int", check=_range(0, MAX_INT)),
    Option("train.init_from", None, "Checkpoint (.npz, or a run folder: its best.npz, else last.npz) whose "
           "weights start this new run (fine-tuning): every layer and BN statistic is copied, the output layer "
           "by class name (classes it lacks start from train.seed's init), with its input mean/std; the same "
           "model.batchnorm and data.normalize; optimizer and schedule start anew.", "str", check=_not_empty),
    Option("train.threads", 0, "Numba threads; 0 = every core this process may use (its CPU affinity, capped "
           "by a cgroup CPU quota: Docker's --cpus, a Kubernetes CPU limit). At most `NUMBA_NUM_THREADS` (that "
           "count by default): a larger value runs that many, with a note.", "int", check=_range(0, MAX_INT)),
    Option("train.checkpoint_every", 100, "Steps between saves of last.npz (0 = only at the end of each "
           "epoch).", "int", check=_range(0, MAX_INT)),
    Option("train.monitor", "val_loss", "What picks best.npz and drives early stopping: val_loss (lower is "
           "better) or val_acc (higher is better; an equal accuracy with a lower val loss also counts while "
           "train.early_stopping.min_delta is 0); "
           "without validation images, the epoch's train_loss or train_acc.", "choice",
           choices=("val_loss", "val_acc")),
    Option("train.early_stopping.patience", 0, "Epochs without an improvement of train.monitor before stopping; "
           "0 = never stop early.", "int", check=_range(0, MAX_INT)),
    Option("train.early_stopping.min_delta", 0.0, "Smallest change of train.monitor that counts as an "
           "improvement (a loss decrease, or an accuracy increase as a fraction), >= 0; best.npz too moves only on "
           "such an improvement.", "float", check=_range(0)),
    Option("train.early_stopping.restore_best", True, "When stopping early, restore the best weights into "
           "last.npz.", "bool"),
    Option("train.tensorboard", True, "Write each epoch's metrics as a TensorBoard event file in the run "
           "folder (tensorboard --logdir runs), as Lightning's default logger does.", "bool"),
    Option("train.top_k", 3, "k of the top-k accuracy that cnn eval (unless --top-k) and cnn report show, >= 1.",
           "int", check=_range(1, MAX_INT)),
    Option("train.class_weight", "none", "Loss weight per class: none, balanced (n_images / (n_classes * "
           "n_images_of_class), sklearn's convention) or a mapping {class: weight > 0}, unlisted classes 1.",
           "weights", check=_class_weight),
    Option("augment.enabled", True, "Augment training batches (never validation, eval or predict) with the "
           "transforms below, each drawn per image from (train.seed, epoch, step).", "bool"),
    Option("augment.affine.p", 0.9, "Probability of a random affine (shift, rotation, scale, shear) per image, "
           "in [0, 1].", "float", check=_range(0, 1)),
    Option("augment.affine.shift", 4.0, "Largest shift in pixels (of 32) per axis, in [0, 16].", "float",
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


def nest(flat):
    """{"a.b": 1} -> {"a": {"b": 1}}, keeping the order of `flat`."""
    out = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def copy_value(value):
    return list(value) if isinstance(value, list) else value


DEFAULTS = nest({o.key: copy_value(o.default) for o in OPTIONS})
