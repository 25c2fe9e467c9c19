"""What a run says about its data before the first step: class folders named like a dataset's
splits, classes without images, class sizes far apart, names that differ only in case, held-out
images that are training images (the same folder, or the same files). Notes only: it refuses
nothing and decodes nothing (data.test's files come from rundata.check_test_data's index).
"""

from __future__ import annotations

import os

import numpy as np

from cnncli import runfolder

SPLIT_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation"}   # a dataset root's folders


def holds_out_nothing(cfg: dict) -> bool:
    """The config asks for no validation images: no data.val and data.val_split 0 (train on every image)."""
    return not cfg["data"]["val"] and cfg["data"]["val_split"] == 0 and not cfg["data"]["folds"]


def split_folders(names) -> tuple:
    """(the names named like a dataset's splits, sorted; the one data.train should be: the training
    split, else the first) of a folder's subfolder or class names."""
    splits = sorted(n for n in names if n.lower() in SPLIT_NAMES)
    return splits, next((n for n in splits if n.lower().startswith("train")), splits[0] if splits else None)


IMBALANCE = 10      # a class with 10x the training images of another: data_notes suggests class weights
FEW_VAL = 5         # under this many validation images a class (a split of data.train): a note on best.npz's choice
# (20 images a class, data.val_split 0.1: best.npz was epoch 11 of 400, test 19% against last.npz's 45-60%)


def data_notes(cfg: dict, train_ds, val_ds) -> list:
    """The lines a run starts with about what its data holds: class folders named like a dataset's
    splits (data.train one level too high), classes without training or validation images, no
    validation images at all, classes of very different sizes without class weights."""
    from cnncli.data.names import printable as name_text

    classes, lines = train_ds.classes, []
    splits, inner = split_folders(classes)
    if inner is not None and inner.lower().startswith("train"):     # a dataset's root, a class folder beside
        lines.append(f"warning: the class folders include {', '.join(map(name_text, splits))}: data.train "
                     "should be the folder that holds one subfolder per class (e.g. "
                     f"{runfolder.printable(os.path.join(cfg['data']['train'], inner))})")
    elif splits:                # test/ or val/ among the classes: a held-out split put in the wrong place?
        one = len(splits) == 1
        lines.append(f"warning: the class folder{'' if one else 's'} {', '.join(map(name_text, splits))} "
                     f"{'is' if one else 'are'} named like a held-out split: if {'it holds' if one else 'they hold'} "
                     f"test or validation images rather than a class, move {'it' if one else 'them'} out of data.train "
                     "(data.test and data.val name such folders)")
    counts = np.bincount(train_ds.labels, minlength=len(classes))          # (C,) training images a class
    untrained = [c for c, k in zip(classes, counts) if k == 0]
    if untrained:              # (a K-fold split of a class with fewer images than folds)
        lines.append(f"note: no training images of {', '.join(map(name_text, untrained))} "
                     "(all held out for validation)")
    absent = [c for c, k in zip(classes, np.bincount(val_ds.labels, minlength=len(classes))) if k == 0]
    if 0 < len(absent) < len(classes):
        lines.append(f"note: no validation images of {', '.join(map(name_text, absent))}")
    if len(val_ds.labels) == 0:
        lines.append(("note: no validation images (data.val_split is 0)" if holds_out_nothing(cfg)
                      else "warning: no validation images")
                     + "; best.npz and early stopping use the training "
                     + ("accuracy" if cfg["train"]["monitor"] == "val_acc" else "loss") + " instead")
    elif len(val_ds.labels) < FEW_VAL * len(classes) and not cfg["data"]["val"] and not cfg["data"]["folds"]:
        # (a tiny dataset's 10%: one image decides the best epoch)
        lines.append(f"note: only {len(val_ds.labels)} validation image(s) for {len(classes)} classes pick best.npz "
                     "and early stopping, so one image can decide; with so few, data.val_split: 0 (judged on the "
                     "training loss) or cnn cv (every image validates once) may judge better")
    few, most = int(counts.min()), int(counts.max())
    if few > 0 and most >= IMBALANCE * few and cfg["train"]["class_weight"] in (None, "none"):
        small = classes[int(counts.argmin())]
        lines.append(f"note: the classes are far from even ({name_text(small)}: {few} training image(s), "
                     f"{name_text(classes[int(counts.argmax())])}: {most}); train.class_weight: balanced "
                     "weights each image's loss by its class's rarity")
    n, batch = len(train_ds.labels), cfg["train"]["batch_size"]
    if batch > n:
        lines.append(f"note: train.batch_size {batch} is more than the {n:,} training images: each epoch is "
                     "one step of all of them")
    return lines + case_twins(classes) + overlap_notes(cfg["data"]) + shared_files_notes(cfg["data"], train_ds, val_ds)


def case_twins(classes) -> list:
    """[a warning per group of class names that differ only in case (Circle, circle: two classes)],
    leaving out names that differ only in Unicode form (scan warns of those)."""
    from cnncli.data.names import printable as name_text, same_form

    groups = {}
    for c in classes:
        groups.setdefault(same_form(c).casefold(), []).append(c)
    return [f"warning: the classes {' and '.join(map(name_text, g))} differ only in case: they are separate "
            "classes; if they are one, give them one name (one folder, or one label in the labels file)"
            for g in groups.values() if len({same_form(c) for c in g}) > 1]


def _shared(paths, others) -> int:
    """How many of `paths` name a file that `others` names too (as absolute, normalized paths)."""
    def norm(p):
        return os.path.normpath(os.path.abspath(p))
    mine = {norm(p) for p in others}
    return sum(norm(p) in mine for p in paths)


def shared_files_notes(d: dict, train_ds, val_ds) -> list:
    """A warning for data.val images that are also training images, as files listed in both (a labels
    file of the same images, a folder of a subset): overlap_notes catches the same folder or file
    given twice, this the files themselves (test_files_notes does it for data.test)."""
    if d["val"] and not same_data(d["val"], d["train"]) and len(val_ds.paths):
        k = _shared(val_ds.paths, train_ds.paths)
        if k:
            return [f"warning: {k:,} of the {len(val_ds.paths):,} validation images (data.val) are also training "
                    "images, the same files: val acc flatters, and best.npz is picked on them"]
    return []


def test_files_notes(d: dict, train_ds, test_files: list) -> list:
    """The warning for data.test files (rundata.check_test_data's index of them) that are training files."""
    if same_data(d["test"], d["train"]):
        return []                                    # (overlap_notes says so)
    k = _shared(test_files, train_ds.paths)
    return [f"warning: {k:,} of the {len(test_files):,} test images (data.test) are also training images, the "
            "same files: the test measures images the model was trained on"] if k else []


def same_data(a, b) -> bool:
    """Whether two data paths (config values, None when unset) name the same folder or file."""
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)


def overlap_notes(d: dict) -> list:
    """Warnings for held-out data that is the training data, or a test that is the validation data
    (the same folder or labels file): their accuracy would flatter the model."""
    same, shown, lines = same_data, runfolder.printable, []
    if same(d["val"], d["train"]):
        lines.append(f"warning: data.val is data.train ({shown(d['train'])}): the run validates on its training "
                     "images, so val acc flatters and best.npz is picked on them")
    if same(d["test"], d["train"]):
        lines.append(f"warning: data.test is data.train ({shown(d['train'])}): the test measures training images")
    elif same(d["test"], d["val"]):
        lines.append(f"warning: data.test is data.val ({shown(d['val'])}): best.npz was picked on these images, "
                     "so the test flatters it")
    return lines
