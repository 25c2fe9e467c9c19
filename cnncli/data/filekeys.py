"""The identity of a data folder's files from their stat: the rows of the dataset cache's digest, one
key per file (the same through every link to it), and the warning for a file that lies in two class
folders. It does not scan folders (scan.py) nor read the files.
"""

from __future__ import annotations

import numpy as np

from .names import printable


def digest_rows(h, head: str, ci: int, rels: list, stats: np.ndarray, chunk: int = 1 << 14) -> None:
    """Feed 'head+rel\0class\0size\0mtime\0inode\0ctime\n' of each file to h, a chunk at a time."""
    for a in range(0, len(rels), chunk):
        rows = stats[a:a + chunk].tolist()
        h.update("".join(f"{head}{rel}\0{ci}\0{size}\0{mtime}\0{ino}\0{ctime}\n"
                         for rel, (size, mtime, ino, ctime) in zip(rels[a:a + chunk], rows))
                 .encode("utf-8", "surrogatepass"))


def file_keys(stats: np.ndarray) -> np.ndarray:
    """(N,4) int64 (size, mtime_ns, inode, ctime_ns) -> (N,) uint64: one file's identity, the same
    for every link to it (a symbolic link's stat is its target's); 0 where it is unknown (a dangling
    link, or no inode numbers, as on some Windows file systems)."""
    s = stats.astype(np.uint64)                                           # (N,4) (-1 wraps: masked below)
    with np.errstate(over="ignore"):
        k = (s[:, 2] * np.uint64(0x9E3779B97F4A7C15)) ^ (s[:, 0] * np.uint64(0xC2B2AE3D27D4EB4F)) \
            ^ s[:, 1] ^ (s[:, 3] << np.uint64(1))
    return np.where(stats[:, 2] > 0, k | np.uint64(1), np.uint64(0))


def shared_files(rels, labels: np.ndarray, keys: np.ndarray) -> list[str]:
    """[a warning naming the files found in two or more class folders through links (one file, two
    labels: each copy counts as its folder's class)], or []. keys (N,) file_keys in rels' order."""
    order = np.argsort(keys, kind="stable")
    k, lab = keys[order], labels[order]
    clash = (k[1:] == k[:-1]) & (k[1:] != 0) & (lab[1:] != lab[:-1])      # (N-1,) neighbours, one file
    if not clash.any():
        return []
    shared = np.unique(k[1:][clash])                                      # the files' keys
    rows = np.flatnonzero(np.isin(keys, shared))                          # their paths, in rels' order
    a = int(rows[0])
    b = next(int(r) for r in rows if keys[r] == keys[a] and labels[r] != labels[a])
    return [f"warning: {len(shared)} file(s) lie in more than one class folder (links to one file), e.g. "
            f"{printable(rels[a])} and {printable(rels[b])}: each copy counts as the class of its folder"]
