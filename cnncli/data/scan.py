"""Indexing an image folder: class subfolders, image files (sorted), their stat key, and what could not
be scanned (folders without permission, paths over the OS limit, symlink loops), each with a reason.

It does not open or decode files (decode.py). Names that are not valid UTF-8 keep Python's
surrogateescape form (so the files open); names.printable turns them into a displayable escaped form.
"""

from __future__ import annotations

import errno
import hashlib
import os
from array import array
from collections import Counter

import numpy as np

from ..errors import DataError
from . import foreign
from .decode import IMAGE_EXTENSIONS
from .filekeys import digest_rows, file_keys, shared_files
from .names import form_twins, matching_form, printable, shown_classes, spelled
from .pathlist import PathList
from .reasons import LINK_LOOP, missing_hint

# folders that systems, not users, put among images (hidden (dot) folders are ignored as well): macOS
# zip debris; Synology's thumbnails (a copy of every image), recycle bin and snapshots; QNAP's bin;
# Windows' bin and volume data; a filesystem's lost+found
IGNORED_DIRS = {"__MACOSX", "@eaDir", "#recycle", "#snapshot", "@Recycle", "$RECYCLE.BIN",
                "System Volume Information", "lost+found"}
OS_DEBRIS = {"thumbs.db", "desktop.ini", "ehthumbs.db"}   # files an OS leaves, not counted as ignored


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _has_image_ext(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _reason(e: OSError) -> str:
    return f"cannot scan folder ({e.strerror or e})"


def _add_entry(e, rel_dir: str, out: list, st_all, stack: list, bad, ignored) -> None:
    """One scandir entry: a folder goes on `stack`, an image file's rel path to `out` (and its
    (size, mtime_ns, inode, ctime_ns) to st_all), an unreadable entry to `bad`, another file's
    extension to the Counter `ignored` (OS debris left out)."""
    name = e.name
    if name[0] == "." or name in IGNORED_DIRS:
        return
    rel = rel_dir + name
    try:
        is_dir = e.is_dir()
    except OSError as err:                             # symlink loop, name too long, ...
        if bad is not None and err.errno == errno.ELOOP and e.is_symlink():    # (a file's name: no "/")
            bad.append((rel, LINK_LOOP))
        elif bad is not None:
            bad.append((rel + "/", _reason(err)))
        return
    if is_dir:
        stack.append((rel + "/", e.path))
    elif "." in name and "." + name.rpartition(".")[2].lower() in IMAGE_EXTENSIONS:
        out.append(rel)
        if st_all is not None:
            try:
                st = e.stat()
                st_all.extend((st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
            except OSError:                            # dangling symlink: the decoder reports it
                st_all.extend((-1, -1, -1, -1))
    elif ignored is not None and e.is_symlink() and not os.path.exists(e.path):
        ignored["(broken link)"] += 1                  # (not a file of no extension: what it is)
    elif ignored is not None and name.lower() not in OS_DEBRIS:
        ignored["." + name.rpartition(".")[2].lower() if "." in name else "(no extension)"] += 1


UP_LINK = "a link to the data folder or a folder above it: not followed (it would read every class again)"
BROKEN_LINK = "broken symbolic link (what it points to does not exist): a class folder moved away?"


def _scan_images(top: str, bad: list | None = None, stats: list | None = None, ignored=None,
                 fence: str | None = None, fence_is_top: bool = False) -> list[str]:
    """Relative paths (with '/') of every non-hidden image file under top, recursively, sorted.
    Follows symlinked folders, each real folder once (no loops), but none that is the folder `fence`
    (the data folder, real path) or holds it: a class folder's link to .. would read the other
    classes as its own (such a folder goes to `bad`, UP_LINK); fence_is_top: `fence` is top itself
    (cnn predict's folder), which is listed. Folders that cannot be listed go to
    `bad` as (relative path + '/', reason). With `stats` (a list), stats[0] becomes an (N,4) int64
    array of (size, mtime_ns, inode, ctime_ns) in the same order (-1s for a dangling symlink).
    With `ignored` (a Counter), the other files are counted by extension."""
    out: list[str] = []
    st_all = array("q")                                # 4 numbers a file, not a tuple of Python ints
    seen: set[str] = set()
    stack = [("", top)]
    while stack:
        rel_dir, full_dir = stack.pop()
        real = os.path.realpath(full_dir)
        if fence is not None and (rel_dir or not fence_is_top) and (fence == real
                                                                  or fence.startswith(os.path.join(real, ""))):
            if bad is not None:                        # (each such link named)
                bad.append((rel_dir, UP_LINK))
            continue
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(full_dir) as it:           # one entry at a time: no list of DirEntry objects
                for e in it:
                    _add_entry(e, rel_dir, out, st_all if stats is not None else None, stack, bad, ignored)
        except OSError as e:
            if bad is not None:
                bad.append((rel_dir, _reason(e)))
            continue
    order = sorted(range(len(out)), key=out.__getitem__)   # paths are unique: as sorting the tuples
    if stats is not None:
        table = np.frombuffer(st_all, dtype=np.int64).reshape(-1, 4) if out else np.zeros((0, 4), np.int64)
        stats.append(table[np.asarray(order, dtype=np.int64)])    # (N,4)
    if bad is not None:
        bad.sort()
    return [out[i] for i in order]


def list_images(path) -> list[str]:
    """A file (or any other entry but a folder) -> [path]; a folder -> every accepted, non-hidden image
    file under it, sorted."""
    return list_images_and_bad(path)[0]


def list_images_and_bad(path, ignored=None) -> tuple[list[str], list[tuple[str, str]]]:
    """Like list_images, plus [(folder path, reason)] of subfolders that could not be scanned. With
    `ignored` (a Counter), a folder's files of other extensions are counted by extension."""
    path = os.fspath(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        return [path], []             # a file, or a FIFO, device or broken link: its decode says which
    if not os.path.isdir(path):
        raise DataError(f"{printable(path)}: no such file or folder{missing_hint(path)}")
    prefix = os.path.join(path, "")
    bad: list = []
    files = [prefix + rel for rel in _scan_images(path, bad, ignored=ignored, fence=os.path.realpath(path),
                                                  fence_is_top=True)]
    ups = sum(why == UP_LINK for _, why in bad) if ignored is not None else 0
    if ups:                                            # (a link back up: not followed, a note rather than a failure)
        ignored[UP_LINKS] += ups
    return files, [(printable(prefix + rel), why) for rel, why in bad if ignored is None or why != UP_LINK]


def _check_root(root: str) -> list[str]:
    if not os.path.exists(root):
        raise DataError(f"data folder {printable(root)}: does not exist{missing_hint(root, root=True)}")
    if not os.path.isdir(root):
        raise DataError(f"data folder {printable(root)}: is not a folder (give the folder of class subfolders, "
                        "or a labels CSV ending in .csv, .tsv or .txt)")
    try:
        entries = sorted(os.listdir(root))
    except OSError as e:
        raise DataError(f"data folder {printable(root)}: cannot be read ({e.strerror or e})") from None
    return [e for e in entries if not _is_hidden(e) and e not in IGNORED_DIRS
            and os.path.isdir(os.path.join(root, e))]


def _match_classes(root: str, found: list, classes, missing_ok: bool) -> tuple[list, list]:
    """(the classes in their order, the folder of each: found's name, None when missing_ok and absent).
    Names match in composed form (same_form) unless two of either list differ only in form."""
    if classes is None:
        return found, found
    classes = [str(c) for c in classes]
    form = matching_form(found, classes)
    folder = {form(f): f for f in found}
    wanted = {form(c) for c in classes}
    missing = [] if missing_ok else sorted(c for c in classes if form(c) not in folder)
    extra = sorted(f for f in found if form(f) not in wanted)
    present = {c for c in classes if form(c) in folder}
    if missing_ok and extra:                           # (Cat for cat: the names the folder may use)
        raise DataError(f"data folder {printable(root)}: class folder(s) {shown_classes(extra)}"
                        f"{f' ({len(extra)} in all)' if len(extra) > 20 else ''} not among the expected classes "
                        f"({shown_classes(classes)}){_case_hint(extra, classes, present) or _loose_hint(root)}")
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {shown_classes(missing)}")
        if extra:
            parts.append(f"extra {shown_classes(extra)}")
        hint = (_case_hint(extra, classes, present) or _loose_hint(root)) if extra else ""
        raise DataError(f"data folder {printable(root)}: classes do not match the expected ones "
                        f"({'; '.join(parts)}){hint}")
    return classes, [folder.get(form(c)) for c in classes]


def _case_hint(extra: list, classes: list, present=()) -> str:
    """For class folders no class matches: when one is a class's name in other case (Circle for
    circle), a hint naming both (names are matched exactly: Cat and cat can be two classes): rename
    it, or, when the class's own folder is there too (`present`), move its images."""
    by_case = {c.casefold(): c for c in classes}
    pairs = [(f, by_case[f.casefold()]) for f in extra if f.casefold() in by_case]
    hints = []
    rename = [(f, c) for f, c in pairs if c not in present]
    if rename:
        shown = ", ".join(f"{printable(f)} for {printable(c)}" for f, c in rename[:3])
        hints.append(f"{shown}: class names match exactly, case too: rename the folder{'s' if len(rename) > 1 else ''}")
    beside = [(f, c) for f, c in pairs if c in present]
    if beside:
        shown = ", ".join(f"{printable(f)} beside {printable(c)}" for f, c in beside[:3])
        hints.append(f"{shown}: class names match exactly, case too, so "
                     + (f"{printable(beside[0][0])} is no class: move its images into {printable(beside[0][1])}"
                        if len(beside) == 1 else "those folders are no classes: move their images into the "
                        "class's folder") + " or out of the data folder")
    return "".join(f"; {h}" for h in hints)


def _only_in_subfolders(rels: list) -> list:
    """The first-level subfolders of a class folder's files (rels, "sub/name.png"), or [] when any
    file lies in the class folder itself."""
    subs = {}
    for rel in rels:
        head, sep, _ = rel.partition("/")
        if not sep:
            return []
        subs[head] = None
    return list(subs)


def _twins_warning(root: str, classes) -> list[str]:
    """[a warning per group of class folders whose names differ only in Unicode form]: they are
    separate classes (names compare exactly then, names.matching_form) that print alike."""
    return [f"warning: the class folders {' and '.join(spelled(n) for n in group)} of {printable(root)} are one "
            "name in two Unicode forms (composed, and decomposed as macOS writes names): separate classes that "
            "print alike; merge them into one folder if they are one class" for group in form_twins(classes)]


def _nested_warning(root: str, nested: list) -> list[str]:
    """[the warning for class folders that each hold their images only in 2+ subfolders]: nested
    [(class folder, its subfolders)], as when data.train names the folder above the class folders."""
    name, subs = nested[0]
    shown = ", ".join(map(printable, subs[:5])) + (", ..." if len(subs) > 5 else "")
    return [f"warning: the class folders of {printable(root)} ({shown_classes([n for n, _ in nested])}) hold "
            f"their images only in subfolders ({printable(name)}: {shown}): if those subfolders are the "
            f"classes, give {printable(os.path.join(root, name))} instead"]


def _by_count(counter) -> list:
    """A Counter's (key, count) items, the most frequent first, ties by key (not scan order)."""
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


UP_LINKS = "(link to this folder or one above)"     # list_images_and_bad's count of UP_LINK folders


def ignored_note(ignored) -> str:
    """The note on the files a scan left out for their extension (a Counter by extension), and on
    the links to a folder above that it did not follow (UP_LINKS), a line each."""
    ups, ignored = ignored.get(UP_LINKS, 0), Counter({k: n for k, n in ignored.items() if k != UP_LINKS})
    kinds = ", ".join(f"{printable(ext)}: {n}" for ext, n in _by_count(ignored)[:5])
    more = ", ..." if len(ignored) > 5 else ""
    lines = [f"note: {sum(ignored.values())} file(s) with other extensions were not read ({kinds}{more})"
             f"{foreign.extensions_note(ignored)}"] if ignored else []
    if ups:
        lines.append(f"note: {ups} link(s) to the folder or a folder above it were not followed (they would "
                     "read its images again)")
    return "\n".join(lines)


def _loose_hint(root: str) -> str:
    """For a root with too few class folders (or a subfolder of no class): when it holds a run's
    checkpoint, a hint that it is a run folder; when it holds image files itself, a hint that it may
    be a class folder (data.train one level too low)."""
    run = [n for n in ("best.npz", "last.npz") if os.path.isfile(os.path.join(root, n))]
    if run:
        return f"; it is a run folder (it holds {run[0]}): give the folder of the images' class folders"
    try:
        n = len(_loose_images(root))
    except OSError:
        return ""
    return f"; it holds {n} image file(s) itself: if it is a class folder, give the folder above it" if n else ""


def _broken_links(root: str) -> list[str]:
    """The names of the data folder's symbolic links that lead nowhere and are named as a folder is
    (no extension: a class folder moved away; README.md's link is no class)."""
    try:
        return sorted(e.name for e in os.scandir(root) if not _is_hidden(e.name) and "." not in e.name
                      and e.is_symlink() and not os.path.exists(e.path))
    except OSError:
        return []


def _loose_images(root: str) -> list[str]:
    """The names of the image files that lie in root itself (not in a class folder), sorted."""
    return [n for n in sorted(os.listdir(root)) if not _is_hidden(n) and _has_image_ext(n)
            and os.path.isfile(os.path.join(root, n))]


def _wrapper_hint(root: str, only: str) -> str:
    """For a root with one class folder that holds 2+ folders itself (an archive's wrapper folder):
    a hint to give that folder instead."""
    try:
        subs = [e.name for e in os.scandir(os.path.join(root, only)) if e.is_dir() and not _is_hidden(e.name)
                and e.name not in IGNORED_DIRS]
    except OSError:
        return ""
    return f"; if the {len(subs)} folders in {printable(only)} are the classes, give " \
           f"{printable(os.path.join(root, only))} instead" if len(subs) >= 2 else ""


def _unread_text(other) -> str:
    """' (it holds 3 .heic file(s), which are not read)' for a class folder's files of other extensions."""
    if not other:
        return ""
    kinds = ", ".join(f"{n} {printable(ext)}" for ext, n in _by_count(other)[:3])
    return f" (it holds {kinds} file(s), which are not read)"


class Index:
    """What scanning a class-per-subfolder root found: classes, rel paths ('class/sub/name.png') with
    labels, the stat digest of the cache key, loose root-level images and unscannable folders.
    missing_ok (with classes): a class without a subfolder, or with no images in it, has none here
    (cnn eval of a folder that holds some of a model's classes); a subfolder of no class is refused."""

    what = "data folder"

    def __init__(self, root: str, classes=None, missing_ok: bool = False):
        found = _check_root(root)
        if not found:
            raise DataError(f"data folder {printable(root)}: has no class subfolders (expected one "
                            f"subfolder of images per class, e.g. {os.path.join(root, 'cat')}){_loose_hint(root)}")
        self.classes, folders = _match_classes(root, found, classes, missing_ok and classes is not None)
        self.missing_ok = missing_ok
        if len(self.classes) < 2:
            raise DataError(f"data folder {printable(root)}: has only one class "
                            f"({printable(self.classes[0])}); need at least 2"
                            f"{_loose_hint(root) or _wrapper_hint(root, folders[0])}")
        h = hashlib.sha256()
        self.rels, counts, self.bad, self.ignored = PathList(), [], [], Counter()
        self.unread = {}    # class index -> Counter of the extensions of its files when none is an image
        nested = []         # [(class folder, its subfolders)] while each holds its images only in 2+ subfolders
        keys = []           # [(n,) uint64] each class's files' identities (filekeys.file_keys)
        for ci, name in enumerate(folders):
            if name is None:                           # missing_ok: no folder of this class
                counts.append(0)
                continue
            head, bad, stats, other = name + "/", [], [], Counter()
            found_files = _scan_images(os.path.join(root, name), bad, stats, other, fence=os.path.realpath(root))
            self.ignored.update(other)
            if not found_files and other:
                self.unread[ci] = other
            digest_rows(h, head, ci, found_files, stats[0])
            keys.append(file_keys(stats[0]))
            self.rels.extend(head + rel for rel in found_files)
            counts.append(len(found_files))
            if found_files and nested is not None:
                subs = _only_in_subfolders(found_files)
                if len(subs) >= 2:
                    nested.append((name, subs))
                else:
                    nested = None
            self.bad.extend((head + rel, why) for rel, why in bad)
            del found_files, stats
        self.labels = np.repeat(np.arange(len(self.classes), dtype=np.int64), counts)   # (N,)
        self.keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)   # (N,) each file's identity
        self.shared = shared_files(self.rels, self.labels, self.keys)
        self.loose = _loose_images(root)
        self.bad.extend((name + "/", BROKEN_LINK) for name in _broken_links(root))
        h.update(repr(self.loose).encode("utf-8", "surrogatepass"))
        self.digest = h.hexdigest()
        self._check(root, counts)
        self.nested = _nested_warning(root, nested) if nested and classes is None else []
        self.twins = _twins_warning(root, self.classes) if classes is None else []

    def notes(self) -> list[str]:
        """[a warning when every class folder holds its images only in subfolders (the folder above
        the classes given?), one when a file lies in two class folders through links, a note counting
        the files with extensions that are not read]: the ones that apply."""
        return self.twins + self.nested + self.shared + ([ignored_note(self.ignored)] if self.ignored else [])

    def _check(self, root, counts):
        if not self.rels:
            raise DataError(f"data folder {printable(root)}: contains no image files "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))}){_unread_text(self.ignored)}")
        empty = [printable(self.classes[i]) + _unread_text(self.unread.get(i)) for i in range(len(self.classes))
                 if counts[i] == 0]
        if empty and not self.missing_ok:
            why = "".join(f"; {printable(p)}: {r}" for p, r in self.bad)
            raise DataError(f"data folder {printable(root)}: class folder(s) with no image files: "
                            f"{', '.join(empty)}{why}; every class folder needs an image: add some, or move "
                            f"{'that folder' if len(empty) == 1 else 'those folders'} out of {printable(root)}"
                            f"{_loose_hint(root)}")
