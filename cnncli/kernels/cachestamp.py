"""numba's on-disk cache of cnncli's kernels, stamped with every numba source file of the package
rather than a kernel's own file only. Not a cache of its own: numba's locators still choose the
folder (NUMBA_CACHE_DIR, the package's __pycache__, else the per-user cache).
"""

# numba's on-disk cache of cnncli's kernels, stamped with every numba source file of the package
# rather than a kernel's own file only: numba keys a cached kernel on its own file's hash, so a kernel
# that inlines another file's kernels (bnstep.py: bnpool.py, fc.py, ...) kept running the old code
# after that other file changed (an upgrade over an old cache, a git pull into an editable install).
# Not a cache of its own: numba's locators still choose the folder (NUMBA_CACHE_DIR, the package's
# __pycache__, else the per-user cache); kernels/__init__.py installs it before any kernel is defined.

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import re
import shutil
import stat
import tempfile

from numba.core import caching
from numba.core import config as numba_config

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the cnncli folder
# a line that decorates a function numba compiles (the files holding one are numba's sources)
_NUMBA_CODE = re.compile(rb"^[ \t]*@(?:numba\.)?(?:njit|jit|intrinsic|overload\w*|register_jitable|vectorize|guvectorize|cfunc)\b",
                         re.MULTILINE)


def _numba_files(package: str):
    """(path, contents) of the package's .py files that hold numba code (a numba decorator), sorted."""
    for root, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    text = f.read()
                if _NUMBA_CODE.search(text):
                    yield path, text


def numba_sources(package: str = PACKAGE) -> list[str]:
    """The package's .py files that hold numba code (a numba decorator), sorted."""
    return [path for path, _ in _numba_files(package)]


def fingerprint(package: str = PACKAGE) -> str:
    """sha256 over the relative path and contents of every numba source file of the package."""
    h = hashlib.sha256()
    for path, text in _numba_files(package):
        h.update(os.path.relpath(path, package).encode() + b"\0" + hashlib.sha256(text).digest())
    return h.hexdigest()


# numba's list of locator classes lives on CacheImpl (_CacheImpl in older releases)
_IMPL = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)


@functools.lru_cache(maxsize=None)
def _package_stamp() -> str:
    return fingerprint()


class PackageStampLocator(caching._CacheLocator):
    """numba's own locator for a cnncli function (the first that accepts it), with the package's
    fingerprint added to its source stamp: any numba file's change makes every cached kernel of
    the package stale, so numba compiles it again and overwrites the entry. So does a NUMBA_OPT other
    than numba's default 3, in both directions."""

    def __init__(self, inner):
        self._inner = inner
        self._py_file = getattr(inner, "_py_file", None)         # numba's warnings read it

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    def get_source_stamp(self):
        stamp = ("cnncli", _package_stamp(), self._inner.get_source_stamp())
        opt = str(numba_config.OPT)          # (kernels NUMBA_OPT=0 compiled are not loaded by a default run)
        return stamp if opt == "3" else stamp + (f"NUMBA_OPT={opt}",)

    @classmethod
    def from_function(cls, py_func, py_file):
        try:
            if os.path.commonpath([PACKAGE, os.path.abspath(py_file)]) != PACKAGE:
                return None
        except ValueError:                                        # another drive
            return None
        for other in _IMPL._locator_classes + [TempFolderLocator]:
            if other is not cls:
                inner = other.from_function(py_func, py_file)
                if inner is not None:
                    _chosen(inner)
                    return cls(inner)
        return None


class TempFolderLocator(caching.UserWideCacheLocator):
    """The last resort when none of the folders numba would choose can be written (NUMBA_CACHE_DIR,
    the package's __pycache__, the per-user cache: a system-wide install run with a read-only
    home): a per-user folder under the system's temporary folder, which later runs find again while
    it lasts."""

    def __init__(self, py_func, py_file):
        super().__init__(py_func, py_file)
        self._cache_path = os.path.join(temp_root(), self.get_suitable_cache_subpath(py_file))


TEMP_ROOT = os.path.join(tempfile.gettempdir(), f"cnncli-numba-{getattr(os, 'getuid', lambda: 'user')()}")
_ROOT: list = []           # the folder temp_root() chose, and why TEMP_ROOT was not it ('' when it is)
_NOTES: list = []          # the note fallback_note() gives, set when the first kernel's folder is chosen


def temp_root() -> str:
    """TEMP_ROOT, made for this user alone (mode 700), when it is a folder of this user's that no one
    else may write: numba loads a cache's index with pickle, so a folder someone else made or can
    write could run their code here. Otherwise a private folder (mkdtemp) for this run, handed to
    the processes it spawns (the pre-compile workers) and deleted when it ends."""
    if not _ROOT:
        try:
            os.makedirs(TEMP_ROOT, mode=0o700, exist_ok=True)
            why = _not_private(TEMP_ROOT)
        except OSError as err:
            why = f"cannot be made ({err.strerror or err})"
        if not why:
            _ROOT.extend([TEMP_ROOT, ""])
        elif os.environ.get(_PRIVATE) and os.path.isdir(os.environ[_PRIVATE]) \
                and not _not_private(os.environ[_PRIVATE]):
            _ROOT.extend([os.environ[_PRIVATE], why])                  # (a pre-compile worker: its run's)
        else:
            private = tempfile.mkdtemp(prefix="cnncli-numba-")
            os.environ[_PRIVATE] = private
            atexit.register(shutil.rmtree, private, True)
            _ROOT.extend([private, why])
    return _ROOT[0]


_PRIVATE = "CNNCLI_PRIVATE_NUMBA_CACHE"     # a run's private kernel folder, for the processes it spawns


def _not_private(folder: str) -> str:
    """Why `folder` is not a folder of this user's alone ('' when it is)."""
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder (a symlink?)"
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        return "is not this user's alone (its owner, or who may write it)"
    return ""


def _chosen(locator) -> None:
    """Remember, once, when the kernels' cache is not where the user asked (NUMBA_CACHE_DIR) or
    went to the temporary folder."""
    if _NOTES:
        return
    asked = os.environ.get("NUMBA_CACHE_DIR")
    where = locator.get_cache_path()
    if isinstance(locator, TempFolderLocator):
        root, why = _ROOT
        where = (f"they are cached in {root} while it lasts" if not why else
                 f"{TEMP_ROOT} {why}, so they are compiled into {root} for this run only")
        _NOTES.append("note: no folder numba would cache the kernels in can be written ("
                      + ("NUMBA_CACHE_DIR, " if asked else "") + "the package's __pycache__, the per-user cache); "
                      f"{where} (NUMBA_CACHE_DIR=FOLDER chooses another)")
    elif asked and not isinstance(locator, caching.UserProvidedCacheLocator):
        _NOTES.append(f"note: NUMBA_CACHE_DIR={asked} cannot be written; numba caches the kernels elsewhere "
                      f"({where}, ...)")
    else:
        _NOTES.append("")


def fallback_note() -> str:
    """The one-line note when the kernels' cache folder is not the one asked for ('' otherwise)."""
    return _NOTES[0] if _NOTES else ""


def install() -> None:
    """Put PackageStampLocator first in numba's locator list (once; where a numba release keeps no
    such list, its own stamps stay)."""
    classes = getattr(_IMPL, "_locator_classes", None)
    if isinstance(classes, list) and PackageStampLocator not in classes:
        classes.insert(0, PackageStampLocator)
