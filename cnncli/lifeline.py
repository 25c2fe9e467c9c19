"""Worker processes that end with the process that started them: the initializer of a process
pool's workers (decoding, the demo's rendering), so a parent killed mid-job (SIGKILL, SIGTERM)
leaves no worker behind holding its locks or its pipes. Linux only (PR_SET_PDEATHSIG); elsewhere
it does nothing. Not a pool; it starts nothing.
"""

from __future__ import annotations

import os


def die_with_parent(parent: int) -> None:
    """In a worker whose parent has pid `parent`: ask the kernel for SIGKILL when the parent dies,
    and exit now if it died already (before the request could be made)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)    # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)
