"""Indexing a labels CSV instead of a class-per-subfolder folder (as Ludwig and most Kaggle sets ship
data): a header row with a path column and a label column (comma-, semicolon- or tab-separated),
one row per image; relative paths are taken from the CSV's own folder, the classes are the distinct
labels in sorted order. It has the attributes of scan.Index (so load_folder decodes and caches it
the same way); it does not decode.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import os
import re
import unicodedata
from array import array

import numpy as np

from ..errors import DataError
from .decode import IMAGE_EXTENSIONS
from .reasons import image_in
from .pathlines import path_lines, unquoted
from .pathlist import PathList
from .names import matching_form, printable, shown_classes

PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "image", "image_path", "img")
LABEL_COLUMNS = ("label", "class", "class_name", "category", "target", "y")
MAX_BYTES = 1 << 30            # a labels file larger than this is refused (a million rows take ~50 MB)


LIST_SUFFIXES = (".csv", ".tsv", ".txt")    # a labels file's, or a list of paths'


def is_labels_file(root: str) -> bool:
    """Whether a data path names a labels CSV (a file ending in .csv, .tsv or .txt) rather than a folder."""
    return root.lower().endswith(LIST_SUFFIXES) and not os.path.isdir(root)


def column_key(name: str) -> str:
    """A header cell as the column names above spell it: case, surrounding blanks and the spaces,
    hyphens or dots between words aside ("Image Path", "file-name" -> image_path, file_name)."""
    return re.sub(r"[\s.-]+", "_", name.strip().lower())


def _column(header: list, names: tuple, what: str, path: str) -> int:
    keys = [column_key(h) for h in header]
    hits = [i for i, k in enumerate(keys) if k in names]
    if len(hits) != 1:
        if hits:
            raise DataError(f"labels file {printable(path)}: more than one {what} column in its header {header!r} "
                            f"({', '.join(header[i] for i in hits)}); keep one of them under such a name")
        first_is_data = any(os.sep in h or "/" in h or h.lower().endswith(tuple(IMAGE_EXTENSIONS)) for h in header)
        hint = (" (its first row is read as the header, and it looks like a row of data: add a header line, e.g. "
                "path,label)") if first_is_data else ""
        raise DataError(f"labels file {printable(path)}: no {what} column in its header {header!r}; name it one "
                        f"of {', '.join(names)}{hint}")
    return hits[0]


def text_encoding(path: str) -> str:
    """UTF-16 when the file starts with its byte-order mark (Excel's "Unicode text", PowerShell 5's
    redirections), else UTF-8 with or without one."""
    with open(path, "rb") as f:
        return "utf-16" if f.read(2) in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"


@contextlib.contextmanager
def _reading(path: str):
    """Reading or parsing problems of a labels file as one DataError line naming it."""
    image = _image_file(path)
    if image:
        fix = ": give it its image extension" if image.endswith("image") else ""
        raise DataError(f"{printable(path)}: is {image}, not a list of paths or a labels file (a .csv, .tsv or "
                        f".txt PATH is read as one){fix}")
    try:
        yield
    except FileNotFoundError:
        raise DataError(f"labels file {printable(path)}: does not exist") from None
    except UnicodeDecodeError as e:
        where = _line_of(path, e)
        raise DataError(f"labels file {printable(path)}: is not UTF-8 (or UTF-16) text{where} (a spreadsheet "
                        "saves UTF-8 as \"CSV UTF-8\")") from None
    except csv.Error as e:
        raise DataError(f"labels file {printable(path)}: not a CSV file ({e})") from None
    except OSError as e:
        raise DataError(f"labels file {printable(path)}: cannot be read ({e.strerror or e})") from None


SPLIT_COLUMNS = ("split", "fold", "subset", "partition")   # a column naming each row's split: not read
DELIMITERS = (",", ";", "\t")     # comma first; a European spreadsheet's semicolons; tabs (TSV)
FIELD_LIMIT = 1 << 24            # csv's default 131,072 characters refused a whole file for one long cell


def _image_file(path: str) -> str | None:
    """reasons.image_in of the file's first bytes: an image saved under a list's extension."""
    try:
        with open(path, "rb") as f:
            return image_in(f.read(512))
    except OSError:
        return None


def _line_of(path: str, err: UnicodeDecodeError) -> str:
    """': line L has byte 0xNN' of a decoding error, when the file's bytes show where ("" otherwise)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES)
        start = raw.find(err.object[err.start:err.end]) if isinstance(err.object, bytes) else -1
    except OSError:
        return ""
    if start < 0:
        return ""
    line = raw[:start].count(b"\n") + 1
    return f": line {line} has byte 0x{raw[start]:02x}"


def _reader(f, ended: list):
    """A csv.reader of f whose delimiter is the first of DELIMITERS that splits the first non-blank
    line into a header with a path column (else a comma), or the one an Excel "sep=X" first line
    names; its line numbers count every line. `ended` gets True once it reads past f's last line (not
    strict: csv's strict mode, which refuses an unmatched quote, refuses a space after a closing quote too)."""
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    lines = []
    for line in f:
        lines.append(line)
        if line.strip():
            break
    first = lines[-1] if lines else ""
    excel = re.fullmatch(r"\s*sep=(.)\s*", first)     # Excel's "sep=;" first line: the delimiter, then the header
    delimiter = excel.group(1) if excel else next((d for d in DELIMITERS if any(
        column_key(h) in PATH_COLUMNS for h in next(csv.reader([first], delimiter=d), []))), ",")
    head = [*lines[:-1], "\n"] if excel else lines
    return csv.reader(itertools.chain(head, f, iter(lambda: ended.append(True), None)), delimiter=delimiter)


def _unmatched_quote(path: str, where: str):
    raise DataError(f"labels file {printable(path)}: {where}: a quoted field begins there and is not closed by the end "
                    "of the file (an unmatched \")")


def _rows(path: str, f, with_label: bool, base=None, header_out=None):
    """(line number, full path or '', label or '') of each non-blank row after the header; relative
    paths are taken from the CSV's folder (base: that folder as another spelling, e.g. as given).
    header_out (a list): the header's cells are put there."""
    ended = []                                          # (a row read to the file's end: an unmatched quote)
    reader = _reader(f, ended)
    header = next((r for r in reader if any(cell.strip() for cell in r)), None)
    if header is not None and ended:
        _unmatched_quote(path, "its header row")
    if header_out is not None and header is not None:
        header_out.extend(header)
    if header is None:
        raise DataError(f"labels file {printable(path)}: is empty (expected a header row, e.g. path,label)")
    pi = _column(header, PATH_COLUMNS, "path", path)
    li = _column(header, LABEL_COLUMNS, "label", path) if with_label else None
    base = os.path.dirname(os.path.abspath(path)) if base is None else base
    while True:
        start = reader.line_num + 1                     # (the row's first line: a quoted cell may span lines)
        row = next(reader, None)
        if row is None:
            return
        if ended:                                       # (csv asked for a line after the last within the row)
            _unmatched_quote(path, f"line {start}")
        if not any(cell.strip() for cell in row):
            continue
        file = row[pi].strip() if pi < len(row) else ""
        label = row[li].strip() if li is not None and li < len(row) else ""
        yield reader.line_num, _full_path(file, base), label


def _folder(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _from_working_folder(file: str, path: str) -> bool:
    """Whether a listed file that is not there from the labels file's folder would be there from the
    working folder (the paths were written relative to where the user runs cnn)."""
    base = _folder(path)
    if base == os.getcwd() or not file.startswith(base + os.sep):
        return False
    return os.path.exists(os.path.relpath(file, base))


def _missing_hint(file: str, path: str) -> str:
    """Why a listed path may name nothing here: a Windows drive path (C:\\...) on another system."""
    rel = os.path.relpath(file, _folder(path)) if file.startswith(_folder(path) + os.sep) else file
    if os.sep == "/" and re.match(r"[A-Za-z]:[\\/]", rel):
        return "; a Windows drive path: list the files as this machine names them"
    return ""


def _full_path(file: str, base: str) -> str:
    """A listed path as a full path: relative ones from the CSV's folder `base`. A path written with
    Windows backslashes (images\\0001.png, a CSV made on Windows) that names no file here is read
    with slashes (which names the missing file as this system would); one that names no file in the
    Unicode form it is written in, in the other form when that names one."""
    if not file:
        return file
    full = file if os.path.isabs(file) else os.path.join(base, file)
    if os.sep == "/" and "\\" in file and not os.path.lexists(full):
        alt = file.replace("\\", "/")
        full = alt if os.path.isabs(alt) else os.path.join(base, alt)
    if not full.isascii() and not os.path.lexists(full):      # é written decomposed (macOS) or composed
        for form in ("NFC", "NFD"):
            alt = unicodedata.normalize(form, full)
            if alt != full and os.path.lexists(alt):
                return alt
    return full


def list_csv_paths(path: str, base=None) -> tuple[list, list]:
    """The image paths a CSV lists (its path column; a label column is not needed), or a plain list
    of paths one a line -> (paths, [(where, reason)] of rows without a path). For `cnn predict`, which
    classifies the files a test CSV or a list names. A relative path is joined to the list's folder
    as `path` spells it (lists/a.txt's img/1.png is lists/img/1.png), so the predictions name files
    the way a folder given on the command line names its own; or to `base` ('' for the working
    folder: the paths as written)."""
    files, bad = [], []
    base = os.path.dirname(path) if base is None else base   # ('' for a list in the working folder)
    with _reading(path), open(path, encoding=text_encoding(path), newline="") as f:
        if _headerless_list(path, f):          # one path a line, no header (ls *.png > list.txt)
            return [_full_path(ln, base) for ln in path_lines(f)], []
        for line, file, _ in _rows(path, f, with_label=False, base=base):
            if file:
                files.append(file)
            else:
                bad.append((f"{printable(path)} line {line}", "no path"))
    return files, bad


def _headerless_list(path: str, f) -> bool:
    """Whether f's first non-blank line is no header (no path column under any delimiter) but a
    path: a file that exists (relative to the list's folder), a name with an image extension (a
    missing file is then reported as such), or one column without a known name (a quoted field is
    one column, as its commas are no delimiters). A plain list of paths; f is rewound either way."""
    first = next((ln.strip() for ln in f if ln.strip()), "")
    f.seek(0)
    quoted = unquoted(first)                           # ("a,b.png", as csv.writer quotes a path with a comma)
    first = quoted or first
    cells = [first] if quoted else [h for d in DELIMITERS for h in first.split(d)]
    cells = [column_key(h) for h in cells]
    if not first or any(c in PATH_COLUMNS for c in cells):
        return False
    one_column = (quoted or not any(d in first for d in DELIMITERS)) and cells[0] not in LABEL_COLUMNS
    return (one_column or os.path.splitext(first)[1].lower() in IMAGE_EXTENSIONS
            or os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(path)), first)))


def _duplicates_note(path: str, rels, hashes, labels, classes) -> list[str]:
    """[a warning counting the files a labels file lists more than once (each copy is an image of
    its own: one may train while another validates), those under different labels first named], or
    []: rels the listed files, hashes (N,) int64 their normalized paths' hashes, labels (N,)."""
    if len(hashes) < 2:
        return []
    values, counts = np.unique(hashes, return_counts=True)
    candidates = values[counts > 1]
    if not len(candidates):
        return []
    groups = {}
    for i in np.flatnonzero(np.isin(hashes, candidates)):                        # only the few that collide
        groups.setdefault(os.path.normpath(rels[int(i)]), []).append(int(labels[i]))
    repeated = {p: ls for p, ls in groups.items() if len(ls) > 1}
    if not repeated:
        return []
    mixed = [(p, ls) for p, ls in repeated.items() if len(set(ls)) > 1]
    line = f"warning: labels file {printable(path)} lists {len(repeated):,} file(s) more than once (each copy " \
           "counts as an image: one may train while another validates)"
    if mixed:
        p, ls = mixed[0]
        names = ", ".join(printable(classes[k]) for k in sorted(set(ls)))
        line += f"; {len(mixed):,} of them under different labels, e.g. {printable(p)}: {names}"
    return [line]


class CsvIndex:
    """What reading a labels CSV found: classes, full paths with labels, the digest of the cache key
    (the CSV's bytes and every file's stat), rows that name no usable file (bad)."""

    what = "labels file"

    def notes(self) -> list[str]:
        """A labels file names its images and leaves none out by extension: [the warning about files
        it lists more than once], [a note on a split column it does not read (Ludwig's `split`)]."""
        split = [h for h in self.header if column_key(h) in SPLIT_COLUMNS]
        return self.duplicates + [
            f"note: labels file {printable(self.path)}: its column {split[0]!r} is not read: all its rows are images "
            "of the one data key it is given as (data.train, data.val or data.test); to use its split, write a "
            "labels file per split and give each to its key"] if split else self.duplicates

    def __init__(self, path: str, classes=None, missing_ok: bool = False):
        self.missing_ok, self.loose, self.bad, self.from_cwd, self.first_line = missing_ok, [], [], 0, {}
        self.path, self.header = path, []
        h = hashlib.sha256()
        with _reading(path):
            if os.path.getsize(path) > MAX_BYTES:
                raise DataError(f"labels file {printable(path)}: larger than {MAX_BYTES >> 20} MB")
            with open(path, "rb") as f:                   # the CSV's bytes key the cache: a relabel is seen
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            with open(path, encoding=text_encoding(path), newline="") as f:
                ids, names, hashes = self._index(path, f, h)
        self.classes, form = self._classes(path, names, classes)
        where = {form(c): i for i, c in enumerate(self.classes)}
        remap = np.array([where[form(n)] for n in names], dtype=np.int64)     # first-seen label id -> class index
        self.labels = remap[np.frombuffer(ids, dtype=np.int64)] if len(ids) else np.zeros(0, np.int64)   # (N,)
        self.digest = h.hexdigest()
        self.duplicates = _duplicates_note(path, self.rels, np.frombuffer(hashes, dtype=np.int64), self.labels,
                                           self.classes)
        if not len(self.rels):
            where, why = self.bad[0] if self.bad else ("", "")
            first = f" (line {where.rsplit(' line ', 1)[-1]}: {why})" if self.bad else ""
            if self.from_cwd:
                first = (f": its relative paths are read from its own folder ({printable(_folder(path))}), and they "
                         f"name files from the working folder ({printable(os.getcwd())}) instead; write them "
                         "relative to the labels file's folder, or absolute")
            raise DataError(f"labels file {printable(path)}: lists no readable image files{first}")
        counts = np.bincount(self.labels, minlength=len(self.classes))
        empty = [c for c, k in zip(self.classes, counts) if k == 0]
        if empty and not missing_ok:           # (with the row that made the label: an unquoted comma in a path?)
            where = [f"{printable(c)} (line {self.first_line[c]})" if c in self.first_line else printable(c)
                     for c in empty]
            raise DataError(f"labels file {printable(path)}: no readable image files of {', '.join(where)}")

    def _index(self, path: str, f, h) -> tuple:
        """Stream the rows: each usable file's full path into self.rels (its stat into the digest h),
        its label as an id in order of first appearance -> (ids array, the labels by id)."""
        self.rels, ids, id_of, rows, hashes = PathList(), array("q"), {}, 0, array("q")
        for line, file, label in _rows(path, f, with_label=True, header_out=self.header):
            rows += 1
            if not file or not label:
                self.bad.append((f"{printable(path)} line {line}", "no path" if not file else "no label"))
                continue
            label_id = id_of.setdefault(label, len(id_of))       # a class even if none of its files is there
            self.first_line.setdefault(label, line)
            try:
                st = os.stat(file)
            except OSError as e:
                self.bad.append((f"{printable(path)} line {line}",
                                 f"cannot read {printable(file)} ({e.strerror or e}){_missing_hint(file, path)}"))
                if len(self.bad) <= 100 and _from_working_folder(file, path):
                    self.from_cwd += 1
                continue
            h.update(f"{file}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}\n"
                     .encode("utf-8", "surrogatepass"))
            self.rels.extend([file])
            ids.append(label_id)
            hashes.append(hash(os.path.normpath(file)))
        if not rows:
            raise DataError(f"labels file {printable(path)}: lists no images (only its header row)")
        return ids, list(id_of), hashes

    @staticmethod
    def _classes(path: str, names: list, classes) -> tuple:
        """(the classes, the form their names and the labels match in: names.matching_form)."""
        found = sorted(set(names))
        if classes is None:
            if len(found) < 2:
                raise DataError(f"labels file {printable(path)}: has {len(found)} distinct label(s) "
                                f"({', '.join(map(printable, found))}); need at least 2")
            return found, str
        classes = [str(c) for c in classes]
        form = matching_form(found, classes)
        known = {form(c) for c in classes}
        extra = [n for n in found if form(n) not in known]
        if extra:
            raise DataError(f"labels file {printable(path)}: label(s) {', '.join(map(printable, extra))} not "
                            f"among the expected classes ({shown_classes(classes)})")
        return classes, form
