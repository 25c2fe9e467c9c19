"""kernels/cachestamp.py: numba's on-disk cache of a kernel goes stale when any numba source file of
the package changes, not only the kernel's own file. On a copy of the package in a temporary folder,
in fresh processes with their own NUMBA_CACHE_DIR; the kernel compiled is loss.py's small
sigmoid_bce_into, which inlines activation.py's logistic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cnncli.kernels import cachestamp

PACKAGE = Path(cachestamp.PACKAGE)

CHILD = """
import json, numpy as np
from cnncli.kernels import loss
z = np.zeros((2, 3)); probs = np.empty((2, 3)); dz = np.empty((2, 3))
loss.sigmoid_bce_into(z, np.zeros(2, np.int64), np.ones(2), 0.5, probs, dz)
s = loss.sigmoid_bce_into.stats
print(json.dumps({"hits": sum(s.cache_hits.values()), "misses": sum(s.cache_misses.values()),
                  "p": float(probs[0, 0]), "file": loss.__file__}))
"""


def _copy(tmp_path) -> Path:
    root = tmp_path / "src"
    shutil.copytree(PACKAGE, root / "cnncli", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _run(root, cache):
    env = dict(os.environ, PYTHONPATH=str(root), NUMBA_CACHE_DIR=str(cache))
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, cwd=root)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(root)), out          # the copy ran, not the checkout
    return out


def _edit(path: Path, old: str, new: str):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _append(path: Path, line: str):
    path.write_text(path.read_text() + line)


def test_fingerprint_covers_the_numba_files_only(tmp_path):
    root = _copy(tmp_path)
    pkg = str(root / "cnncli")
    names = {os.path.relpath(p, pkg) for p in cachestamp.numba_sources(pkg)}
    assert {"kernels/bnstep.py", "kernels/simd.py", "augment.py"} <= names
    assert not names & {"cli.py", "kernels/checks.py", "kernels/cachestamp.py"}
    before = cachestamp.fingerprint(pkg)
    _append(root / "cnncli" / "cli.py", "\n# edited\n")
    assert cachestamp.fingerprint(pkg) == before
    _append(root / "cnncli" / "kernels" / "simd.py", "\n# x\n")
    assert cachestamp.fingerprint(pkg) != before


def test_a_kernel_is_compiled_again_when_a_kernel_it_inlines_changes(tmp_path):
    root, cache = _copy(tmp_path), tmp_path / "cache"
    first = _run(root, cache)
    assert first["misses"] == 1 and first["p"] == 0.5
    assert _run(root, cache)["hits"] == 1                  # the cache works
    _append(root / "cnncli" / "cli.py", "\n# edited\n")
    assert _run(root, cache)["hits"] == 1                  # a file without numba code leaves it
    # activation.py's logistic, which loss.py's kernel inlines, now returns 0.25 for v = 0: numba
    # alone would load loss.py's cached code (its own file is unchanged) and still give 0.5
    _edit(root / "cnncli" / "kernels" / "activation.py",
          "    if v >= 0:\n        return 1.0 / (1.0 + math.exp(-v))",
          "    if v >= 0:\n        return 0.5 / (1.0 + math.exp(-v))")
    edited = _run(root, cache)
    assert edited["misses"] == 1 and edited["p"] == 0.25
    assert _run(root, cache)["hits"] == 1


NO_FOLDER = """
from numba.core import caching
caching.CacheImpl._locator_classes[:] = []      # no folder numba would choose can be written
""" + CHILD + """
from cnncli.kernels import cachestamp
print(json.dumps({"note": cachestamp.fallback_note(), "root": cachestamp.TEMP_ROOT}))
"""


def test_without_a_writable_cache_folder_the_kernels_cache_in_the_temp_folder_with_one_note(tmp_path):
    root = _copy(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(root), TMPDIR=str(tmp_path / "tmp"))
    env.pop("NUMBA_CACHE_DIR", None)
    (tmp_path / "tmp").mkdir()
    runs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", NO_FOLDER], capture_output=True, text=True, env=env, cwd=root)
        assert r.returncode == 0, r.stderr                  # (it was numba's "no locator available" RuntimeError)
        lines = r.stdout.strip().splitlines()
        runs.append((json.loads(lines[-2]), json.loads(lines[-1])))
    (first, said), (again, _) = runs
    assert first["misses"] == 1 and again["hits"] == 1      # cached, and found again by the next process
    assert said["root"].startswith(str(tmp_path / "tmp")) and os.listdir(said["root"])
    assert said["note"].startswith("note: no folder numba would cache the kernels in can be written") \
        and said["root"] in said["note"]


def test_a_temp_cache_folder_that_others_may_write_is_not_used(tmp_path):
    # numba reads a cache index with pickle: a /tmp/cnncli-numba-<uid> that another user made or can
    # write would run their code in this process; a private folder for the run is used instead
    root = _copy(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(root), TMPDIR=str(tmp_path / "tmp"))
    env.pop("NUMBA_CACHE_DIR", None)
    shared = tmp_path / "tmp" / f"cnncli-numba-{os.getuid()}"
    shared.mkdir(parents=True)
    shared.chmod(0o777)
    r = subprocess.run([sys.executable, "-c", NO_FOLDER], capture_output=True, text=True, env=env, cwd=root)
    assert r.returncode == 0, r.stderr
    ran, said = (json.loads(line) for line in r.stdout.strip().splitlines()[-2:])
    assert ran["misses"] == 1 and os.listdir(shared) == []               # compiled, and nothing written there
    assert said["root"] == str(shared) and f"{shared} is not this user's alone" in said["note"]
    private = said["note"].split("so they are compiled into ")[1].split(" for this run only")[0]
    assert private != str(shared) and not os.path.exists(private)        # deleted when the run ended
