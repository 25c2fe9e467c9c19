"""TensorBoard event files: CRC-32C against its published check value, every record's framing, and
the events decoded by protobuf itself (a descriptor of TensorBoard's Event/Summary fields built here)
against metrics.csv, also after a resume from an earlier checkpoint or into another folder (TensorBoard's
purge on a SessionLog START, modelled here); off with train.tensorboard=false; a failing write is one warning,
training goes on.
(`tensorboard`'s own EventAccumulator read such a file with the same tags and values, by hand, when
this was written; it is not a test dependency.)
"""

from __future__ import annotations

import csv

import pytest

from cnncli import tblog
from e2e_util import invoke, make_folder, private_cache  # noqa: F401


def test_crc32c_check_value_and_varints():
    assert tblog.crc32c(b"123456789") == 0xE3069283          # the CRC-32C check value (RFC 3720)
    assert tblog.crc32c(b"") == 0
    assert tblog._varint(1) == b"\x01" and tblog._varint(300) == b"\xac\x02"
    assert tblog._varint(-1) == b"\xff" * 9 + b"\x01"


def event_class():
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="tb_event_test.proto", package="tbtest")
    ev = fdp.message_type.add(name="Event")
    ev.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    ev.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    ev.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    ev.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".tbtest.Summary")
    ev.field.add(name="session_log", number=7, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                 type_name=".tbtest.SessionLog")
    sl = fdp.message_type.add(name="SessionLog")
    sl.field.add(name="status", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)    # (an enum: START = 1)
    sm = fdp.message_type.add(name="Summary")
    sm.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED, type_name=".tbtest.Value")
    v = fdp.message_type.add(name="Value")
    v.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    v.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tbtest.Event"))


def test_a_runs_events_are_its_metrics(tmp_path):
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    res = invoke(["train", "--set", f"data.train={data}", "--set", "train.epochs=3", "--set", "train.batch_size=8",
                  "--out", tmp_path / "run", "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    files = list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert len(files) == 1
    records = tblog.read_records(files[0])                   # every CRC checked
    Event = event_class()
    events = [Event.FromString(r) for r in records]
    assert events[0].file_version == "brain.Event:2"
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(events) == 1 + len(rows) == 4
    for e, row in zip(events[1:], rows):
        assert e.step == int(row["step"]) and e.wall_time > 1.7e9
        got = {v.tag: v.simple_value for v in e.summary.value}
        assert list(got) == ["train/loss", "train/acc", "val/loss", "val/acc", "lr"]
        for key, tag in tblog.SCALARS:
            assert got[tag] == pytest.approx(float(row[key]), rel=1e-6)         # float32 in the file


def test_off_and_a_failing_write(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    args = ["train", "--set", f"data.train={data}", "--set", "train.epochs=2", "-q", "--no-report"]
    assert invoke([*args, "--set", "train.tensorboard=false", "--out", tmp_path / "off"]).exit_code == 0
    assert not list((tmp_path / "off").glob("events*"))

    def full(self, row):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tblog.EventLog, "epoch", full)
    res = invoke([*args, "--out", tmp_path / "full"])
    assert res.exit_code == 0 and "epoch 2/2" in res.output
    assert res.output.count("warning: no more TensorBoard events") == 1
    assert "events.out.tfevents" in res.output and "no space left on the device)" in res.output


def tensorboard_view(run):
    """{tag: [(step, value)]} as TensorBoard shows a run folder: its event files in name order, and a
    SessionLog START at step s drops the points seen so far at steps >= s (its purge of orphaned data)."""
    Event, points = event_class(), {}
    for path in sorted(run.glob("events.out.tfevents.*")):
        for e in map(Event.FromString, tblog.read_records(path)):
            if e.HasField("session_log") and e.session_log.status == 1:
                points = {tag: [(s, v) for s, v in pts if s < e.step] for tag, pts in points.items()}
            for v in e.summary.value:
                points.setdefault(v.tag, []).append((e.step, v.simple_value))
    return points


def test_a_run_resumed_from_an_earlier_checkpoint_or_into_another_folder_shows_its_metrics_once(tmp_path):
    # (resumed from best.npz behind last.npz, TensorBoard showed two points at a step; resumed with --out, the new
    # folder's curves began at the resumed epoch)
    import shutil

    data = make_folder(tmp_path / "data", per_class=6, odd_files=False)
    run = tmp_path / "run"
    res = invoke(["train", "--set", f"data.train={data}", "--set", "train.epochs=2", "--set", "train.batch_size=8",
                  "--out", run, "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    shutil.copy(run / "last.npz", run / "epoch2.npz")
    assert invoke(["train", "--resume", run, "--set", "train.epochs=3", "-q", "--no-report"]).exit_code == 0
    assert len(tensorboard_view(run)["train/loss"]) == 3
    for args, folder in ((["--resume", run / "epoch2.npz"], run), (["--resume", run / "epoch2.npz", "--out",
                                                                    tmp_path / "more"], tmp_path / "more")):
        res = invoke(["train", *args, "--set", "train.epochs=4", "-q", "--no-report"])
        assert res.exit_code == 0, res.output
        with open(folder / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        view = tensorboard_view(folder)
        assert len(rows) == 4 and set(view) == {tag for _, tag in tblog.SCALARS}
        for key, tag in tblog.SCALARS:
            assert [s for s, _ in view[tag]] == [int(r["step"]) for r in rows], (folder, tag)
            assert [v for _, v in view[tag]] == pytest.approx([float(r[key]) for r in rows], rel=1e-6)
