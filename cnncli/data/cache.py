"""The decoded-dataset cache: per folder and settings, a raw uint8 .npy of the usable images (opened
memory-mapped) and a small JSON index, written by atomic rename under a per-slot lock file. It does
not decide what to decode (dataset.py) and never raises on a broken or unwritable cache.
"""

# The decoded-dataset cache: per folder and settings, a raw uint8 .npy of the usable images (opened
# memory-mapped, so a cached load reads at disk/page-cache speed) and a small JSON index (key, skipped
# files with reasons). Files appear by atomic rename under a per-slot lock file (fcntl.flock), so
# processes racing on one folder (MPI ranks) decode it once and never read a partial file.
#
# It does not decide what to decode (dataset.py) and never raises on a broken or unwritable cache.

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import time

import numpy as np

from ..atomic import why_unwritten

CACHE_FORMAT_VERSION = 7         # bump when decoding/resizing/the key changes what pixels come out


def cache_dir() -> str:
    """$CNNCLI_CACHE_DIR, else $XDG_CACHE_HOME/cnncli, else ~/.cache/cnncli. A leading ~ is the home
    folder (a .env file or a systemd unit passes it unexpanded: a folder named ~ would be made); a
    relative XDG_CACHE_HOME is ignored, as the XDG spec says."""
    d = os.environ.get("CNNCLI_CACHE_DIR")
    if d:
        return os.path.expanduser(d)
    xdg = os.path.expanduser(os.environ.get("XDG_CACHE_HOME") or "")
    return os.path.join(xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache"), "cnncli")


def cache_names(root, classes, digest, image_size, resize, max_pixels) -> tuple[str, str]:
    """-> (slot path without extension, key). The slot is one folder+settings; the key adds every
    file's (path, size, mtime_ns, inode, ctime_ns), so a rewritten file (even with a restored mtime)
    misses."""
    settings = {"v": CACHE_FORMAT_VERSION, "root": os.path.abspath(root), "size": image_size,
                "resize": resize, "max_pixels": max_pixels, "classes": classes}
    text = json.dumps(settings, sort_keys=True).encode("utf-8", "surrogatepass")
    slot = hashlib.sha256(text).hexdigest()[:32]
    key = hashlib.sha256(text + digest.encode()).hexdigest()
    return os.path.join(cache_dir(), f"dataset-{slot}"), key


def read(slot: str, key: str, image_size: int, n_entries: int):
    """-> (images (K,S,S) uint8 memory-mapped copy-on-write, [(entry index, reason)]) or None."""
    try:
        with open(slot + ".json", encoding="utf-8") as f:
            index = json.load(f)
        if index.get("v") != CACHE_FORMAT_VERSION or index.get("key") != key:
            return None
        skipped = [(int(i), str(r)) for i, r in index["skipped"]]
        idx = [i for i, _ in skipped]
        if idx != sorted(set(idx)) or (idx and (idx[0] < 0 or idx[-1] >= n_entries)):
            return None
        images = np.load(f"{slot}-{key[:16]}.npy", mmap_mode="c", allow_pickle=False)
        if images.dtype != np.uint8 or images.shape != (n_entries - len(skipped), image_size, image_size):
            return None
        return np.asarray(images), skipped            # plain ndarray view; the mapping stays alive
    except Exception:                              # noqa: BLE001 - absent/stale/corrupt: rebuild
        return None


_HELD = set()        # the lock fds this process holds; decode workers forked meanwhile close their copies


@contextlib.contextmanager
def locked(slot: str, waiting=None, gave_up=None):
    """Hold an exclusive lock on `slot` (no-op where locking or the folder is not possible); the
    holder's pid is written in the lock file. waiting(pid or None): called once when another process
    holds it, before this one waits for it. Yields True while this process holds the lock (or none
    can be had), False when it stopped waiting because the holder is stopped (SIGSTOP, Ctrl-Z: it
    would never go on; gave_up(pid) is called): the caller then works without the cache."""
    fd, owned = None, True
    try:
        os.makedirs(os.path.dirname(slot), exist_ok=True)
        fd = os.open(slot + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting(_holder(fd))
            owned = _wait_for_lock(fd, fcntl, gave_up)
        if owned:
            _mark_holder(fd)
    except (OSError, ImportError):
        pass
    if fd is not None and owned:
        _HELD.add(fd)
    try:
        yield owned
    finally:
        if fd is not None:
            _HELD.discard(fd)
            os.close(fd)                               # releases the flock


def _wait_for_lock(fd: int, fcntl, gave_up) -> bool:
    """Wait until the lock on fd is this process's (True), or its holder is stopped (False)."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        pid = _holder(fd)
        if pid is not None and _stopped(pid):
            if gave_up is not None:
                gave_up(pid)
            return False
        time.sleep(0.1)


def _mark_holder(fd: int) -> None:
    """Write this process's pid into the lock file it now holds (for a waiter's message)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)


def _holder(fd: int) -> int | None:
    """The pid the lock file's holder wrote, or None (an older writer, or none yet)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeError):
        return None
    return int(text) if text.isdigit() and int(text) != os.getpid() else None


def _stopped(pid: int) -> bool:
    """Whether process pid is stopped (state T or t in /proc; False where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] in (b"T", b"t")


def miss_reason(slot: str, key: str) -> str | None:
    """Why read() found no usable dataset for `key` in `slot`: "out of date" (it holds another key's:
    the folder's files changed since), "damaged" (its files cannot be read), or None (never cached)."""
    if not os.path.exists(slot + ".json"):
        return None
    try:
        with open(slot + ".json", encoding="utf-8") as f:
            return "out of date" if json.load(f).get("key") != key else "damaged"
    except Exception:                              # noqa: BLE001 - unreadable: damaged
        return "damaged"


def close_inherited_locks() -> None:
    """In a forked child: close its copies of the parent's lock fds. The lock stays the parent's
    (an flock goes when every copy is closed), so a child that outlives a killed parent holds none."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


def _atomic(path: str, write) -> None:
    tmp = f"{os.path.dirname(path)}/.tmp-{os.path.basename(path)}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def read_previous(slot: str, image_size: int):
    """The slot's entry for an older key, with its files' identities -> (images (K,S,S) uint8 memory-mapped,
    [(entry index, reason)], ids (N,) uint64: filekeys.file_keys of each entry) or None (none, damaged, or
    written without identities): what an out-of-date load takes unchanged files' pixels from."""
    try:
        with open(slot + ".json", encoding="utf-8") as f:
            index = json.load(f)
        if index.get("v") != CACHE_FORMAT_VERSION or not isinstance(index.get("key"), str):
            return None
        skipped = [(int(i), str(r)) for i, r in index["skipped"]]
        base = f"{slot}-{index['key'][:16]}"
        images = np.load(base + ".npy", mmap_mode="r", allow_pickle=False)
        ids = np.load(base + "-ids.npy", allow_pickle=False)
        idx = [i for i, _ in skipped]
        n = images.shape[0] + len(skipped) if images.ndim == 3 else -1
        if (images.dtype != np.uint8 or images.shape[1:] != (image_size, image_size) or ids.dtype != np.uint64
                or ids.shape != (n,) or idx != sorted(set(idx)) or (idx and (idx[0] < 0 or idx[-1] >= n))):
            return None
        return images, skipped, ids
    except Exception:                              # noqa: BLE001 - absent/stale/corrupt: decode them all
        return None


def write(slot: str, key: str, images: np.ndarray, skipped, ids=None) -> str | None:
    """Store images and the skipped list for `key` (call inside `locked(slot)`), and with ids ((N,)
    uint64, each entry's file identity) those, for read_previous. Removes this slot's
    files of other keys first (out of date: on a nearly full disk they would keep the space the new
    one needs) and temporary files of killed writers (this slot's, and any other's whose writer is
    gone). A failure leaves no cache and returns why ("/path: Permission denied"); None when stored."""
    folder, base = os.path.dirname(slot), os.path.basename(slot)
    try:
        os.makedirs(folder, exist_ok=True)
        npy = f"{slot}-{key[:16]}.npy"
        for name in os.listdir(folder):              # under the lock, any tmp of this slot is debris
            if (name.startswith(f".tmp-{base}") or name.startswith(".tmp-dataset-") and _writer_gone(name)
                    or name.startswith(base + "-") and name.endswith(".npy")
                    and name not in (os.path.basename(npy), os.path.basename(npy)[:-4] + "-ids.npy")):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
        _atomic(npy, lambda f: np.lib.format.write_array(f, np.ascontiguousarray(images), allow_pickle=False))
        if ids is not None:                          # (before the index: an index names complete files)
            _atomic(f"{slot}-{key[:16]}-ids.npy", lambda f: np.lib.format.write_array(
                f, np.ascontiguousarray(ids, dtype=np.uint64), allow_pickle=False))
        index = {"v": CACHE_FORMAT_VERSION, "key": key, "skipped": [[i, r] for i, r in skipped]}
        _atomic(slot + ".json", lambda f: f.write(json.dumps(index).encode("utf-8", "surrogateescape")))
    except OSError as err:                            # read-only home, full disk: just no cache
        if os.path.exists(folder) and not os.path.isdir(folder):
            return f"{folder}: is not a folder"
        return f"{folder}: {why_unwritten(err, err.filename or folder, todo=False)}"   # (the note says what to do)
    except (ValueError, UnicodeError) as err:
        return str(err)
    return None


def _writer_gone(name: str) -> bool:
    """A temporary file `.tmp-NAME-PID-HEX` (_atomic's) whose writer PID is no longer running."""
    parts = name.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:                                  # alive (another user's), or cannot tell
        return False
    return False


# the names cache_names and the writers give (a slot of 32 hex digits, a key's 16): no other file of a
# folder CNNCLI_CACHE_DIR names is listed or cleared (a user's dataset-2024.json was deleted)
_OURS = re.compile(r"dataset-[0-9a-f]{32}(\.json|\.lock|-[0-9a-f]{16}(-ids)?\.npy)|\.tmp-dataset-[0-9a-f]{32}.*")


def _dataset_files(folder: str) -> list[str]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [os.path.join(folder, n) for n in names if _OURS.fullmatch(n)]


def info() -> tuple[str, int, int]:
    """-> (cache folder, number of cached datasets, bytes of dataset cache files)."""
    files = _dataset_files(cache_dir())
    size = 0
    for p in files:
        with contextlib.suppress(OSError):
            size += os.path.getsize(p)
    return cache_dir(), sum(p.endswith(".json") for p in files), size


def clear() -> tuple[int, int, list]:
    """Delete every dataset cache file (not the demo dataset) -> (datasets removed, bytes freed,
    [(file, why)] of those that could not be deleted). Lock files stay (a few bytes: a run may be
    holding one while it decodes, and a new file in its place would let a second run decode at
    once), as do temporary files of writers still running."""
    removed, freed, failed = 0, 0, []
    for p in _dataset_files(cache_dir()):
        name = os.path.basename(p)
        if name.endswith(".lock") or name.startswith(".tmp-") and not _writer_gone(name):
            continue
        try:
            size = os.path.getsize(p)
            os.unlink(p)
        except FileNotFoundError:
            continue
        except OSError as err:
            failed.append((p, err.strerror or str(err)))
            continue
        freed += size
        removed += name.endswith(".json")
    return removed, freed, failed
