"""cnn predict's library side: the PATHs given (files, folders, labels CSVs) gathered into one list,
decoded and classified PREDICT_CHUNK images at a time (a million files hold one chunk's pixels and
probabilities, not a million dicts), each chunk's results given as soon as it is classified, and written
as lines or a CSV. Not the metrics of labelled images (evaluate.py), nor the model (predictor.py).
"""

from __future__ import annotations

import os
import sys
from contextlib import closing
from pathlib import Path

import numpy as np

from .errors import CnnError
from .evaluate import nonfinite_outputs, nonfinite_rows, top_k_indices


def gather_paths(paths, ignored=None):
    """cnn predict's PATHs (image files, folders, labels CSVs, and - for paths on standard input, one
    a line) -> (PathList of image files, failures [(path, reason)]): a path that cannot be listed, or
    that lists no images, is a failure, not an error. With `ignored` (a Counter), the folders' files
    of other extensions are counted there."""
    from .data import PathList, list_images_and_bad, printable
    from .data.csvindex import is_labels_file, list_csv_paths
    from .data.pathlines import stdin_paths
    from .data.reasons import image_in, missing_hint
    from .process import CLOSED

    files, failures = PathList(), []                 # compact: a million paths take ~30 MB
    for p in paths:
        if p == "-" and "stdin" in CLOSED:            # (<&-: on /dev/null, not an empty list)
            failures.append((p, "standard input is closed: pipe the paths into it (find DIR | cnn predict -), "
                                "or give them as PATHs"))
            continue
        if p == "-":                                  # ls *.png | cnn predict - : paths, one a line (or -print0's)
            raw = sys.stdin.buffer.read()
            image = image_in(raw[:512])
            if image:                                 # (cat img.jpg | cnn predict -: not 57 "paths")
                fix = ": give its file name (cnn predict IMAGE)" if image.endswith("image") else ""
                failures.append((p, f"standard input holds {image}, not a list of paths{fix}"))
                continue
            found = stdin_paths(raw)
            files.extend(found)
            if not found:
                failures.append((p, "no paths on standard input"))
            continue
        if not os.path.lexists(p):                    # (a list's name too: as a missing image is told)
            failures.append((p, f"no such file or folder{missing_hint(p)}"))
            continue
        try:
            listed = is_labels_file(p)
            found, unscannable = list_csv_paths(p) if listed else list_images_and_bad(p, ignored)
            if listed and found and not any(map(os.path.lexists, found)):    # (stops at the first that exists)
                # relative paths name no file from the list's folder: from the working folder, as
                # written (`find imgs -name '*.png' > /tmp/list.txt`), else nothing is listed here
                found, _ = list_csv_paths(p, base="")
                if not any(map(os.path.lexists, found)):
                    where = os.path.dirname(os.path.abspath(p))
                    also = "" if where == os.getcwd() else " or from the working folder"
                    failures.append((p, f"none of its {len(found)} listed path(s) is a file, from the list's folder "
                                        f"({printable(where)}){also} (a {os.path.splitext(p)[1].lower()} PATH is "
                                        "read as a list of images)"))
                    continue
            files.extend(found)
            failures.extend(unscannable)
            if not found:
                failures.append((p, "no images found"))
        except CnnError as err:  # its message names the path already (printable: a control character escaped)
            failures.append((p, str(err).removeprefix(f"{p}: ").removeprefix(f"{printable(p)}: ")))
    return files, failures


def prediction_line(result: dict, top_k: int) -> str:
    """One tab-separated line of cnn predict: path, class, probability, then the next top_k - 1
    classes as class=probability."""
    from .data import printable                      # (a tab or newline in a name kept on its line)

    line = f"{printable(result['path'])}\t{printable(result['class'])}\t{result['probability']:.4f}"
    if top_k > 1 and len(result["top_k"]) > 1:
        line += "\t" + "  ".join(f"{printable(t['class'])}={t['probability']:.3f}" for t in result["top_k"][1:])
    return line


def predict_paths(predictor, paths, top_k=3):
    """Classify image files -> (results, failures); an unreadable file goes to failures [(path, reason)]."""
    results, failures = predict_stream(predictor, paths, top_k)
    return list(results), failures


# Images decoded and classified at a time: memory holds one chunk's pixels (8 MB at 32x32) and
# probabilities. A multiple of the batch size (256) above predictor.NUMPY_MAX_IMAGES, so each image is
# classified in the same batch and by the same forward (numba or NumPy) as in a single call on all of them.
PREDICT_CHUNK = 8192


def predict_stream(predictor, paths, top_k=3, notes=None):
    """Like predict_paths, but results is an iterator: it decodes and classifies PREDICT_CHUNK images at a
    time, then builds each result dict when it is reached, in the order of paths, so a caller prints
    each chunk's lines while the next is decoded. failures fills as it runs (complete when it ends).
    notes (a list), when given, gets at its end the warnings about decoded pixels that train and eval
    give (data.pixel_notes), over all the chunks, and the one of outputs that are not finite."""
    from . import data

    if not isinstance(paths, data.PathList):
        paths = [str(p) for p in paths]
    failures = []
    return _stream(predictor, paths, top_k, notes, failures), failures


def _stream(predictor, paths, top_k, notes, failures):
    from . import data
    from .data.names import utf8_text
    from .predictor import NUMPY_MAX_IMAGES

    if not len(paths):
        return
    pre = predictor.preprocess
    size, resize = int(pre.get("image_size", 32)), pre.get("resize", "pad")
    classes = list(predictor.classes)
    chunk = np.empty((min(PREDICT_CHUNK, len(paths)), size, size), dtype=np.uint8)  # (B,S,S), filled again
    where = np.empty(len(chunk), dtype=np.int64)         # (B,) each image's position in paths
    tally, counts = data.PixelTally(), [0, 0]             # (rows not finite, rows)
    k, i, fast = 0, 0, None                               # (None: by the size of one call on every image)
    # one bar and one pool of decode workers for all the chunks; closing: a stop, an error, or a caller
    # that leaves shuts the workers down at once
    with closing(data.iter_decoded(data.Jobs(paths, size, resize, data.MAX_PIXELS), progress=True)) as parts:
        for part in parts:
            for a, reason in part:
                if a is None:
                    failures.append((utf8_text(paths[i]), reason))
                else:
                    chunk[k], where[k] = a, i
                    k += 1
                    if k == len(chunk) and i + 1 < len(paths):    # (more to come: no longer one call)
                        fast = PREDICT_CHUNK > NUMPY_MAX_IMAGES
                i += 1
                if k == len(chunk):
                    yield from _classified(predictor, chunk, where, paths, top_k, classes, tally, counts, fast)
                    k = 0
        if k:
            yield from _classified(predictor, chunk[:k], where[:k], paths, top_k, classes, tally, counts, fast)
    if notes is not None:             # (a nearly black image: 12-bit data in a 16-bit file, say)
        notes.extend(tally.lines())
        if counts[0]:                                      # (as eval says it)
            notes.append(f"warning: {nonfinite_outputs(*counts)}")


def _classified(predictor, images, where, paths, top_k, classes, tally, counts, fast):
    """The result dicts of one chunk's images (K,S,S), paths[where[i]] for image i, in order."""
    tally.add(images, _Picked(paths, where))
    probs = predictor.predict_proba(images, batch_size=256, **({} if fast is None else {"fast": fast}))  # (K,C)
    counts[0] += nonfinite_rows(probs)
    counts[1] += len(probs)
    with _over_the_bar():
        yield from _results(paths, where, probs, top_k_indices(probs, top_k), classes)


def _over_the_bar():
    """Within: the decoding bar (on a terminal's stderr) is cleared, then drawn again below what was
    printed meanwhile, when standard output is that terminal too (its lines, not the bar's, on the screen)
    or a pipe, whose reader may write to it (`cnn predict big/ | head`: head's lines start on a blank line,
    not after the bar; on a stop, the bar is not drawn again)."""
    import stat
    from contextlib import nullcontext

    try:
        to_screen = sys.stdout.isatty() or stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode)
        both = to_screen and sys.stderr.isatty()
    except (AttributeError, ValueError, OSError):        # (None, closed, or no descriptor)
        both = False
    if not both:
        return nullcontext()
    from tqdm import tqdm

    return tqdm.external_write_mode(file=sys.stdout)


class _Picked:
    """paths[kept[i]] as item i (the decoded images' paths, without a list of them)."""

    def __init__(self, paths, kept):
        self.paths, self.kept = paths, kept

    def __getitem__(self, i):
        return self.paths[int(self.kept[i])]


def refuse_csv_target(path, inputs) -> None:
    """CnnError when `cnn predict --csv PATH` would overwrite what it reads (a checkpoint, an image or
    list it was given) or an existing file that is not a CSV (an image, a model: a typo's victim)."""
    from .data import printable
    from .data.csvindex import LIST_SUFFIXES

    real = os.path.realpath(os.path.abspath(path))   # (through a symlink, or a/missing/../metrics.csv)
    if os.path.basename(real) == "metrics.csv" and os.path.isfile(real):
        from .runs import is_run

        if is_run(Path(os.path.dirname(real))):
            raise CnnError(printable(f"--csv {path}: is the training history of the run folder "
                                     f"{os.path.dirname(real)}; write the predictions to another file"))
    if not os.path.lexists(path):
        return
    if "-" in inputs:                                # (the list read from standard input: a file redirected)
        try:
            if os.path.samestat(os.fstat(0), os.stat(path)):
                raise CnnError(printable(f"--csv {path}: is the list read from standard input; write the "
                                         "predictions to another file"))
        except OSError:
            pass
    for given in inputs:
        try:
            same = os.path.isfile(given) and os.path.samefile(given, path)
        except OSError:
            same = False
        if same:
            raise CnnError(printable(f"--csv {path}: is {given}, one of the inputs; write the predictions to "
                                     "another file"))
    if os.path.isfile(path) and not path.lower().endswith(LIST_SUFFIXES):
        raise CnnError(printable(f"--csv {path}: exists and is not a .csv file (nor .tsv, .txt), so it is not "
                                 "overwritten: remove it first, or give another name"))


def write_predictions_csv(path, results, classes) -> int:
    """predict_stream's results (with every class in top_k) as a CSV written atomically: path, class,
    probability, then one column per class in the model's order -> the number of rows."""
    import csv

    from .atomic import kept, why_unwritten, write_atomic
    from .data.names import utf8_text

    count = [0]
    names = [utf8_text(c) for c in classes]          # as the results name them

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        # (a lone CR is no special character to a "\n" writer: unquoted, a reader splits the row there)
        cr = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_ALL)
        (cr if any("\r" in n for n in names) else w).writerow(["path", "class", "probability", *names])
        for r in results:
            p = {t["class"]: t["probability"] for t in r["top_k"]}
            row = [r["path"], r["class"], repr(r["probability"]), *(repr(p[c]) for c in names)]
            (cr if "\r" in r["path"] or "\r" in r["class"] else w).writerow(row)
            count[0] += 1
    previous = "" if path == "-" else kept(path)
    try:
        if path == "-":                              # (standard output, as most tools read "-")
            write(sys.stdout)
            sys.stdout.flush()
        else:
            write_atomic(path, write, text=True)
    except BrokenPipeError:                          # `--csv - | head`: the reader left (cli_common: exit 141)
        if path == "-":
            raise
        raise CnnError(f"{path}: cannot write the predictions (Broken pipe)") from None
    except OSError as e:
        raise CnnError(f"{path}: cannot write the predictions ({why_unwritten(e, path)}){previous}") from None
    return count[0]


def _results(paths, good, probs, top, classes):
    """The result dict of each good file (positions `good` in paths), in order, one at a time."""
    from .data.names import utf8_text

    classes = [utf8_text(c) for c in classes]        # names that are not valid UTF-8 as \xNN, the rest exact
    for row, i in enumerate(good.tolist()):
        ranked = [{"class": classes[j], "probability": float(probs[row, j])} for j in top[row]]
        yield {"path": utf8_text(paths[i]), "class": ranked[0]["class"],
               "probability": ranked[0]["probability"], "top_k": ranked}


__all__ = ["gather_paths", "predict_paths", "predict_stream", "prediction_line", "write_predictions_csv"]
