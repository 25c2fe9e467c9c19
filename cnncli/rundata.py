"""A training run's data as its config names it, on every rank: the training and validation sets (data.val,
a fold, or a split of data.train; data.demo generated where it is missing), data.test checked before any step,
and the fingerprint the ranks of a run compare. It decodes through data/ and sets up nothing else
(runsetup.py does: the resume, the kernels, the network).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from cnncli import runfolder
from cnncli.errors import ConfigError, DataError
from cnncli.datanotes import same_data, split_folders


def _demo_missing(train_dir: Path, val_dir) -> bool:
    """data.demo: a missing data folder is generated only where the demo puts it (ROOT/train, and
    data.val ROOT/test), never for a path that merely does not exist (a typo stays an error)."""
    missing = [p for p in (train_dir, val_dir) if p is not None and not p.exists()]
    return bool(missing) and train_dir.name == "train" and \
        (val_dir is None or (val_dir.name == "test" and val_dir.parent == train_dir.parent))


def _refuse_dataset_root(train_dir: Path) -> None:
    """A data.train whose every subfolder is named like a split (train, test, val...) is a dataset's
    root, one level too high: refused before any image is decoded (data_notes warns when only some are)."""
    try:
        names = [e.name for e in os.scandir(train_dir) if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return                   # not a folder (a labels CSV) or unreadable: load_folder says which
    splits, inner = split_folders(names)
    if len(splits) < 2 or len(splits) < len(names):
        return
    # the held-out splits by role: a validation folder picks the checkpoint (data.val); a test folder
    # is for the end alone (data.test: it never picks a checkpoint, or its accuracy would flatter)
    val = next((n for n in splits if n.lower().startswith(("val", "dev"))), None)
    test = next((n for n in splits if n.lower().startswith("test")), None)
    shown = runfolder.printable
    also = [f"data.{key} to {shown(os.path.join(train_dir, name))}" for key, name in (("val", val), ("test", test))
            if name]
    raise ConfigError(f"data.train: the subfolders of {shown(train_dir)} are {', '.join(map(shown, splits))}, "
                      f"a dataset's splits rather than its classes; set data.train to "
                      f"{shown(os.path.join(train_dir, inner))}" + (f" (and {' and '.join(also)})" if also else ""))


def _folder_options(d: dict, progress: bool) -> dict:
    """data.load_folder's keyword arguments that the config's data section `d` sets."""
    return dict(image_size=d["image_size"], resize=d["resize"], strict=d["strict"], cache=d["cache"], progress=progress)


def load_datasets(cfg: dict, echo=None, classes=None, progress=True):
    """(train_ds, val_ds, skipped) as the config says: data.val (which may lack some of the classes, as
    a test folder for cnn eval may), fold data.fold of data.folds, or a stratified data.val_split of train.
    `classes` (a checkpoint's) must match the class folders; a mismatch fails before any image is decoded."""
    from cnncli import data

    d = cfg["data"]
    train_dir, val_dir = Path(d["train"]), (Path(d["val"]) if d["val"] else None)
    if d["demo"] and _demo_missing(train_dir, val_dir):
        from cnncli.demo import ensure_demo

        ensure_demo(train_dir.parent, say=echo)
    elif d["demo"]:                                 # (a typo stays an error, saying why nothing was made)
        missing = [(k, p) for k, p in (("train", train_dir), ("val", val_dir)) if p is not None and not p.exists()]
        if missing:
            key, path = missing[-1] if train_dir.name == "train" else missing[0]   # (the name that stops it)
            raise DataError(runfolder.printable(
                f"data.{key}: {path} does not exist, and data.demo makes the demo only as FOLDER/train (data.train) "
                f"and FOLDER/test (data.val or data.test), e.g. --set data.{key}="
                f"{train_dir.parent / ('train' if key == 'train' else 'test')}"))
    _refuse_dataset_root(train_dir)
    opts = _folder_options(d, progress)
    try:
        train_ds, skipped = data.load_folder(train_dir, classes=classes, **opts)
    except DataError as err:                        # (which of the config's folders: as data.val's)
        raise DataError(f"data.train: {err}") from None
    n_classes = cfg["model"]["num_classes"]
    if n_classes is not None and n_classes != len(train_ds.classes):
        raise ConfigError(
            f"model.num_classes is {n_classes} but {train_dir} has {len(train_ds.classes)} class folders"
        )
    if val_dir is not None:
        try:
            val_ds, val_skipped = data.load_folder(val_dir, classes=train_ds.classes, missing_ok=True, **opts)
        except DataError as err:                    # (which of the config's folders: as data.test's)
            raise DataError(f"data.val: {err}") from None
        if same_data(val_dir, train_dir):           # (overlap_notes warns): each of its files counted once
            val_skipped, val_ds.notes = [], []
        skipped = list(skipped) + list(val_skipped)
    else:
        if d["folds"] > len(train_ds.labels):
            raise ConfigError(f"data.folds is {d['folds']} but {runfolder.printable(train_dir)} has "
                              f"{len(train_ds.labels)} usable image(s): a fold would hold no validation image; "
                              f"use at most {len(train_ds.labels)} folds")
        tr_idx, va_idx = (data.fold_split(train_ds.labels, d["folds"], d["fold"], d["seed"]) if d["folds"] else
                          data.stratified_split(train_ds.labels, d["val_split"], d["seed"]))
        train_ds, val_ds = data.split(train_ds, tr_idx, va_idx)   # in place: no second copy
    if len(train_ds.labels) == 0:
        raise DataError(f"{train_dir}: no training images left after the validation split")
    return train_ds, val_ds, skipped


def load_validation(cfg: dict, classes, echo=None):
    """(val_ds, skipped) of a run's validation images as load_datasets holds them out: data.val alone
    when the config names it, its class folders read as the model's `classes` (the training folder
    is not decoded, and its unreadable files are not this data's), else the split or fold of
    data.train (skipped: that folder's unreadable files, which either side could have held). echo
    says when the demo dataset a data.demo run names is generated again."""
    from cnncli import data

    d = cfg["data"]
    if not d["val"]:
        _, val_ds, skipped = load_datasets(cfg, echo=echo)
        return val_ds, skipped
    return data.load_folder(Path(d["val"]), classes=list(classes), missing_ok=True, **_folder_options(d, True))


def check_test_data(d: dict, classes, progress: bool = False) -> list:
    """data.test indexed against the training's classes before any step, so a wrong path or an unknown
    class stops the run now rather than after training; with data.strict also decoded (into the dataset
    cache the test after training reads), so an unusable file refuses the run now -> its files' paths."""
    from cnncli import data
    from cnncli.data.dataset import index

    try:
        ix, prefix = index(d["test"], classes, missing_ok=True)
        if d["strict"]:
            data.load_folder(d["test"], classes=list(classes), missing_ok=True, **_folder_options(d, progress))
    except DataError as err:
        raise DataError(f"data.test: {err}") from None
    return [prefix + r for r in ix.rels]


def data_fingerprint(train_ds, val_ds) -> dict:
    """What every rank of a run must agree on about its data: the counts, the classes, and CRC-32s of
    the training and validation images' pixels and labels."""
    def crc(a) -> int:
        value = 0
        for start in range(0, len(a), 1 << 14):                 # (chunks: a memory-mapped cache read once)
            value = zlib.crc32(np.ascontiguousarray(a[start:start + (1 << 14)]), value)
        return value
    return {"training images": len(train_ds.labels), "validation images": len(val_ds.labels),
            "classes": list(train_ds.classes),
            "checksum": [crc(train_ds.images), crc(train_ds.labels), crc(val_ds.images), crc(val_ds.labels)]}


def same_data_as_rank0(mine: dict, first: dict) -> None:
    """DataError when this rank's data differs from rank 0's (data_fingerprint): each rank reads its
    own files, so a host whose copy is out of step would train on other images."""
    if mine == first:
        return
    what = next(k for k in first if mine[k] != first[k])
    shown = (lambda v: f"{v:,}" if isinstance(v, int) else ", ".join(map(str, v))[:80])
    detail = "their pixels or labels differ" if what == "checksum" else f"{what}: {shown(mine[what])} here, " \
                                                                         f"{shown(first[what])} on rank 0"
    raise DataError(f"the data this rank read differs from rank 0's ({detail}): every rank must read the same "
                    "files (a copy out of step on this host?)")
