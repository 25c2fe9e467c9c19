"""Tests for the data path at scale: cache key on rewritten files, --no-cache, `cnn cache --clear`,
concurrent cache writers, unscannable folders, non-UTF-8 names, the memory-mapped cache, the in-place
split, the streamed mean/std, and a full disk during a checkpoint save."""

import errno
import multiprocessing
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnncli import checkpoint, data
from cnncli.cli import cli
from cnncli.data import decode as dec
from cnncli.errors import CheckpointError, DataError
from e2e_util import alive, child_pids


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(d))
    return d


def make_folder(root, per_class=5, classes=("a", "b")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / c / f"{i:03d}.png")
    return root


def count_decodes(monkeypatch):
    calls = []
    real = dec._decode
    monkeypatch.setattr(dec, "_decode", lambda *a: calls.append(a) or real(*a))
    return calls


def test_cache_misses_a_file_rewritten_with_same_size_and_mtime(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d")
    target = root / "a" / "001.png"
    first, _ = data.load_folder(root)
    st = os.stat(target)
    new = np.full((32, 32), 7, dtype=np.uint8)
    Image.fromarray(new).save(tmp_path / "x.png")
    blob = (tmp_path / "x.png").read_bytes()
    old = target.read_bytes()
    blob = blob + b"\0" * (len(old) - len(blob)) if len(blob) < len(old) else blob
    assert len(blob) == len(old)                       # same size, as an archive restore would give
    target.write_bytes(blob)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))   # and the old mtime
    assert os.stat(target).st_size == st.st_size and os.stat(target).st_mtime_ns == st.st_mtime_ns
    calls = count_decodes(monkeypatch)
    again, _ = data.load_folder(root)
    assert calls, "a rewritten file must be decoded again"
    assert np.array_equal(again.images[1], new) and not np.array_equal(first.images[1], new)


def test_an_out_of_date_cache_decodes_only_the_new_and_changed_files(tmp_path, monkeypatch, capsys):
    # (adding one file to a cached folder decoded all of it again: 40 s for 200,000 images, a helper's run)
    root = make_folder(tmp_path / "d", per_class=6, classes=("a", "b", "c"))
    (root / "b" / "broken.png").write_bytes(b"not a png")
    data.load_folder(root)                                             # decoded, cached with the files' identities
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)).save(root / "a" / "new.png")     # added
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / "c" / "002.png")     # rewritten
    (root / "b" / "004.png").unlink()                                                                # removed
    capsys.readouterr()
    calls = count_decodes(monkeypatch)
    again, skipped = data.load_folder(root)
    assert sorted(os.path.basename(c[0]) for c in calls) == ["002.png", "new.png"]
    assert "decoding the 2 new or changed file(s), the other 17 from the cache" in capsys.readouterr().err
    fresh, fresh_skipped = data.load_folder(root, cache=False)
    assert again.images.tobytes() == fresh.images.tobytes() and np.array_equal(again.labels, fresh.labels)
    assert skipped == fresh_skipped and len(skipped) == 1 and list(again.paths) == list(fresh.paths)
    calls.clear()
    cached, _ = data.load_folder(root)                                  # and the new entry is the cache now
    assert not calls and cached.images.tobytes() == fresh.images.tobytes()


def test_cached_load_is_a_memory_map_equal_to_a_fresh_decode(tmp_path, monkeypatch, cache_in_tmp):
    root = make_folder(tmp_path / "d", per_class=7)
    (root / "b" / "bad.png").write_bytes(b"not a png")
    fresh, s0 = data.load_folder(root, cache=False)
    data.load_folder(root)
    calls = count_decodes(monkeypatch)
    hit, s1 = data.load_folder(root)
    assert calls == []
    assert isinstance(hit.images.base, np.memmap) or isinstance(hit.images, np.memmap)
    assert hit.images.flags.writeable and hit.images.dtype == np.uint8
    assert np.array_equal(hit.images, fresh.images) and np.array_equal(hit.labels, fresh.labels)
    assert hit.paths == fresh.paths and s0 == s1 and len(s1) == 1
    before = {p.name: p.read_bytes() for p in cache_in_tmp.iterdir()}
    tr, va = data.stratified_split(hit.labels, 0.3, 0)
    data.split(hit, tr, va)                             # writes into the copy-on-write map only
    assert {p.name: p.read_bytes() for p in cache_in_tmp.iterdir()} == before


def test_no_cache_option_and_cache_clear(tmp_path, cache_in_tmp):
    root = make_folder(tmp_path / "d")
    runner = CliRunner()
    r = runner.invoke(cli, ["train", "--set", f"data.train={root}", "--set", "train.epochs=1", "--no-cache",
                            "--no-report", "--out", str(tmp_path / "run"), "-q"])
    assert r.exit_code == 0, r.output
    assert not cache_in_tmp.exists() or not list(cache_in_tmp.glob("dataset-*.npy"))
    data.load_folder(root)
    assert len(list(cache_in_tmp.glob("dataset-*.npy"))) == 2            # (its pixels, its files' identities)
    r = runner.invoke(cli, ["cache"])
    assert r.exit_code == 0 and str(cache_in_tmp) in r.output and "1 cached dataset" in r.output
    r = runner.invoke(cli, ["cache", "--clear"])
    assert r.exit_code == 0 and "removed 1 cached dataset" in r.output
    assert [p.suffix for p in cache_in_tmp.glob("dataset-*")] == [".lock"]   # (a run may hold it: it stays)


def test_cache_clear_deletes_only_the_caches_own_files(tmp_path, monkeypatch):
    # (CNNCLI_CACHE_DIR at a folder of the user's: cnn cache --clear deleted their dataset-2024.json, dataset-old.npy)
    from click.testing import CliRunner

    from cnncli.cli import cli

    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("dataset-2024.json", "dataset-old.npy", "notes.txt"):
        (mine / name).write_text("precious")
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(mine))
    r = CliRunner().invoke(cli, ["cache", "--clear"])
    assert r.exit_code == 0 and sorted(p.name for p in mine.iterdir()) == ["dataset-2024.json", "dataset-old.npy",
                                                                           "notes.txt"]


def test_cache_clear_that_cannot_delete_says_so(tmp_path, cache_in_tmp, monkeypatch):
    # a read-only cache folder: it said "removed 1 cached dataset(s)" and exited 0 with every file there
    import os

    data.load_folder(make_folder(tmp_path / "d"))
    real = os.unlink

    def refuse(path, *a, **kw):
        if str(path).endswith(".npy"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **kw)
    monkeypatch.setattr(os, "unlink", refuse)
    r = CliRunner().invoke(cli, ["cache", "--clear"])
    npy = sorted(cache_in_tmp.glob("dataset-*.npy"))                   # (its pixels, its files' identities)
    assert r.exit_code == 1 and r.output.splitlines()[-1].startswith(
        f"Error: {len(npy)} cache file(s) could not be deleted ("), r.output
    assert len(npy) == 2 and any(f"{f}: Permission denied)" in r.output for f in npy)


def test_a_cache_folder_that_cannot_be_written_is_a_note_and_the_run_goes_on(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d")
    (tmp_path / "afile").write_text("x")               # (root writes anywhere: a file in the way fails for all)
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "afile" / "cache"))
    ds, _ = data.load_folder(root)
    note = [n for n in ds.notes if "dataset cache" in n]
    assert note == [f"note: the dataset cache could not be written ({tmp_path / 'afile' / 'cache'}: "
                    f"{tmp_path / 'afile'} is a file, not a folder), so the next run decodes {root} again; "
                    "CNNCLI_CACHE_DIR names another folder for it"]
    r = CliRunner().invoke(cli, ["train", "--set", f"data.train={root}", "--set", "train.epochs=1", "--no-report",
                                 "--out", str(tmp_path / "run"), "-q"])
    assert r.exit_code == 0 and note[0] in r.stderr, r.output
    r = CliRunner().invoke(cli, ["eval", "--checkpoint", str(tmp_path / "run"), "--data", str(root)])
    assert r.exit_code == 0 and note[0] in r.stderr and "warning: the dataset cache" not in r.stderr, r.output
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "cache"))
    assert not [n for n in data.load_folder(root)[0].notes if "dataset cache" in n]


def _load_in_child(root, q):
    ds, skipped = data.load_folder(root, workers=1)
    q.put((ds.images.tobytes(), ds.labels.tolist(), ds.paths, skipped))


def test_concurrent_writers_both_get_correct_data_and_a_valid_cache(tmp_path, monkeypatch, cache_in_tmp):
    root = make_folder(tmp_path / "d", per_class=30)
    (root / "a" / "bad.png").write_bytes(b"")
    ref, ref_s = data.load_folder(root, cache=False)
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_load_in_child, args=(root, q)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for img, labels, paths, skipped in results:
        assert img == ref.images.tobytes() and labels == ref.labels.tolist()
        assert paths == ref.paths and skipped == ref_s
    assert not [p for p in cache_in_tmp.iterdir() if p.name.startswith(".tmp")]
    calls = count_decodes(monkeypatch)
    hit, _ = data.load_folder(root)
    assert calls == [] and np.array_equal(hit.images, ref.images)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders without permission")
def test_unreadable_subfolder_is_reported_and_refused_by_strict(tmp_path):
    root = make_folder(tmp_path / "d")
    locked = root / "a" / "locked"
    locked.mkdir()
    Image.new("L", (4, 4)).save(locked / "x.png")
    locked.chmod(0)
    try:
        _check_reported(root, "a/locked/", "Permission denied")
    finally:
        locked.chmod(0o755)


def _check_reported(root, rel, reason, what="cannot scan folder"):
    ds, skipped = data.load_folder(root, cache=False)
    assert len(ds) == 10
    hits = [(p, w) for p, w in skipped if p.endswith(rel)]
    assert hits and what in hits[0][1] and reason in hits[0][1], skipped
    with pytest.raises(DataError, match="strict"):
        data.load_folder(root, strict=True, cache=False)


def test_symlink_loop_and_overlong_path_are_reported(tmp_path):
    root = make_folder(tmp_path / "d")
    os.symlink("loop", root / "a" / "loop")            # a symlink to itself: ELOOP on stat, named as a link loop
    _check_reported(root, "a/loop", "symbolic link loop (links that point at one another", what="")
    os.unlink(root / "a" / "loop")
    name = "n" * 200
    fd = os.open(root / "b", os.O_RDONLY)
    try:
        for _ in range(25):                              # deeper than PATH_MAX (4096) allows to open
            os.mkdir(name, dir_fd=fd)
            fd, old = os.open(name, os.O_RDONLY, dir_fd=fd), fd
            os.close(old)
    except OSError:
        pytest.skip("cannot build a path over the OS limit here")
    finally:
        os.close(fd)
    ds, skipped = data.load_folder(root, cache=False)
    assert len(ds) == 10 and any("cannot scan folder" in w and "too long" in w for _, w in skipped)


def test_names_that_are_not_utf8(tmp_path):
    root = make_folder(tmp_path / "d")
    try:
        bad_dir = os.path.join(os.fsencode(root), b"a", b"sub\xff")
        os.mkdir(bad_dir)
        Image.new("L", (32, 32), 9).save(os.path.join(bad_dir, b"caf\xe9.png").decode("utf-8", "surrogateescape"))
        open(os.path.join(os.fsencode(root), b"b", b"broken\xfe.png"), "wb").close()
    except (OSError, UnicodeError):
        pytest.skip("the filesystem refuses names that are not UTF-8")
    ds, skipped = data.load_folder(root)
    assert len(ds) == 11 and any(os.fsencode(p).endswith(b"sub\xff/caf\xe9.png") for p in ds.paths)
    (path, why), = skipped
    assert path.endswith("broken\\xfe.png") and "empty file" in why
    path.encode("utf-8")                               # printable: no lone surrogates
    again, _ = data.load_folder(root)                  # through the cache as well
    assert again.paths == ds.paths and np.array_equal(again.images, ds.images)
    files, bad = data.list_images_and_bad(root)
    assert len(files) == 12 and bad == []


@pytest.mark.parametrize("shape", [(1, 3, 3), (7, 32, 32), (300, 32, 32), (1000, 17, 5)])
def test_streamed_mean_std_is_bitwise_numpys(shape):
    images = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    x = images.astype(np.float64) / 255.0
    expected = (float(x.mean()), float(x.std()))
    for leaf in (128, 1000, 4096, 1 << 20):               # several chunkings, one result
        assert data.pixel_mean_std(images, leaf=leaf) == expected
    assert data.pixel_mean_std(np.full((3, 4, 4), 9, np.uint8))[1] == 1.0
    with pytest.raises(ValueError, match="images must be uint8 pixels .*, got float64"):
        data.pixel_mean_std(x)                             # (it divided 0..1 values by 255 again)


def test_split_in_place_equals_two_subsets():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (500, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 4, 500).astype(np.int64)
    ds = data.Dataset(images.copy(), labels, ["a", "b", "c", "d"], [f"p{i}" for i in range(500)])
    tr, va = data.stratified_split(labels, 0.2, 1)
    want_tr, want_va = ds.subset(tr), ds.subset(va)
    got_tr, got_va = data.split(ds, tr, va, chunk=7)
    for got, want in ((got_tr, want_tr), (got_va, want_va)):
        assert np.array_equal(got.images, want.images) and np.array_equal(got.labels, want.labels)
        assert got.paths == want.paths and got.images.flags.c_contiguous


def test_full_disk_during_checkpoint_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.npz"
    checkpoint.save(path, {"w": np.arange(4.0)}, {"epoch": 1})
    before = path.read_bytes()
    real = np.savez

    def full_disk(f, **arrays):
        real(f, **arrays)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(CheckpointError) as err:
        checkpoint.save(path, {"w": np.arange(8.0)}, {"epoch": 2})
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "no space left on the device" in msg
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["last.npz"]


_SLOW_DECODE = """
import sys, time
from cnncli.data import dataset, decodemany as many
real = many._decode_chunk
def slow(jobs):
    time.sleep(1.0)
    return real(jobs)
many._decode_chunk, many.PROCESS_MIN_IMAGES = slow, 1
dataset.load_folder(sys.argv[1], workers=2, cache=True, progress=False)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="Linux /proc needed")
def test_ctrl_c_to_the_process_group_mid_decode_ends_it_and_its_workers(tmp_path):
    # Ctrl-C reaches every process of the group: the workers ignore it (one interrupted inside the
    # pool's queues could leave the parent's shutdown waiting for ever), the parent shuts them down
    import signal
    import subprocess
    import sys
    import time

    root = make_folder(tmp_path / "d", per_class=60)
    env = {**os.environ, "CNNCLI_CACHE_DIR": str(tmp_path / "cache")}
    parent = subprocess.Popen([sys.executable, "-c", _SLOW_DECODE, str(root)], env=env, start_new_session=True,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(child_pids(parent.pid)) < 2 and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.05)
    workers = child_pids(parent.pid)
    assert len(workers) >= 2, "the decode workers did not start"

    def ignores_sigint(pid):
        try:
            ignored = next(ln for ln in open(f"/proc/{pid}/status") if ln.startswith("SigIgn:"))
        except FileNotFoundError:               # (the worker is gone)
            return False
        return int(ignored.split()[1], 16) >> (signal.SIGINT - 1) & 1

    # a worker shows in /proc as it forks, before its initializer sets SIGINT aside (until then the
    # parent's held-stops handler, inherited, only records a SIGINT): wait for the initializers
    deadline = time.monotonic() + 30
    while not all(map(ignores_sigint, workers)) and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.05)
    for pid in workers:
        assert ignores_sigint(pid), f"worker {pid} does not ignore SIGINT"
    os.killpg(parent.pid, signal.SIGINT)
    try:
        parent.wait(30)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(alive, workers))


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="Linux /proc needed")
def test_a_decode_killed_midway_leaves_no_worker_and_no_lock(tmp_path):
    import fcntl
    import signal
    import subprocess
    import sys
    import time

    root = make_folder(tmp_path / "d", per_class=60)
    env = {**os.environ, "CNNCLI_CACHE_DIR": str(tmp_path / "cache")}
    parent = subprocess.Popen([sys.executable, "-c", _SLOW_DECODE, str(root)], env=env)
    deadline = time.monotonic() + 60
    while len(child_pids(parent.pid)) < 2 and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.05)
    workers = child_pids(parent.pid)
    assert len(workers) >= 2, "the decode workers did not start"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(alive, workers))                      # they end with their parent
    locks = list((tmp_path / "cache").rglob("*.lock"))
    assert locks
    for lock in locks:                                        # and hold no lock: the next run goes on
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_a_run_waiting_for_the_cache_lock_says_so(tmp_path):
    import threading

    from cnncli.data import cache as cache_mod

    slot, said, entered = str(tmp_path / "c" / "slot"), [], threading.Event()

    def second():
        with cache_mod.locked(slot, waiting=lambda pid: said.append("waiting")):
            entered.set()

    with cache_mod.locked(slot, waiting=lambda pid: said.append("first waited")):
        t = threading.Thread(target=second)
        t.start()
        for _ in range(100):                                  # up to 10 s for the thread to ask
            if said:
                break
            entered.wait(0.1)
        assert said == ["waiting"] and not entered.is_set()         # it says so, then waits
    t.join(10)
    assert entered.is_set()


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="Linux /proc needed")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1", "SIGINT"])
def test_a_stop_during_set_up_is_one_line_and_leaves_no_worker(tmp_path, sig):
    import signal
    import subprocess
    import sys
    import time

    root = make_folder(tmp_path / "d", per_class=60)
    script = _SLOW_DECODE.replace("dataset.load_folder(sys.argv[1], workers=2, cache=True, progress=False)",
                                  "import cnncli.cli; sys.argv = ['cnn', 'train', '--set', 'data.train=' + "
                                  "sys.argv[1], '--out', sys.argv[2], '-q', '--no-report']; cnncli.cli.main()")
    env = {**os.environ, "CNNCLI_CACHE_DIR": str(tmp_path / "cache")}
    cnn = subprocess.Popen([sys.executable, "-c", script, str(root), str(tmp_path / "run")], env=env,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(child_pids(cnn.pid)) < 2 and time.monotonic() < deadline and cnn.poll() is None:
        time.sleep(0.05)
    workers = child_pids(cnn.pid)
    assert len(workers) >= 2, "the decode workers did not start"
    cnn.send_signal(getattr(signal, sig))
    err = cnn.communicate(timeout=60)[1]
    assert cnn.returncode == 130, err
    assert err.strip().splitlines() == [f"{sig}: stopped during set-up, before the first step: nothing "
                                        "was trained; start the run again"]
    deadline = time.monotonic() + 10
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(alive, workers))


_HOLD = """
import sys, time
from cnncli.data import cache
with cache.locked(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux /proc needed")
def test_a_run_waiting_behind_a_stopped_process_names_it_and_decodes_without_the_cache(tmp_path, capsys):
    # Ctrl-Z (SIGSTOP) of a run decoding a folder left a second run waiting for ever with no word of
    # whom it waits for
    import signal
    import subprocess
    import sys

    from cnncli.data import cache as cache_mod
    from cnncli.data.dataset import index

    root = make_folder(tmp_path / "d")
    ix, _ = index(str(root), None, False)
    slot, _ = cache_mod.cache_names(str(root), ix.classes, ix.digest, 32, "pad", int(dec.MAX_PIXELS))
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, slot], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGSTOP)
        said = []
        with cache_mod.locked(slot, waiting=said.append, gave_up=lambda pid: said.append(-pid)) as owned:
            assert not owned
        assert said == [holder.pid, -holder.pid]                  # named while waiting, then given up
        ds, _ = data.load_folder(root)                            # the run goes on without the cache
        err = capsys.readouterr().err
        assert f"waiting for another process (pid {holder.pid}) that is decoding {root} into the dataset " \
               "cache (--no-cache decodes without it) ..." in err
        assert f"process {holder.pid}, which is decoding {root} into the dataset cache, is stopped " \
               f"(kill -CONT {holder.pid} resumes it): decoding here without the cache" in err
        assert len(ds) == 10 and not list((tmp_path / "cache").glob("*.npy"))   # nothing written past it
    finally:
        holder.kill()
        holder.wait()
    ds2, _ = data.load_folder(root)                                 # the lock is free again: cached
    assert np.array_equal(ds.images, ds2.images) and list((tmp_path / "cache").glob("*.npy"))


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux /proc needed")
def test_a_run_whose_decoder_dies_while_it_waits_says_so_and_decodes(tmp_path, capsys):
    # the process it waited for was killed before writing the cache: the waiter decoded on its own
    # without a word (a helper's pass: 'it quietly decoded')
    import subprocess
    import sys
    import threading

    from cnncli.data.dataset import index

    root = make_folder(tmp_path / "d")
    ix, _ = index(str(root), None, False)
    slot, _ = cache_mod_names(root, ix)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, slot], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        threading.Timer(1.0, holder.kill).start()                 # killed while this run waits for it
        ds, _ = data.load_folder(root)
        err = capsys.readouterr().err
        assert f"waiting for another process (pid {holder.pid})" in err
        assert f"note: the other process (pid {holder.pid}) ended without writing the dataset cache: decoding " \
               "here" in err
        assert len(ds) == 10
    finally:
        holder.kill()
        holder.wait()


def cache_mod_names(root, ix):
    from cnncli.data import cache as cache_mod

    return cache_mod.cache_names(str(root), ix.classes, ix.digest, 32, "pad", int(dec.MAX_PIXELS))


def test_a_run_that_decodes_again_says_the_cache_is_out_of_date(tmp_path, capsys):
    root = make_folder(tmp_path / "d")
    data.load_folder(root)
    data.load_folder(root)
    assert "out of date" not in capsys.readouterr().err               # a hit, and a first decode: silent
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "a" / "new.png")
    data.load_folder(root)
    assert capsys.readouterr().err.count(f"note: the dataset cache of {root} is out of date (a file was added, "
                                         "removed or changed since, or had its time or permissions changed): "
                                         "decoding the 1 new or changed file(s), the other 10 from the cache") == 1
    (npy,) = (p for p in (tmp_path / "cache").glob("*.npy") if not p.name.endswith("-ids.npy"))
    npy.write_bytes(b"")
    data.load_folder(root)
    assert f"note: the dataset cache of {root} is damaged: decoding every image again" in capsys.readouterr().err


def test_a_new_cache_entry_first_frees_the_out_of_date_ones_space(tmp_path, monkeypatch, cache_in_tmp):
    # on a nearly full disk the old entry kept the space its successor needed, so the folder was
    # never cached again
    from cnncli.data import cache as cache_mod

    root = make_folder(tmp_path / "d")
    data.load_folder(root)
    (old,) = (p for p in cache_in_tmp.glob("*.npy") if not p.name.endswith("-ids.npy"))
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "a" / "new.png")
    real = cache_mod._atomic

    def full_disk(path, write):
        assert not old.exists(), "the out-of-date entry must be gone before the new one is written"
        if path.endswith(".npy"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, write)

    monkeypatch.setattr(cache_mod, "_atomic", full_disk)
    ds, _ = data.load_folder(root)
    assert len(ds) == 11 and any("could not be written" in n and "no space left on the device" in n for n in ds.notes)
    monkeypatch.setattr(cache_mod, "_atomic", real)
    data.load_folder(root)
    assert len(list(cache_in_tmp.glob("*.npy"))) == 2                 # (its pixels and its files' identities)


def test_temporary_files_of_killed_writers_go_with_the_next_write(tmp_path, cache_in_tmp):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                                        # a pid no process has now
    cache_in_tmp.mkdir(parents=True)
    gone = cache_in_tmp / f".tmp-dataset-0123-4567.npy-{dead.pid}-deadbeef"
    live = cache_in_tmp / f".tmp-dataset-89ab-cdef.npy-{os.getpid()}-cafef00d"   # a writer still at work
    gone.write_bytes(b"x" * 1000)
    live.write_bytes(b"y")
    data.load_folder(make_folder(tmp_path / "d"))                       # another folder's write
    assert not gone.exists() and live.exists()


def test_a_cache_path_that_is_a_file_is_named_as_such(tmp_path, monkeypatch):
    (tmp_path / "labels.csv").write_text("x")
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path / "labels.csv"))
    ds, _ = data.load_folder(make_folder(tmp_path / "d"))
    assert len(ds) == 10 and any(f"could not be written ({tmp_path / 'labels.csv'}: is not a folder)" in n
                                 for n in ds.notes), ds.notes


def test_an_out_of_date_cache_of_a_folder_that_only_lost_files_decodes_none(tmp_path, monkeypatch, capsys):
    # (its note said "decoding the 0 new or changed file(s), the other 17 from the cache")
    root = make_folder(tmp_path / "d", per_class=6, classes=("a", "b", "c"))
    data.load_folder(root)
    (root / "b" / "004.png").unlink()
    capsys.readouterr()
    calls = count_decodes(monkeypatch)
    again, _ = data.load_folder(root)
    assert not calls and len(again.labels) == 17
    err = capsys.readouterr().err
    assert "none of its files is new or changed, all 17 from the cache" in err and "decoding the 0" not in err, err
