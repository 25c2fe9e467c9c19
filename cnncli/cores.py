"""How many cores this process may use: its CPU affinity, capped by a cgroup CPU quota (Docker's
--cpus, a Kubernetes CPU limit, systemd's CPUQuota), as the JVM and Go count them. A leaf module
(the standard library only) that the thread counts of training, decoding and compiling all read.
Not the thread settings themselves (kernels/threads.py, distributed.rank_threads).
"""

from __future__ import annotations

import math
import os
import re


def affinity_cpus() -> tuple:
    """The CPU numbers this process may run on (its CPU affinity; every CPU where the OS does not
    say), sorted, at least one."""
    try:
        cpus = tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cpus = ()
    return cpus or tuple(range(os.cpu_count() or 1))


def host_key() -> tuple:
    """(host name, affinity_cpus()): the ranks that share both share the same cores."""
    import socket

    return socket.gethostname(), affinity_cpus()


def crowded(ranks: list, cores: int) -> str | None:
    """A note when the ranks that share rank 0's cores run more threads than them (`ranks`: every rank's
    (host_key(), threads), rank 0's first; `cores`: rank 0's usable_cores()): at each of a step's
    barriers every thread then waits for the ones that wait for a core."""
    threads = [t for key, t in ranks if key == ranks[0][0]]
    total = sum(threads)
    if total <= cores:
        return None
    advice = (f"at most {cores} rank(s) here, with train.threads 1, run one a core" if len(threads) > cores else
              f"train.threads {cores // len(threads)} (or 0: the cores shared out) runs one a core")
    return (f"{len(threads)} rank(s) run {total} threads on {cores} core(s) here, so threads take turns on the "
            f"cores and every step waits for them; {advice}")


def affinity_cores() -> int:
    """The CPUs this process may run on (its CPU affinity), at least 1."""
    return len(affinity_cpus())


def usable_cores(proc: str = "/proc/self") -> int:
    """The CPUs of this process's affinity, or fewer when a cgroup quota allows less CPU time: the
    quota rounded up (a 1.5-CPU limit runs 2 threads), at least 1. Spinning threads above the quota
    only wait for their turn: the step's barriers then stall every period the quota runs out."""
    cores = affinity_cores()
    limit = cpu_limit(proc)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def quota_text(proc: str = "/proc/self") -> str:
    """" (a cgroup CPU quota of 1.5 CPUs)" when the quota allows fewer cores than the affinity (the
    reason train.threads 0 runs fewer threads than the machine has CPUs), else ""."""
    limit = cpu_limit(proc)
    if limit is None or math.ceil(limit) >= affinity_cores():
        return ""
    return f" (a cgroup CPU quota of {limit:g} CPU{'' if limit == 1 else 's'})"


def cpu_limit(proc: str = "/proc/self") -> float | None:
    """The CPUs' worth of time per period that this process's cgroups allow (cgroup v2's cpu.max,
    v1's cpu.cfs_quota_us / cpu.cfs_period_us), the lowest over its cgroup and the ones above it
    that are mounted; None without a limit or where none can be read (not Linux, no cgroup fs)."""
    try:
        with open(os.path.join(proc, "cgroup"), encoding="utf-8", errors="replace") as f:
            groups = f.read().splitlines()
        with open(os.path.join(proc, "mountinfo"), encoding="utf-8", errors="replace") as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in groups:                                  # "id:controllers:path"
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        v2 = parts[0] == "0" and parts[1] == ""
        if not v2 and "cpu" not in parts[1].split(","):
            continue
        for root, point in _mounts(mounts, v2):
            limits += _walk(point, _inside(parts[2], root), v2)
    return min(limits) if limits else None


def _mounts(lines, v2: bool):
    """(root in the hierarchy, mount point) of each cgroup2 mount, or of each v1 mount with the cpu
    controller, from /proc/self/mountinfo's lines."""
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or len(fields) < dash + 3:
            continue
        fstype = fields[dash + 1]
        options = fields[dash + 3].split(",") if len(fields) > dash + 3 else []
        if (v2 and fstype == "cgroup2") or (not v2 and fstype == "cgroup" and "cpu" in options):
            yield _unescape(fields[3]), _unescape(fields[4])


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (\\040 a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _inside(path: str, root: str) -> str:
    """The process's cgroup path relative to a mount of the hierarchy from root ("" when the mount
    shows only a cgroup that does not hold it, as in a container without a cgroup namespace: its
    own limits are then those of the mount point)."""
    if root == "/":
        return path.strip("/")
    if path == root or path.startswith(root.rstrip("/") + "/"):
        return path[len(root):].strip("/")
    return ""


def _walk(point: str, rel: str, v2: bool) -> list[float]:
    """The limits read in the cgroup point/rel and each folder above it up to point."""
    out = []
    parts = [p for p in rel.split("/") if p and p not in (".", "..")]
    for depth in range(len(parts), -1, -1):
        limit = _read_limit(os.path.join(point, *parts[:depth]), v2)
        if limit is not None:
            out.append(limit)
    return out


def _read_limit(folder: str, v2: bool) -> float | None:
    """One cgroup's CPU limit in CPUs, or None (no limit, no file, unreadable)."""
    try:
        if v2:
            with open(os.path.join(folder, "cpu.max"), encoding="ascii") as f:
                quota, period = (f.read().split() + ["100000"])[:2]
            if quota == "max":
                return None
        else:
            with open(os.path.join(folder, "cpu.cfs_quota_us"), encoding="ascii") as f:
                quota = f.read().strip()
            with open(os.path.join(folder, "cpu.cfs_period_us"), encoding="ascii") as f:
                period = f.read().strip()
        q, p = int(quota), int(period)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return q / p if q > 0 and p > 0 else None
