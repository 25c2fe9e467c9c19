"""Datasets in bounded memory: load_folder (scan, decode or cached load), the stratified split done in
place, and the pixel mean/std streamed in chunks (bitwise equal to NumPy's over a float64 copy).

It does not batch, scale to [0,1] or normalize: the trainer does that; a Dataset keeps uint8 pixels.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from . import cache as cache_mod
from . import decode as dec
from . import decodemany
from .pathlist import PathList
from .csvindex import CsvIndex, is_labels_file
from .names import printable
from .reasons import unreadable_text
from .scan import Index


def _take(paths, idx):
    """paths at integer positions idx: a PathList stays compact, any other sequence becomes a list."""
    return paths.take(idx) if isinstance(paths, PathList) else [paths[i] for i in idx]


@dataclass
class Dataset:
    images: np.ndarray                       # (N, S, S) uint8, C-contiguous (maybe memory-mapped)
    labels: np.ndarray                       # (N,) int64 in [0, len(classes))
    classes: list[str]
    paths: list[str] = field(default_factory=list)    # or a PathList (load_folder): a sequence of str
    notes: list[str] = field(default_factory=list)    # load_folder's one-line notes and warnings on the folder

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx) -> "Dataset":
        idx = np.asarray(idx, dtype=np.int64)
        return Dataset(np.ascontiguousarray(self.images[idx]), self.labels[idx].copy(),
                       list(self.classes), _take(self.paths, idx))


def index(root: str, classes=None, missing_ok: bool = False) -> tuple:
    """(the index of a data path, the prefix of its paths): a labels CSV's rows (full paths, prefix
    ""), or a class-per-subfolder folder's files (prefix root/, names "class/sub/name.png"). Scans,
    does not decode."""
    root = os.fspath(root)
    if is_labels_file(root):
        return CsvIndex(root, classes, missing_ok), ""
    return Index(root, classes, missing_ok), os.path.join(root, "")


def load_folder(root, image_size: int = 32, resize: str = "pad", classes=None, strict: bool = False,
                workers: int | None = None, cache: bool = True, max_pixels: int = dec.MAX_PIXELS,
                progress: bool = True, missing_ok: bool = False) -> tuple[Dataset, list[tuple[str, str]]]:
    """Index, decode (on every core, with a progress bar on a terminal) and cache a class-per-subfolder
    image folder, or the images a labels CSV lists (csvindex.py). A cached load is a memory map of the
    cache file (copy-on-write).

    Returns (dataset, skipped) with skipped = [(printable path, reason)]: loose root-level images,
    unscannable folders, then unusable files in class/path order. strict=True raises DataError
    listing them instead. Dataset.paths keep undecodable name bytes (surrogateescape) so files open.
    Dataset.notes holds one-line notes for the user: files left out for their extension are counted,
    and images that decode to a single grey level are kept and counted there.
    missing_ok: classes (all of them, in their order) may have no images here (scan.Index).
    """
    root = os.fspath(root)
    if resize not in dec.RESIZE_MODES:
        raise DataError(f"resize: {resize!r} is not one of {', '.join(dec.RESIZE_MODES)}")
    image_size = int(image_size)
    ix, prefix = index(root, classes, missing_ok)
    jobs = decodemany.Jobs(ix.rels, image_size, resize, max_pixels, prefix)
    unsaved = None                                    # why the dataset cache could not be written
    if cache:
        slot, key = cache_mod.cache_names(root, ix.classes, ix.digest, image_size, resize, int(max_pixels))
        hit = cache_mod.read(slot, key, image_size, len(ix.rels))
        if hit is None:
            # racing processes: one decodes, the others wait and read (or decode alone past a stopped one)
            waited = []
            with cache_mod.locked(slot, waiting=lambda pid: (waited.append(pid), _say(_busy(root, pid))),
                                  gave_up=lambda pid: _say(_stopped(root, pid))) as owned:
                hit = cache_mod.read(slot, key, image_size, len(ix.rels)) if owned else None
                if hit is None:
                    why = cache_mod.miss_reason(slot, key) if owned else None
                    ids = getattr(ix, "keys", None)          # (a folder's files' identities; a labels CSV has none)
                    previous = cache_mod.read_previous(slot, image_size) if why == "out of date" and \
                        ids is not None else None
                    src = decodemany.reuse_plan(ids, previous) if previous is not None else None
                    if waited and owned:           # (it ended, killed or failed, before writing the cache)
                        who = "the other process" if waited[0] is None else f"the other process (pid {waited[0]})"
                        _say(f"note: {who} ended without writing the dataset cache: decoding here")
                    elif why:
                        new = int((src < 0).sum()) if src is not None else len(ix.rels)
                        _say(f"note: the dataset cache of {printable(root)} is {why}"
                             + (" (a file was added, removed or changed since, or had its time or permissions changed)"
                                if why == "out of date" else "")
                             + (": decoding every image again" if src is None else
                                f": none of its files is new or changed, all {len(ix.rels):,} from the cache"
                                if new == 0 else f": decoding the {new:,} new or changed file(s), the other "
                                f"{len(ix.rels) - new:,} from the cache"))
                    hit = (decodemany.decode_reusing(jobs, src, previous, workers, progress) if src is not None
                           else decodemany.decode_array(jobs, workers, progress))
                    del previous                    # (its memory map)
                    unsaved = cache_mod.write(slot, key, *hit, ids=ids) if owned else None
        images, bad = hit
    else:
        images, bad = decodemany.decode_array(jobs, workers, progress)
    skipped = ([(printable(prefix + n), "not inside a class subfolder") for n in ix.loose]
               + [(printable(prefix + p), why) for p, why in ix.bad]
               + [(printable(prefix + ix.rels[i]), why) for i, why in bad])
    if strict and skipped:
        lines = [f"{ix.what} {printable(root)}: {len(skipped)} unusable file(s) or folder(s) (strict mode)"]
        lines += [f"  {p}: {why}" for p, why in skipped]
        raise DataError("\n".join(lines))
    keep = np.ones(len(ix.rels), dtype=bool)
    keep[[i for i, _ in bad]] = False
    labels = ix.labels[keep]
    counts = np.bincount(labels, minlength=len(ix.classes))
    empty = [printable(ix.classes[i]) for i in range(len(ix.classes)) if counts[i] == 0]
    if empty and not missing_ok:
        theirs = [(printable(ix.rels[i]), why) for i, why in bad if counts[ix.labels[i]] == 0]
        whose = "in class folder(s)" if ix.what == "data folder" else "of"
        raise DataError(f"{ix.what} {printable(root)}: no usable images {whose} {', '.join(empty)}: "
                        f"{unreadable_text(theirs)}")
    ix.rels.prefix = prefix                           # the Index is done with: its names become the paths
    paths = ix.rels if keep.all() else ix.rels.take(np.flatnonzero(keep))
    notes = ix.notes() + _lost_note(ix.labels, keep, ix.classes) + pixel_notes(images, paths)
    if unsaved:
        notes.append(f"note: the dataset cache could not be written ({printable(unsaved)}), so the next run "
                     f"decodes {printable(root)} again; CNNCLI_CACHE_DIR names another folder for it")
    return Dataset(images, labels, list(ix.classes), paths, notes), skipped


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _busy(root, pid) -> str:
    """The line a run waiting for another's decode of root prints."""
    who = "another process" if pid is None else f"another process (pid {pid})"
    return (f"waiting for {who} that is decoding {printable(root)} into the dataset cache "
            "(--no-cache decodes without it) ...")


def _stopped(root, pid) -> str:
    """The line a run prints when the process it waits for is stopped (Ctrl-Z, SIGSTOP)."""
    return (f"process {pid}, which is decoding {printable(root)} into the dataset cache, is stopped "
            f"(kill -CONT {pid} resumes it): decoding here without the cache")


def _lost_note(labels, keep, classes, share: float = 0.1) -> list[str]:
    """[a warning naming the classes that lost at least `share` of their files to unreadable ones
    (the skipped list does not say whose they are: a class of mostly broken files trains on few
    images)], or []: labels (N,) every listed file's class, keep (N,) bool the usable ones."""
    total = np.bincount(labels, minlength=len(classes))                            # (C,)
    lost = total - np.bincount(labels[keep], minlength=len(classes))               # (C,)
    hit = [c for c in range(len(classes)) if lost[c] >= 2 and lost[c] >= share * total[c]]
    if not hit:
        return []
    parts = [f"{printable(classes[c])} {lost[c]:,} of {total[c]:,} ({lost[c] / total[c]:.0%})" for c in hit[:5]]
    more = f", and {len(hit) - 5} more class(es)" if len(hit) > 5 else ""
    return [f"warning: unreadable files cost these classes {share:.0%} or more of their images: "
            f"{', '.join(parts)}{more}"]


def pixel_notes(images, paths, chunk: int = 1 << 16) -> list[str]:
    """[a warning naming one of the images whose pixels are all one grey level, one naming one of the
    nearly black images (no pixel above DARK)]: those that apply. Such images are kept, but a flat one
    likely decodes to something other than its picture, and a nearly black one is often a 16-bit file
    of 10- or 12-bit camera data (16-bit values are scaled by 255/65535: 4095 becomes 16), or a float
    file a little above 1.0: when one of the first PROBE nearly black files shows such a cause
    (decode.dark_reason), the warning names it and the cause."""
    tally = PixelTally()
    tally.add(images, paths, chunk)
    return tally.lines()


class PixelTally:
    """pixel_notes over images given in parts (cnn predict's chunks): add() counts each part's flat and
    nearly black images and keeps the paths of the first PROBE of each; lines() says them as
    pixel_notes does, once, with the counts of all the parts."""

    def __init__(self):
        self.count = {"flat": 0, "dark": 0}
        self.first = {"flat": [], "dark": []}        # the first PROBE paths of each kind

    def add(self, images, paths, chunk: int = 1 << 16) -> None:
        """images (K,S,S) uint8; paths[i]: image i's path."""
        for a in range(0, len(images), chunk):
            lo, hi = images[a:a + chunk].min(axis=(1, 2)), images[a:a + chunk].max(axis=(1, 2))      # (n,) each
            for kind, rows in (("flat", np.flatnonzero(lo == hi)), ("dark", np.flatnonzero((hi <= DARK) & (lo < hi)))):
                self.count[kind] += rows.size
                self.first[kind].extend(paths[a + int(i)] for i in rows[:PROBE - len(self.first[kind])])

    def lines(self) -> list[str]:
        lines = []
        if self.count["flat"]:
            lines.append(f"warning: {self.count['flat']} image(s) decode to a single grey level, e.g. "
                         + _probed(self.first["flat"], flat=True))
        if self.count["dark"]:
            lines.append(f"warning: {self.count['dark']} image(s) are nearly black (no pixel above {DARK} of 255), "
                         "e.g. " + _probed(self.first["dark"]))
        return lines


def _probed(paths, flat: bool = False) -> str:
    """The first of these paths (PROBE at most) whose file shows why it decodes so (decode.dark_reason),
    as "path: why", else the first path."""
    reasons = ((p, dec.dark_reason(p, flat)) for p in paths)
    first, why = next(((p, r) for p, r in reasons if r is not None), (paths[0], None))
    return printable(first) + ("" if why is None else f": {why}")


DARK = 16           # the brightest pixel of a nearly black image: 12-bit data (4095) in a 16-bit file
PROBE = 20          # nearly black images whose headers are read for a 16-bit one to name


def split(ds: Dataset, train_idx, val_idx, chunk: int = 4096) -> tuple[Dataset, Dataset]:
    """(ds.subset(train_idx), ds.subset(val_idx)) without a second copy of the training images: the
    validation rows are copied out, then the training rows move forward in place (a memory-mapped
    cache is copy-on-write, so the file is untouched). `ds` must not be used afterwards.
    train_idx and val_idx are sorted, disjoint, and together every row."""
    tr = np.asarray(train_idx, dtype=np.int64)
    va = np.asarray(val_idx, dtype=np.int64)
    if tr.size + va.size != len(ds) or (tr.size > 1 and np.any(np.diff(tr) <= 0)):
        raise ValueError("train_idx and val_idx must be sorted and cover the dataset exactly once")
    val = ds.subset(va)
    images = ds.images
    if not images.flags.writeable:
        images = np.array(images)                     # read-only source: one copy, then in place
    for a in range(0, tr.size, chunk):                # tr[j] >= j: rows read before they are written
        b = min(a + chunk, tr.size)
        images[a:b] = images[tr[a:b]]
    train = Dataset(images[:tr.size], ds.labels[tr], list(ds.classes), _take(ds.paths, tr), list(ds.notes))
    return train, val


def _pairwise(images, start, n, leaf, fn) -> float:
    """np.add.reduce over fn(float64 pixels [start, start+n) of the flattened images), with NumPy's
    pairwise-summation tree (blocks of 8 below 128 elements) so the result equals the one-shot sum."""
    if n <= leaf:
        flat = images.reshape(-1)
        return np.add.reduce(fn(flat[start:start + n].astype(np.float64)))
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise(images, start, n2, leaf, fn) + _pairwise(images, start + n2, n - n2, leaf, fn)


def pixel_mean_std(images: np.ndarray, leaf: int = 1 << 20) -> tuple[float, float]:
    """(mean, std) of images / 255 in float64, streamed in chunks of <= `leaf` pixels: bitwise equal to
    `x = images.astype(np.float64) / 255.0; (x.mean(), x.std())` without that 8-bytes-a-pixel copy.
    A std below 1e-6 (constant images) becomes 1.0. images: uint8 pixels (a Dataset's)."""
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8:                      # (float images were divided by 255 as if 0..255)
        raise ValueError(f"images must be uint8 pixels (0..255, a Dataset's images), got {images.dtype}")
    n = images.size
    if n == 0:
        return float("nan"), 1.0
    leaf = max(int(leaf), 128)
    mean = _pairwise(images, 0, n, leaf, lambda x: x / 255.0) / n
    var = _pairwise(images, 0, n, leaf, lambda x: np.square(x / 255.0 - mean)) / n
    std = float(np.sqrt(var))
    return float(mean), (std if std > 1e-6 else 1.0)


def fold_split(labels, folds: int, fold: int, seed) -> tuple[np.ndarray, np.ndarray]:
    """Stratified K-fold: per class c a seeded permutation whose i-th image goes to fold
    (i + images of the classes before c) mod K, so every fold gets each class's share and the folds
    differ in size by at most one image; fold `fold` is validation. -> (train_idx, val_idx), sorted int64.
    The K folds' validation parts are disjoint and together hold every image once."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not (folds >= 2 and 0 <= fold < folds):
        raise ValueError(f"need folds >= 2 and 0 <= fold < folds, got fold {fold} of {folds}")
    rng = np.random.default_rng(seed)
    assign = np.empty(labels.size, np.int64)            # (N,) each image's fold
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = idx[rng.permutation(idx.size)]
        assign[perm] = (np.arange(idx.size) + offset) % folds
        offset += idx.size
    return np.flatnonzero(assign != fold).astype(np.int64), np.flatnonzero(assign == fold).astype(np.int64)


def stratified_split(labels, fraction: float, seed) -> tuple[np.ndarray, np.ndarray]:
    """Per class c with n_c images: a seeded permutation; validation takes round(fraction * n_c),
    at least 1 when n_c >= 2 (and fraction > 0), at most n_c - 1. -> (train_idx, val_idx), sorted int64."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = idx[rng.permutation(idx.size)]
        n = idx.size
        k = int(np.floor(fraction * n + 0.5))
        if fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        else:
            k = 0
        val.append(perm[:k])
        train.append(perm[k:])
    cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(train), cat(val)
