"""A labels CSV wherever a data folder goes (data.train, data.val, eval --data): the same dataset and
the same checkpoint as the class-per-subfolder folder it lists; any layout, BOM, blank lines, absolute
paths; rows without a usable file skipped with a reason; the cache follows the CSV's labels; one-line
errors for headers, encodings, classes.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from cnncli.data import load_folder
from cnncli.errors import DataError
from e2e_util import SHAPES, invoke, load_params, make_folder, private_cache  # noqa: F401


def write_csv(path, rows, header=("path", "label"), bom=False, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def folder_rows(root, relative_to):
    """(path, class) of every image of a class-per-subfolder folder, in the folder index's order."""
    return [(str(p.relative_to(relative_to)), c.name) for c in sorted(root.iterdir()) if c.is_dir()
            for p in sorted(c.iterdir())]


def test_a_csv_of_a_folder_gives_its_dataset_and_its_checkpoint(tmp_path):
    data = make_folder(tmp_path / "data", per_class=8, odd_files=False)
    labels = write_csv(tmp_path / "labels.csv", folder_rows(data, tmp_path))
    a, skipped_a = load_folder(data, cache=False)
    b, skipped_b = load_folder(labels, cache=False)
    assert a.classes == b.classes == sorted(SHAPES) and skipped_a == skipped_b == []
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    for source, out in ((data, "dir"), (labels, "csv")):
        res = invoke(["train", "--set", f"data.train={source}", "--set", "train.epochs=2", "--set",
                      "train.batch_size=8", "--out", tmp_path / out, "-q", "--no-report"])
        assert res.exit_code == 0, res.output
    pa, pb = load_params(tmp_path / "dir" / "last.npz"), load_params(tmp_path / "csv" / "last.npz")
    assert all(pa[k].tobytes() == pb[k].tobytes() for k in pa)
    ev = json.loads(invoke(["eval", "--checkpoint", tmp_path / "csv", "--data", labels, "--json"]).output)
    ev_dir = json.loads(invoke(["eval", "--checkpoint", tmp_path / "csv", "--data", data, "--json"]).output)
    assert ev["accuracy"] == ev_dir["accuracy"] and ev["num_images"] == 24
    ev_val = json.loads(invoke(["eval", "--checkpoint", tmp_path / "csv", "--json"]).output)   # its own split
    assert ev_val["data"].startswith(f"validation split 0.1 of {labels}")


def test_any_layout_bom_absolute_paths_and_bad_rows(tmp_path):
    pics = tmp_path / "pics" / "flat"
    pics.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(9):
        Image.fromarray(rng.integers(0, 255, (20 + i, 30), dtype=np.uint8)).save(pics / f"img {i}.png")
        rows.append((f"pics/flat/img {i}.png" if i % 2 else str(pics / f"img {i}.png"),
                     ["Ünïcode class", "b", "a c"][i % 3]))
    (pics / "broken.png").write_bytes(b"not a png")
    rows += [("pics/flat/broken.png", "b"), ("pics/flat/gone.png", "a c"), ("pics/flat/img 1.png", ""), ("", "b")]
    labels = write_csv(tmp_path / "labels.csv", rows, header=("Image", " Class "), bom=True)
    with open(labels, "a", encoding="utf-8") as f:
        f.write("\n\n")                                   # blank lines at the end
    ds, skipped = load_folder(labels, cache=False)
    assert ds.classes == ["a c", "b", "Ünïcode class"] and len(ds.labels) == 9
    assert np.bincount(ds.labels).tolist() == [3, 3, 3]
    reasons = dict(skipped)
    assert reasons[f"{labels} line 13"] == "no label" and reasons[f"{labels} line 14"] == "no path"
    assert reasons[f"{labels} line 12"] == f"cannot read {pics / 'gone.png'} (No such file or directory)"
    assert str(pics / "broken.png") in reasons and len(skipped) == 4
    with pytest.raises(DataError, match="4 unusable file"):
        load_folder(labels, cache=False, strict=True)


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_semicolons_and_tabs_separate_as_commas_do(tmp_path, delimiter):
    # a European spreadsheet saves "CSV" with semicolons; a TSV has tabs; names may hold commas
    data = make_folder(tmp_path / "da,ta", per_class=4, odd_files=False)
    rows = folder_rows(data, tmp_path)
    a, _ = load_folder(write_csv(tmp_path / "comma.csv", rows), cache=False)
    with open(tmp_path / "other.csv", "w", encoding="utf-8") as f:
        f.write("\n" + f"img{delimiter}class\n" + "".join(f"{p}{delimiter}{c}\n" for p, c in rows) + "\n")
    b, skipped = load_folder(tmp_path / "other.csv", cache=False)
    assert skipped == [] and a.classes == b.classes and b.paths == a.paths
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    if delimiter == "\t":                                            # Excel's "Unicode text": UTF-16, tabs
        (tmp_path / "u16.txt").write_text("img\tclass\n" + "".join(f"{p}\t{c}\n" for p, c in rows), "utf-16")
        c, skipped = load_folder(tmp_path / "u16.txt", cache=False)
        assert skipped == [] and c.paths == a.paths and np.array_equal(a.labels, c.labels)
    with open(tmp_path / "other.csv", "a", encoding="utf-8") as f:
        f.write(f"{rows[0][0]}{delimiter}\n")                       # a row without a label: its line number
    _, skipped = load_folder(tmp_path / "other.csv", cache=False)
    assert skipped == [(f"{tmp_path / 'other.csv'} line {len(rows) + 4}", "no label")]


def test_the_cache_follows_the_csvs_labels(tmp_path, monkeypatch):
    from cnncli.data import decode as dec

    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    rows = folder_rows(data, tmp_path)
    labels = write_csv(tmp_path / "labels.csv", rows)
    first = load_folder(labels)[0]
    calls = []
    real = dec._decode
    monkeypatch.setattr(dec, "_decode", lambda *a: calls.append(a) or real(*a))
    again = load_folder(labels)[0]
    assert calls == [] and np.array_equal(first.images, again.images)        # from the cache
    rows[0] = (rows[0][0], "column")                     # one image relabelled: the same files
    write_csv(labels, rows)
    changed = load_folder(labels)[0]
    assert changed.labels[0] == 1 and np.bincount(changed.labels).tolist() == [3, 5, 4]
    assert len(calls) == 12                              # a new key: decoded again


@pytest.mark.parametrize("content, needle", [
    (b"file,name\na.png,x\n", "no label column in its header ['file', 'name']; name it one of label, class"),
    (b"path,image,label\na.png,b.png,x\n", "more than one path column"),
    (b"path,label\n", "lists no images (only its header row)"),
    (b"path,label\nnope.png,x\ngone.png,y\n", "lists no readable image files"),
    (b"", "is empty (expected a header row"),
    (b"path,label\n\xff\xfe,x\n", "is not UTF-8 (or UTF-16) text"),
    (b"path,label\nIMG,x\nIMG,x\n", "has 1 distinct label(s) (x); need at least 2"),
    # an unmatched quote took every later row into one field: rows lost, or a class named 'y\nIMG,x...'
    (b"path,label\nIMG,x\nIMG,y\n\"IMG,x\nIMG,y\nIMG,x\n", "line 4: a quoted field begins there and is not "
                                                       "closed by the end of the file (an unmatched \")"),
    (b"path,label\nIMG,x\nIMG,y\nIMG,\"y\nIMG,y\nIMG,x\n", "line 4: a quoted field begins there and is not "),
    (b"\"path,label\nIMG,x\nIMG,y\n", "its header row: a quoted field begins there and is not closed"),
])
def test_bad_labels_files_are_one_line(tmp_path, content, needle):
    Image.new("L", (8, 8)).save(tmp_path / "img.png")
    path = tmp_path / "labels.csv"
    path.write_bytes(content.replace(b"IMG", str(tmp_path / "img.png").encode()))
    res = invoke(["train", "--set", f"data.train={path}", "--out", tmp_path / "run", "-q"])
    assert res.exit_code == 1
    out = res.output.strip()
    assert len(out.splitlines()) == 1 and needle in out, out
    assert out.startswith(f"Error: data.train: labels file {path}: "), out
    assert not (tmp_path / "run").exists()


def test_a_space_after_a_quoted_cell_is_read_as_before_the_unmatched_quote_check(tmp_path):
    # the unmatched-quote refusal read the file with csv's strict mode, which also refused '"a.png" ,"x" '
    # (a space after a closing quote: hand-edited files), read before as the cells a.png and x
    for i in range(4):
        Image.new("L", (8, 8), i * 60).save(tmp_path / f"{i}.png")
    path = tmp_path / "labels.csv"
    path.write_text("path,label\n" + "".join(f'"{i}.png" ,"{"xy"[i % 2]}" \n' for i in range(4)))
    ds = load_folder(str(path), cache=False)[0]
    assert ds.classes == ["x", "y"] and ds.labels.tolist() == [0, 1, 0, 1]


def test_eval_refuses_labels_the_model_does_not_know(tmp_path):
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    assert invoke(["train", "--set", f"data.train={data}", "--set", "train.epochs=1", "--out", tmp_path / "run",
                   "-q", "--no-report"]).exit_code == 0
    rows = folder_rows(data, tmp_path)
    labels = write_csv(tmp_path / "test.csv", [(p, "ring" if c == "disc" else c) for p, c in rows])
    res = invoke(["eval", "--checkpoint", tmp_path / "run", "--data", labels])
    assert res.exit_code == 1 and "label(s) ring not among the expected classes (bar, column, disc)" in res.output
    some = write_csv(tmp_path / "some.csv", [r for r in rows if r[1] != "bar"])      # a class absent: fine
    ev = json.loads(invoke(["eval", "--checkpoint", tmp_path / "run", "--data", some, "--json"]).output)
    assert ev["num_images"] == 8 and ev["absent"] == ["bar"]


def test_predict_reads_a_csv_of_paths_and_writes_a_predictions_csv(tmp_path):
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    assert invoke(["train", "--set", f"data.train={data}", "--set", "train.epochs=1", "--out", tmp_path / "run",
                   "-q", "--no-report"]).exit_code == 0
    rows = folder_rows(data, tmp_path)
    listing = write_csv(tmp_path / "test.csv", [(p,) for p, _ in rows] + [("data/gone.png",)], header=("file",))
    out = tmp_path / "preds.csv"
    res = invoke(["predict", "--checkpoint", tmp_path / "run", listing, "--csv", out])
    assert res.exit_code == 1                                     # the missing file
    assert f"error: {tmp_path / 'data' / 'gone.png'}:" in res.output and "12 prediction(s) in" in res.output
    with open(out, newline="") as f:
        written = list(csv.DictReader(f))
    want = json.loads(invoke(["predict", "--checkpoint", tmp_path / "run", data, "--json", "--top-k", "3"]).output)
    assert [w["path"] for w in written] == [str(tmp_path / p) for p, _ in rows] == [r["path"] for r in want]
    for w, r in zip(written, want):
        assert w["class"] == r["class"] and float(w["probability"]) == r["probability"]
        assert {t["class"]: t["probability"] for t in r["top_k"]} == {c: float(w[c]) for c in sorted(SHAPES)}
    (tmp_path / "list.txt").write_text("\n" + "".join(f"{p}\n" for p, _ in rows))   # no header: ls > list.txt
    res = invoke(["predict", "--checkpoint", tmp_path / "run", tmp_path / "list.txt", "--json", "--top-k", "3"])
    assert res.exit_code == 0 and json.loads(res.output) == want
    res = invoke(["predict", "--checkpoint", tmp_path / "run", listing, "--csv", tmp_path / "no" / "p.csv"])
    assert res.exit_code == 1 and f"Error: {tmp_path / 'no' / 'p.csv'}: cannot write the predictions" in res.output
    res = invoke(["predict", "--checkpoint", tmp_path / "run", data, "--csv", "-"])        # - : standard output
    assert res.exit_code == 0 and list(csv.DictReader(res.stdout.splitlines())) == written
    assert "12 prediction(s) in standard output" in res.stderr and not (tmp_path / "-").exists()
    res = invoke(["predict", "--checkpoint", tmp_path / "run", listing, "--csv", out, "--json"])
    assert res.exit_code == 2 and "Error: --json and --csv: give one of them" in res.output   # not one dropped
    res = invoke(["eval", "--checkpoint", tmp_path / "run", "--data", data, "--top-k", "5"])
    assert res.exit_code == 0 and "note: --top-k 5 is more than the model's 3 classes: top-3 accuracy" in res.output
    assert "top-3 accuracy" in res.output


def test_the_skipped_warning_counts_files_and_rows_apart(tmp_path):
    from cnncli.runfolder import skipped_lines

    labels = tmp_path / "Labels.CSV"
    skipped = [(str(tmp_path / "broken.png"), "a damaged or truncated PNG file (6 bytes)"),
               (f"{labels} line 4", "no label"), (f"{labels} line 7", f"cannot read {tmp_path / 'gone.png'}")]
    assert skipped_lines(skipped)[0] == "warning: skipped 1 unusable file(s) and 2 labels-file row(s):"
    assert skipped_lines(skipped[1:])[0] == "warning: skipped 2 labels-file row(s):"
    assert skipped_lines(skipped[:1], ", listed in x")[0] == "warning: skipped 1 unusable file(s), listed in x:"
    for ext in ("tsv", "txt", "TXT"):                 # the other labels files csvindex reads: rows too
        rows = [(f"{tmp_path / ('labels.' + ext)} line {n}", "no label") for n in (3, 9)]
        assert skipped_lines(rows)[0] == "warning: skipped 2 labels-file row(s):", ext


def test_a_path_list_whose_first_file_is_missing_is_still_a_list(tmp_path):
    from cnncli.data.csvindex import list_csv_paths

    (tmp_path / "here.png").write_bytes(b"")
    for first in ("gone.png", "sub/GONE.JPG", "hello"):            # a missing image; one column, no known name
        listing = tmp_path / "list.txt"
        listing.write_text(f"{first}\nhere.png\n")
        assert list_csv_paths(str(listing)) == ([str(tmp_path / first), str(tmp_path / "here.png")], [])
    listing.write_text("gone.png,cat\nhere.png,dog\n")            # a CSV without its header stays refused
    with pytest.raises(DataError, match="no path column in its header"):
        list_csv_paths(str(listing))


def test_a_path_list_that_csv_writer_quoted_is_a_list_of_its_paths(tmp_path):
    # (csv.writer's one-column list, first row "imgs/a,b.png": read as a header with no path column;
    # a quoted row further down named the file '"imgs/a,b.png"', quotes and all)
    import csv as csv_mod
    import io

    from cnncli.data.csvindex import list_csv_paths
    from cnncli.data.pathlines import stdin_paths

    names = ["imgs/a,b.png", "imgs/c.png", 'imgs/say "hi".png', "imgs/d;e.png"]
    for order in (names, names[1:] + names[:1]):
        text = io.StringIO()
        csv_mod.writer(text).writerows([n] for n in order)
        (tmp_path / "list.txt").write_text(text.getvalue())
        assert list_csv_paths(str(tmp_path / "list.txt")) == ([str(tmp_path / n) for n in order], [])
        assert stdin_paths(text.getvalue().encode()) == order
    (tmp_path / "one.csv").write_text('"path"\n"imgs/a,b.png"\n')      # a quoted header stays a header
    assert list_csv_paths(str(tmp_path / "one.csv")) == ([str(tmp_path / "imgs/a,b.png")], [])


def test_a_one_column_csv_whose_header_and_paths_are_quoted_lists_its_paths(tmp_path):
    # R's write.csv (and csv.QUOTE_ALL) quote every cell: '"path"' was no header, so the rows, quotes and
    # all, were paths of a plain list and none named a file
    from cnncli.data.csvindex import list_csv_paths

    (tmp_path / "a b.png").write_bytes(b"")
    for header in ('"path"', '"Image Path"'):
        listing = tmp_path / "paths.csv"
        listing.write_text(f'{header}\n"a b.png"\n"gone.png"\n')
        assert list_csv_paths(str(listing)) == ([str(tmp_path / "a b.png"), str(tmp_path / "gone.png")], []), header


def test_a_text_file_that_lists_no_file_is_one_failure_naming_it(tmp_path):
    # `cnn predict mydata/*` with a README.txt among the images: its prose is no list of images
    from cnncli.predictions import gather_paths

    (tmp_path / "here.png").write_bytes(b"")
    readme = tmp_path / "README.txt"
    readme.write_text("my dataset\nshapes drawn by hand\n")
    files, failures = gather_paths([str(tmp_path / "here.png"), str(readme)])
    assert list(files) == [str(tmp_path / "here.png")]
    assert failures == [(str(readme), f"none of its 2 listed path(s) is a file, from the list's folder ({tmp_path}) "
                                      "or from the working folder (a .txt PATH is read as a list of images)")]
    readme.write_text("here.png\ngone.png\n")                 # a list with a file that exists: each is tried
    files, failures = gather_paths([str(readme)])
    assert list(files) == [str(tmp_path / "here.png"), str(tmp_path / "gone.png")] and failures == []
    readme.write_text("# made by ls\nhere.png\n  # gone.png\n\n")        # comment lines are no paths
    files, failures = gather_paths([str(readme)])
    assert list(files) == [str(tmp_path / "here.png")] and failures == []


def test_a_list_of_paths_relative_to_the_working_folder_is_read_from_there(tmp_path, monkeypatch):
    # `find imgs -name '*.png' > /tmp/list.txt; cnn predict /tmp/list.txt`: the paths name no file
    # from /tmp, and were refused as "none ... is a file here"
    from cnncli.predictions import gather_paths

    (tmp_path / "work" / "imgs").mkdir(parents=True)
    (tmp_path / "work" / "imgs" / "a.png").write_bytes(b"")
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "list.txt"
    listing.write_text("imgs/a.png\nimgs/b.png\n")
    monkeypatch.chdir(tmp_path / "work")
    files, failures = gather_paths([str(listing)])
    assert list(files) == ["imgs/a.png", "imgs/b.png"] and failures == []
    (tmp_path / "lists" / "imgs").mkdir()                          # from the list's folder first, when they are there
    (tmp_path / "lists" / "imgs" / "b.png").write_bytes(b"")
    files, failures = gather_paths([str(listing)])
    assert list(files) == [str(tmp_path / "lists" / "imgs" / "a.png"), str(tmp_path / "lists" / "imgs" / "b.png")]


def test_predict_reads_paths_from_standard_input_given_as_dash(tmp_path):
    from click.testing import CliRunner

    from cnncli.cli import cli

    data = make_folder(tmp_path / "data", per_class=2, odd_files=False)
    pngs = sorted(map(str, data.glob("*/*.png")))
    from cnncli import model
    from cnncli.predictor import save_model

    ckpt = save_model(tmp_path / "m.npz", model.Network(num_classes=3, seed=0), ["a", "b", "c"])
    piped = CliRunner().invoke(cli, ["predict", "--checkpoint", str(ckpt), "-"],
                               input="# from find\n" + "\n".join(pngs) + "\n")
    given = CliRunner().invoke(cli, ["predict", "--checkpoint", str(ckpt), *pngs])
    assert piped.exit_code == 0 == given.exit_code and piped.stdout == given.stdout
    assert len(piped.stdout.splitlines()) == len(pngs) > 0
    empty = CliRunner().invoke(cli, ["predict", "--checkpoint", str(ckpt), "-"], input="")
    assert empty.exit_code == 1 and empty.stderr == "error: -: no paths on standard input\n"
    from cnncli import cli as cli_mod

    cli_mod._stdin_is_terminal, real = (lambda: True), cli_mod._stdin_is_terminal     # typed at a terminal
    try:
        typed = CliRunner().invoke(cli, ["predict", "--checkpoint", str(ckpt), "-"], input=pngs[0] + "\n")
    finally:
        cli_mod._stdin_is_terminal = real
    assert typed.exit_code == 0 and typed.stderr.startswith("reading the paths to classify from standard input")


def test_predict_dash_with_standard_input_closed_says_it_is_closed(tmp_path):
    # (`cnn predict -  <&-` said "no paths on standard input", as for an empty list)
    import subprocess
    import sys

    from cnncli import model
    from cnncli.predictor import save_model
    from e2e_util import cli_env

    ckpt = save_model(tmp_path / "m.npz", model.Network(num_classes=3, seed=0), ["a", "b", "c"])
    args = [sys.executable, "-m", "cnncli", "predict", "--checkpoint", str(ckpt), "-"]
    closed = subprocess.run(args, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300,
                            preexec_fn=lambda: os.close(0))
    assert closed.returncode == 1 and closed.stderr == ("error: -: standard input is closed: pipe the paths into it "
                                                        "(find DIR | cnn predict -), or give them as PATHs\n")
    empty = subprocess.run(args, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)                # (< /dev/null: an empty list, as before)
    assert empty.returncode == 1 and empty.stderr == "error: -: no paths on standard input\n"


def test_predict_of_standard_input_under_mpirun_says_to_give_a_file(tmp_path, monkeypatch):
    # this Open MPI never passes the end of stdin on to a rank: `mpirun -n 1 cnn predict - < list` hung
    from click.testing import CliRunner

    from cnncli.cli import cli

    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    res = CliRunner().invoke(cli, ["predict", "--checkpoint", str(tmp_path / "m.npz"), "-"], input="a.png\n")
    assert res.exit_code == 2 and res.stderr.endswith(
        "Error: -: standard input does not reach a process mpirun starts; give the list of paths as a file "
        "(cnn predict ... LIST.txt), or run cnn predict without mpirun\n"), res.stderr


def test_header_names_are_matched_whatever_their_case_spaces_or_hyphens(tmp_path):
    data = make_folder(tmp_path / "data", per_class=2, odd_files=False)
    rows = folder_rows(data, tmp_path)
    for header in (("Image Path", "Label"), (" file-name ", "CLASS"), ("File.Name", "Target")):
        ds, skipped = load_folder(write_csv(tmp_path / "l.csv", rows, header=header), cache=False)
        assert ds.classes == sorted(SHAPES) and len(ds.labels) == len(rows) and skipped == []
    with pytest.raises(DataError, match="no path column in its header"):
        load_folder(write_csv(tmp_path / "l.csv", rows, header=("picture", "label")), cache=False)


def test_a_data_path_that_is_an_image_says_what_to_give_instead(tmp_path):
    image = tmp_path / "one.png"
    Image.new("L", (8, 8)).save(image)
    with pytest.raises(DataError, match=r"one.png: is not a folder \(give the folder of class subfolders, or a "
                                        r"labels CSV ending in .csv, .tsv or .txt\)"):
        load_folder(image, cache=False)


def test_a_csv_made_on_windows_with_backslash_paths_reads_the_same_images(tmp_path):
    data = make_folder(tmp_path / "data", per_class=3, odd_files=False)
    rows = folder_rows(data, tmp_path)
    unix = load_folder(write_csv(tmp_path / "unix.csv", rows), cache=False)[0]
    with open(tmp_path / "win.csv", "w", newline="") as f:               # CRLF and images\0001.png
        f.write("path,label\r\n" + "".join(f"{p.replace('/', chr(92))},{c}\r\n" for p, c in rows))
    win, skipped = load_folder(tmp_path / "win.csv", cache=False)
    assert skipped == [] and win.classes == unix.classes and np.array_equal(win.images, unix.images)
    from cnncli.data.csvindex import list_csv_paths
    (tmp_path / "list.txt").write_text("".join(p.replace("/", "\\") + "\n" for p, _ in rows))
    assert list_csv_paths(str(tmp_path / "list.txt")) == ([str(tmp_path / p) for p, _ in rows], [])
    with open(tmp_path / "win.csv", "a", newline="") as f:               # a row whose file is gone
        f.write("data\\bar\\gone.png,bar\r\n")
    _, skipped = load_folder(tmp_path / "win.csv", cache=False)
    assert skipped == [(f"{tmp_path / 'win.csv'} line {len(rows) + 2}",
                        f"cannot read {tmp_path / 'data' / 'bar' / 'gone.png'} (No such file or directory)")]


def test_predict_names_listed_files_as_the_list_is_spelled(tmp_path, monkeypatch):
    # a list given as lists/a.txt names its img/1.png as lists/img/1.png, the way a folder given as
    # lists/img names its files; an absolute entry stays absolute; a CSV's path column alike
    from cnncli.data.csvindex import list_csv_paths

    (tmp_path / "lists" / "img").mkdir(parents=True)
    for name in ("1.png", "2.png"):
        Image.new("L", (8, 8)).save(tmp_path / "lists" / "img" / name)
    (tmp_path / "lists" / "a.txt").write_text(f"img/1.png\n{tmp_path / 'lists' / 'img' / '2.png'}\n")
    (tmp_path / "lists" / "b.csv").write_text("path\nimg/1.png\n")
    monkeypatch.chdir(tmp_path)
    assert list_csv_paths("lists/a.txt") == ([os.path.join("lists", "img", "1.png"),
                                              str(tmp_path / "lists" / "img" / "2.png")], [])
    assert list_csv_paths("lists/b.csv") == ([os.path.join("lists", "img", "1.png")], [])
    monkeypatch.chdir(tmp_path / "lists")
    assert list_csv_paths("a.txt")[0][0] == os.path.join("img", "1.png")
    from click.testing import CliRunner
    from test_evaluate import write_checkpoint

    from cnncli.cli import cli
    model = write_checkpoint(tmp_path / "model.npz", ["a", "b"])
    res = CliRunner().invoke(cli, ["predict", "--checkpoint", str(model), "a.txt"])
    assert res.exit_code == 0, res.output
    assert [ln.split("\t")[0] for ln in res.stdout.splitlines()] == [os.path.join("img", "1.png"),
                                                                     str(tmp_path / "lists" / "img" / "2.png")]


def test_a_file_listed_twice_is_a_warning_naming_one_under_two_labels(tmp_path):
    data = make_folder(tmp_path / "data", per_class=3, odd_files=False)
    rows = folder_rows(data, tmp_path)
    ds, _ = load_folder(write_csv(tmp_path / "l.csv", rows), cache=False)
    assert not [n for n in ds.notes if "more than once" in n]
    twice = rows + [rows[0], ("./" + rows[1][0], rows[-1][1])]       # the same file again; one relabelled
    ds, _ = load_folder(write_csv(tmp_path / "l.csv", twice), cache=False)
    assert len(ds) == len(rows) + 2                                    # each copy is still an image
    other = sorted({rows[1][1], rows[-1][1]})
    assert [n for n in ds.notes if "more than once" in n] == [
        f"warning: labels file {tmp_path / 'l.csv'} lists 2 file(s) more than once (each copy counts as an image: "
        f"one may train while another validates); 1 of them under different labels, e.g. "
        f"{tmp_path / rows[1][0]}: {other[0]}, {other[1]}"]


def test_labels_match_the_model_classes_in_either_unicode_form(tmp_path):
    data = make_folder(tmp_path / "data", per_class=2, odd_files=False)
    rows = [(p, "cafe\u0301" if c == SHAPES[0] else c) for p, c in folder_rows(data, tmp_path)]   # e + accent
    labels = write_csv(tmp_path / "labels.csv", rows)
    classes = ["caf\u00e9"] + sorted(SHAPES)[1:]                                                  # é
    ds, _ = load_folder(labels, classes=classes, cache=False)
    assert ds.classes == classes and np.bincount(ds.labels).tolist() == [2] * len(SHAPES)


def test_a_split_column_it_does_not_read_gets_a_note(tmp_path):
    # (Ludwig's image_path,label,split: every row trained, the test rows too, without a word)
    data = make_folder(tmp_path / "data", per_class=4, odd_files=False)
    rows = folder_rows(data, tmp_path)
    path = tmp_path / "ludwig.csv"
    path.write_text("image_path,label,split\n" + "".join(f"{p},{c},{i % 3}\n" for i, (p, c) in enumerate(rows)))
    ds, _ = load_folder(path, cache=False)
    assert len(ds) == len(rows) and [n for n in ds.notes if "is not read" in n] == [
        f"note: labels file {path}: its column 'split' is not read: all its rows are images of the one data key it "
        "is given as (data.train, data.val or data.test); to use its split, write a labels file per split and give "
        "each to its key"]
    ds, _ = load_folder(write_csv(tmp_path / "plain.csv", rows), cache=False)
    assert not [n for n in ds.notes if "is not read" in n]
